//! The policy in force on this node: compiled from the issuer's
//! `WatchPolicy` stream, evaluated locally to know which identities each
//! workload should hold, and carrying the trust bundles the Workload API and
//! SDS hand out and the authorities the operator tainted.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{BundleSet, TrustBundle, TrustDomain};
use signet_policy::crd::{Role, WorkloadIdentity};
use signet_policy::{
    AgentContext, Attributes, DenialReason, IdentitySelector, IssuableIdentity, NodeFacts,
    PolicyDocument, PolicySnapshot,
};
use signet_proto::issuer::v1::PolicyUpdate;
use tokio::sync::watch;

use super::client::IssuerClient;
use crate::backoff::Backoff;
use crate::cache::{
    DesiredIdentity, PolicyView, SharedPolicy, TaintedAuthorities, WorkloadBundles,
};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the issuer serves trust domain {got:?}, the agent is configured for {expected}")]
    TrustDomainMismatch { expected: TrustDomain, got: String },
    #[error("policy document: {0}")]
    Document(#[source] serde_json::Error),
    #[error("trust bundle of {trust_domain}: {source}")]
    Bundle {
        trust_domain: String,
        #[source]
        source: signet_identity::BundleError,
    },
    #[error("federated trust domain name {0:?} is invalid")]
    FederatedName(String),
    #[error("a policy delta from version {base} came while version {held:?} is held")]
    DeltaBase { base: u64, held: Option<u64> },
}

/// The policy document as last received on one stream, object by object,
/// so that a delta can be applied to it.
#[derive(Default)]
pub struct HeldDocument {
    version: Option<u64>,
    identities: BTreeMap<String, WorkloadIdentity>,
    roles: BTreeMap<String, Role>,
}

impl HeldDocument {
    /// `update` with the whole policy document: as sent, or the held one
    /// with the update's delta applied; `None` for a part of a whole policy
    /// that more parts follow (held, not to be applied yet).
    pub fn resolve(
        &mut self,
        mut update: PolicyUpdate,
    ) -> Result<Option<PolicyUpdate>, PolicyError> {
        let Some(delta) = update.delta.take() else {
            let document: PolicyDocument =
                serde_json::from_slice(&update.policy).map_err(PolicyError::Document)?;
            self.identities = by_name(document.workload_identities, |o| o.metadata.name.clone());
            self.roles = by_name(document.roles, |o| o.metadata.name.clone());
            self.version = Some(update.version);
            return Ok(Some(update));
        };
        if delta.base_version == 0 {
            // The first part of a whole policy: from an empty document.
            self.identities.clear();
            self.roles.clear();
            self.version = Some(0);
        }
        if self.version != Some(delta.base_version) {
            return Err(PolicyError::DeltaBase {
                base: delta.base_version,
                held: self.version,
            });
        }
        for json in &delta.workload_identities {
            let object: WorkloadIdentity =
                serde_json::from_slice(json).map_err(PolicyError::Document)?;
            if let Some(name) = object.metadata.name.clone() {
                self.identities.insert(name, object);
            }
        }
        for json in &delta.roles {
            let object: Role = serde_json::from_slice(json).map_err(PolicyError::Document)?;
            if let Some(name) = object.metadata.name.clone() {
                self.roles.insert(name, object);
            }
        }
        for name in &delta.removed_workload_identities {
            self.identities.remove(name);
        }
        for name in &delta.removed_roles {
            self.roles.remove(name);
        }
        self.version = Some(update.version);
        if update.partial {
            return Ok(None);
        }
        let document = PolicyDocument {
            workload_identities: self.identities.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        };
        update.policy = serde_json::to_vec(&document)
            .map_err(PolicyError::Document)?
            .into();
        Ok(Some(update))
    }
}

fn by_name<T>(objects: Vec<T>, name: impl Fn(&T) -> Option<String>) -> BTreeMap<String, T> {
    objects
        .into_iter()
        .filter_map(|object| Some((name(&object)?, object)))
        .collect()
}

/// One compiled policy with its bundles; immutable, shared by `Arc`.
#[derive(Debug)]
pub struct AgentPolicy {
    /// Local counter, bumped on every update applied (policy or bundle), so
    /// every change reaches the cache and the streams.
    generation: u64,
    snapshot: PolicySnapshot,
    bundles: Arc<BundleSet>,
    agent: AgentContext,
    selector: Option<IdentitySelector>,
    tainted: TaintedAuthorities,
}

