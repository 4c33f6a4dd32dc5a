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
/// object: every stream's gRPC encode buffer grows to its largest message
/// and keeps that size while the stream lasts.
pub const PART_BYTES: usize = 64 * 1024;

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

    /// Compiles the version after `previous` and the delta from it,
    /// reusing whatever did not change: the compiled identities and each
    /// unchanged object's JSON, of which the whole document's JSON is made
    /// too. One change among thousands of objects costs little more than
    /// comparing them.
    pub fn compile_after(
        version: u64,
        trust_domain: &TrustDomain,
        document: &PolicyDocument,
        previous: &PolicyState,
    ) -> Self {
        let (snapshot, reports) = document.compile_after(version, trust_domain, &previous.snapshot);
        let before = previous.snapshot.document();
        let (identities_before, roles_before) = previous.objects_json();
        let in_force = snapshot.document();
        let objects_json = (
            json_by_name_reusing(
                &in_force.workload_identities,
                &before.workload_identities,
                identities_before,
                |o| &o.metadata,
            ),
            json_by_name_reusing(&in_force.roles, &before.roles, roles_before, |o| {
                &o.metadata
            }),
        );
        let document_json = document_json_of(&objects_json);
        let state = Self {
            version,
            snapshot,
            document_json,
            reports,
            objects_json: OnceLock::from(objects_json),
            delta: None,
            parts: OnceLock::new(),
        };
        state.with_delta_from(previous)
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

/// Like [`json_by_name`], taking the JSON of each object that equals the
/// one of its name in `before` from `before_json` instead of serializing it
/// again. Both slices are sorted by name, as compiled documents are.
fn json_by_name_reusing<T: serde::Serialize + PartialEq>(
    objects: &[T],
    before: &[T],
    before_json: &BTreeMap<String, Bytes>,
    metadata: impl Fn(&T) -> &kube::api::ObjectMeta,
) -> BTreeMap<String, Bytes> {
    objects
        .iter()
        .filter_map(|o| {
            let name = metadata(o).name.clone()?;
            let unchanged = before
                .binary_search_by(|b| metadata(b).name.as_deref().unwrap_or_default().cmp(&name))
                .ok()
                .and_then(|at| before.get(at))
                .is_some_and(|b| b == o);
            let json = match before_json.get(&name) {
                Some(json) if unchanged => json.clone(),
                _ => Bytes::from(serde_json::to_vec(o).ok()?),
            };
            Some((name, json))
        })
        .collect()
}

/// The `PolicyDocument` JSON made of its objects' JSON, exactly as
/// serializing the document would write it.
fn document_json_of((identities, roles): &ObjectsJson) -> Bytes {
    let size: usize = identities
        .values()
        .chain(roles.values())
        .map(|j| j.len() + 1)
        .sum();
    let mut json = Vec::with_capacity(size + 40);
    fn list(json: &mut Vec<u8>, key: &str, objects: &BTreeMap<String, Bytes>) {
        json.extend_from_slice(key.as_bytes());
        json.push(b'[');
        for (index, object) in objects.values().enumerate() {
            if index > 0 {
                json.push(b',');
            }
            json.extend_from_slice(object);
        }
        json.push(b']');
    }
    list(&mut json, "{\"workloadIdentities\":", identities);
    list(&mut json, ",\"roles\":", roles);
    json.push(b'}');
    json.into()
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

    fn identity(name: &str, label: &str, ttl: &str) -> String {
        format!(
            "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: {name}, labels: {{team: {label}}}}}\nspec:\n  rules: {{allow: [{{conditions: [{{attribute: workload.unix.uid, eq: \"1000\"}}]}}]}}\n  spiffe: {{id: \"/{name}/{{{{ workload.unix.uid }}}}\", x509: {{ttl: {ttl}}}}}\n"
        )
    }

    const ROLE: &str = "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {name: all}\nspec:\n  subjects: [{kind: Agent, name: \"*\"}]\n  allow: {workloadIdentityLabels: {\"*\": [\"*\"]}}\n";

    fn document(yamls: &[String]) -> PolicyDocument {
        PolicyDocument::from_objects(
            yamls
                .iter()
                .flat_map(|y| signet_policy::parse_yaml_documents(y))
                .map(|r| r.expect("valid YAML")),
        )
    }

    fn x509_ids(state: &PolicyState) -> Vec<String> {
        let pairs = [("workload.unix.uid", "1000"), ("agent.name", "vm-1")];
        let attrs = signet_policy::Attributes::try_from(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap();
        let mut ids: Vec<String> = state
            .snapshot
            .evaluate(&attrs)
            .into_iter()
            .map(|i| i.spiffe_id.to_string())
            .collect();
        ids.sort();
        ids
    }

    /// A change compiled on top of the version before gives exactly what
    /// compiling from scratch gives (document JSON byte for byte, decisions,
    /// reports), and its delta carries only what changed.
    #[test]
    fn compiling_after_a_version_equals_compiling_from_scratch() {
        let td = TrustDomain::new("example.org").unwrap();
        let before = vec![
            identity("a", "x", "1h"),
            identity("b", "x", "1h"),
            identity("c", "x", "1h"),
            ROLE.to_owned(),
        ];
        let v1 = PolicyState::compile(1, &td, &document(&before));
        let after = vec![
            identity("a", "x", "1h"),
            identity("b", "y", "1h"),
            identity("d", "x", "nonsense"),
            identity("e", "x", "2h"),
            ROLE.to_owned(),
        ];
        let incremental = PolicyState::compile_after(2, &td, &document(&after), &v1);
        let scratch = PolicyState::compile(2, &td, &document(&after));
        assert_eq!(incremental.document_json, scratch.document_json);
        assert_eq!(x509_ids(&incremental), x509_ids(&scratch));
        assert_eq!(
            x509_ids(&incremental),
            [
                "spiffe://example.org/a/1000",
                "spiffe://example.org/b/1000",
                "spiffe://example.org/e/1000"
            ]
        );
        let reports = |s: &PolicyState| {
            s.reports
                .iter()
                .map(|r| (r.name.clone(), r.result.is_ok()))
                .collect::<Vec<_>>()
        };
        assert_eq!(reports(&incremental), reports(&scratch));
        assert!(reports(&incremental).contains(&("d".to_owned(), false)));

        let delta = incremental.delta.as_ref().expect("a delta from v1");
        let names = |jsons: &[Bytes]| {
            jsons
                .iter()
                .map(|j| {
                    let v: serde_json::Value = serde_json::from_slice(j).unwrap();
                    v["metadata"]["name"].as_str().unwrap().to_owned()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(delta.base_version, 1);
        assert_eq!(names(&delta.workload_identities), ["b", "e"]);
        assert_eq!(delta.removed_workload_identities, ["c"]);
        assert!(delta.roles.is_empty() && delta.removed_roles.is_empty());

        // The unchanged object's JSON is the very bytes of the version before.
        let a_before = &v1.objects_json().0["a"];
        let a_after = &incremental.objects_json().0["a"];
        assert_eq!(a_before.as_ptr(), a_after.as_ptr());
        // And the same again on top of the incremental version.
        let v3 = PolicyState::compile_after(3, &td, &document(&before), &incremental);
        assert_eq!(v3.document_json, v1.document_json);
        assert_eq!(x509_ids(&v3), x509_ids(&v1));
    }
}
