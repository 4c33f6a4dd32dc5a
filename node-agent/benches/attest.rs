//! Attestation latency.
//!
//! The kubelet here is the in-process HTTPS server of the tests serving the
//! RECORDED `/pods` answer `tests/fixtures/kubelet/pods.json` (4 pods,
//! ~20 KB) on 127.0.0.1, with a token and a test CA: the "new pod" figure
//! is one real HTTPS round trip (TCP + TLS 1.3 handshake + GET /pods +
//! parse), not a real kubelet's, whose own latency comes on top.
//!
//! - `kubernetes/known_pod_cache_hit`: the container is in the cached list.
//! - `kubernetes/new_pod_kubelet_round_trip`: the list must be fetched
//!   (poll spacing set to 0 so only the round trip is measured).
//! - `unix/bench_process`: the unix attestor on this process (binary hash
//!   served from its cache after the first call).
//! - `workload/pod_process_cache_hit`: `WorkloadAttestor::attest` for a
//!   process in a pod (fake procfs): unix in `spawn_blocking`, cgroup parse,
//!   cached pod lookup, PID-reuse check.

// Bench setup failing is a bench failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/attest_support/mod.rs"]
mod attest_support;

use std::sync::Arc;
use std::time::Duration;

use attest_support::{Credentials, FakeKubelet, FakeProc, NODE, Pki, always, ids, pod_cgroup};
use criterion::{Criterion, criterion_group, criterion_main};
use signet_agent::attest::WorkloadAttestor;
use signet_agent::attest::cgroup::parse_proc_cgroup;
use signet_agent::attest::kubelet::{KubeletClient, KubeletConfig, PodCache};
use signet_agent::attest::kubernetes::KubernetesAttestor;
use signet_agent::attest::procfs::ProcRoot;
use signet_agent::attest::unix::{PeerCredentials, UnixAttestor};
use signet_policy::Attributes;

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pki = Pki::new(&[NODE]);
    let credentials = Credentials::write(&pki, "bench-token");
    let kubelet = runtime.block_on(FakeKubelet::start(
        &pki,
        Some("bench-token"),
        always("pods.json"),
    ));
    let config = KubeletConfig {
        poll_interval: Duration::ZERO,
        pod_list_max_age: Duration::from_secs(3600),
        ..credentials.config(&kubelet)
    };
    let client = Arc::new(KubeletClient::new(config.endpoint(|_| None).unwrap()));
    let info = parse_proc_cgroup(&pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR)).unwrap();

    let mut group = c.benchmark_group("kubernetes");
    let warm =
        KubernetesAttestor::with_cache(PodCache::new(client.clone(), Duration::ZERO), &config);
    runtime.block_on(warm.attest(&info)).unwrap().unwrap();
    group.bench_function("known_pod_cache_hit", |b| {
        b.iter(|| runtime.block_on(warm.attest(&info)).unwrap().unwrap())
    });
    group.bench_function("new_pod_kubelet_round_trip", |b| {
        b.iter(|| {
            // An empty cache: the container is not known yet.
            let cold = KubernetesAttestor::with_cache(
                PodCache::new(client.clone(), Duration::ZERO),
                &config,
            );
            runtime.block_on(cold.attest(&info)).unwrap().unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("unix");
    let unix = UnixAttestor::default();
    let me = ProcRoot::default().open(std::process::id()).unwrap();
    let peer = PeerCredentials {
        pid: std::process::id(),
        uid: me.identity().effective_uid(),
        gid: me.identity().effective_gid(),
    };
    group.bench_function("bench_process", |b| {
        b.iter(|| {
            let mut attributes = Attributes::default();
            unix.attest(peer, &me, &mut attributes).unwrap();
            attributes
        })
    });
    group.finish();

    let mut group = c.benchmark_group("workload");
    let workload =
        WorkloadAttestor::from_parts(UnixAttestor::default(), Some(warm.clone()), None, None);
    let process = FakeProc::new(4242, &pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR));
    let handle = process.handle();
    group.bench_function("pod_process_cache_hit", |b| {
        b.iter(|| {
            runtime
                .block_on(workload.attest(process.peer(), handle.clone()))
                .unwrap()
        })
    });
    group.finish();
    let requests = kubelet.request_count();
    assert!(requests > 0);
}

criterion_group! {
    name = attest;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(attest);
