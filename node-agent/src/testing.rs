//! In-process stand-ins for tests, benchmarks and the e2e crate.
//!
//! [`LocalIssuer`] replaces the issuer *transport* only: it decides with the
//! same compiled policy the agent holds and mints real X.509- and JWT-SVIDs
//! with a real [`CaKeyset`], so everything a workload receives is what the
//! operator would send. The full operator+agent stack and third-party client
//! interop run in the `e2e` crate against the real binaries.
//!
//! [`TestAgent`] starts the agent's Workload API + SDS server on a socket in
//! a temporary directory, with the cache and policy wired as in production.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use signet_identity::{
    BundleSet, CaConfig, CaKeyset, SubjectTemplate, TrustBundle, TrustDomain, X509SvidParams,
};
use signet_policy::{
    AgentContext, Attributes, IdentitySelector, PolicyDocument, parse_yaml_documents,
};
use signet_runtime::audit::AuditLog;
use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::api::audit::LocalAudit;
use crate::api::delegated::{DelegatedState, bind_admin_socket, serve_admin};
use crate::api::{ServerState, serve};
use crate::attest::procfs::ProcRoot;
use crate::attest::{AttestorsConfig, WorkloadAttestor};
use crate::cache::{
    CacheConfig, Denial, JwtSignRequest, SignError, SignOutcome, SignedJwt, SignedX509, Signer,
    SvidCache, SvidKeyFactory, X509SignRequest,
};
use crate::issuer::{AgentPolicy, PodTokens, PolicyStore};
use crate::metrics::Metrics;

/// A policy granting processes of the current effective user the identity
/// `spiffe://<td>/uid/<uid>/web` (hint `web`) and `/uid/<uid>/db`
/// (hint `db`), in that order.
pub fn own_user_policy() -> String {
    let uid = rustix::process::geteuid().as_raw();
    format!(
        r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: a-web, labels: {{app: web}}}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "{uid}"}}]
  spiffe:
    id: /uid/{{{{ workload.unix.uid }}}}/web
    hint: web
    x509: {{ttl: 1h}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: b-db, labels: {{app: db}}}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "{uid}"}}]
  spiffe:
    id: /uid/{{{{ workload.unix.uid }}}}/db
    hint: db
    x509: {{ttl: 1h}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {{name: local}}
spec:
  subjects: [{{kind: Agent, name: "*"}}]
  allow:
    workloadIdentityLabels: {{"*": ["*"]}}
    spiffe: [{{path: "/*"}}]
"#
    )
}

/// Parses multi-document policy YAML (panicking on errors: tests only).
pub fn document_from_yaml(yaml: &str) -> PolicyDocument {
    let objects = parse_yaml_documents(yaml)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("test policy: {e:?}"));
    PolicyDocument::from_objects(objects)
}

/// Mints SVIDs like the issuer would, deciding with the agent's policy.
pub struct LocalIssuer {
    keyset: Mutex<CaKeyset>,
    clock: Clock,
    store: PolicyStore,
    unavailable: AtomicBool,
    x509_requests: AtomicUsize,
    jwt_requests: AtomicUsize,
    /// When set, certificates are minted for this key instead of the CSR's.
    swap_key: Mutex<Option<signet_identity::PublicKey>>,
    /// When set, X.509-SVIDs get this lifetime instead of the policy's
    /// (which is at least a minute), so rotation can be watched quickly.
    x509_ttl: Mutex<Option<Duration>>,
}

impl LocalIssuer {
    pub fn new(trust_domain: &TrustDomain, clock: Clock, store: PolicyStore) -> Arc<Self> {
        let keyset = CaKeyset::new(CaConfig::new(trust_domain.clone()), clock.now())
            .unwrap_or_else(|e| panic!("CA keyset: {e}"));
        Arc::new(Self {
            keyset: Mutex::new(keyset),
            clock,
            store,
            unavailable: AtomicBool::new(false),
            x509_requests: AtomicUsize::new(0),
            jwt_requests: AtomicUsize::new(0),
            swap_key: Mutex::new(None),
            x509_ttl: Mutex::new(None),
        })
    }