impl AgentPolicy {
    pub fn new(
        generation: u64,
        snapshot: PolicySnapshot,
        bundles: BundleSet,
        agent: AgentContext,
        selector: Option<IdentitySelector>,
    ) -> Self {
        Self {
            generation,
            snapshot,
            bundles: Arc::new(bundles),
            agent,
            selector,
            tainted: TaintedAuthorities::default(),
        }
    }

    /// The same policy naming `tainted` as the own trust domain's tainted
    /// authorities.
    pub fn with_tainted(mut self, tainted: TaintedAuthorities) -> Self {
        self.tainted = tainted;
        self
    }

    /// Compiles a `PolicyUpdate`. Objects that fail to compile are logged and
    /// left out (the issuer compiled the same document and rejected them too).
    pub fn from_update(
        update: &PolicyUpdate,
        generation: u64,
        expected: &TrustDomain,
        agent: AgentContext,
        selector: Option<IdentitySelector>,
    ) -> Result<Self, PolicyError> {
        if update.trust_domain != expected.as_str() {
            return Err(PolicyError::TrustDomainMismatch {
                expected: expected.clone(),
                got: update.trust_domain.clone(),
            });
        }
        // The issuer's word about this agent's Node, for Role Node subjects.
        let agent = AgentContext {
            node: update
                .node
                .as_ref()
                .map(|node| NodeFacts::new(node.name.clone(), node.labels.clone())),
            ..agent
        };
        let document: PolicyDocument =
            serde_json::from_slice(&update.policy).map_err(PolicyError::Document)?;
        let (snapshot, reports) = document.compile(update.version, expected);
        for report in reports {
            if let Err(error) = report.result {
                tracing::warn!(
                    kind = %report.kind.as_str(),
                    name = %report.name,
                    %error,
                    "policy object left out"
                );
            }
        }
        let mut bundles = BundleSet::new();
        let own = TrustBundle::from_spiffe_json(expected.clone(), &update.trust_bundle).map_err(
            |source| PolicyError::Bundle {
                trust_domain: expected.to_string(),
                source,
            },
        )?;
        bundles.insert(own);
        for (name, json) in &update.federated_bundles {
            // One bad federated bundle must not hold back the own policy:
            // skip it (its workloads get no bundle for it) and say so.
            let parsed = TrustDomain::new(name)
                .map_err(|_| PolicyError::FederatedName(name.clone()))
                .and_then(|td| {
                    TrustBundle::from_spiffe_json(td, json).map_err(|source| PolicyError::Bundle {
                        trust_domain: name.clone(),
                        source,
                    })
                });
            match parsed {
                Ok(bundle) if &bundle.trust_domain == expected => {}
                Ok(bundle) => {
                    bundles.insert(bundle);
                }
                Err(error) => tracing::error!(%error, "federated bundle left out"),
            }
        }
        let tainted = TaintedAuthorities::new(
            &update.tainted_x509_authorities,
            &update.tainted_jwt_authorities,
        );
        Ok(Self::new(generation, snapshot, bundles, agent, selector).with_tainted(tainted))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The issuer's policy version.
    pub fn issuer_version(&self) -> u64 {
        self.snapshot.version()
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        self.snapshot.trust_domain()
    }

    /// Own and federated bundles.
    pub fn bundles(&self) -> &Arc<BundleSet> {
        &self.bundles
    }

    pub fn own_bundle(&self) -> Option<&TrustBundle> {
        self.bundles.get(self.snapshot.trust_domain())
    }

    pub fn snapshot(&self) -> &PolicySnapshot {
        &self.snapshot
    }

    pub fn agent(&self) -> &AgentContext {
        &self.agent
    }

    /// Identities the workload may hold here, default first, restricted by
    /// the configured selector. Policy sees the attested attributes plus
    /// `agent.*` and `node.*` from this agent's context, as the issuer does.
    pub fn identities(&self, workload: &Attributes) -> Vec<IssuableIdentity> {
        let attributes = workload.clone().with_context(&self.agent);
        match &self.selector {
            Some(selector) => self.snapshot.evaluate_selected(&attributes, selector),
            None => self.snapshot.evaluate(&attributes),
        }
    }
}

/// What the issuer would render differently if it changed: a new
/// fingerprint makes the cache re-issue.
fn fingerprint(identity: &IssuableIdentity) -> u64 {
    let mut hasher = DefaultHasher::new();
    identity.spiffe_id.as_str().hash(&mut hasher);
    identity.hint.hash(&mut hasher);
    format!("{:?}", identity.x509).hash(&mut hasher);
    for td in &identity.federates_with {
        td.as_str().hash(&mut hasher);
    }
    hasher.finish()
}

impl PolicyView for AgentPolicy {
    fn version(&self) -> u64 {
        self.generation
    }

