//! WatchPolicy: each agent's stream of policy updates, the full state every
//! time the policy, the trust bundle or the agent's own Node changes. To an
//! agent that accepts deltas, the policy document goes whole only first
//! (or after it missed a version); later updates carry what changed since
//! the version last sent on the stream, so one changed object costs every
//! agent that object, not the whole policy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use signet_identity::{TrustBundle, TrustDomain};
use signet_policy::NodeFacts;
use signet_proto::issuer::v1 as pb;
use tokio::sync::{Semaphore, mpsc, watch};
use tonic::Status;

use crate::agents::AgentRecord;
use crate::ca::PublishedBundle;
use crate::federation::Federation;
use crate::metrics::Metrics;
use crate::policy_state::PolicyState;
use crate::revocation::{RevocationList, StandingRefusal, not_revoked};

/// What one agent's stream follows.
pub struct PolicyFeed {
    pub trust_domain: TrustDomain,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub bundle: watch::Receiver<Arc<PublishedBundle>>,
    pub federation: Federation,
    /// The agent's Node as the operator sees it, where agents have Nodes.
    pub node: Option<watch::Receiver<Option<NodeFacts>>>,
    /// Revoked agents: the stream ends when this agent is added.
    pub revocations: watch::Receiver<Arc<RevocationList>>,
    pub metrics: Arc<Metrics>,
    /// The agent said it applies `PolicyUpdate.delta`.
    pub accepts_deltas: bool,
    /// The agent said it takes a whole policy in parts.
    pub accepts_parts: bool,
    /// Shared by every stream of the issuer: at most
    /// [`WHOLE_POLICY_SENDS`] send a whole policy at once.
    pub whole_policy_sends: Arc<Semaphore>,
}

/// How many streams send a whole policy at the same time; the others wait
/// their turn. A whole policy is megabytes at thousands of identities and
/// every stream encodes (and TLS encrypts) its own copy: a thousand agents
/// connecting at once would otherwise hold a thousand copies in encode and
/// HTTP/2 send buffers, and the operator's RSS would keep the peak. The
/// CPU, not the number of streams, bounds how fast they all get it.
pub const WHOLE_POLICY_SENDS: usize = 32;

/// What the update says of the policy: the whole document, or the change
/// from the version last sent.
fn policy_part(
    policy: &PolicyState,
    accepts_deltas: bool,
    last_sent: Option<u64>,
) -> (bytes::Bytes, Option<pb::PolicyDelta>) {
    if accepts_deltas && let Some(sent) = last_sent {
        if sent == policy.version {
            // Only the bundle or the Node changed.
            let unchanged = pb::PolicyDelta {
                base_version: sent,
                ..pb::PolicyDelta::default()
            };
            return (bytes::Bytes::new(), Some(unchanged));
        }
        if let Some(delta) = policy.delta.as_ref().filter(|d| d.base_version == sent) {
            return (bytes::Bytes::new(), Some(delta.as_ref().clone()));
        }
    }
    (policy.document_json.clone(), None)
}

/// A part of a whole policy, but the last (which goes as a full update).
fn partial_update(
    trust_domain: &TrustDomain,
    version: u64,
    part: &pb::PolicyDelta,
) -> pb::PolicyUpdate {
    pb::PolicyUpdate {
        version,
        trust_domain: trust_domain.to_string(),
        delta: Some(part.clone()),
        partial: true,
        ..pb::PolicyUpdate::default()
    }
}

fn policy_update(
    trust_domain: &TrustDomain,
    policy: &PolicyState,
    (document, delta): (bytes::Bytes, Option<pb::PolicyDelta>),
    bundle: &PublishedBundle,
    federation: &BTreeMap<TrustDomain, TrustBundle>,
    node: Option<&NodeFacts>,
) -> pb::PolicyUpdate {
    let federated_bundles: HashMap<String, Vec<u8>> = federation
        .iter()
        .filter_map(|(td, b)| Some((td.to_string(), b.to_spiffe_json().ok()?.into_bytes())))
        .collect();
    pb::PolicyUpdate {
        version: policy.version,
        trust_domain: trust_domain.to_string(),
        policy: document,
        delta,
        trust_bundle: bundle.spiffe_json.clone().into_bytes(),
        federated_bundles,
        bundle_sequence: bundle.bundle.sequence,
        tainted_x509_authorities: bundle.tainted_x509.clone(),
        tainted_jwt_authorities: bundle.tainted_jwt.clone(),
        partial: false,
        node: node.map(|node| pb::NodeInfo {
            name: node.name.clone(),
            labels: node
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        }),
    }
}

