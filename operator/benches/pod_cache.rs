//! Memory of the issuer's pod cache with 10,000 pods (issue 5): a load
//! binary, run by `make bench` (`cargo bench -p signet-operator --bench
//! pod_cache`).
//!
//! Pods go through `PodCache::upsert`, the path every watch event takes,
//! and are shaped like real ones: eight labels, a `kubectl apply`
//! annotation, managed fields, two containers with env and probes, and the
//! kubelet's status for both (image IDs by digest, whose IDs the cache
//! keeps for `workload.kubernetes.container_image_id`). Heap use
//! is counted by a wrapping global allocator, so the figure is the cache's
//! own bytes, not the process RSS (the allocator keeps freed pages). For
//! comparison it also measures keeping the whole Pod objects, which is what
//! a plain reflector store would hold.

// Counting allocations needs a GlobalAlloc impl, which is unsafe by
// definition; it only forwards to the system allocator.
#![allow(unsafe_code, clippy::print_stdout, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicIsize, Ordering};

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStatus, EnvVar, Pod, PodSpec,
    PodStatus, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use signet_identity::{SpiffeId, TrustDomain};
use signet_operator::agents::AgentRecord;
use signet_operator::cluster::pods::{PodCache, PodVerifier};
use signet_proto::issuer::v1 as pb;
// Outside a runtime tokio's Instant is the monotonic clock (std's is
// reserved to the clock module by clippy.toml).
use tokio::time::Instant;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PODS: usize = 10_000;

fn container(name: &str, i: usize) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(format!(
            "registry.example.org/team/{name}:1.{}.{}",
            i % 7,
            i % 13
        )),
        env: Some(
            (0..6)
                .map(|e| EnvVar {
                    name: format!("SETTING_{e}"),
                    value: Some(format!("value-{e}-{i}")),
                    ..EnvVar::default()
                })
                .collect(),
        ),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                ..TCPSocketAction::default()
            }),
            ..Probe::default()
        }),
        ..Container::default()
    }
}

/// What the kubelet reports for a running container.
fn container_status(name: &str, i: usize) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        image: format!("registry.example.org/team/{name}:1.{}.{}", i % 7, i % 13),
        image_id: format!(
            "registry.example.org/team/{name}@sha256:{:064x}",
            (i % 91) as u128 * 0x9e37_79b9_7f4a_7c15
        ),
        container_id: Some(format!("containerd://{:064x}", i as u128 * 31 + 7)),
        ready: true,
        started: Some(true),
        restart_count: 0,
        state: Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    }
}

fn pod(i: usize) -> Pod {
    let labels: BTreeMap<String, String> = (0..8)
        .map(|l| {
            (
                format!("example.org/label-{l}"),
                format!("value-{}", (i + l) % 50),
            )
        })
        .collect();
    let annotations: BTreeMap<String, String> = [(
        "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
        "x".repeat(1500),
    )]
    .into();
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("web-{i}-7d9f8c6b5-abcde")),
            namespace: Some(format!("team-{}", i % 40)),
            uid: Some(format!("{:08x}-0000-4000-8000-{:012x}", i, i)),
            labels: Some(labels),
            annotations: Some(annotations),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some("kube-controller-manager".into()),
                operation: Some("Update".into()),
                ..ManagedFieldsEntry::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(format!("node-{}", i % 100)),
            service_account_name: Some(format!("sa-{}", i % 40)),
            containers: vec![container("app", i), container("sidecar", i)],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)),
            container_statuses: Some(vec![
                container_status("app", i),
                container_status("sidecar", i),
            ]),
            ..PodStatus::default()
        }),
    }
}

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let pods: Vec<Pod> = (0..PODS).map(pod).collect();

    let before = live();
    let full: Vec<Pod> = pods.clone();
    let full_bytes = live() - before;
    drop(full);

    let cache = PodCache::default();
    let before = live();
    let started = Instant::now();
    for pod in pods.iter().cloned() {
        cache.upsert(pod);
    }
    let elapsed = started.elapsed();
    let cache_bytes = live() - before;
    assert_eq!(cache.len(), PODS);

    let started = Instant::now();
    let mut found = 0;
    for i in 0..PODS {
        if cache
            .get(&format!("{:08x}-0000-4000-8000-{:012x}", i, i))
            .is_some()
        {
            found += 1;
        }
    }
    let lookups = started.elapsed();
    assert_eq!(found, PODS);

    // What a signing request costs in Kubernetes mode on top of standalone:
    // the pod's attributes from the cache (the issuer bench measures the rest).
    let cache = std::sync::Arc::new(cache);
    let verifier = PodVerifier::new(cache.clone(), None);
    let td = TrustDomain::new("example.org").unwrap();
    let agents: Vec<AgentRecord> = (0..100)
        .map(|n| {
            let id = SpiffeId::parse(&format!("spiffe://example.org/signet/agent/k8s/node-{n}"))
                .unwrap();
            AgentRecord::from_spiffe_id(&id, &td).unwrap()
        })
        .collect();
    let workloads: Vec<pb::Workload> = (0..PODS)
        .map(|i| pb::Workload {
            attributes: [("workload.unix.uid".to_owned(), "1000".to_owned())].into(),
            pod_uid: format!("{:08x}-0000-4000-8000-{:012x}", i, i),
            pod_token: String::new(),
        })
        .collect();
    let started = Instant::now();
    let mut verified = 0;
    for (i, workload) in workloads.iter().enumerate() {
        if verifier.check(&agents[i % 100], workload).is_ok() {
            verified += 1;
        }
    }
    let checks = started.elapsed();
    assert_eq!(verified, PODS);

    let mib = |bytes: isize| bytes as f64 / (1024.0 * 1024.0);
    println!("pods: {PODS}");
    println!(
        "pod cache: {:.1} MiB ({} bytes per pod)",
        mib(cache_bytes),
        cache_bytes / PODS as isize
    );
    println!(
        "whole Pod objects, for comparison: {:.1} MiB ({} bytes per pod)",
        mib(full_bytes),
        full_bytes / PODS as isize
    );
    println!(
        "upsert (trim + insert): {:.1} µs per pod; lookup by UID: {:.0} ns",
        elapsed.as_secs_f64() * 1e6 / PODS as f64,
        lookups.as_secs_f64() * 1e9 / PODS as f64
    );
    println!(
        "pod verification (lookup, node check, attributes) per signing request: {:.1} µs",
        checks.as_secs_f64() * 1e6 / PODS as f64
    );
}
