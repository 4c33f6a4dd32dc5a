//! The issuer client against a scripted issuer over real TLS: join, state
//! persistence across restarts, renewal, signing and the checks on what the
//! issuer returns.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use signet_identity::x509::certs_to_pem;
use signet_identity::{
    BundleSet, CaConfig, CaKeyset, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain,
    X509SvidParams,
};
use signet_policy::{Attributes, Field};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_server::{Issuer, IssuerServer};
use signet_runtime::clock::Clock;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeClientVerifier, SvidResolver, TlsIncoming};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::checks::check_issued_x509;
use super::client::{
    AGENT_STATE_FILE, IssuerClient, IssuerClientConfig, IssuerError, issuer_spiffe_id,
};
use super::policy::{PolicyStore, apply_update};
use crate::cache::{SignOutcome, Signer, X509SignRequest};
use crate::metrics::Metrics;

const TD: &str = "example.org";

struct FakeIssuer {
    keyset: Mutex<CaKeyset>,
    tokens: Mutex<HashSet<String>>,
    joins: AtomicUsize,
    renewals: AtomicUsize,
    /// Answers with a certificate for a key other than the CSR's.
    evil: AtomicBool,
    /// The policy WatchPolicy serves (multi-document YAML).
    policy: Mutex<String>,
    /// The workloads of every SignX509Svids request, as received.
    signed_for: Mutex<Vec<pb::Workload>>,
    /// The tainted X.509 authorities WatchPolicy names.
    tainted_x509: Mutex<Vec<String>>,
}

impl FakeIssuer {
    fn td() -> TrustDomain {
        TrustDomain::new(TD).unwrap()
    }

    fn new() -> Arc<Self> {
        let keyset = CaKeyset::new(
            CaConfig::new(Self::td()),
            signet_runtime::clock::Clock::new().now(),
        )
        .unwrap();
        Arc::new(Self {
            keyset: Mutex::new(keyset),
            tokens: Mutex::new(["good-token".to_owned()].into()),
            joins: AtomicUsize::new(0),
            renewals: AtomicUsize::new(0),
            evil: AtomicBool::new(false),
            policy: Mutex::new(crate::testing::own_user_policy()),
            signed_for: Mutex::new(Vec::new()),
            tainted_x509: Mutex::new(Vec::new()),
        })
    }

    /// Subject key identifier of the CA that signs everything.
    fn ca_key_id(&self) -> String {
        self.keyset
            .lock()
            .unwrap()
            .active_x509()
            .unwrap()
            .key_id_hex()
    }

    fn bundle(&self) -> TrustBundle {
        self.keyset
            .lock()
            .unwrap()
            .bundle(signet_runtime::clock::Clock::new().now())
    }

    fn mint(&self, path: &str, csr: &[u8]) -> Result<Vec<Vec<u8>>, Status> {
        let id = SpiffeId::from_path(&Self::td(), path).unwrap();
        let params = X509SvidParams::new(id, Duration::from_secs(3600));
        let keyset = self.keyset.lock().unwrap();
        let svid = if self.evil.load(Ordering::SeqCst) {
            let other = PrivateKey::generate(KeyType::EcP256).unwrap();
            keyset.mint_x509_svid(
                &params,
                other.public_key(),
                signet_runtime::clock::Clock::new().now(),
            )
        } else {
            keyset.mint_x509_svid_from_csr(&params, csr, signet_runtime::clock::Clock::new().now())
        }
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(svid.cert_chain.iter().map(|c| c.to_vec()).collect())
    }

    fn agent_svid(&self, csr: &[u8]) -> Result<pb::AgentSvid, Status> {
        let chain = self.mint("/signet/agent/join/vm-1", csr)?;
        Ok(pb::AgentSvid {
            spiffe_id: format!("spiffe://{TD}/signet/agent/join/vm-1"),
            cert_chain: chain,
            trust_bundle: self.bundle().to_spiffe_json().unwrap().into_bytes(),
            agent_name: "vm-1".into(),
            expires_at_unix: 0,
        })
    }

    fn server_resolver(&self) -> Arc<SvidResolver> {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = issuer_spiffe_id(&Self::td()).unwrap();
        let svid = self
            .keyset
            .lock()
            .unwrap()
            .mint_x509_svid(
                &X509SvidParams::new(id, Duration::from_secs(3600)),
                key.public_key(),
                signet_runtime::clock::Clock::new().now(),
            )
            .unwrap();
        let resolver = Arc::new(SvidResolver::new());
        resolver.set(svid.cert_chain, &key.to_pkcs8_der()).unwrap();
        resolver
    }
}

struct Service(Arc<FakeIssuer>);

type PolicyStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::PolicyUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Issuer for Service {
    type WatchPolicyStream = PolicyStream;
    type WatchNodePodsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::NodePodsUpdate, Status>> + Send>>;

    // Like a standalone operator: it knows no pods.
    async fn watch_node_pods(
        &self,
        _request: Request<pb::WatchNodePodsRequest>,
    ) -> Result<Response<Self::WatchNodePodsStream>, Status> {
        Err(Status::unimplemented("no pods here"))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let request = request.into_inner();
        let token = match request.credential {
            Some(pb::join_request::Credential::JoinToken(token)) => token,
            // Stands in for a TokenReview of a projected token.
            Some(pb::join_request::Credential::ServiceAccountToken(token))
                if token == "sa-token" && request.node_name == "node-1" =>
            {
                self.0.joins.fetch_add(1, Ordering::SeqCst);
                return Ok(Response::new(self.0.agent_svid(&request.csr)?));
            }
            _ => return Err(Status::unauthenticated("no valid credential")),
        };
        if !self.0.tokens.lock().unwrap().remove(&token) {
            return Err(Status::unauthenticated("bad or spent join token"));
        }
        self.0.joins.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(self.0.agent_svid(&request.csr)?))
    }

    async fn renew_agent(
        &self,
        request: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let caller = signet_tls::peer_spiffe_id(&request)
            .ok_or_else(|| Status::permission_denied("no client certificate"))?;
        if !caller.path().starts_with("/signet/agent/") {
            return Err(Status::permission_denied("not an agent"));
        }
        self.0.renewals.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(self.0.agent_svid(&request.into_inner().csr)?))
    }

    async fn watch_policy(
        &self,
        request: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        signet_tls::peer_spiffe_id(&request)
            .ok_or_else(|| Status::permission_denied("no client certificate"))?;
        let update = pb::PolicyUpdate {
            version: 3,
            trust_domain: TD.into(),
            policy: serde_json::to_vec(&crate::testing::document_from_yaml(
                &self.0.policy.lock().unwrap(),
            ))
            .unwrap()
            .into(),
            trust_bundle: self.0.bundle().to_spiffe_json().unwrap().into_bytes(),
            federated_bundles: Default::default(),
            bundle_sequence: 1,
            node: None,
            tainted_x509_authorities: self.0.tainted_x509.lock().unwrap().clone(),
            tainted_jwt_authorities: Vec::new(),
            delta: None,
            partial: false,
        };
        let stream =
            futures::stream::once(async move { Ok(update) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn sign_x509_svids(
        &self,
        request: Request<pb::SignX509SvidsRequest>,
    ) -> Result<Response<pb::SignX509SvidsResponse>, Status> {
        signet_tls::peer_spiffe_id(&request)
            .ok_or_else(|| Status::permission_denied("no client certificate"))?;
        let mut results = Vec::new();
        for item in request.into_inner().requests {
            self.0
                .signed_for
                .lock()
                .unwrap()
                .extend(item.workload.clone());
            let path = format!("/w/{}", item.workload_identity);
            let chain = self.0.mint(&path, &item.csr)?;
            results.push(pb::X509SvidResult {
                result: Some(pb::x509_svid_result::Result::Svid(pb::X509Svid {
                    workload_identity: item.workload_identity,
                    spiffe_id: format!("spiffe://{TD}{path}"),
                    cert_chain: chain,
                    hint: "h".into(),
                    expires_at_unix: 0,
                    federates_with: vec![],
                    serial: String::new(),
                })),
            });
        }
        Ok(Response::new(pb::SignX509SvidsResponse { results }))
    }

    async fn sign_jwt_svids(
        &self,
        _request: Request<pb::SignJwtSvidsRequest>,
    ) -> Result<Response<pb::SignJwtSvidsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

use futures::StreamExt as _;

async fn start_issuer(fake: Arc<FakeIssuer>) -> String {
    let bundles = SharedBundles::new([fake.bundle()].into_iter().collect());
    let verifier = Arc::new(SpiffeClientVerifier::optional(
        bundles,
        PeerPolicy::MemberOf(FakeIssuer::td()),
    ));
    let config = signet_tls::server_config(fake.server_resolver(), verifier).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IssuerServer::new(Service(fake)))
            .serve_with_incoming(TlsIncoming::new(listener, Arc::new(config))),
    );
    address
}

fn client(
    address: &str,
    state_dir: &Path,
    token: Option<&str>,
    bootstrap: TrustBundle,
) -> IssuerClient {
    IssuerClient::new(
        IssuerClientConfig {
            address: address.to_owned(),
            trust_domain: FakeIssuer::td(),
            state_dir: state_dir.to_owned(),
            join_token: token.map(str::to_owned),
            service_account_token_path: None,
            node_name: None,
        },
        bootstrap,
        Clock::new(),
        Arc::new(Metrics::default()),
    )
    .unwrap()
}

fn x509_request(name: &str) -> (X509SignRequest, PrivateKey) {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = signet_identity::x509::create_csr(&key).unwrap();
    let mut workload = Attributes::default();
    workload.set(Field::UnixUid, "1000");
    (
        X509SignRequest {
            workload: Arc::new(workload),
            workload_identity: name.into(),
            csr_der: csr,
            public_key: key.public_key().clone(),
        },
        key,
    )
}

#[tokio::test]
async fn join_once_then_restart_reuses_the_stored_svid() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = fake.bundle();

    let first = client(&address, dir.path(), Some("good-token"), bootstrap.clone());
    first.ensure_identity().await.unwrap();
    let (id, _) = first.agent_svid().unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/signet/agent/join/vm-1");
    assert_eq!(first.agent_context().name, "vm-1");
    let state = dir.path().join(AGENT_STATE_FILE);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A restart: no token any more (it was single-use), same state dir.
    let second = client(&address, dir.path(), None, bootstrap);
    second.ensure_identity().await.unwrap();
    assert_eq!(fake.joins.load(Ordering::SeqCst), 1);
    assert_eq!(second.agent_context().name, "vm-1");

    // mTLS works with the reloaded credential: renew and sign.
    second.renew().await.unwrap();
    assert_eq!(fake.renewals.load(Ordering::SeqCst), 1);
    let (request, key) = x509_request("web");
    let outcomes = second.sign_x509(vec![request]).await.unwrap();
    let [SignOutcome::Issued(signed)] = outcomes.as_slice() else {
        panic!("expected an SVID: {outcomes:?}");
    };
    assert_eq!(signed.spiffe_id.as_str(), "spiffe://example.org/w/web");
    assert_eq!(signed.hint.as_deref(), Some("h"));
    assert_eq!(
        super::checks::leaf_public_key(&signed.cert_chain[0]).unwrap(),
        *key.public_key()
    );
}