/// Resolves when the followed Node changes; never, when there is none to
/// follow (or its source is gone).
async fn node_changed(node: &mut Option<watch::Receiver<Option<NodeFacts>>>) {
    match node {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *node = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Resolves when `name` is on the revocation list; never, if its source
/// goes away (the last list stays in force for the checks on each call).
pub(crate) async fn revoked(
    revocations: &mut watch::Receiver<Arc<RevocationList>>,
    name: &str,
) -> StandingRefusal {
    loop {
        if let Err(refusal) = not_revoked(&revocations.borrow_and_update(), name) {
            return refusal;
        }
        if revocations.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves when the federated bundles change; never once they cannot.
async fn federation_changed(federation: &mut Federation) {
    if federation.bundles.changed().await.is_err() {
        std::future::pending::<()>().await;
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
        let mut last_sent: Option<u64> = None;
        'stream: loop {
            let (whole, parts_before, update) = {
                let current_policy = self.policy.borrow_and_update().clone();
                let current_federation = self.federation.bundles.borrow_and_update().clone();
                let current_bundle = self.bundle.borrow_and_update().clone();
                let current_node = self
                    .node
                    .as_mut()
                    .and_then(|node| node.borrow_and_update().clone());
                let mut part = policy_part(&current_policy, self.accepts_deltas, last_sent);
                let whole = part.1.is_none();
                last_sent = Some(current_policy.version);
                // A whole policy too large for one part goes in parts; the
                // last one with everything else, as a full update.
                let mut parts_before = Vec::new();
                if part.1.is_none()
                    && self.accepts_parts
                    && let Some((last, rest)) = current_policy.parts().split_last()
                    && !rest.is_empty()
                {
                    // Made into updates one at a time as they are sent: a
                    // copy of every part's object list per stream would be
                    // megabytes per waiting stream.
                    parts_before = rest.to_vec();
                    part = (bytes::Bytes::new(), Some(last.as_ref().clone()));
                }
                let update = policy_update(
                    &self.trust_domain,
                    &current_policy,
                    part,
                    &current_bundle,
                    &current_federation,
                    current_node.as_ref(),
                );
                (whole, (current_policy.version, parts_before), update)
            };
            let turn = if whole {
                tokio::select! {
                    turn = self.whole_policy_sends.acquire() => turn.ok(),
                    () = sender.closed() => break 'stream,
                }
            } else {
                None
            };
            let (version, parts_before) = parts_before;
            let parts = parts_before
                .iter()
                .map(|part| partial_update(&self.trust_domain, version, part));
            for update in parts.chain(std::iter::once(update)) {
                if sender.send(Ok(update)).await.is_err() {
                    break 'stream;
                }
            }
            if turn.is_some() {
                // The turn ends once the stream has taken every update
                // from the channel: then at most its encode and send
                // buffers still hold some of it.
                if sender.reserve_many(sender.max_capacity()).await.is_err() {
                    break 'stream;
                }
            }
            drop(turn);
            tokio::select! {
                changed = self.policy.changed() => if changed.is_err() { break },
                changed = self.bundle.changed() => if changed.is_err() { break },
                // A fixed federation's sender is gone at once: then never.
                () = federation_changed(&mut self.federation) => {}
                () = node_changed(&mut self.node) => {}
                () = sender.closed() => break,
                refusal = revoked(&mut self.revocations, &agent.name) => {
                    tracing::warn!(agent = %agent.name, "closing the policy stream of a revoked agent");
                    let _ = sender.send(Err(Status::permission_denied(refusal.message))).await;
                    break;
                }
            }
        }
        self.metrics.agents_connected.dec();
        tracing::debug!(agent = %agent.name, "policy watch closed");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use signet_identity::SpiffeId;
    use signet_policy::PolicyDocument;

    use super::*;
    use crate::policy_state::PART_BYTES;

    async fn next(
        updates: &mut mpsc::Receiver<Result<pb::PolicyUpdate, Status>>,
    ) -> pb::PolicyUpdate {
        tokio::time::timeout(Duration::from_secs(5), updates.recv())
            .await
            .expect("an update")
            .expect("the stream is open")
            .expect("not an error")
    }

    /// A feed with no Node, no revocations and its own turn, for agents
    /// that take neither deltas nor parts.
    fn feed(
        td: &TrustDomain,
        policy: watch::Receiver<Arc<PolicyState>>,
        bundle: watch::Receiver<Arc<PublishedBundle>>,
    ) -> PolicyFeed {
        PolicyFeed {
            trust_domain: td.clone(),
            policy,
            bundle,
            federation: Federation::default(),
            node: None,
            revocations: watch::channel(Arc::default()).1,
            metrics: Arc::new(Metrics::default()),
            accepts_deltas: false,
            accepts_parts: false,
            whole_policy_sends: Arc::new(Semaphore::new(WHOLE_POLICY_SENDS)),
        }
    }

    /// Runs `feed` for the joined agent `name`; its updates.
    fn start(
        feed: PolicyFeed,
        td: &TrustDomain,
        name: &str,
    ) -> mpsc::Receiver<Result<pb::PolicyUpdate, Status>> {
        let id =
            SpiffeId::parse(&format!("spiffe://example.org/signet/agent/join/{name}")).unwrap();
        let (sender, updates) = mpsc::channel(4);
        tokio::spawn(feed.run(AgentRecord::from_spiffe_id(&id, td).unwrap(), sender));
        updates
    }

    fn empty_bundle(td: &TrustDomain) -> Arc<PublishedBundle> {
        Arc::new(PublishedBundle {
            bundle: TrustBundle::new(td.clone()),
            tainted_x509: Vec::new(),
            tainted_jwt: Vec::new(),
            spiffe_json: "{}".into(),
            pem: String::new(),
            jwks_json: "{}".into(),
        })
    }

    #[tokio::test]
    async fn updates_carry_the_agents_node_and_follow_its_changes() {
        let td = TrustDomain::new("example.org").unwrap();
        let compiled = |version| {
            Arc::new(PolicyState::compile(
                version,
                &td,
                &PolicyDocument::default(),
            ))
        };
        let (policy_tx, policy) = watch::channel(compiled(1));
        let (_bundle_tx, bundle) = watch::channel(empty_bundle(&td));
        let (node_tx, node) = watch::channel(None);
        let feed = PolicyFeed {
            node: Some(node),
            ..feed(&td, policy, bundle)
        };
        let id = SpiffeId::parse("spiffe://example.org/signet/agent/k8s/n1").unwrap();
        let agent = AgentRecord::from_spiffe_id(&id, &td).unwrap();
        let (sender, mut updates) = mpsc::channel(4);
        let task = tokio::spawn(feed.run(agent, sender));

        let first = next(&mut updates).await;
        assert_eq!(first.node, None, "not seen yet");
        node_tx.send_replace(Some(NodeFacts::new(
            "n1",
            [("pool".to_owned(), "dmz".to_owned())],
        )));
        let relabelled = next(&mut updates).await;
        assert_eq!(relabelled.version, first.version, "the same policy");
        let info = relabelled.node.unwrap();
        assert_eq!(info.name, "n1");
        assert_eq!(info.labels["pool"], "dmz");

        // Policy changes carry the Node too; a gone source ends nothing.
        drop(node_tx);
        policy_tx.send_replace(compiled(2));
        assert_eq!(next(&mut updates).await.version, 2);
        drop(updates);
        policy_tx.send_replace(compiled(3));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the feed ends when the agent hangs up")
            .unwrap();
    }

    #[tokio::test]
    async fn revoking_the_agent_closes_its_stream_and_no_other() {
        let td = TrustDomain::new("example.org").unwrap();
        let (_policy_tx, policy) = watch::channel(Arc::new(PolicyState::compile(
            1,
            &td,
            &PolicyDocument::default(),
        )));
        let (_bundle_tx, bundle) = watch::channel(empty_bundle(&td));
        let (revocations_tx, revocations) = watch::channel(Arc::new(RevocationList::default()));
        let open = |name: &str| {
            let feed = PolicyFeed {
                revocations: revocations.clone(),
                ..feed(&td, policy.clone(), bundle.clone())
            };
            start(feed, &td, name)
        };
        let mut vm1 = open("vm-1");
        let mut vm2 = open("vm-2");
        next(&mut vm1).await;
        next(&mut vm2).await;
        let mut list = RevocationList::default();
        list.revoked
            .insert("vm-1".into(), crate::revocation::Revocation::default());
        revocations_tx.send_replace(Arc::new(list));
        let closing = tokio::time::timeout(Duration::from_secs(5), vm1.recv())
            .await
            .unwrap()
            .expect("a last message");
        assert_eq!(closing.unwrap_err().code(), tonic::Code::PermissionDenied);
        assert!(vm1.recv().await.is_none(), "then the stream ends");
        assert!(vm2.try_recv().is_err(), "nothing for the other agent");
        assert!(!vm2.is_closed());
    }

    fn identity_yaml(name: &str, ttl: &str) -> String {
        format!(
            "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: {name}}}\nspec:\n  rules:\n    allow:\n      - conditions: [{{attribute: workload.unix.uid, eq: \"1000\"}}]\n  spiffe:\n    id: /{name}\n    x509: {{ttl: {ttl}}}\n"
        )
    }

    fn document(yamls: &[String]) -> PolicyDocument {
        PolicyDocument::from_objects(
            yamls
                .iter()
                .flat_map(|y| signet_policy::parse_yaml_documents(y))
                .map(Result::unwrap),
        )
    }

    #[tokio::test]
    async fn agents_that_accept_deltas_get_the_whole_policy_once_then_only_changes() {
        let td = TrustDomain::new("example.org").unwrap();
        let (a, b, c) = (
            identity_yaml("a", "1h"),
            identity_yaml("b", "1h"),
            identity_yaml("c", "1h"),
        );
        let v1 = Arc::new(PolicyState::compile(
            1,
            &td,
            &document(&[a.clone(), b.clone()]),
        ));
        let (policy_tx, policy) = watch::channel(v1.clone());
        let (bundle_tx, bundle) = watch::channel(empty_bundle(&td));
        let open = |accepts_deltas: bool| {
            let feed = PolicyFeed {
                accepts_deltas,
                ..feed(&td, policy.clone(), bundle.clone())
            };
            let id = SpiffeId::parse("spiffe://example.org/signet/agent/join/vm").unwrap();
            let (sender, updates) = mpsc::channel(4);
            tokio::spawn(feed.run(AgentRecord::from_spiffe_id(&id, &td).unwrap(), sender));
            updates
        };
        let mut new_agent = open(true);
        let mut old_agent = open(false);
        let first = next(&mut new_agent).await;
        assert!(first.delta.is_none() && first.policy == v1.document_json);
        next(&mut old_agent).await;

        // b changes, c arrives, a goes: the delta says exactly that.
        let b2 = identity_yaml("b", "30m");
        let v2 = PolicyState::compile(2, &td, &document(&[b2, c])).with_delta_from(&v1);
        policy_tx.send_replace(Arc::new(v2));
        let second = next(&mut new_agent).await;
        assert!(second.policy.is_empty());
        let delta = second.delta.unwrap();
        assert_eq!(delta.base_version, 1);
        let names = |objects: &[bytes::Bytes]| -> Vec<String> {
            objects
                .iter()
                .map(|json| {
                    serde_json::from_slice::<serde_json::Value>(json).unwrap()["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(names(&delta.workload_identities), ["b", "c"]);
        assert_eq!(delta.removed_workload_identities, ["a"]);
        // An agent that did not ask for deltas still gets the whole policy.
        let whole = next(&mut old_agent).await;
        assert!(whole.delta.is_none() && !whole.policy.is_empty());

        // Only the bundle changes: an empty delta on the same version.
        bundle_tx.send_modify(|_| {});
        let third = next(&mut new_agent).await;
        let empty = third.delta.unwrap();
        assert_eq!((third.version, empty.base_version), (2, 2));
        assert!(empty.workload_identities.is_empty() && third.policy.is_empty());

        // Two versions at once (the stream missed 3): whole again.
        let v3 = Arc::new(PolicyState::compile(
            3,
            &td,
            &document(std::slice::from_ref(&a)),
        ));
        let v4 = PolicyState::compile(4, &td, &document(&[a, b])).with_delta_from(&v3);
        policy_tx.send_replace(Arc::new(v4));
        let fourth = next(&mut new_agent).await;
        assert_eq!(fourth.version, 4);
        assert!(fourth.delta.is_none() && !fourth.policy.is_empty());
    }

    #[tokio::test]
    async fn a_large_whole_policy_goes_in_parts_and_the_last_carries_the_rest() {
        let td = TrustDomain::new("example.org").unwrap();
        // A few hundred bytes of JSON each: 1,500 of them make parts.
        let yamls: Vec<String> = (0..1500)
            .map(|i| identity_yaml(&format!("w{i:04}"), "1h"))
            .collect();
        let v1 = Arc::new(PolicyState::compile(7, &td, &document(&yamls)));
        assert!(v1.document_json.len() > PART_BYTES);
        let (_policy_tx, policy) = watch::channel(v1.clone());
        let (_bundle_tx, bundle) = watch::channel(empty_bundle(&td));
        let feed = PolicyFeed {
            accepts_deltas: true,
            accepts_parts: true,
            ..feed(&td, policy, bundle)
        };
        let id = SpiffeId::parse("spiffe://example.org/signet/agent/join/vm").unwrap();
        let (sender, mut updates) = mpsc::channel(4);
        tokio::spawn(feed.run(AgentRecord::from_spiffe_id(&id, &td).unwrap(), sender));

        let mut names = Vec::new();
        let mut parts = Vec::new();
        loop {
            let update = next(&mut updates).await;
            assert_eq!(update.version, 7);
            assert!(update.policy.is_empty(), "parts carry deltas only");
            let delta = update.delta.clone().unwrap();
            for json in &delta.workload_identities {
                let object: serde_json::Value = serde_json::from_slice(json).unwrap();
                names.push(object["metadata"]["name"].as_str().unwrap().to_owned());
            }
            assert!(
                signet_proto::prost::Message::encoded_len(&update) < PART_BYTES + 8 * 1024,
                "a part is at most about PART_BYTES"
            );
            parts.push((
                update.partial,
                delta.base_version,
                update.trust_bundle.is_empty(),
            ));
            if !update.partial {
                break;
            }
        }
        // From an empty document first, then on the version being sent; only
        // the last is a full update (bundle and all).
        assert!(parts.len() >= 2, "{parts:?}");
        assert_eq!(parts[0], (true, 0, true));
        assert!(
            parts[1..parts.len() - 1]
                .iter()
                .all(|p| *p == (true, 7, true))
        );
        assert_eq!(parts[parts.len() - 1], (false, 7, false));
        let expected: Vec<String> = (0..1500).map(|i| format!("w{i:04}")).collect();
        assert_eq!(names, expected);
    }

    /// Streams take turns to send a whole policy: while one agent has not
    /// taken its parts, another waits for its turn; deltas never wait.
    #[tokio::test(start_paused = true)]
    async fn whole_policies_are_sent_a_few_streams_at_a_time() {
        let td = TrustDomain::new("example.org").unwrap();
        let yamls: Vec<String> = (0..1500)
            .map(|i| identity_yaml(&format!("w{i:04}"), "1h"))
            .collect();
        let v1 = Arc::new(PolicyState::compile(1, &td, &document(&yamls)));
        assert!(
            v1.parts().len() > 5,
            "more parts than a stream's channel holds"
        );
        let (policy_tx, policy) = watch::channel(v1.clone());
        let (_bundle_tx, bundle) = watch::channel(empty_bundle(&td));
        let one_at_a_time = Arc::new(Semaphore::new(1));
        let open = |name: &str| {
            let feed = PolicyFeed {
                accepts_deltas: true,
                accepts_parts: true,
                whole_policy_sends: one_at_a_time.clone(),
                ..feed(&td, policy.clone(), bundle.clone())
            };
            start(feed, &td, name)
        };
        let mut first = open("first");
        assert!(
            next(&mut first).await.partial,
            "the first stream has its turn"
        );
        let mut second = open("second");
        let waited = tokio::time::timeout(Duration::from_secs(60), second.recv()).await;
        assert!(
            waited.is_err(),
            "the second stream sent while the first had its turn"
        );

        // The first agent takes the rest of its parts: the turn passes.
        while next(&mut first).await.partial {}
        let mut parts = 1;
        while next(&mut second).await.partial {
            parts += 1;
        }
        assert_eq!(parts, v1.parts().len());

        // A change goes to both as a delta, without waiting for a turn.
        let _turn = one_at_a_time.acquire().await.unwrap();
        let v2 = PolicyState::compile_after(2, &td, &document(&yamls[..1499]), &v1);
        policy_tx.send_replace(Arc::new(v2));
        for updates in [&mut first, &mut second] {
            let update = next(updates).await;
            assert_eq!(update.version, 2);
            let delta = update.delta.expect("a delta");
            assert_eq!(delta.removed_workload_identities, ["w1499"]);
        }
    }
}