    fn desired_identities(&self, workload: &Attributes) -> Vec<DesiredIdentity> {
        self.identities(workload)
            .iter()
            .map(|identity| DesiredIdentity {
                name: identity.workload_identity.clone(),
                spiffe_id: identity.spiffe_id.clone(),
                fingerprint: fingerprint(identity),
                federates_with: identity.federates_with.clone(),
            })
            .collect()
    }

    fn bundles_for(&self, identities: &[DesiredIdentity]) -> Arc<WorkloadBundles> {
        let own = self
            .own_bundle()
            .cloned()
            .unwrap_or_else(|| TrustBundle::new(self.trust_domain().clone()));
        let federated = identities
            .iter()
            .flat_map(|identity| &identity.federates_with)
            .filter(|td| *td != self.trust_domain())
            .collect::<BTreeSet<&TrustDomain>>()
            .into_iter()
            .filter_map(|td| self.bundles.get(td).cloned())
            .collect();
        Arc::new(WorkloadBundles { own, federated })
    }

    fn withheld(&self, workload: &Attributes) -> Option<String> {
        workload.unavailable().next()?;
        let attributes = workload.clone().with_context(&self.agent);
        self.snapshot
            .explain(&attributes)
            .into_iter()
            .find_map(|(name, outcome)| match outcome {
                Err(denial) if denial.reason == DenialReason::AttributeUnavailable => Some(
                    format!("WorkloadIdentity {name:?} withheld: {}", denial.message),
                ),
                _ => None,
            })
    }

    fn tainted(&self) -> &TaintedAuthorities {
        &self.tainted
    }
}

/// Publishes the policy to the cache (as a [`PolicyView`]) and to the
/// Workload API and SDS (as the concrete [`AgentPolicy`]).
#[derive(Clone)]
pub struct PolicyStore {
    typed: watch::Sender<Option<Arc<AgentPolicy>>>,
    shared: watch::Sender<SharedPolicy>,
}

impl Default for PolicyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyStore {
    pub fn new() -> Self {
        Self {
            typed: watch::channel(None).0,
            shared: watch::channel(None).0,
        }
    }

    /// Makes `policy` the one in force.
    pub fn publish(&self, policy: Arc<AgentPolicy>) {
        // Typed first: when the cache publishes views built from the new
        // policy, the bundles a stream reads are already the new ones.
        self.typed.send_replace(Some(policy.clone()));
        self.shared
            .send_replace(Some(policy as Arc<dyn PolicyView>));
    }

    pub fn current(&self) -> Option<Arc<AgentPolicy>> {
        self.typed.borrow().clone()
    }