#[tokio::test]
async fn joins_with_a_service_account_token_file() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sa-token\n").unwrap();
    let issuer = IssuerClient::new(
        IssuerClientConfig {
            address,
            trust_domain: FakeIssuer::td(),
            state_dir: dir.path().join("state"),
            join_token: None,
            service_account_token_path: Some(token),
            node_name: Some("node-1".into()),
        },
        fake.bundle(),
        Clock::new(),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    issuer.ensure_identity().await.unwrap();
    assert_eq!(fake.joins.load(Ordering::SeqCst), 1);
    assert_eq!(issuer.agent_context().node_name.as_deref(), Some("node-1"));
}

#[tokio::test]
async fn a_certificate_for_another_key_is_refused() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = client(&address, dir.path(), Some("good-token"), fake.bundle());
    issuer.ensure_identity().await.unwrap();
    fake.evil.store(true, Ordering::SeqCst);
    let (request, _) = x509_request("web");
    let outcomes = issuer.sign_x509(vec![request]).await.unwrap();
    let [SignOutcome::Denied(denial)] = outcomes.as_slice() else {
        panic!("a swapped key must not be accepted: {outcomes:?}");
    };
    assert_eq!(denial.reason, "invalid_svid");
    assert!(denial.retryable);
    assert!(
        denial.message.contains("requested key"),
        "{}",
        denial.message
    );
}

#[tokio::test]
async fn bad_token_and_missing_credential_are_reported() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let bad = client(&address, dir.path(), Some("wrong"), fake.bundle());
    match bad.ensure_identity().await {
        Err(IssuerError::Call { code, .. }) => assert_eq!(code, tonic::Code::Unauthenticated),
        other => panic!("unexpected {other:?}"),
    }
    let none = client(&address, dir.path(), None, fake.bundle());
    assert!(matches!(
        none.ensure_identity().await,
        Err(IssuerError::NoCredential { .. })
    ));
}

#[tokio::test]
async fn an_issuer_with_an_untrusted_certificate_is_refused() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // Bootstrap bundle of an unrelated CA.
    let stranger = CaKeyset::new(
        CaConfig::new(FakeIssuer::td()),
        signet_runtime::clock::Clock::new().now(),
    )
    .unwrap()
    .bundle(signet_runtime::clock::Clock::new().now());
    let issuer = client(&address, dir.path(), Some("good-token"), stranger);
    assert!(issuer.ensure_identity().await.is_err());
    assert_eq!(
        fake.joins.load(Ordering::SeqCst),
        0,
        "the token must not be sent"
    );
}