    /// Mints X.509-SVIDs with `ttl` (none: the policy's) from now on.
    pub fn set_x509_ttl(&self, ttl: Option<Duration>) {
        if let Ok(mut held) = self.x509_ttl.lock() {
            *held = ttl;
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        self.lock().bundle(self.clock.now())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CaKeyset> {
        match self.keyset.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Makes every call fail as if the issuer were down.
    pub fn set_unavailable(&self, down: bool) {
        self.unavailable.store(down, Ordering::SeqCst);
    }

    pub fn x509_requests(&self) -> usize {
        self.x509_requests.load(Ordering::SeqCst)
    }

    pub fn jwt_requests(&self) -> usize {
        self.jwt_requests.load(Ordering::SeqCst)
    }

    /// Mints the SVID for the issuer's `key` instead of the CSR's key (a
    /// misbehaving issuer), for negative tests.
    pub fn mint_for_key(&self, key: Option<signet_identity::PublicKey>) {
        if let Ok(mut swap) = self.swap_key.lock() {
            *swap = key;
        }
    }

    fn policy(&self) -> Option<Arc<AgentPolicy>> {
        self.store.current()
    }

    fn decide(
        &self,
        workload: &Attributes,
        name: &str,
    ) -> Result<signet_policy::IssuableIdentity, Denial> {
        let policy = self.policy().ok_or_else(|| Denial {
            reason: "no_policy".into(),
            message: "no policy".into(),
            retryable: true,
        })?;
        // As the issuer does: testimony plus the agent's own context.
        let attributes = workload.testimony().with_context(policy.agent());
        policy
            .snapshot()
            .decide(&attributes, name)
            .map_err(|denial| Denial {
                reason: denial.reason.as_str().to_owned(),
                message: denial.message,
                retryable: false,
            })
    }

    /// Mints the SVID for one request (what the issuer does per request).
    pub fn mint_x509(&self, request: &X509SignRequest) -> SignOutcome<SignedX509> {
        let identity = match self.decide(&request.workload, &request.workload_identity) {
            Ok(identity) => identity,
            Err(denial) => return SignOutcome::Denied(denial),
        };
        let params = X509SvidParams {
            spiffe_id: identity.spiffe_id.clone(),
            dns_sans: identity.x509.dns_sans.clone(),
            ip_sans: identity.x509.ip_sans.clone(),
            subject: SubjectTemplate {
                common_name: identity.x509.subject.common_name.clone(),
                organization: identity.x509.subject.organization.clone(),
                organizational_unit: identity.x509.subject.organizational_unit.clone(),
            },
            ttl: self
                .x509_ttl
                .lock()
                .ok()
                .and_then(|ttl| *ttl)
                .unwrap_or(identity.x509.ttl),
        };
        let now = self.clock.now();
        let swap = self.swap_key.lock().ok().and_then(|k| k.clone());
        let keyset = self.lock();
        let minted = match swap {
            Some(key) => keyset.mint_x509_svid(&params, &key, now),
            None => keyset.mint_x509_svid(&params, &request.public_key, now),
        };
        match minted {
            Ok(svid) => SignOutcome::Issued(SignedX509 {
                spiffe_id: svid.spiffe_id,
                cert_chain: svid.cert_chain.iter().map(|c| c.to_vec()).collect(),
                hint: identity.hint,
                not_before: svid.not_before,
                not_after: svid.not_after,
                federates_with: identity.federates_with,
            }),
            Err(error) => SignOutcome::Denied(Denial {
                reason: "invalid_csr".into(),
                message: error.to_string(),
                retryable: false,
            }),
        }
    }

    /// Mints one JWT-SVID.
    pub fn mint_jwt(&self, request: &JwtSignRequest) -> SignOutcome<SignedJwt> {
        let identity = match self.decide(&request.workload, &request.workload_identity) {
            Ok(identity) => identity,
            Err(denial) => return SignOutcome::Denied(denial),
        };
        let now = self.clock.now();
        match self.lock().mint_jwt_svid(
            &identity.spiffe_id,
            &request.audiences,
            identity.jwt.ttl,
            &identity.jwt.extra_claims,
            now,
        ) {
            Ok(jwt) => SignOutcome::Issued(SignedJwt {
                workload_identity: request.workload_identity.clone(),
                spiffe_id: jwt.spiffe_id,
                token: jwt.token,
                hint: identity.hint,
                issued_at: jwt.issued_at,
                expires_at: jwt.expiry,
            }),
            Err(error) => SignOutcome::Denied(Denial {
                reason: "invalid_request".into(),
                message: error.to_string(),
                retryable: false,
            }),
        }
    }
}

impl Signer for LocalIssuer {
    fn sign_x509(
        &self,
        requests: Vec<X509SignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedX509>>, SignError>> {
        self.x509_requests
            .fetch_add(requests.len(), Ordering::SeqCst);
        let result = if self.unavailable.load(Ordering::SeqCst) {
            Err(SignError::Unavailable("connection refused".into()))
        } else {
            Ok(requests.iter().map(|r| self.mint_x509(r)).collect())
        };
        Box::pin(async move { result })
    }

    fn sign_jwt(
        &self,
        requests: Vec<JwtSignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedJwt>>, SignError>> {
        self.jwt_requests
            .fetch_add(requests.len(), Ordering::SeqCst);
        let result = if self.unavailable.load(Ordering::SeqCst) {
            Err(SignError::Unavailable("connection refused".into()))
        } else {
            Ok(requests.iter().map(|r| self.mint_jwt(r)).collect())
        };
        Box::pin(async move { result })
    }
}

/// Builder for an in-process agent.
pub struct TestAgentBuilder {
    trust_domain: TrustDomain,
    policy_yaml: String,
    federated: Vec<TrustBundle>,
    selector: Option<IdentitySelector>,
    proc_root: ProcRoot,
    socket_mode: u32,
    clock: Option<Clock>,
    cache: CacheConfig,
    first_svid_timeout: Duration,
}

impl Default for TestAgentBuilder {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::new("example.org").unwrap_or_else(|e| panic!("{e}")),
            policy_yaml: own_user_policy(),
            federated: Vec::new(),
            selector: None,
            proc_root: ProcRoot::default(),
            socket_mode: 0o666,
            clock: None,
            cache: CacheConfig::default(),
            first_svid_timeout: Duration::from_secs(5),
        }
    }
}

impl TestAgentBuilder {
    pub fn policy_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.policy_yaml = yaml.into();
        self
    }

    pub fn federated_bundle(mut self, bundle: TrustBundle) -> Self {
        self.federated.push(bundle);
        self
    }

    pub fn selector(mut self, selector: IdentitySelector) -> Self {
        self.selector = Some(selector);
        self
    }

    /// Reads callers' processes under this directory instead of /proc.
    pub fn proc_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.proc_root = ProcRoot::new(root);
        self
    }

    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }

    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    pub fn cache_config(mut self, config: CacheConfig) -> Self {
        self.cache = config;
        self
    }

