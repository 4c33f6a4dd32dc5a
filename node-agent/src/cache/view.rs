//! What the cache publishes for one workload: one complete value, its SVIDs
//! together with the bundles that go with them (as SPIRE's
//! `WorkloadUpdate`), so a stream follows a single channel and can never
//! pair SVIDs with bundles of another policy version.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use signet_identity::{SpiffeId, TrustDomain};
use zeroize::Zeroizing;

use super::seams::WorkloadBundles;

/// An X.509-SVID ready to hand to a workload.
#[derive(Clone)]
pub struct IssuedX509 {
    pub workload_identity: String,
    pub spiffe_id: SpiffeId,
    pub cert_chain: Vec<Vec<u8>>,
    /// PKCS#8 DER.
    pub private_key: Zeroizing<Vec<u8>>,
    pub hint: Option<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub federates_with: Vec<TrustDomain>,
}

impl std::fmt::Debug for IssuedX509 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedX509")
            .field("workload_identity", &self.workload_identity)
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewStatus {
    /// Waiting for the policy or the first SVIDs.
    Pending,
    /// At least one valid SVID.
    Ready,
    /// Policy gives this workload nothing (or the issuer refused it all).
    NoIdentity { reason: String },
    /// SVIDs are owed but cannot be obtained right now.
    Unavailable { message: String },
}

/// The full current state for one workload.
#[derive(Clone, Debug)]
pub struct WorkloadView {
    pub status: ViewStatus,
    /// Valid SVIDs, default first.
    pub svids: Vec<Arc<IssuedX509>>,
    /// The bundles for the workload's identities, known as soon as the
    /// policy gives it any (before the first SVID arrives); `None` while
    /// pending on the policy and when it has no identity.
    pub bundles: Option<Arc<WorkloadBundles>>,
    /// Policy version (and so bundle generation) the view was built from.
    pub policy_version: Option<u64>,
}

impl WorkloadView {
    pub(crate) fn pending() -> Self {
        Self {
            status: ViewStatus::Pending,
            svids: Vec::new(),
            bundles: None,
            policy_version: None,
        }
    }

    pub(crate) fn same_content(&self, other: &Self) -> bool {
        let same_bundles = match (&self.bundles, &other.bundles) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.status == other.status
            && self.policy_version == other.policy_version
            && same_bundles
            && self.svids.len() == other.svids.len()
            && self
                .svids
                .iter()
                .zip(&other.svids)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The SVIDs by WorkloadIdentity name.
    pub fn svids_by_name(&self) -> BTreeMap<String, Arc<IssuedX509>> {
        self.svids
            .iter()
            .map(|svid| (svid.workload_identity.clone(), svid.clone()))
            .collect()
    }
}