#[tokio::test]
async fn policy_updates_are_compiled_and_published() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = client(&address, dir.path(), Some("good-token"), fake.bundle());
    issuer.ensure_identity().await.unwrap();
    let mut stream = issuer.watch_policy(0).await.unwrap();
    let update = stream.message().await.unwrap().unwrap();
    let store = PolicyStore::new();
    apply_update(&issuer, &store, &update, None);
    let policy = store.current().unwrap();
    assert_eq!(policy.issuer_version(), 3);
    assert_eq!(policy.agent().name, "vm-1");
    assert_eq!(
        policy.own_bundle().unwrap().x509_authorities,
        fake.bundle().x509_authorities
    );
}

/// The agent SVID is renewed soon after the policy names its CA tainted,
/// long before half-life; once, even though this issuer keeps signing with
/// the tainted CA (no renewal loop), and not again for the same taint.
#[tokio::test]
async fn an_agent_svid_signed_by_a_tainted_ca_is_renewed_once() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = client(&address, dir.path(), Some("good-token"), fake.bundle());
    issuer.ensure_identity().await.unwrap();
    let (stop, stopping) = watch::channel(false);
    let window = Duration::from_millis(300);
    let renewal = tokio::spawn(issuer.clone().run_renewal(window, stopping));
    let renewals = || fake.renewals.load(Ordering::SeqCst);

    // Nothing is due for half an hour.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(renewals(), 0);

    // The policy names the CA tainted (upper case: hex compares alike).
    *fake.tainted_x509.lock().unwrap() = vec![fake.ca_key_id().to_uppercase()];
    let store = PolicyStore::new();
    let mut stream = issuer.watch_policy(0).await.unwrap();
    let update = stream.message().await.unwrap().unwrap();
    let tainted_at = tokio::time::Instant::now();
    apply_update(&issuer, &store, &update, None);
    let deadline = tainted_at + Duration::from_secs(10);
    while renewals() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        tainted_at.elapsed() < window + Duration::from_secs(2),
        "renewed within the window (plus the call), after {:?}",
        tainted_at.elapsed()
    );

    // The new SVID comes from the same, still tainted, CA: it waits for its
    // normal renewal, and the same taint again changes nothing.
    apply_update(&issuer, &store, &update, None);
    tokio::time::sleep(window * 3).await;
    assert_eq!(renewals(), 1);
    stop.send_replace(true);
    renewal.await.unwrap();
}

#[test]
fn returned_svids_are_checked_against_the_request() {
    let td = FakeIssuer::td();
    let now = signet_runtime::clock::Clock::new().now();
    let keyset = CaKeyset::new(CaConfig::new(td.clone()), now).unwrap();
    let bundles: BundleSet = [keyset.bundle(now)].into_iter().collect();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::from_path(&td, "/w/web").unwrap();
    let params = X509SvidParams::new(id.clone(), Duration::from_secs(600));
    let svid = keyset
        .mint_x509_svid(&params, key.public_key(), now)
        .unwrap();
    let answer = |chain: Vec<CertificateDer<'static>>, name: &str| pb::X509Svid {
        workload_identity: name.into(),
        spiffe_id: id.to_string(),
        cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
        hint: String::new(),
        expires_at_unix: 0,
        federates_with: vec!["partner.org".into()],
        serial: String::new(),
    };
    let good = check_issued_x509(
        answer(svid.cert_chain.clone(), "web"),
        "web",
        key.public_key(),
        &bundles,
        &td,
        now,
    )
    .unwrap();
    assert_eq!(good.spiffe_id, id);
    assert_eq!(
        good.federates_with,
        vec![TrustDomain::new("partner.org").unwrap()]
    );
    assert!(good.hint.is_none());

    // Answer to another request.
    assert!(
        check_issued_x509(
            answer(svid.cert_chain.clone(), "db"),
            "web",
            key.public_key(),
            &bundles,
            &td,
            now
        )
        .is_err()
    );
    // Another key than the CSR's.
    let other = PrivateKey::generate(KeyType::EcP256).unwrap();
    assert!(
        check_issued_x509(
            answer(svid.cert_chain.clone(), "web"),
            "web",
            other.public_key(),
            &bundles,
            &td,
            now
        )
        .is_err()
    );
    // Signed by a CA the agent does not trust.
    let stranger = CaKeyset::new(CaConfig::new(td.clone()), now).unwrap();
    let forged = stranger
        .mint_x509_svid(&params, key.public_key(), now)
        .unwrap();
    assert!(
        check_issued_x509(
            answer(forged.cert_chain, "web"),
            "web",
            key.public_key(),
            &bundles,
            &td,
            now
        )
        .is_err()
    );
}

