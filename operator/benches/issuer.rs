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

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use signet_identity::{KeyType, PrivateKey};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

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
    _operator: support::Operator,
}

fn start() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (operator, client) = runtime.block_on(async {
        let operator = support::start_operator(POLICY).await;
        let (client, _) = operator.join().await;
        (operator, client)
    });
    Fixture {
        runtime,
        client,
        _operator: operator,
    }
}

fn x509_request(batch: usize) -> pb::SignX509SvidsRequest {
    let requests = (0..batch)
        .map(|_| {
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            pb::X509SvidRequest {
                workload: Some(support::workload(1000)),
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
            workload: Some(support::workload(1000)),
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
