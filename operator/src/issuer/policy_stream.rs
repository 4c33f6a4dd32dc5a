//! WatchPolicy: each agent's stream of policy updates, the full state every
//! time the policy or the trust bundle changes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::issuer::v1 as pb;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::agents::AgentRecord;
use crate::ca::PublishedBundle;
use crate::metrics::Metrics;
use crate::policy_state::PolicyState;

/// Bundles of other trust domains, for identities that federate with them.
#[derive(Clone, Debug, Default)]
pub struct Federation {
    pub bundles: BTreeMap<TrustDomain, TrustBundle>,
}

/// What one agent's stream follows.
pub struct PolicyFeed {
    pub trust_domain: TrustDomain,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub bundle: watch::Receiver<Arc<PublishedBundle>>,
    pub federation: Federation,
    pub metrics: Arc<Metrics>,
}

fn policy_update(
    trust_domain: &TrustDomain,
    policy: &PolicyState,
    bundle: &PublishedBundle,
    federation: &Federation,
) -> pb::PolicyUpdate {
    let federated_bundles: HashMap<String, Vec<u8>> = federation
        .bundles
        .iter()
        .filter_map(|(td, b)| Some((td.to_string(), b.to_spiffe_json().ok()?.into_bytes())))
        .collect();
    pb::PolicyUpdate {
        version: policy.version,
        trust_domain: trust_domain.to_string(),
        policy: policy.document_json.as_ref().clone(),
        trust_bundle: bundle.spiffe_json.clone().into_bytes(),
        federated_bundles,
        bundle_sequence: bundle.bundle.sequence,
        node: None,
    }
}

impl PolicyFeed {
    /// Sends `agent` the current state, then again on every change, until
    /// the agent hangs up.
    pub async fn run(
        mut self,
        agent: AgentRecord,
        sender: mpsc::Sender<Result<pb::PolicyUpdate, Status>>,
    ) {
        self.metrics.agents_connected.inc();
        tracing::debug!(agent = %agent.name, "policy watch opened");
        loop {
            let update = {
                let current_policy = self.policy.borrow_and_update().clone();
                let current_bundle = self.bundle.borrow_and_update().clone();
                policy_update(
                    &self.trust_domain,
                    &current_policy,
                    &current_bundle,
                    &self.federation,
                )
            };
            if sender.send(Ok(update)).await.is_err() {
                break;
            }
            tokio::select! {
                changed = self.policy.changed() => if changed.is_err() { break },
                changed = self.bundle.changed() => if changed.is_err() { break },
                () = sender.closed() => break,
            }
        }
        self.metrics.agents_connected.dec();
        tracing::debug!(agent = %agent.name, "policy watch closed");
    }
}