#[tokio::test]
async fn the_agent_serves_workloads_and_stops_cleanly() {
    let fake = FakeIssuer::new();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, certs_to_pem(&fake.bundle().x509_authorities)).unwrap();
    let socket = dir.path().join("run/agent.sock");
    // A free port for the admin endpoint (released just before the agent binds it).
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "trust_domain: example.org\n\
         issuer: {{address: '{address}', trust_bundle_path: {}, join_token: good-token}}\n\
         state_dir: {}\n\
         listen: unix://{}\n\
         admin_listen: unix://{}\n\
         metrics_listen: {admin}\n",
        bundle_path.display(),
        dir.path().join("state").display(),
        socket.display(),
        dir.path().join("admin/admin.sock").display(),
    );
    let config = crate::config::AgentConfig::parse(&yaml).unwrap();
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(crate::agent::run_until(config, stopping));

    // The socket appears once the agent has joined; there is no event to
    // wait on from outside the process, so poll briefly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut api = crate::cli::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    let first = api
        .fetch_x509svid(signet_proto::workload::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            "spiffe://example.org/w/a-web",
            "spiffe://example.org/w/b-db"
        ]
    );
    assert_eq!(fake.joins.load(Ordering::SeqCst), 1);

    assert!(http_get(admin, "/readyz").await.starts_with("HTTP/1.1 200"));
    let metrics = http_get(admin, "/metrics").await;
    for expected in [
        r#"signet_agent_workload_api_requests_total{rpc="FetchX509SVID",code="OK"} 1"#,
        r#"signet_agent_signing_requests_total{type="x509"} 2"#,
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from\n{metrics}"
        );
    }

    // Shutdown does not wait for open streams: they end with Unavailable
    // (clients reconnect to the next agent).
    let mut open = api
        .fetch_x509svid(signet_proto::workload::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    open.message().await.unwrap().unwrap();
    stop.send_replace(true);
    let ended = open.message().await.unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("shutdown must not hang")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket is removed on shutdown");
}

async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The whole agent with its admin socket: a pod subscribed through the
/// delegated API is signed for with its pod UID and token on the wire.
#[tokio::test]
async fn delegated_pods_reach_the_issuer_with_uid_and_token() {
    use signet_proto::issuer::v1::delegated_client::DelegatedClient;
    let fake = FakeIssuer::new();
    *fake.policy.lock().unwrap() = r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: pods}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.kubernetes.namespace, eq: payments}]
  spiffe:
    id: /ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: local}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow:
    workloadIdentityLabels: {"*": ["*"]}
    spiffe: [{path: "/*"}]
"#
    .to_owned();
    let address = start_issuer(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, certs_to_pem(&fake.bundle().x509_authorities)).unwrap();
    let admin = dir.path().join("admin/admin.sock");
    let yaml = format!(
        "trust_domain: example.org\n\
         issuer: {{address: '{address}', trust_bundle_path: {}, join_token: good-token}}\n\
         state_dir: {}\n\
         listen: unix://{}\n\
         admin_listen: unix://{}\n",
        bundle_path.display(),
        dir.path().join("state").display(),
        dir.path().join("run/agent.sock").display(),
        admin.display(),
    );
    let config = crate::config::AgentConfig::parse(&yaml).unwrap();
    let (stop, stopping) = watch::channel(false);
    let agent = tokio::spawn(crate::agent::run_until(config, stopping));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !admin.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no admin socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut delegated = DelegatedClient::new(
        crate::cli::unix_channel(&format!("unix://{}", admin.display()))
            .await
            .unwrap(),
    );
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWItMCJ9.c2ln";
    let first = delegated
        .subscribe_pod_svids(pb::SubscribePodSvidsRequest {
            pod_uid: "UID-1".into(),
            pod_namespace: "payments".into(),
            pod_name: "web-0".into(),
            service_account: "api".into(),
            pod_token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/w/pods");
    let signed_for = fake.signed_for.lock().unwrap().clone();
    let [workload] = signed_for.as_slice() else {
        panic!("one request expected: {signed_for:?}");
    };
    assert_eq!(workload.pod_uid, "uid-1");
    assert_eq!(workload.pod_token, token);
    assert_eq!(
        workload
            .attributes
            .get("workload.kubernetes.pod_name")
            .map(String::as_str),
        Some("web-0")
    );
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("shutdown must not hang")
        .unwrap()
        .unwrap();
    assert!(!admin.exists(), "the admin socket is removed on shutdown");
}
