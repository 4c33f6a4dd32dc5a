//! The policy in force on this node: compiled from the issuer's
//! `WatchPolicy` stream, evaluated locally to know which identities each
//! workload should hold, and carrying the trust bundles the Workload API and
//! SDS hand out.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::{BundleSet, TrustBundle, TrustDomain};
use signet_policy::{IdentitySelector, IssuableIdentity, PolicyDocument, PolicySnapshot};
use signet_proto::issuer::v1::PolicyUpdate;
use tokio::sync::watch;

use crate::attest::Attributes;
use crate::backoff::Backoff;
use crate::cache::{DesiredIdentity, PolicyView, SharedPolicy};
use crate::issuer_client::IssuerClient;

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
}

/// Who this agent is, as policy sees it (`agent.name`, `agent.node_name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentAttributes {
    pub name: String,
    pub node_name: Option<String>,
}

/// One compiled policy with its bundles; immutable, shared by `Arc`.
#[derive(Debug)]
pub struct AgentPolicy {
    /// Local counter, bumped on every update applied (policy or bundle), so
    /// every change reaches the cache and the streams.
    generation: u64,
    snapshot: PolicySnapshot,
    bundles: Arc<BundleSet>,
    agent: AgentAttributes,
    selector: Option<IdentitySelector>,
}

impl AgentPolicy {
    pub fn new(
        generation: u64,
        snapshot: PolicySnapshot,
        bundles: BundleSet,
        agent: AgentAttributes,
        selector: Option<IdentitySelector>,
    ) -> Self {
        Self {
            generation,
            snapshot,
            bundles: Arc::new(bundles),
            agent,
            selector,
        }
    }

    /// Compiles a `PolicyUpdate`. Objects that fail to compile are logged and
    /// left out (the issuer compiled the same document and rejected them too).
    pub fn from_update(
        update: &PolicyUpdate,
        generation: u64,
        expected: &TrustDomain,
        agent: AgentAttributes,
        selector: Option<IdentitySelector>,
    ) -> Result<Self, PolicyError> {
        if update.trust_domain != expected.as_str() {
            return Err(PolicyError::TrustDomainMismatch {
                expected: expected.clone(),
                got: update.trust_domain.clone(),
            });
        }
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
        Ok(Self::new(generation, snapshot, bundles, agent, selector))
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

    pub fn agent(&self) -> &AgentAttributes {
        &self.agent
    }

    /// The attributes policy sees for a workload: the attested ones plus
    /// `agent.*` (never taken from the workload side).
    pub fn policy_attributes(&self, workload: &Attributes) -> Option<signet_policy::Attributes> {
        let mut map: BTreeMap<String, String> = workload
            .iter()
            .filter(|(name, _)| !name.starts_with("agent."))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        map.insert("agent.name".into(), self.agent.name.clone());
        if let Some(node) = &self.agent.node_name {
            map.insert("agent.node_name".into(), node.clone());
        }
        match signet_policy::Attributes::try_from(map) {
            Ok(attributes) => Some(attributes),
            Err(error) => {
                tracing::warn!(%error, "workload attributes rejected by the policy engine");
                None
            }
        }
    }

    /// Identities the workload may hold here, default first, restricted by
    /// the configured selector.
    pub fn identities(&self, workload: &Attributes) -> Vec<IssuableIdentity> {
        let Some(attributes) = self.policy_attributes(workload) else {
            return Vec::new();
        };
        match &self.selector {
            Some(selector) => self.snapshot.evaluate_selected(&attributes, selector),
            None => self.snapshot.evaluate(&attributes),
        }
    }

    /// Foreign trust domains whose bundles the workload receives: those any
    /// of its identities federates with, when a bundle is known.
    pub fn federated_for(&self, identities: &[IssuableIdentity]) -> BTreeSet<TrustDomain> {
        identities
            .iter()
            .flat_map(|identity| identity.federates_with.iter())
            .filter(|td| *td != self.trust_domain() && self.bundles.get(td).is_some())
            .cloned()
            .collect()
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
            })
            .collect()
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
                        apply_update(&client, &store, &update, selector.clone());
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
    let agent = client.agent_attributes();
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
            tracing::info!(
                version = update.version,
                bundle_sequence = update.bundle_sequence,
                identities = policy.snapshot().identity_names().count(),
                roles = policy.snapshot().role_names().count(),
                federated = policy.bundles().len().saturating_sub(1),
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

    fn update(td: &str, policy: &str) -> PolicyUpdate {
        let trust_domain = TrustDomain::new("example.org").unwrap();
        let bundle = TrustBundle::new(trust_domain);
        PolicyUpdate {
            version: 7,
            trust_domain: td.into(),
            policy: policy.as_bytes().to_vec(),
            trust_bundle: bundle.to_spiffe_json().unwrap().into_bytes(),
            federated_bundles: Default::default(),
            bundle_sequence: 1,
            node: None,
        }
    }

    fn agent() -> AgentAttributes {
        AgentAttributes {
            name: "vm-1".into(),
            node_name: None,
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
        workload.insert("workload.unix.uid", "1000");
        workload.insert("agent.name", "forged");
        let desired = policy.desired_identities(&workload);
        assert_eq!(desired.len(), 1, "{desired:?}");
        assert_eq!(
            desired[0].spiffe_id.as_str(),
            "spiffe://example.org/agent/vm-1/uid/1000"
        );
        // A different rendering changes the fingerprint.
        let mut other = workload.clone();
        other.insert("workload.unix.uid", "1001");
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
        workload.insert("workload.unix.uid", "1000");
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
}
