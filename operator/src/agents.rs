//! Who an agent is, from its SVID; how agents prove they may join; and
//! what the operator knows about the Node an agent runs on.

use futures::future::BoxFuture;
use signet_identity::{SpiffeId, TrustDomain};
use signet_policy::{AgentContext, NodeFacts};
use signet_proto::issuer_protocol::{JOIN_AGENT_PATH_PREFIX, NODE_AGENT_PATH_PREFIX};
use tokio::sync::watch;

/// An authenticated agent. Everything here comes from the agent's SVID,
/// which the issuer minted: never from what the agent says in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRecord {
    pub spiffe_id: SpiffeId,
    /// `agent.name`: the join name, or the node name in a cluster.
    pub name: String,
    /// `agent.node_name`, for in-cluster agents.
    pub node_name: Option<String>,
}

impl AgentRecord {
    /// Recognises an agent SVID's SPIFFE ID.
    pub fn from_spiffe_id(id: &SpiffeId, trust_domain: &TrustDomain) -> Option<Self> {
        if !id.is_member_of(trust_domain) {
            return None;
        }
        let path = id.path();
        if let Some(name) = path.strip_prefix(JOIN_AGENT_PATH_PREFIX)
            && !name.is_empty()
            && !name.contains('/')
        {
            return Some(Self {
                spiffe_id: id.clone(),
                name: name.to_owned(),
                node_name: None,
            });
        }
        if let Some(node) = path.strip_prefix(NODE_AGENT_PATH_PREFIX)
            && !node.is_empty()
            && !node.contains('/')
        {
            return Some(Self {
                spiffe_id: id.clone(),
                name: node.to_owned(),
                node_name: Some(node.to_owned()),
            });
        }
        None
    }

    /// The in-cluster agent of Node `node`, as its SVID would name it;
    /// `None` for a name no SPIFFE ID path can carry.
    pub fn for_node(trust_domain: &TrustDomain, node: &str) -> Option<Self> {
        let id =
            SpiffeId::from_path(trust_domain, &format!("{NODE_AGENT_PATH_PREFIX}{node}")).ok()?;
        Self::from_spiffe_id(&id, trust_domain)
    }

    /// What policy may know about this agent: `agent.*` from its SVID, and
    /// `node.*` when the operator knows the agent's Node.
    pub fn context(&self, node: Option<NodeFacts>) -> AgentContext {
        AgentContext {
            name: self.name.clone(),
            node_name: self.node_name.clone(),
            node,
        }
    }
}

/// An agent admitted by [`JoinVerifier`]: the SPIFFE ID path to issue it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmittedAgent {
    pub path: String,
    pub name: String,
    pub node_name: Option<String>,
}

/// Why a join was refused; the message goes back to the agent.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct JoinRejection {
    pub reason: &'static str,
    pub message: String,
}

/// The credential check of `Join`.
pub trait JoinVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        request: &'a signet_proto::issuer::v1::JoinRequest,
    ) -> BoxFuture<'a, Result<AdmittedAgent, JoinRejection>>;
}

/// What the operator knows about agents' Kubernetes Nodes: the only source
/// of `node.*` (an agent can never supply it).
pub trait NodeDirectory: Send + Sync + 'static {
    /// The Node `name` as the API server has it now; `None` while the
    /// operator has not seen it (Node subjects then do not apply).
    fn node(&self, name: &str) -> Option<NodeFacts>;

    /// The Node `name` as it changes (`None` while unseen or deleted), or
    /// `None` where agents have no Nodes.
    fn follow(&self, name: &str) -> Option<watch::Receiver<Option<NodeFacts>>>;
}

/// Standalone mode: agents have no Node.
#[derive(Debug, Default)]
pub struct NoNodes;

impl NodeDirectory for NoNodes {
    fn node(&self, _name: &str) -> Option<NodeFacts> {
        None
    }

    fn follow(&self, _name: &str) -> Option<watch::Receiver<Option<NodeFacts>>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_recognised() {
        let td = TrustDomain::new("example.org").unwrap();
        let join = SpiffeId::parse("spiffe://example.org/signet/agent/join/vm-1").unwrap();
        let record = AgentRecord::from_spiffe_id(&join, &td).unwrap();
        assert_eq!(record.name, "vm-1");
        assert_eq!(record.node_name, None);
        let node = SpiffeId::parse("spiffe://example.org/signet/agent/k8s/node-a").unwrap();
        assert_eq!(
            AgentRecord::from_spiffe_id(&node, &td)
                .unwrap()
                .node_name
                .as_deref(),
            Some("node-a")
        );
        for not_agent in [
            "spiffe://example.org/signet/issuer",
            "spiffe://example.org/signet/agent/join/a/b",
            "spiffe://example.org/web",
            "spiffe://other.org/signet/agent/join/vm-1",
        ] {
            let id = SpiffeId::parse(not_agent).unwrap();
            assert!(
                AgentRecord::from_spiffe_id(&id, &td).is_none(),
                "{not_agent}"
            );
        }
    }
}
