//! The policy in force: one compiled, versioned snapshot, as the issuer
//! decides with it and WatchPolicy ships it to agents. Both run modes
//! produce it (standalone from a directory, a cluster from its objects).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use signet_identity::TrustDomain;
use signet_policy::{ObjectReport, PolicyDocument, PolicySnapshot};
use signet_proto::issuer::v1 as pb;

/// A compiled policy version, as the issuer and WatchPolicy use it.
#[derive(Debug)]
pub struct PolicyState {
    pub version: u64,
    pub snapshot: PolicySnapshot,
    /// `PolicyDocument` JSON of the objects in force, shipped to agents.
    pub document_json: bytes::Bytes,
    pub reports: Vec<ObjectReport>,
    /// Each object in force as JSON, by name (WorkloadIdentities, Roles):
    /// what a delta is computed from. Made only when a delta is (admission
    /// and explain compile states that never ship).
    objects_json: OnceLock<ObjectsJson>,
    /// The change from the version before, computed once for every agent
    /// stream that holds that version.
    pub delta: Option<Arc<pb::PolicyDelta>>,
}

impl PolicyState {
    pub fn compile(version: u64, trust_domain: &TrustDomain, document: &PolicyDocument) -> Self {
        let (snapshot, reports) = document.compile(version, trust_domain);
        let document_json =
            serde_json::to_vec(snapshot.document()).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            version,
            snapshot,
            document_json: document_json.into(),
            reports,
            objects_json: OnceLock::new(),
            delta: None,
        }
    }

    fn objects_json(&self) -> &ObjectsJson {
        self.objects_json.get_or_init(|| {
            let in_force = self.snapshot.document();
            (
                json_by_name(&in_force.workload_identities, |o| &o.metadata),
                json_by_name(&in_force.roles, |o| &o.metadata),
            )
        })
    }

    /// Records the change from `previous`, so agents holding it are sent
    /// only that.
    pub fn with_delta_from(mut self, previous: &PolicyState) -> Self {
        let (before_identities, before_roles) = previous.objects_json();
        let (after_identities, after_roles) = self.objects_json();
        let (workload_identities, removed_workload_identities) =
            changes(before_identities, after_identities);
        let (roles, removed_roles) = changes(before_roles, after_roles);
        self.delta = Some(Arc::new(pb::PolicyDelta {
            base_version: previous.version,
            workload_identities,
            roles,
            removed_workload_identities,
            removed_roles,
        }));
        self
    }
}

/// WorkloadIdentities and Roles as JSON, each by name.
type ObjectsJson = (BTreeMap<String, Vec<u8>>, BTreeMap<String, Vec<u8>>);

/// Each named object as JSON, by name.
fn json_by_name<T: serde::Serialize>(
    objects: &[T],
    metadata: impl Fn(&T) -> &kube::api::ObjectMeta,
) -> BTreeMap<String, Vec<u8>> {
    objects
        .iter()
        .filter_map(|o| Some((metadata(o).name.clone()?, serde_json::to_vec(o).ok()?)))
        .collect()
}

/// Objects of `after` that are new or differ from `before`, and names of
/// `before` that `after` lacks.
fn changes(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> (Vec<Vec<u8>>, Vec<String>) {
    let upserted = after
        .iter()
        .filter(|(name, json)| before.get(*name) != Some(json))
        .map(|(_, json)| json.clone())
        .collect();
    let removed = before
        .keys()
        .filter(|name| !after.contains_key(*name))
        .cloned()
        .collect();
    (upserted, removed)
}

/// The version after `previous`: the wall clock in milliseconds, or one
/// more than `previous` if that is larger. It grows across restarts and
/// replicas, so agents never mistake a restarted operator's policy for one
/// they already have, nor see it go backwards for long when they move
/// between replicas.
pub fn next_version(previous: u64, now: SystemTime) -> u64 {
    let millis = now
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    millis.max(previous.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_grow() {
        let now = UNIX_EPOCH + std::time::Duration::from_millis(1_750_000_000_000);
        let far_future = u64::MAX / 2;
        assert_eq!(next_version(far_future, now), far_future + 1);
        let first = next_version(0, now);
        assert_eq!(first, 1_750_000_000_000);
        assert_eq!(next_version(first, now), first + 1, "same millisecond");
        assert_eq!(next_version(0, UNIX_EPOCH), 1);
    }
}
