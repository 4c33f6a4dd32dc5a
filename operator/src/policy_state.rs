//! The policy in force: one compiled, versioned snapshot, as the issuer
//! decides with it and WatchPolicy ships it to agents. Both run modes
//! produce it (standalone from a directory, a cluster from its objects).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

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
    /// The whole policy as deltas of at most about [`PART_BYTES`] each,
    /// made on first use and shared by every stream that sends it.
    parts: OnceLock<Vec<Arc<pb::PolicyDelta>>>,
}

/// What one part of a whole policy carries at most, give or take an
/// object: every stream's gRPC encode buffer grows to its largest message.
pub const PART_BYTES: usize = 256 * 1024;

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
            parts: OnceLock::new(),
        }
    }

    /// The whole policy in parts (one, for a small policy): applied in
    /// order, the first to an empty document, they make this version.
    pub fn parts(&self) -> &[Arc<pb::PolicyDelta>] {
        self.parts.get_or_init(|| {
            let (identities, roles) = self.objects_json();
            let mut parts = Vec::new();
            let mut part = pb::PolicyDelta::default();
            let mut size = 0;
            let objects = identities
                .values()
                .map(|json| (json, true))
                .chain(roles.values().map(|json| (json, false)));
            for (json, is_identity) in objects {
                if size > 0 && size + json.len() > PART_BYTES {
                    parts.push(Arc::new(std::mem::take(&mut part)));
                    size = 0;
                }
                size += json.len();
                if is_identity {
                    part.workload_identities.push(json.clone());
                } else {
                    part.roles.push(json.clone());
                }
            }
            parts.push(Arc::new(part));
            for (index, part) in parts.iter_mut().enumerate() {
                if let Some(part) = Arc::get_mut(part) {
                    part.base_version = if index == 0 { 0 } else { self.version };
                }
            }
            parts
        })
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
type ObjectsJson = (BTreeMap<String, Bytes>, BTreeMap<String, Bytes>);

/// Each named object as JSON, by name.
fn json_by_name<T: serde::Serialize>(
    objects: &[T],
    metadata: impl Fn(&T) -> &kube::api::ObjectMeta,
) -> BTreeMap<String, Bytes> {
    objects
        .iter()
        .filter_map(|o| {
            let json = serde_json::to_vec(o).ok()?;
            Some((metadata(o).name.clone()?, Bytes::from(json)))
        })
        .collect()
}

/// Objects of `after` that are new or differ from `before`, and names of
/// `before` that `after` lacks.
fn changes(
    before: &BTreeMap<String, Bytes>,
    after: &BTreeMap<String, Bytes>,
) -> (Vec<Bytes>, Vec<String>) {
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