    pub fn first_svid_timeout(mut self, timeout: Duration) -> Self {
        self.first_svid_timeout = timeout;
        self
    }

    /// Starts the server. Must run inside a tokio runtime.
    pub fn start(self) -> TestAgent {
        let clock = self.clock.unwrap_or_default();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let socket = dir.path().join("agent.sock");
        let store = PolicyStore::new();
        let issuer = LocalIssuer::new(&self.trust_domain, clock, store.clone());
        publish_policy(
            &store,
            &issuer,
            &self.trust_domain,
            &self.federated,
            self.selector.as_ref(),
            &self.policy_yaml,
        );
        let cache = SvidCache::spawn(
            self.cache,
            clock,
            store.cache_receiver(),
            issuer.clone(),
            Arc::new(SvidKeyFactory::new(signet_identity::KeyType::EcP256)),
        );
        let attestor = WorkloadAttestor::new(&AttestorsConfig::default())
            .unwrap_or_else(|e| panic!("attestor: {e}"));
        let metrics = Arc::new(Metrics::default());
        let pod_tokens = PodTokens::new();
        let delegated = Arc::new(DelegatedState::new(
            cache.clone(),
            pod_tokens.clone(),
            None,
            self.first_svid_timeout,
        ));
        let audit = Arc::new(LocalAudit::new(
            Some(AuditLog::in_memory()),
            metrics.clone(),
            clock,
            std::time::Duration::from_secs(60),
        ));
        let state = Arc::new(ServerState::new(
            cache.clone(),
            Arc::new(attestor),
            metrics.clone(),
            clock,
            self.first_svid_timeout,
            audit,
        ));
        let listener = signet_runtime::uds::bind_unix_listener(&socket, self.socket_mode)
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let shutdown = watch::channel(false).0;
        let mut stop = shutdown.subscribe();
        tokio::spawn(serve(listener, self.proc_root, state, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        let admin_socket = dir.path().join("admin/admin.sock");
        let admin_listener =
            bind_admin_socket(&admin_socket).unwrap_or_else(|e| panic!("admin socket: {e}"));
        let mut stop = shutdown.subscribe();
        tokio::spawn(serve_admin(admin_listener, delegated, async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        TestAgent {
            socket,
            admin_socket,
            pod_tokens,
            store,
            issuer,
            trust_domain: self.trust_domain,
            federated: self.federated,
            selector: self.selector,
            metrics,
            clock,
            shutdown,
            cache,
            _dir: dir,
        }
    }
}

fn publish_policy(
    store: &PolicyStore,
    issuer: &LocalIssuer,
    trust_domain: &TrustDomain,
    federated: &[TrustBundle],
    selector: Option<&IdentitySelector>,
    yaml: &str,
) {
    let document = document_from_yaml(yaml);
    let generation = store.next_generation();
    let (snapshot, _) = document.compile(generation, trust_domain);
    let mut bundles = BundleSet::new();
    bundles.insert(issuer.bundle());
    for bundle in federated {
        bundles.insert(bundle.clone());
    }
    let policy = AgentPolicy::new(
        generation,
        snapshot,
        bundles,
        AgentContext {
            name: "test-agent".into(),
            node_name: None,
            node: None,
        },
        selector.cloned(),
    );
    store.publish(Arc::new(policy));
}

/// A running in-process agent.
pub struct TestAgent {
    pub socket: PathBuf,
    /// The delegated API (signet-csi files mode), root or this user only.
    pub admin_socket: PathBuf,
    /// Pod tokens the delegated API received (what the issuer client
    /// would attach to requests for those pods).
    pub pod_tokens: PodTokens,
    pub store: PolicyStore,
    pub issuer: Arc<LocalIssuer>,
    pub trust_domain: TrustDomain,
    federated: Vec<TrustBundle>,
    selector: Option<IdentitySelector>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    shutdown: watch::Sender<bool>,
    cache: SvidCache,
    _dir: tempfile::TempDir,
}

impl TestAgent {
    pub fn builder() -> TestAgentBuilder {
        TestAgentBuilder::default()
    }

    /// `unix:///...` for clients and `SPIFFE_ENDPOINT_SOCKET`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    pub fn cache(&self) -> &SvidCache {
        &self.cache
    }

    /// Replaces the policy (a new generation), as a WatchPolicy update would.
    pub fn set_policy(&self, yaml: &str) {
        publish_policy(
            &self.store,
            &self.issuer,
            &self.trust_domain,
            &self.federated,
            self.selector.as_ref(),
            yaml,
        );
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn stop(&self) {
        self.shutdown.send_replace(true);
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}
