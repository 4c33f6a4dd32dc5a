//! What makes two callers the same workload for the cache.

use std::sync::Arc;

use signet_policy::{Attributes, Field};

/// The workload's attributes without per-process noise: processes that
/// attest alike share their SVIDs, while two pods never do (their pod UIDs
/// differ).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct WorkloadKey(pub(crate) Arc<Attributes>);

impl WorkloadKey {
    pub(crate) fn of(attributes: &Attributes) -> Self {
        let mut key = attributes.clone();
        key.remove_field(Field::UnixPid);
        Self(Arc::new(key))
    }
}
