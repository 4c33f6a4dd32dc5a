//! The workload-verification seam: how each run mode turns what an agent
//! reports about a workload into attributes the issuer will decide on.

use std::collections::BTreeMap;

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

/// Turns what an agent reports about a workload into attributes the issuer
/// will decide on.
pub trait WorkloadVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>>;
}

/// Standalone mode: the agent's attestation is the node's testimony.
/// Attributes it must not assert (`agent.*`, `node.*`) are refused.
#[derive(Debug, Default)]
pub struct AgentTestimony;

/// Adds `agent.name` / `agent.node_name` from the agent's SVID.
pub fn with_agent_attributes(
    mut map: BTreeMap<String, String>,
    agent: &AgentRecord,
) -> Result<Attributes, WorkloadRejection> {
    map.insert("agent.name".into(), agent.name.clone());
    if let Some(node) = &agent.node_name {
        map.insert("agent.node_name".into(), node.clone());
    }
    Attributes::try_from(map).map_err(|error| WorkloadRejection {
        reason: "invalid_attributes",
        message: error.to_string(),
        retryable: false,
    })
}

/// Checks that the agent only reports `workload.*` attributes.
pub fn workload_attributes_only(
    workload: &pb::Workload,
) -> Result<BTreeMap<String, String>, WorkloadRejection> {
    let mut map = BTreeMap::new();
    for (name, value) in &workload.attributes {
        if !name.starts_with("workload.") {
            return Err(WorkloadRejection {
                reason: "invalid_attributes",
                message: format!("agents may only report workload.* attributes, not {name:?}"),
                retryable: false,
            });
        }
        map.insert(name.clone(), value.clone());
    }
    Ok(map)
}

impl WorkloadVerifier for AgentTestimony {
    fn verify<'a>(
        &'a self,
        agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>> {
        Box::pin(async move { with_agent_attributes(workload_attributes_only(workload)?, agent) })
    }
}
