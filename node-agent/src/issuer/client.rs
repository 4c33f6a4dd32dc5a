//! The agent's side of the issuer API: joining (and re-using a persisted
//! agent SVID across restarts), renewing the agent SVID at half-life (or
//! early, when the CA that signed it is tainted), watching the policy, and
//! signing workload SVIDs for the cache.
//!
//! The issuer is authenticated by its SVID (`spiffe://<td>/signet/issuer`)
//! against the bootstrap bundle and, once known, the bundle the issuer
//! itself ships, kept current in a [`SharedBundles`] so that CA rotation
//! never breaks the connection. Every SVID the issuer returns is verified
//! before use: it must chain to the current bundle, name a member of the
//! trust domain and carry exactly the key of the CSR it answers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use signet_identity::x509::{certs_from_pem, certs_to_pem};
use signet_identity::{BundleSet, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_policy::AgentContext;
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient as GrpcIssuer;
use signet_proto::issuer_protocol;
use signet_runtime::clock::Clock;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeServerVerifier, SvidResolver};
use tokio::sync::watch;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::checks::check_agent_svid;
use super::pod_tokens::PodTokens;
use crate::backoff::{Backoff, jitter, uniform};
use crate::cache::{TaintedAuthorities, x509_authority};
use crate::metrics::Metrics;

/// File in `state_dir` holding the agent SVID, its key and the last bundle.
pub const AGENT_STATE_FILE: &str = "agent.json";
const STATE_VERSION: u32 = 1;
/// Gives up on one issuer call after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("issuer call {call} failed: {code:?}: {message}")]
    Call {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("the issuer returned an invalid agent SVID: {0}")]
    InvalidAgentSvid(String),
    #[error("no valid agent SVID in {state_dir} and no join credential configured")]
    NoCredential { state_dir: PathBuf },
    #[error("agent state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("key generation: {0}")]
    Key(String),
    #[error("the agent has not joined yet")]
    NotJoined,
}

