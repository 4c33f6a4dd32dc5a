//! The workload-verification seam: how each run mode turns what an agent
//! reports about a workload into the `workload.*` attributes the issuer
//! will decide on. `agent.*` and `node.*` are never a verifier's to give:
//! the issuer adds them from the caller's context afterwards.

use futures::future::BoxFuture;
use signet_policy::Attributes;
use signet_proto::issuer::v1 as pb;

use crate::agents::AgentRecord;

/// Why a workload's attributes were not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRejection {
    pub reason: &'static str,
    pub message: String,
    pub retryable: bool,
}

/// Turns what an agent reports about a workload into its `workload.*`
/// attributes.
pub trait WorkloadVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>>;
}

/// What the agent reported, accepted as testimony: names in the schema and
/// of `workload.*` only (an agent claiming `agent.*` or `node.*` is refused).
pub fn testimony(workload: &pb::Workload) -> Result<Attributes, WorkloadRejection> {
    let reported = workload
        .attributes
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Attributes::from_testimony(reported).map_err(|error| WorkloadRejection {
        reason: "invalid_attributes",
        message: error.to_string(),
        retryable: false,
    })
}

/// Standalone mode: the agent's attestation is the node's testimony.
#[derive(Debug, Default)]
pub struct AgentTestimony;

impl WorkloadVerifier for AgentTestimony {
    fn verify<'a>(
        &'a self,
        _agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>> {
        Box::pin(async move { testimony(workload) })
    }
}