    /// The next generation number to use.
    pub fn next_generation(&self) -> u64 {
        self.current().map_or(1, |p| p.generation() + 1)
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<AgentPolicy>>> {
        self.typed.subscribe()
    }

    /// The receiver [`crate::cache::SvidCache::spawn`] takes.
    pub fn cache_receiver(&self) -> watch::Receiver<SharedPolicy> {
        self.shared.subscribe()
    }
}

/// Follows `WatchPolicy` until `shutdown`, reconnecting with backoff. Each
/// update is compiled and published; the issuer connection's trust bundle
/// follows the update too, so a CA rotation never breaks it.
pub async fn run_policy_watch(
    client: IssuerClient,
    store: PolicyStore,
    selector: Option<IdentitySelector>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut renewed = client.credential_changes();
    loop {
        let known = store.current().map_or(0, |p| p.issuer_version());
        renewed.mark_unchanged();
        let stream = tokio::select! {
            stream = client.watch_policy(known) => stream,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        // Deltas apply to what this stream sent; a new stream starts whole.
        let mut held = HeldDocument::default();
        match stream {
            Ok(mut stream) => loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = renewed.changed() => {
                        // Re-open on a connection authenticated with the
                        // new agent SVID; the issuer resends its state.
                        tracing::debug!("agent SVID renewed; reopening the policy stream");
                        backoff.reset();
                        break;
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                match message {
                    Ok(Some(update)) => {
                        backoff.reset();
                        match held.resolve(update) {
                            Ok(Some(update)) => {
                                apply_update(&client, &store, &update, selector.clone())
                            }
                            Ok(None) => {}
                            Err(error) => {
                                // Reopen: the issuer starts the new stream whole.
                                tracing::warn!(%error, "policy update not understood; reopening the stream");
                                break;
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::info!("the issuer closed the policy stream; reconnecting");
                        break;
                    }
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = %status.message(), "policy stream failed");
                        break;
                    }
                }
            },
            Err(error) => tracing::warn!(%error, "cannot watch the policy"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Compiles and publishes one update; a bad one is logged and the last good
/// policy stays in force.
pub fn apply_update(
    client: &IssuerClient,
    store: &PolicyStore,
    update: &PolicyUpdate,
    selector: Option<IdentitySelector>,
) {
    let agent = client.agent_context();
    match AgentPolicy::from_update(
        update,
        store.next_generation(),
        client.trust_domain(),
        agent,
        selector,
    ) {
        Ok(policy) => {
            if let Some(own) = policy.own_bundle() {
                client.set_trust_bundle(own.clone());
            }
            // The agent SVID is renewed early when its CA is tainted.
            client.set_tainted_authorities(policy.tainted());
            tracing::info!(
                version = update.version,
                bundle_sequence = update.bundle_sequence,
                identities = policy.snapshot().identity_names().count(),
                roles = policy.snapshot().role_names().count(),
                federated = policy.bundles().len().saturating_sub(1),
                tainted_x509 = policy.tainted().x509.len(),
                tainted_jwt = policy.tainted().jwt.len(),
                "policy applied"
            );
            store.publish(Arc::new(policy));
        }
        Err(error) => {
            tracing::error!(version = update.version, %error, "policy update rejected; keeping the previous policy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_policy::Field;
    use signet_proto::issuer::v1::NodeInfo;

    fn update(td: &str, policy: &str) -> PolicyUpdate {
        let trust_domain = TrustDomain::new("example.org").unwrap();
        let bundle = TrustBundle::new(trust_domain);
        PolicyUpdate {
            version: 7,
            trust_domain: td.into(),
            policy: policy.as_bytes().to_vec().into(),
            trust_bundle: bundle.to_spiffe_json().unwrap().into_bytes(),
            federated_bundles: Default::default(),
            bundle_sequence: 1,
            node: None,
            tainted_x509_authorities: Vec::new(),
            tainted_jwt_authorities: Vec::new(),
            delta: None,
            partial: false,
        }
    }

    fn agent() -> AgentContext {
        AgentContext {
            name: "vm-1".into(),
            node_name: None,
            node: None,
        }
    }

    const POLICY: &str = r#"{
      "workloadIdentities": [{
        "apiVersion": "signet.dev/v1alpha1", "kind": "WorkloadIdentity",
        "metadata": {"name": "svc"},
        "spec": {"spiffe": {"id": "/agent/{{ agent.name }}/uid/{{ workload.unix.uid }}"}}
      }],
      "roles": [{
        "apiVersion": "signet.dev/v1alpha1", "kind": "Role",
        "metadata": {"name": "all"},
        "spec": {"subjects": [{"kind": "Agent", "name": "vm-*"}],
                 "allow": {"workloadIdentityLabels": {"*": ["*"]}, "spiffe": [{"path": "/*"}]}}
      }]
    }"#;

    #[test]
    fn agent_attributes_come_from_the_agent_not_the_workload() {
        let td = TrustDomain::new("example.org").unwrap();
        let policy =
            AgentPolicy::from_update(&update("example.org", POLICY), 1, &td, agent(), None)
                .unwrap();
        let mut workload = Attributes::default();
        workload.set(Field::UnixUid, "1000");
        workload.set(Field::AgentName, "forged");
        let desired = policy.desired_identities(&workload);
        assert_eq!(desired.len(), 1, "{desired:?}");
        assert_eq!(
            desired[0].spiffe_id.as_str(),
            "spiffe://example.org/agent/vm-1/uid/1000"
        );
        // A different rendering changes the fingerprint.
        let mut other = workload.clone();
        other.set(Field::UnixUid, "1001");
        assert_ne!(
            policy.desired_identities(&other)[0].fingerprint,
            desired[0].fingerprint
        );
    }

    #[test]
    fn selector_restricts_identities() {
        let td = TrustDomain::new("example.org").unwrap();
        let selector = IdentitySelector::name("other").unwrap();
        let policy = AgentPolicy::from_update(
            &update("example.org", POLICY),
            1,
            &td,
            agent(),
            Some(selector),
        )
        .unwrap();
        let mut workload = Attributes::default();
        workload.set(Field::UnixUid, "1000");
        assert!(policy.desired_identities(&workload).is_empty());
    }

    #[test]
    fn a_bad_federated_bundle_is_left_out() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut update = update("example.org", POLICY);
        update
            .federated_bundles
            .insert("partner.org".into(), b"not json".to_vec());
        let partner = TrustBundle::new(TrustDomain::new("other.org").unwrap());
        update.federated_bundles.insert(
            "other.org".into(),
            partner.to_spiffe_json().unwrap().into_bytes(),
        );
        let policy = AgentPolicy::from_update(&update, 1, &td, agent(), None).unwrap();
        let tds: Vec<&str> = policy
            .bundles()
            .iter()
            .map(|b| b.trust_domain.as_str())
            .collect();
        assert_eq!(tds, vec!["example.org", "other.org"]);
    }

    #[test]
    fn tainted_authorities_come_from_the_update() {
        let td = TrustDomain::new("example.org").unwrap();
        let mut tainting = update("example.org", POLICY);
        tainting.tainted_x509_authorities = vec!["ABCD01".into(), String::new()];
        tainting.tainted_jwt_authorities = vec!["Kid-1".into()];
        let policy = AgentPolicy::from_update(&tainting, 1, &td, agent(), None).unwrap();
        let tainted = PolicyView::tainted(&policy);
        assert_eq!(tainted.x509, BTreeSet::from(["abcd01".to_owned()]));
        assert!(
            tainted.x509_tainted("AbCd01"),
            "hex compares case-insensitively"
        );
        assert!(tainted.jwt_tainted("Kid-1"));
        assert!(!tainted.jwt_tainted("kid-1"), "a kid is compared exactly");
        let untainted =
            AgentPolicy::from_update(&update("example.org", POLICY), 2, &td, agent(), None)
                .unwrap();
        assert!(PolicyView::tainted(&untainted).is_empty());
    }

    #[test]
    fn wrong_trust_domain_or_bad_document_is_rejected() {
        let td = TrustDomain::new("example.org").unwrap();
        assert!(matches!(
            AgentPolicy::from_update(&update("evil.org", POLICY), 1, &td, agent(), None),
            Err(PolicyError::TrustDomainMismatch { .. })
        ));
        assert!(matches!(
            AgentPolicy::from_update(&update("example.org", "{"), 1, &td, agent(), None),
            Err(PolicyError::Document(_))
        ));
    }

    #[test]
    fn node_subjects_apply_only_with_the_issuers_word_about_the_node() {
        let td = TrustDomain::new("example.org").unwrap();
        let policy = POLICY.replace(
            r#"[{"kind": "Agent", "name": "vm-*"}]"#,
            r#"[{"kind": "Node", "selector": {"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["dmz"]}]}}]"#,
        );
        let mut workload = Attributes::default();
        workload.set(Field::UnixUid, "1000");
        // Forged node facts from the workload side count for nothing.
        workload.set(Field::NodeName, "n1");
        let evaluate = |node: Option<NodeInfo>| {
            let mut update = update("example.org", &policy);
            update.node = node;
            AgentPolicy::from_update(&update, 1, &td, agent(), None)
                .unwrap()
                .desired_identities(&workload)
                .len()
        };
        assert_eq!(
            evaluate(None),
            0,
            "no Node known: a negative selector must not match"
        );
        let node = |pool: &str| NodeInfo {
            name: "n1".into(),
            labels: [("pool".to_owned(), pool.to_owned())].into(),
        };
        assert_eq!(evaluate(Some(node("web"))), 1);
        assert_eq!(evaluate(Some(node("dmz"))), 0);
    }

    fn identity_json(name: &str, ttl: &str) -> bytes::Bytes {
        let yaml = format!(
            "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: {name}}}\nspec:\n  rules:\n    allow:\n      - conditions: [{{attribute: workload.unix.uid, eq: \"1000\"}}]\n  spiffe:\n    id: /{name}\n    x509: {{ttl: {ttl}}}\n"
        );
        let document = crate::testing::document_from_yaml(&yaml);
        serde_json::to_vec(&document.workload_identities[0])
            .unwrap()
            .into()
    }

    #[test]
    fn a_delta_applies_to_the_document_of_its_base_version_only() {
        let whole = |objects: &[bytes::Bytes]| {
            let identities: Vec<serde_json::Value> = objects
                .iter()
                .map(|json| serde_json::from_slice(json).unwrap())
                .collect();
            serde_json::to_string(
                &serde_json::json!({"workloadIdentities": identities, "roles": []}),
            )
            .unwrap()
        };
        let mut held = HeldDocument::default();
        let mut first = update(
            "example.org",
            &whole(&[identity_json("a", "1h"), identity_json("b", "1h")]),
        );
        first.version = 1;
        held.resolve(first).unwrap().unwrap();

        let mut change = update("example.org", "");
        change.version = 2;
        change.delta = Some(signet_proto::issuer::v1::PolicyDelta {
            base_version: 1,
            workload_identities: vec![identity_json("c", "1h"), identity_json("b", "30m")],
            removed_workload_identities: vec!["a".into()],
            ..Default::default()
        });
        let resolved = held.resolve(change.clone()).unwrap().unwrap();
        assert!(resolved.delta.is_none());
        let expected = whole(&[identity_json("b", "30m"), identity_json("c", "1h")]);
        let got: serde_json::Value = serde_json::from_slice(&resolved.policy).unwrap();
        assert_eq!(
            got,
            serde_json::from_str::<serde_json::Value>(&expected).unwrap()
        );
        // It compiles like the whole document would.
        let td = TrustDomain::new("example.org").unwrap();
        let policy = AgentPolicy::from_update(&resolved, 1, &td, agent(), None).unwrap();
        assert_eq!(
            policy.snapshot().identity_names().collect::<Vec<_>>(),
            ["b", "c"]
        );
        // The same delta again does not apply to version 2.
        let error = held.resolve(change).unwrap_err();
        assert!(
            matches!(
                error,
                PolicyError::DeltaBase {
                    base: 1,
                    held: Some(2)
                }
            ),
            "{error}"
        );
        // Nor to a fresh stream's empty document.
        let mut fresh = HeldDocument::default();
        let mut late = update("example.org", "");
        late.delta = Some(signet_proto::issuer::v1::PolicyDelta {
            base_version: 2,
            ..Default::default()
        });
        assert!(fresh.resolve(late).is_err());
    }

    #[test]
    fn a_whole_policy_in_parts_is_applied_once_complete() {
        let part = |base_version, partial, names: &[&str]| {
            let mut update = update("example.org", "");
            update.version = 5;
            update.partial = partial;
            update.delta = Some(signet_proto::issuer::v1::PolicyDelta {
                base_version,
                workload_identities: names.iter().map(|n| identity_json(n, "1h")).collect(),
                ..Default::default()
            });
            update
        };
        let mut held = HeldDocument::default();
        assert!(held.resolve(part(0, true, &["a", "b"])).unwrap().is_none());
        assert!(held.resolve(part(5, true, &["c"])).unwrap().is_none());
        let last = held.resolve(part(5, false, &["d"])).unwrap().unwrap();
        let td = TrustDomain::new("example.org").unwrap();
        let policy = AgentPolicy::from_update(&last, 1, &td, agent(), None).unwrap();
        assert_eq!(
            policy.snapshot().identity_names().collect::<Vec<_>>(),
            ["a", "b", "c", "d"]
        );
        // A new whole policy in parts starts from nothing, not from what
        // is held.
        assert!(held.resolve(part(0, true, &["x"])).unwrap().is_none());
        let again = held.resolve(part(5, false, &[])).unwrap().unwrap();
        let policy = AgentPolicy::from_update(&again, 2, &td, agent(), None).unwrap();
        assert_eq!(
            policy.snapshot().identity_names().collect::<Vec<_>>(),
            ["x"]
        );
        // A part that is not the first cannot start a stream.
        let mut fresh = HeldDocument::default();
        assert!(fresh.resolve(part(5, true, &["c"])).is_err());
    }
}