impl IssuerError {
    fn call(call: &'static str, status: tonic::Status) -> Self {
        Self::Call {
            call,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// What the client needs to know.
#[derive(Clone, Debug)]
pub struct IssuerClientConfig {
    /// `host:port` of the issuer.
    pub address: String,
    pub trust_domain: TrustDomain,
    pub state_dir: PathBuf,
    pub join_token: Option<String>,
    /// In a cluster: the projected service-account token file, read at
    /// every join (the kubelet rotates it). Used when no join token is set.
    pub service_account_token_path: Option<PathBuf>,
    pub node_name: Option<String>,
}

impl IssuerClientConfig {
    fn can_join(&self) -> bool {
        self.join_token.is_some() || self.service_account_token_path.is_some()
    }
}

/// The agent's own credential.
struct AgentCredential {
    name: String,
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: Zeroizing<Vec<u8>>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// Key identifier (lowercase hex) of the CA that signed the leaf.
    authority: Option<String>,
}

impl AgentCredential {
    fn signed_by_tainted(&self, tainted: &TaintedAuthorities) -> bool {
        self.authority
            .as_deref()
            .is_some_and(|id| tainted.x509_tainted(id))
    }

    fn leaf(&self) -> Option<&[u8]> {
        self.chain.first().map(AsRef::as_ref)
    }
}

/// The persisted form of [`AgentCredential`] plus the bundle it chains to.
#[derive(Serialize, Deserialize)]
struct StoredState {
    version: u32,
    agent_name: String,
    spiffe_id: String,
    cert_chain_pem: String,
    private_key_pem: String,
    /// SPIFFE bundle JSON of the own trust domain.
    trust_bundle: String,
}

struct Inner {
    config: IssuerClientConfig,
    bundles: SharedBundles,
    resolver: Arc<SvidResolver>,
    /// mTLS with the agent SVID in `resolver`. Replaced by a fresh (lazy)
    /// channel whenever the SVID changes, so calls never ride a connection
    /// authenticated with an SVID that may since have expired.
    mtls: RwLock<Channel>,
    mtls_config: Arc<rustls::ClientConfig>,
    /// Bumped on every new agent SVID; long-lived streams reconnect on it.
    credential_changes: watch::Sender<u64>,
    /// Server-authenticated TLS only, for Join.
    anonymous: Channel,
    credential: RwLock<Option<Arc<AgentCredential>>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Pods' service-account tokens, attached to requests for those pods.
    pod_tokens: PodTokens,
    /// The own trust domain's tainted authorities, from the policy stream;
    /// the renewal loop follows them.
    tainted: watch::Sender<TaintedAuthorities>,
}

/// Cheap-to-clone handle on the issuer connection.
#[derive(Clone)]
pub struct IssuerClient {
    inner: Arc<Inner>,
}

/// The SPIFFE ID the issuer's server certificate must carry.
pub fn issuer_spiffe_id(trust_domain: &TrustDomain) -> Result<SpiffeId, IssuerError> {
    SpiffeId::from_path(trust_domain, issuer_protocol::ISSUER_PATH)
        .map_err(|e| IssuerError::Tls(format!("issuer SPIFFE ID: {e}")))
}

impl IssuerClient {
    /// Sets up the (lazy) connections. `bootstrap` is the PEM bundle the
    /// operator published, trusted until the issuer sends its own.
    pub fn new(
        config: IssuerClientConfig,
        bootstrap: TrustBundle,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, IssuerError> {
        let mut set = BundleSet::new();
        set.insert(bootstrap);
        let bundles = SharedBundles::new(set);
        let issuer_id = issuer_spiffe_id(&config.trust_domain)?;
        let verifier = Arc::new(SpiffeServerVerifier::new(
            bundles.clone(),
            PeerPolicy::OneOf(vec![issuer_id]),
        ));
        let resolver = Arc::new(SvidResolver::new());
        let tls = |resolver: Option<Arc<SvidResolver>>| {
            signet_tls::client_config(resolver, verifier.clone())
                .map(Arc::new)
                .map_err(|e| IssuerError::Tls(e.to_string()))
        };
        let mtls_config = tls(Some(resolver.clone()))?;
        let mtls = signet_tls::connect_channel(&config.address, mtls_config.clone())
            .map_err(|e| IssuerError::Tls(e.to_string()))?;
        let anonymous = signet_tls::connect_channel(&config.address, tls(None)?)
            .map_err(|e| IssuerError::Tls(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                bundles,
                resolver,
                mtls: RwLock::new(mtls),
                mtls_config,
                credential_changes: watch::channel(0).0,
                anonymous,
                credential: RwLock::new(None),
                clock,
                metrics,
                pod_tokens: PodTokens::new(),
                tainted: watch::channel(TaintedAuthorities::default()).0,
            }),
        })
    }

    /// Reads the bootstrap bundle file (PEM X.509 authorities).
    pub fn read_bootstrap_bundle(
        path: &Path,
        trust_domain: &TrustDomain,
    ) -> Result<TrustBundle, IssuerError> {
        let state = |reason: String| IssuerError::State {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| state(e.to_string()))?;
        let bundle = TrustBundle::from_x509_pem(trust_domain.clone(), &pem)
            .map_err(|e| state(e.to_string()))?;
        if bundle.x509_authorities.is_empty() {
            return Err(state("no CERTIFICATE block".into()));
        }
        Ok(bundle)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.config.trust_domain
    }

    /// The pod tokens attached to requests for pods (filled by the
    /// delegated API).
    pub fn pod_tokens(&self) -> &PodTokens {
        &self.inner.pod_tokens
    }

    /// `agent.name` / `agent.node_name` for local policy evaluation (the
    /// Node's facts come with the policy).
    pub fn agent_context(&self) -> AgentContext {
        AgentContext {
            name: self
                .credential()
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            node_name: self
                .inner
                .config
                .node_name
                .clone()
                .filter(|name| !name.is_empty()),
            node: None,
        }
    }

    /// The agent's SPIFFE ID and expiry, once joined.
    pub fn agent_svid(&self) -> Option<(SpiffeId, SystemTime)> {
        self.credential()
            .map(|c| (c.spiffe_id.clone(), c.not_after))
    }

    /// Replaces the bundle that issuer certificates (TLS and SVIDs) must
    /// chain to.
    pub fn set_trust_bundle(&self, bundle: TrustBundle) {
        if bundle.x509_authorities.is_empty() {
            tracing::warn!("ignoring an empty trust bundle from the issuer");
            return;
        }
        let mut set = BundleSet::new();
        set.insert(bundle);
        self.inner.bundles.replace(set);
    }

    /// Replaces the tainted authorities the agent SVID is checked against;
    /// the renewal loop hears only of actual changes.
    pub fn set_tainted_authorities(&self, tainted: &TaintedAuthorities) {
        self.inner.tainted.send_if_modified(|current| {
            if current == tainted {
                false
            } else {
                current.clone_from(tainted);
                true
            }
        });
    }

    fn credential(&self) -> Option<Arc<AgentCredential>> {
        match self.inner.credential.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.inner.config.state_dir.join(AGENT_STATE_FILE)
    }

    /// Makes sure the agent holds a valid SVID: the persisted one while it
    /// is valid (a single-use join token is never needed twice), otherwise a
    /// new one from `Join`.
    pub async fn ensure_identity(&self) -> Result<(), IssuerError> {
        match self.load_state() {
            Ok(Some(())) => return Ok(()),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "ignoring the stored agent SVID"),
        }
        self.join().await
    }

    /// Loads the persisted credential if it is still valid for at least a
    /// minute and chains to a trusted bundle.
    fn load_state(&self) -> Result<Option<()>, IssuerError> {
        let path = self.state_path();
        let error = |reason: String| IssuerError::State {
            path: path.clone(),
            reason,
        };
        let Some(bytes) =
            signet_runtime::files::read_optional(&path).map_err(|e| error(e.to_string()))?
        else {
            return Ok(None);
        };
        let stored: StoredState =
            serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))?;
        if stored.version != STATE_VERSION {
            return Err(error(format!("unknown version {}", stored.version)));
        }
        let td = self.trust_domain().clone();
        let stored_bundle =
            TrustBundle::from_spiffe_json(td.clone(), stored.trust_bundle.as_bytes())
                .map_err(|e| error(e.to_string()))?;
        // Trust both the operator's bootstrap file and the last bundle the
        // issuer sent: either may be the newer one after a restart.
        let mut trusted = self
            .inner
            .bundles
            .current()
            .get(&td)
            .cloned()
            .unwrap_or_else(|| TrustBundle::new(td.clone()));
        for cert in &stored_bundle.x509_authorities {
            if !trusted.x509_authorities.contains(cert) {
                trusted.x509_authorities.push(cert.clone());
            }
        }
        let chain = certs_from_pem(&stored.cert_chain_pem).map_err(|e| error(e.to_string()))?;
        let key = PrivateKey::from_pkcs8_pem(&stored.private_key_pem)
            .map_err(|e| error(e.to_string()))?;
        let now = self.inner.clock.now();
        let credential = match check_agent_svid(&chain, &key, &trusted, &td, now) {
            Ok(checked) => checked,
            Err(reason) => {
                tracing::info!(%reason, "the stored agent SVID cannot be used");
                return Ok(None);
            }
        };
        if credential.1 <= now + Duration::from_secs(60) {
            tracing::info!("the stored agent SVID has expired");
            return Ok(None);
        }
        let mut set = BundleSet::new();
        set.insert(trusted);
        self.inner.bundles.replace(set);
        self.install(AgentCredential {
            name: stored.agent_name,
            spiffe_id: credential.0,
            authority: chain.first().and_then(|leaf| x509_authority(leaf)),
            chain,
            key: key.to_pkcs8_der(),
            not_before: credential.2,
            not_after: credential.1,
        })?;
        tracing::info!(path = %path.display(), "using the stored agent SVID");
        Ok(Some(()))
    }

    fn install(&self, credential: AgentCredential) -> Result<(), IssuerError> {
        self.inner
            .resolver
            .set(credential.chain.clone(), &credential.key)
            .map_err(|e| IssuerError::Tls(e.to_string()))?;
        let credential = Arc::new(credential);
        match self.inner.credential.write() {
            Ok(mut guard) => *guard = Some(credential),
            Err(poisoned) => *poisoned.into_inner() = Some(credential),
        }
        match signet_tls::connect_channel(
            &self.inner.config.address,
            self.inner.mtls_config.clone(),
        ) {
            Ok(channel) => match self.inner.mtls.write() {
                Ok(mut guard) => *guard = channel,
                Err(poisoned) => *poisoned.into_inner() = channel,
            },
            Err(error) => tracing::warn!(%error, "keeping the previous issuer channel"),
        }
        self.inner.credential_changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Changes whenever the agent gets a new SVID.
    pub fn credential_changes(&self) -> watch::Receiver<u64> {
        self.inner.credential_changes.subscribe()
    }

    fn join_credential(&self) -> Result<pb::join_request::Credential, IssuerError> {
        let config = &self.inner.config;
        if let Some(token) = &config.join_token {
            return Ok(pb::join_request::Credential::JoinToken(token.clone()));
        }
        if let Some(path) = &config.service_account_token_path {
            let token = std::fs::read_to_string(path).map_err(|e| IssuerError::State {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            return Ok(pb::join_request::Credential::ServiceAccountToken(
                token.trim().to_owned(),
            ));
        }
        Err(IssuerError::NoCredential {
            state_dir: config.state_dir.clone(),
        })
    }

    /// Exchanges the join credential (join token or service-account token)
    /// for an agent SVID.
    pub async fn join(&self) -> Result<(), IssuerError> {
        let credential = self.join_credential()?;
        let key =
            PrivateKey::generate(KeyType::EcP256).map_err(|e| IssuerError::Key(e.to_string()))?;
        let csr =
            signet_identity::x509::create_csr(&key).map_err(|e| IssuerError::Key(e.to_string()))?;
        let request = pb::JoinRequest {
            credential: Some(credential),
            csr,
            node_name: self.inner.config.node_name.clone().unwrap_or_default(),
        };
        let mut client = GrpcIssuer::new(self.inner.anonymous.clone());
        let response = with_timeout(client.join(request))
            .await
            .map_err(|status| IssuerError::call("Join", status))?
            .into_inner();
        self.accept_agent_svid(response, key)?;
        tracing::info!(
            agent = %self.agent_context().name,
            "joined the issuer"
        );
        Ok(())
    }

    /// Renews the agent SVID for a new key over mTLS.
    pub async fn renew(&self) -> Result<(), IssuerError> {
        if self.credential().is_none() {
            return Err(IssuerError::NotJoined);
        }
        let key =
            PrivateKey::generate(KeyType::EcP256).map_err(|e| IssuerError::Key(e.to_string()))?;
        let csr =
            signet_identity::x509::create_csr(&key).map_err(|e| IssuerError::Key(e.to_string()))?;
        let mut client = GrpcIssuer::new(self.inner.mtls());
        let response = with_timeout(client.renew_agent(pb::RenewAgentRequest { csr }))
            .await
            .map_err(|status| IssuerError::call("RenewAgent", status))?
            .into_inner();
        self.accept_agent_svid(response, key)?;
        tracing::info!("renewed the agent SVID");
        Ok(())
    }

    fn accept_agent_svid(&self, svid: pb::AgentSvid, key: PrivateKey) -> Result<(), IssuerError> {
        let td = self.trust_domain().clone();
        let invalid = |reason: String| IssuerError::InvalidAgentSvid(reason);
        let bundle = if svid.trust_bundle.is_empty() {
            self.inner
                .bundles
                .current()
                .get(&td)
                .cloned()
                .ok_or_else(|| invalid("no trust bundle".into()))?
        } else {
            TrustBundle::from_spiffe_json(td.clone(), &svid.trust_bundle)
                .map_err(|e| invalid(format!("trust bundle: {e}")))?
        };
        let chain: Vec<CertificateDer<'static>> = svid
            .cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let now = self.inner.clock.now();
        let (spiffe_id, not_after, not_before) =
            check_agent_svid(&chain, &key, &bundle, &td, now).map_err(invalid)?;
        if !svid.spiffe_id.is_empty() && svid.spiffe_id != spiffe_id.as_str() {
            return Err(invalid(format!(
                "the response names {} but the certificate {spiffe_id}",
                svid.spiffe_id
            )));
        }
        let name = if svid.agent_name.is_empty() {
            spiffe_id
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        } else {
            svid.agent_name
        };
        let stored = StoredState {
            version: STATE_VERSION,
            agent_name: name.clone(),
            spiffe_id: spiffe_id.to_string(),
            cert_chain_pem: certs_to_pem(&chain),
            private_key_pem: key.to_pkcs8_pem().to_string(),
            trust_bundle: bundle
                .to_spiffe_json()
                .map_err(|e| invalid(format!("trust bundle: {e}")))?,
        };
        self.persist(&stored)?;
        self.set_trust_bundle(bundle);
        self.install(AgentCredential {
            name,
            spiffe_id,
            authority: chain.first().and_then(|leaf| x509_authority(leaf)),
            chain,
            key: key.to_pkcs8_der(),
            not_before,
            not_after,
        })
    }

    fn persist(&self, stored: &StoredState) -> Result<(), IssuerError> {
        let path = self.state_path();
        let error = |reason: String| IssuerError::State {
            path: path.clone(),
            reason,
        };
        signet_runtime::files::ensure_private_dir(&self.inner.config.state_dir, 0o700)
            .map_err(|e| error(e.to_string()))?;
        let json = Zeroizing::new(serde_json::to_vec(stored).map_err(|e| error(e.to_string()))?);
        signet_runtime::files::write_atomic(&path, &json, 0o600).map_err(|e| error(e.to_string()))
    }

    /// Renews the agent SVID at half-life (±10 %) until `shutdown`; after a
    /// failure retries with backoff, and re-joins once the SVID has expired
    /// if a join token is configured. When the CA that signed the SVID is
    /// tainted, it is renewed at a random point of `taint_reissue_window`
    /// instead, if that comes first.
    pub async fn run_renewal(
        self,
        taint_reissue_window: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut retry_at: Option<SystemTime> = None;
        let mut tainted = self.inner.tainted.subscribe();
        // A taint learnt before the loop started applies to the SVID in hand.
        tainted.mark_changed();
        let mut taint_open = true;
        let mut taint = AgentTaint::default();
        loop {
            let clock = self.inner.clock;
            let credential = self.credential();
            let due = match (&credential, retry_at) {
                (_, Some(at)) => at,
                (Some(credential), None) => {
                    let lifetime = credential
                        .not_after
                        .duration_since(credential.not_before)
                        .unwrap_or(Duration::ZERO);
                    credential.not_before + jitter(lifetime / 2, 0.2)
                }
                (None, None) => clock.now(),
            };
            let due = taint.due.map_or(due, |early| early.min(due));
            tokio::select! {
                () = tokio::time::sleep_until(clock.instant_at(due)) => {}
                changed = tainted.changed(), if taint_open => {
                    if changed.is_err() {
                        taint_open = false;
                    } else if let Some(credential) = &credential {
                        let set = tainted.borrow_and_update().clone();
                        if taint.taint_changed(
                            credential,
                            &set,
                            retry_at.is_some(),
                            clock.now(),
                            taint_reissue_window,
                        ) {
                            self.metrics().taint_reissues(1);
                        }
                    }
                    continue;
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            taint.due = None;
            let expired = self.credential().is_none_or(|c| c.not_after <= clock.now());
            let result = if expired && self.inner.config.can_join() {
                self.join().await
            } else {
                self.renew().await
            };
            match result {
                Ok(()) => {
                    backoff.reset();
                    retry_at = None;
                    if let Some(credential) = self.credential() {
                        let set = tainted.borrow().clone();
                        taint.renewed(&credential, &set);
                    }
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?delay, "agent SVID renewal failed");
                    retry_at = Some(clock.now() + delay);
                }
            }
        }
    }

    /// Opens the policy stream.
    pub async fn watch_policy(
        &self,
        known_version: u64,
    ) -> Result<tonic::Streaming<pb::PolicyUpdate>, IssuerError> {
        let mut client = GrpcIssuer::new(self.inner.mtls());
        client
            .watch_policy(pb::WatchPolicyRequest {
                known_version,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                accepts_policy_deltas: true,
                accepts_policy_parts: true,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| IssuerError::call("WatchPolicy", status))
    }

    /// Opens the stream of the pods bound to this agent's node.
    pub async fn watch_node_pods(
        &self,
    ) -> Result<tonic::Streaming<pb::NodePodsUpdate>, IssuerError> {
        let mut client = GrpcIssuer::new(self.inner.mtls());
        client
            .watch_node_pods(pb::WatchNodePodsRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| IssuerError::call("WatchNodePods", status))
    }

    pub(crate) fn mtls_channel(&self) -> Channel {
        self.inner.mtls()
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn clock(&self) -> Clock {
        self.inner.clock
    }
}

/// Early renewal of the agent SVID when the CA that signed it is tainted.
#[derive(Default)]
struct AgentTaint {
    /// Leaf certificate of the SVID whose taint was acted on: renewed early
    /// once, or received already signed by a tainted CA (renewing it early
    /// again would loop for as long as the issuer signs with that CA).
    handled: Option<Vec<u8>>,
    /// When to renew early.
    due: Option<SystemTime>,
    /// Tainted CAs the issuer was seen still signing with (warned once).
    warned: BTreeSet<String>,
}

impl AgentTaint {
    fn is_handled(&self, credential: &AgentCredential) -> bool {
        self.handled.is_some() && self.handled.as_deref() == credential.leaf()
    }

    /// The tainted authorities changed: schedules an early renewal when the
    /// CA of `credential` is tainted and this was not acted on yet; one
    /// already retrying under backoff is left to that. Returns whether a
    /// renewal was scheduled.
    fn taint_changed(
        &mut self,
        credential: &AgentCredential,
        tainted: &TaintedAuthorities,
        retrying: bool,
        now: SystemTime,
        window: Duration,
    ) -> bool {
        if self.is_handled(credential) || !credential.signed_by_tainted(tainted) {
            return false;
        }
        self.handled = credential.leaf().map(<[u8]>::to_vec);
        if retrying {
            return false;
        }
        let delay = uniform(window);
        self.due = Some(now + delay);
        tracing::info!(
            authority = credential.authority.as_deref().unwrap_or_default(),
            renew_in = ?delay,
            "the agent SVID was signed by a tainted authority; renewing it"
        );
        true
    }

    /// A new SVID arrived. One still signed by a tainted CA waits for its
    /// normal renewal.
    fn renewed(&mut self, credential: &AgentCredential, tainted: &TaintedAuthorities) {
        self.due = None;
        if !credential.signed_by_tainted(tainted) {
            return;
        }
        self.handled = credential.leaf().map(<[u8]>::to_vec);
        if let Some(id) = &credential.authority
            && self.warned.insert(id.clone())
        {
            tracing::warn!(
                authority = %id,
                "the issuer still signs agent SVIDs with a tainted X.509 authority"
            );
        }
    }
}

pub(crate) async fn with_timeout<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(tonic::Status::deadline_exceeded(
            "the issuer did not answer in time",
        )),
    }
}

impl Inner {
    fn mtls(&self) -> Channel {
        match self.mtls.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl IssuerClient {
    /// The bundles issuer certificates are checked against right now.
    pub fn trusted_bundles(&self) -> Arc<BundleSet> {
        self.inner.bundles.current()
    }
}

#[cfg(test)]
mod tests {
    use signet_identity::{X509Ca, X509SvidParams};

    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn ca() -> X509Ca {
        let td = TrustDomain::new("example.org").unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        X509Ca::self_signed(&td, key, Duration::from_secs(86_400), now()).unwrap()
    }

    /// An agent SVID signed by `ca`, as the renewal loop holds it.
    fn credential(ca: &X509Ca) -> AgentCredential {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/signet/agent/join/vm-1").unwrap();
        let svid = ca
            .mint_svid(
                &X509SvidParams::new(id, Duration::from_secs(3600)),
                key.public_key(),
                now(),
            )
            .unwrap();
        let chain = svid.cert_chain;
        AgentCredential {
            name: "vm-1".into(),
            spiffe_id: svid.spiffe_id,
            authority: chain.first().and_then(|leaf| x509_authority(leaf)),
            chain,
            key: key.to_pkcs8_der(),
            not_before: svid.not_before,
            not_after: svid.not_after,
        }
    }

    fn tainting(cas: &[&X509Ca]) -> TaintedAuthorities {
        TaintedAuthorities::new(cas.iter().map(|ca| ca.key_id_hex()), Vec::<String>::new())
    }

    #[test]
    fn a_tainted_agent_svid_is_renewed_once_within_the_window() {
        let (old, new) = (ca(), ca());
        let window = Duration::from_secs(30);
        let first = credential(&old);
        let mut taint = AgentTaint::default();

        // Another CA tainted: nothing to do.
        assert!(!taint.taint_changed(&first, &tainting(&[&new]), false, now(), window));
        assert!(taint.due.is_none());

        // Its own CA tainted: renewed within the window.
        assert!(taint.taint_changed(&first, &tainting(&[&old]), false, now(), window));
        let due = taint.due.unwrap();
        assert!(due >= now() && due < now() + window, "{due:?}");
        // The same taint again, or with more ids, does not reschedule it.
        assert!(!taint.taint_changed(&first, &tainting(&[&old, &new]), false, now(), window));
        assert_eq!(taint.due, Some(due));

        // The issuer still signs with the tainted CA: the new SVID waits for
        // its normal renewal, whatever taint news follows.
        let second = credential(&old);
        taint.renewed(&second, &tainting(&[&old]));
        assert!(taint.due.is_none());
        assert!(!taint.taint_changed(&second, &tainting(&[&old]), false, now(), window));
        assert!(taint.due.is_none());

        // Renewed under the new CA, which is tainted later in turn.
        let third = credential(&new);
        taint.renewed(&third, &tainting(&[&old]));
        assert!(taint.due.is_none());
        assert!(taint.taint_changed(&third, &tainting(&[&old, &new]), false, now(), window));

        // A renewal retrying under backoff is left to its backoff.
        let mut retrying = AgentTaint::default();
        assert!(!retrying.taint_changed(&first, &tainting(&[&old]), true, now(), window));
        assert!(retrying.due.is_none());
        assert!(!retrying.taint_changed(&first, &tainting(&[&old]), false, now(), window));
    }

    #[test]
    fn agent_renewals_on_taint_are_spread_and_immediate_with_no_window() {
        let old = ca();
        let credential = credential(&old);
        let window = Duration::from_secs(30);
        let dues: Vec<SystemTime> = (0..16)
            .map(|_| {
                let mut taint = AgentTaint::default();
                assert!(taint.taint_changed(&credential, &tainting(&[&old]), false, now(), window));
                taint.due.unwrap()
            })
            .collect();
        assert!(
            dues.iter()
                .all(|due| *due >= now() && *due < now() + window)
        );
        assert!(dues.iter().any(|due| *due != dues[0]), "jittered: {dues:?}");

        let mut taint = AgentTaint::default();
        assert!(taint.taint_changed(
            &credential,
            &tainting(&[&old]),
            false,
            now(),
            Duration::ZERO
        ));
        assert_eq!(taint.due, Some(now()));
    }
}
