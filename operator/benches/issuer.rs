//! Signing throughput of one standalone operator, measured from an agent's
//! side of the wire: `signet_operator::standalone::serve` runs in-process on
//! 127.0.0.1:0, and the bench client joins it exactly as a node agent does
//! (Join with a single-use token over server-authenticated TLS, trusting
//! `<state_dir>/bundle.pem`), then calls SignX509Svids / SignJwtSvids over
//! mTLS with the agent SVID it got.
//!
//! Each iteration is one request on one kept HTTP/2 connection, issued
//! sequentially (no concurrency), so batch 1 is bounded by the round trip
//! and batch 100 by the issuer's per-SVID work: workload verification,
//! policy decision, template rendering, signing, the audit-log line (a
//! buffered file write, flushed but not fsynced) and metrics. Criterion's
//! throughput is in SVIDs (elements) per second.
//!
//! Keys and CSRs are generated once, up front (one EC P-256 key per batch
//! slot, as a real agent makes one per identity) and the same requests are
//! re-sent every iteration; the issuer still parses the CSR and signs a new
//! certificate each time. Responses are not verified by the client.
//!
//! `cargo bench -p signet-operator --bench issuer`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::CertificateDer;
use signet_identity::{BundleSet, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_operator::config::{FileConfig, Overrides, StandaloneConfig};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeServerVerifier, SvidResolver};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

const TRUST_DOMAIN: &str = "example.org";
const WORKLOAD_IDENTITY: &str = "bench";
const BATCHES: [usize; 2] = [1, 100];

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: bench, labels: {suite: bench}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, eq: "1000"}]
  spiffe:
    id: "/bench/uid/{{ workload.unix.uid }}"
    hint: bench
    x509:
      ttl: 1h
      dnsSans: ["bench.internal"]
    jwt:
      ttl: 5m
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: bench-agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [bench]}}
"#;

/// A running operator and an agent-side client joined to it.
struct Fixture {
    runtime: Runtime,
    client: IssuerClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

fn workload() -> pb::Workload {
    pb::Workload {
        attributes: [
            ("workload.unix.uid".to_owned(), "1000".to_owned()),
            ("workload.unix.gid".to_owned(), "1000".to_owned()),
            ("workload.unix.pid".to_owned(), "4242".to_owned()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    }
}

fn wait_for_file(path: &Path) {
    for _ in 0..500 {
        if path.is_file() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} did not appear", path.display());
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("bench.yaml"), POLICY).unwrap();
    let token = signet_operator::join::generate_token().unwrap();
    let token_path = dir.path().join("join-token");
    std::fs::write(&token_path, format!("{token}\n")).unwrap();
    let state_dir = dir.path().join("operator");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
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
            join_token_files: vec![("bench-agent".to_owned(), token_path)],
        },
    )
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(error) = signet_operator::standalone::serve(config, listener, shutdown).await {
            panic!("operator failed: {error}");
        }
    });

    let bundle_path = state_dir.join(signet_operator::standalone::BUNDLE_PEM_FILE);
    wait_for_file(&bundle_path);
    let td = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let pem = std::fs::read_to_string(&bundle_path).unwrap();
    let mut set = BundleSet::new();
    set.insert(TrustBundle::from_x509_pem(td.clone(), &pem).unwrap());
    let verifier = Arc::new(SpiffeServerVerifier::new(
        SharedBundles::new(set),
        PeerPolicy::OneOf(vec![SpiffeId::from_path(&td, "/signet/issuer").unwrap()]),
    ));
    let address = address.to_string();

    let client = runtime.block_on(async {
        // Join over TLS without a client certificate.
        let anonymous = signet_tls::connect_channel(
            &address,
            Arc::new(signet_tls::client_config(None, verifier.clone()).unwrap()),
        )
        .unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let csr = signet_identity::x509::create_csr(&key).unwrap();
        let joined = IssuerClient::new(anonymous)
            .join(pb::JoinRequest {
                credential: Some(pb::join_request::Credential::JoinToken(token)),
                csr,
                node_name: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(joined.spiffe_id.ends_with("/bench-agent"), "{joined:?}");

        // mTLS with the agent SVID from now on.
        let resolver = Arc::new(SvidResolver::new());
        let chain = joined
            .cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        resolver.set(chain, &key.to_pkcs8_der()).unwrap();
        let mtls = signet_tls::connect_channel(
            &address,
            Arc::new(signet_tls::client_config(Some(resolver), verifier).unwrap()),
        )
        .unwrap();
        IssuerClient::new(mtls)
    });
    Fixture {
        runtime,
        client,
        _stop: stop,
        _dir: dir,
    }
}

fn x509_request(batch: usize) -> pb::SignX509SvidsRequest {
    let requests = (0..batch)
        .map(|_| {
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            pb::X509SvidRequest {
                workload: Some(workload()),
                workload_identity: WORKLOAD_IDENTITY.to_owned(),
                csr: signet_identity::x509::create_csr(&key).unwrap(),
            }
        })
        .collect();
    pb::SignX509SvidsRequest { requests }
}

fn jwt_request(batch: usize) -> pb::SignJwtSvidsRequest {
    let requests = (0..batch)
        .map(|_| pb::JwtSvidRequest {
            workload: Some(workload()),
            workload_identity: WORKLOAD_IDENTITY.to_owned(),
            audience: vec!["bench-audience".to_owned()],
        })
        .collect();
    pb::SignJwtSvidsRequest { requests }
}

async fn sign_x509(client: &mut IssuerClient<Channel>, request: &pb::SignX509SvidsRequest) {
    let response = client
        .sign_x509_svids(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results.len(), request.requests.len());
    for result in &response.results {
        assert!(
            matches!(result.result, Some(pb::x509_svid_result::Result::Svid(_))),
            "not issued: {result:?}"
        );
    }
}

async fn sign_jwt(client: &mut IssuerClient<Channel>, request: &pb::SignJwtSvidsRequest) {
    let response = client
        .sign_jwt_svids(request.clone())
        .await
        .unwrap()
        .into_inner();
    for result in &response.results {
        assert!(
            matches!(result.result, Some(pb::jwt_svid_result::Result::Svid(_))),
            "not issued: {result:?}"
        );
    }
}

fn issuer(c: &mut Criterion) {
    let fixture = start();
    let runtime = &fixture.runtime;

    let mut group = c.benchmark_group("SignX509Svids");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for batch in BATCHES {
        let request = x509_request(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(batch),
            &request,
            |b, request| {
                let mut client = fixture.client.clone();
                b.iter(|| runtime.block_on(sign_x509(&mut client, request)));
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("SignJwtSvids");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for batch in BATCHES {
        let request = jwt_request(batch);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(batch),
            &request,
            |b, request| {
                let mut client = fixture.client.clone();
                b.iter(|| runtime.block_on(sign_jwt(&mut client, request)));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, issuer);
criterion_main!(benches);
