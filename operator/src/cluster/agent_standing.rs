//! In-cluster agents' standing: a node agent may act while its node is not
//! revoked, and may renew only while an agent pod (the agent service
//! account, not terminating) runs on its node.
//!
//! Revocations are the ConfigMap [`REVOCATIONS_CONFIG_MAP`] in the
//! operator's namespace: each key a node name, each value the reason (JSON
//! `{"revoked_at_unix": .., "reason": ..}` as `signet-operator agent revoke`
//! writes it, or any text).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::agents::AgentRecord;
use crate::cluster::pods::PodCache;
use crate::revocation::{AgentStanding, RevocationList, StandingRefusal, not_revoked};

pub const REVOCATIONS_CONFIG_MAP: &str = "signet-agent-revocations";

pub struct NodeAgents {
    pods: Arc<PodCache>,
    namespace: String,
    service_account: String,
    revocations: watch::Receiver<Arc<RevocationList>>,
}

impl NodeAgents {
    pub fn new(
        pods: Arc<PodCache>,
        namespace: String,
        service_account: String,
        revocations: watch::Receiver<Arc<RevocationList>>,
    ) -> Self {
        Self {
            pods,
            namespace,
            service_account,
            revocations,
        }
    }

    fn decide(&self, agent: &AgentRecord, renewal: bool) -> Result<(), StandingRefusal> {
        not_revoked(&self.revocations.borrow(), &agent.name)?;
        let Some(node) = agent.node_name.as_deref() else {
            return Err(StandingRefusal {
                reason: "agent_not_configured",
                message: format!("agent {:?} is not a node agent of this cluster", agent.name),
            });
        };
        // Renewing needs a live agent pod on the node: an SVID copied off a
        // node whose agent was removed stops renewing.
        if renewal
            && !self.pods.any(|pod| {
                *pod.node_name == *node
                    && *pod.namespace == *self.namespace
                    && *pod.service_account == *self.service_account
                    && !pod.terminating
            })
        {
            return Err(StandingRefusal {
                reason: "agent_pod_gone",
                message: format!(
                    "no agent pod ({}/{}) runs on node {node:?}",
                    self.namespace, self.service_account
                ),
            });
        }
        Ok(())
    }
}

impl AgentStanding for NodeAgents {
    fn check<'a>(
        &'a self,
        agent: &'a AgentRecord,
        renewal: bool,
    ) -> BoxFuture<'a, Result<(), StandingRefusal>> {
        Box::pin(std::future::ready(self.decide(agent, renewal)))
    }

    fn revocations(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.revocations.clone()
    }
}

/// Follows the revocation ConfigMap until dropped. `synced` turns true once
/// the first list (or its absence) is known: the operator is not Ready
/// before, so a revoked agent is never served for want of the list.
pub async fn follow_revocations(
    api: Api<ConfigMap>,
    sender: watch::Sender<Arc<RevocationList>>,
    synced: watch::Sender<bool>,
) {
    let config =
        watcher::Config::default().fields(&format!("metadata.name={REVOCATIONS_CONFIG_MAP}"));
    let events = watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    let mut relisted: Option<RevocationList> = None;
    while let Some(event) = events.next().await {
        let list = match event {
            Ok(watcher::Event::Apply(map)) => Some(list_of(&map)),
            Ok(watcher::Event::Delete(_)) => Some(RevocationList::default()),
            Ok(watcher::Event::Init) => {
                relisted = Some(RevocationList::default());
                None
            }
            Ok(watcher::Event::InitApply(map)) => {
                relisted = Some(list_of(&map));
                None
            }
            Ok(watcher::Event::InitDone) => {
                let _ = synced.send(true);
                relisted.take()
            }
            Err(error) => {
                tracing::warn!(%error, "agent revocation watch failed; retrying");
                None
            }
        };
        if let Some(list) = list {
            sender.send_if_modified(|current| {
                let changed = **current != list;
                if changed {
                    let names: Vec<&String> = list.revoked.keys().collect();
                    tracing::info!(revoked = ?names, "agent revocation list changed");
                    *current = Arc::new(list);
                }
                changed
            });
        }
    }
}

fn list_of(map: &ConfigMap) -> RevocationList {
    RevocationList::from_config_map_data(map.data.as_ref().unwrap_or(&BTreeMap::new()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use kube::api::ObjectMeta;
    use signet_identity::{SpiffeId, TrustDomain};

    use super::*;
    use crate::revocation::Revocation;

    fn agent_pod(uid: &str, node: &str, service_account: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("agent-{uid}")),
                namespace: Some("signet-system".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some(service_account.into()),
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn agent(id: &str) -> AgentRecord {
        AgentRecord::from_spiffe_id(
            &SpiffeId::parse(id).unwrap(),
            &TrustDomain::new("example.org").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn renewals_need_a_live_agent_pod_on_the_node() {
        let pods = Arc::new(PodCache::default());
        let (sender, receiver) = watch::channel(Arc::new(RevocationList::default()));
        let agents = NodeAgents::new(
            pods.clone(),
            "signet-system".into(),
            "signet-agent".into(),
            receiver,
        );
        let n1 = agent("spiffe://example.org/signet/agent/k8s/n1");
        assert_eq!(agents.decide(&n1, false), Ok(()));
        assert_eq!(
            agents.decide(&n1, true).unwrap_err().reason,
            "agent_pod_gone"
        );
        // Another service account's pod on the node, or the agent on
        // another node, does not count.
        pods.upsert(agent_pod("u1", "n1", "default"));
        pods.upsert(agent_pod("u2", "n2", "signet-agent"));
        assert!(agents.decide(&n1, true).is_err());
        pods.upsert(agent_pod("u3", "n1", "signet-agent"));
        assert_eq!(agents.decide(&n1, true), Ok(()));

        let mut list = RevocationList::default();
        list.revoked.insert("n1".into(), Revocation::default());
        sender.send_replace(Arc::new(list));
        assert_eq!(
            agents.decide(&n1, false).unwrap_err().reason,
            "agent_revoked"
        );
        let join = agent("spiffe://example.org/signet/agent/join/n2");
        assert_eq!(
            agents.decide(&join, false).unwrap_err().reason,
            "agent_not_configured"
        );
    }
}
