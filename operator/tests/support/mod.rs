//! An in-process standalone operator on 127.0.0.1:0 and an agent-side
//! client that joins it the way signet-agent does: Join with a single-use
//! token over server-authenticated TLS (trusting the operator's
//! `bundle.pem`), then mTLS with the agent SVID. Shared by the issuer API
//! tests and the issuer benchmark.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use signet_identity::{BundleSet, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_operator::config::{FileConfig, Overrides, StandaloneConfig};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeServerVerifier, SvidResolver};
use tonic::transport::Channel;

pub const TRUST_DOMAIN: &str = "example.org";
pub const AGENT_NAME: &str = "test-agent";

/// A running operator. Dropping it stops the server.
pub struct Operator {
    pub address: String,
    pub dir: tempfile::TempDir,
    pub token: String,
    verifier: Arc<SpiffeServerVerifier>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub fn trust_domain() -> TrustDomain {
    TrustDomain::new(TRUST_DOMAIN).unwrap()
}

/// A workload as the unix attestor describes it.
pub fn workload(uid: u32) -> pb::Workload {
    pb::Workload {
        attributes: [
            ("workload.unix.uid".to_owned(), uid.to_string()),
            ("workload.unix.gid".to_owned(), uid.to_string()),
            ("workload.unix.pid".to_owned(), "4242".to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

pub fn csr() -> Vec<u8> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    signet_identity::x509::create_csr(&key).unwrap()
}

async fn wait_for_file(path: &Path) {
    for _ in 0..1000 {
        if path.is_file() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} did not appear", path.display());
}

/// Starts an operator with `policy` on the current tokio runtime.
pub async fn start_operator(policy: &str) -> Operator {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("policy.yaml"), policy).unwrap();
    let token = signet_operator::standalone::join_tokens::generate_token().unwrap();
    let token_path = dir.path().join("join-token");
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let state_dir = dir.path().join("operator");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = StandaloneConfig::resolve(
        FileConfig::default(),
        Overrides {
            trust_domain: Some(TRUST_DOMAIN.to_owned()),
            policy_dir: Some(policy_dir),
            state_dir: Some(state_dir.clone()),
            listen: Some(address),
            audit_log: Some(dir.path().join("audit.log")),
            metrics_listen: None,
            join_token_files: vec![(AGENT_NAME.to_owned(), token_path)],
        },
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = signet_operator::standalone::serve(config, listener, shutdown).await {
            panic!("operator failed: {error}");
        }
    });

    let bundle_path = state_dir.join(signet_operator::standalone::BUNDLE_PEM_FILE);
    wait_for_file(&bundle_path).await;
    let pem = std::fs::read_to_string(&bundle_path).unwrap();
    let mut set = BundleSet::new();
    set.insert(TrustBundle::from_x509_pem(trust_domain(), &pem).unwrap());
    let verifier = Arc::new(SpiffeServerVerifier::new(
        SharedBundles::new(set),
        PeerPolicy::OneOf(vec![
            SpiffeId::from_path(&trust_domain(), "/signet/issuer").unwrap(),
        ]),
    ));
    Operator {
        address: address.to_string(),
        dir,
        token,
        verifier,
        _stop: stop,
    }
}

impl Operator {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client with no certificate (only Join is allowed).
    pub fn anonymous(&self) -> IssuerClient<Channel> {
        let config = signet_tls::client_config(None, self.verifier.clone()).unwrap();
        IssuerClient::new(signet_tls::connect_channel(&self.address, Arc::new(config)).unwrap())
    }

    /// A client presenting `chain` and `key`.
    pub fn with_svid(&self, chain: Vec<Vec<u8>>, key: &PrivateKey) -> IssuerClient<Channel> {
        let resolver = Arc::new(SvidResolver::new());
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        resolver.set(chain, &key.to_pkcs8_der()).unwrap();
        let config = signet_tls::client_config(Some(resolver), self.verifier.clone()).unwrap();
        IssuerClient::new(signet_tls::connect_channel(&self.address, Arc::new(config)).unwrap())
    }

    /// Joins with the configured token; returns an mTLS client and the agent SVID.
    pub async fn join(&self) -> (IssuerClient<Channel>, pb::AgentSvid) {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let csr = signet_identity::x509::create_csr(&key).unwrap();
        let joined = self
            .anonymous()
            .join(pb::JoinRequest {
                credential: Some(pb::join_request::Credential::JoinToken(self.token.clone())),
                csr,
                node_name: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let client = self.with_svid(joined.cert_chain.clone(), &key);
        (client, joined)
    }

    /// The audit log's events.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}
