//! The policy in force: one compiled, versioned snapshot, as the issuer
//! decides with it and WatchPolicy ships it to agents. Both run modes
//! produce it (standalone from a directory, a cluster from its objects).

use std::sync::Arc;

use signet_identity::TrustDomain;
use signet_policy::{ObjectReport, PolicyDocument, PolicySnapshot};

/// A compiled policy version, as the issuer and WatchPolicy use it.
#[derive(Debug)]
pub struct PolicyState {
    pub version: u64,
    pub snapshot: PolicySnapshot,
    /// `PolicyDocument` JSON of the objects in force, shipped to agents.
    pub document_json: Arc<Vec<u8>>,
    pub reports: Vec<ObjectReport>,
}

impl PolicyState {
    pub fn compile(version: u64, trust_domain: &TrustDomain, document: &PolicyDocument) -> Self {
        let (snapshot, reports) = document.compile(version, trust_domain);
        let in_force = snapshot.document().clone();
        let document_json = serde_json::to_vec(&in_force).unwrap_or_else(|_| b"{}".to_vec());
        Self {
            version,
            snapshot,
            document_json: Arc::new(document_json),
            reports,
        }
    }
}

/// A starting version that keeps increasing across restarts, so agents
/// never mistake a restarted operator's policy for one they already have.
pub fn initial_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

/// A policy version that also grows across replicas and restarts, so an
/// agent moving between replicas never sees it go backwards for long.
pub fn next_version(previous: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.max(previous + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_grow() {
        let far_future = u64::MAX / 2;
        assert_eq!(next_version(far_future), far_future + 1);
        let now = next_version(0);
        assert!(next_version(now) > now);
    }
}
