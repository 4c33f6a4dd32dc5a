//! The Kubernetes attestor and its kubelet client against an in-process
//! HTTPS "kubelet" serving RECORDED `/pods` answers
//! (`tests/fixtures/kubelet/`, see its README) with a test CA and a bearer
//! token. No real kubelet is available to these tests; the cluster
//! end-to-end suite exercises the real one.
//!
//! The retry tests run on tokio's paused clock, where the same recordings
//! are replayed by an in-memory source instead of the HTTPS server (with a
//! paused clock tokio would jump to the request timeout while a real socket
//! is pending): the spacing and the number of kubelet requests are exact,
//! and 30 s of polling take no wall time. One real-time test checks the
//! spacing over HTTPS too.

// Helpers outside #[test] functions unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod attest_support;

use signet_policy::{Attributes, Field};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use attest_support::{
    Credentials, FakeKubelet, NODE, Pki, RecordedSource, Responder, always, fixture, ids,
    switch_after,
};
use signet_agent::attest::AttestErrorKind;
use signet_agent::attest::cgroup::{ContainerId, ContainerInfo, PodUid, parse_proc_cgroup};
use signet_agent::attest::kubelet::{KubeletClient, KubeletConfig, KubeletError, PodCache};
use signet_agent::attest::kubernetes::{KubernetesAttestor, KubernetesError, KubernetesWorkload};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.first-token.sig";

struct Setup {
    pki: Pki,
    credentials: Credentials,
    kubelet: FakeKubelet,
}

async fn setup(responder: attest_support::Responder) -> Setup {
    let pki = Pki::new(&[NODE]);
    let credentials = Credentials::write(&pki, TOKEN);
    let kubelet = FakeKubelet::start(&pki, Some(TOKEN), responder).await;
    Setup {
        pki,
        credentials,
        kubelet,
    }
}

impl Setup {
    fn config(&self) -> KubeletConfig {
        self.credentials.config(&self.kubelet)
    }

    fn attestor(&self) -> KubernetesAttestor {
        attestor_for(&self.config())
    }
}

fn attestor_for(config: &KubeletConfig) -> KubernetesAttestor {
    // Built from an explicit endpoint, not the process environment.
    let endpoint = config.endpoint(|_| None).unwrap();
    let cache = PodCache::new(Arc::new(KubeletClient::new(endpoint)), config.poll_interval);
    KubernetesAttestor::with_cache(cache, config)
}

/// An attestor over recorded answers without the network (paused clock).
fn recorded(
    responder: Responder,
    config: KubeletConfig,
) -> (Arc<RecordedSource>, KubernetesAttestor) {
    let source = RecordedSource::new(responder);
    let cache = PodCache::new(source.clone(), config.poll_interval);
    (source, KubernetesAttestor::with_cache(cache, &config))
}

/// Offsets of the fetches from `start`.
fn offsets(fetches: &[Instant], start: Instant) -> Vec<Duration> {
    fetches.iter().map(|at| *at - start).collect()
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn in_pod(pod_uid: &str, container_id: &str) -> ContainerInfo {
    parse_proc_cgroup(&attest_support::pod_cgroup(pod_uid, container_id)).unwrap()
}

fn attributes_of(workload: &KubernetesWorkload) -> Attributes {
    let mut attributes = Attributes::default();
    workload.add_attributes(&mut attributes);
    attributes
}

#[tokio::test]
async fn pod_attributes_come_from_the_kubelet() {
    let s = setup(always("pods.json")).await;
    let workload = s
        .attestor()
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap()
        .unwrap();
    let attributes = attributes_of(&workload);
    let expect = [
        ("workload.kubernetes.namespace", "payments"),
        ("workload.kubernetes.pod_name", "processor-7d9f8b6c5-x2x7q"),
        ("workload.kubernetes.pod_uid", ids::PROCESSOR_POD),
        ("workload.kubernetes.service_account", "processor"),
        ("workload.kubernetes.node_name", NODE),
        ("workload.kubernetes.labels.app", "processor"),
        (
            "workload.kubernetes.labels.app.kubernetes.io/part-of",
            "payments",
        ),
        ("workload.kubernetes.container_name", "processor"),
    ];
    for (name, value) in expect {
        // Parsing also proves the name is in the policy's schema.
        assert_eq!(
            attributes.get(&name.parse().unwrap()),
            Some(value),
            "{name}"
        );
    }
    // As the pod spec names it, and by digest as the runtime resolved it.
    let image = attributes.field(Field::KubernetesContainerImage).unwrap();
    assert!(!image.contains("@sha256:"), "{image}");
    let image_id = attributes.field(Field::KubernetesContainerImageId).unwrap();
    assert!(
        image_id.starts_with("registry.example.com/payments/processor@sha256:"),
        "{image_id}"
    );
    assert_eq!(s.kubelet.request_count(), 1);
    let seen = &s.kubelet.requests()[0];
    assert_eq!(seen.path, "/pods");
    assert_eq!(seen.sni.as_deref(), Some(NODE));
}

#[tokio::test]
async fn token_is_sent_and_a_rotated_token_is_used() {
    let s = setup(always("pods.json")).await;
    let client = KubeletClient::new(s.config().endpoint(|_| None).unwrap());
    client.get_pods().await.unwrap();
    assert_eq!(
        s.kubelet.requests()[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );

    // The kubelet now only accepts the new token; the projected volume
    // swaps the file.
    let rotated = "eyJhbGciOiJSUzI1NiJ9.rotated-token.sig";
    s.kubelet.set_token(rotated);
    s.credentials.rotate_token(rotated);
    client.get_pods().await.unwrap();
    assert_eq!(
        s.kubelet.requests()[1].authorization.as_deref(),
        Some(format!("Bearer {rotated}").as_str())
    );
}

#[tokio::test]
async fn refused_token_is_unavailable() {
    let s = setup(always("pods.json")).await;
    s.kubelet.set_token("a-token-the-agent-does-not-have");
    let error = s
        .attestor()
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            KubernetesError::Kubelet(KubeletError::Refused {
                status: StatusCode::UNAUTHORIZED
            })
        ),
        "{error}"
    );
    assert_eq!(error.kind(), AttestErrorKind::Unavailable);
}

#[tokio::test]
async fn anonymous_sends_no_token() {
    let pki = Pki::new(&[NODE]);
    let credentials = Credentials::write(&pki, TOKEN);
    let kubelet = FakeKubelet::start(&pki, None, always("pods.json")).await;
    let config = KubeletConfig {
        anonymous: true,
        ..credentials.config(&kubelet)
    };
    KubeletClient::new(config.endpoint(|_| None).unwrap())
        .get_pods()
        .await
        .unwrap();
    assert_eq!(kubelet.requests()[0].authorization, None);
}

#[tokio::test]
async fn a_kubelet_certificate_from_another_ca_is_rejected() {
    let s = setup(always("pods.json")).await;
    let other = Pki::new(&[NODE]);
    std::fs::write(&s.credentials.ca_path, &other.ca_pem).unwrap();
    let error = KubeletClient::new(s.config().endpoint(|_| None).unwrap())
        .get_pods()
        .await
        .unwrap_err();
    assert!(matches!(error, KubeletError::Handshake { .. }), "{error}");
    assert_eq!(error.kind(), AttestErrorKind::Unavailable);
    // The token never reached the impostor.
    assert_eq!(s.kubelet.request_count(), 0);
    drop(s.pki);
}

#[tokio::test]
async fn the_certificate_must_name_the_node_unless_skip_verify() {
    let s = setup(always("pods.json")).await;
    let other_node = KubeletConfig {
        node_name: Some("node-2".into()),
        ..s.config()
    };
    let error = KubeletClient::new(other_node.endpoint(|_| None).unwrap())
        .get_pods()
        .await
        .unwrap_err();
    assert!(matches!(error, KubeletError::Handshake { .. }), "{error}");
    assert!(error.to_string().contains("node-2"), "{error}");
    assert_eq!(s.kubelet.request_count(), 0);

    // skip_verify accepts the certificate (for self-signed kubelet certs),
    // still authenticating with the token.
    let unverified = KubeletConfig {
        skip_verify: true,
        ca_path: "/nonexistent/ca.crt".into(),
        ..other_node
    };
    KubeletClient::new(unverified.endpoint(|_| None).unwrap())
        .get_pods()
        .await
        .unwrap();
    assert_eq!(s.kubelet.request_count(), 1);
    assert_eq!(s.kubelet.requests()[0].sni.as_deref(), Some("node-2"));
}

#[tokio::test]
async fn a_rotated_ca_is_picked_up() {
    let s = setup(always("pods.json")).await;
    let client = KubeletClient::new(s.config().endpoint(|_| None).unwrap());
    // Start with a bundle that does not include the kubelet's CA...
    let other = Pki::new(&[NODE]);
    std::fs::write(&s.credentials.ca_path, &other.ca_pem).unwrap();
    assert!(client.get_pods().await.is_err());
    // ...then the bundle gains it (CA rotation publishes old + new).
    std::fs::write(
        &s.credentials.ca_path,
        format!("{}{}", other.ca_pem, s.pki.ca_pem),
    )
    .unwrap();
    client.get_pods().await.unwrap();
}

#[tokio::test]
async fn unreachable_kubelet_is_unavailable() {
    let s = setup(always("pods.json")).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = KubeletConfig {
        secure_port: Some(port),
        ..s.config()
    };
    let error = attestor_for(&config)
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            KubernetesError::Kubelet(KubeletError::Connect { .. })
        ),
        "{error}"
    );
    assert_eq!(error.kind(), AttestErrorKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attestations_share_one_kubelet_request() {
    let s = setup(always("pods.json")).await;
    let attestor = s.attestor();
    let targets = [
        (ids::PROCESSOR_POD, ids::PROCESSOR),
        (ids::PROCESSOR_POD, ids::ENVOY),
        (ids::DEBUG_POD, ids::APP),
        (ids::DEBUG_POD, ids::DEBUGGER),
    ];
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let attestor = attestor.clone();
            let (pod, container) = targets[i % targets.len()];
            tokio::spawn(async move { attestor.attest(&in_pod(pod, container)).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().is_some());
    }
    assert_eq!(s.kubelet.request_count(), 1);

    // Later attestations of listed containers are cache hits.
    attestor
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.kubelet.request_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_just_started_container_is_polled_for_with_spacing() {
    // The kubelet lists `web` as ContainerCreating (no container ID) for
    // three more answers, then running.
    let (source, attestor) = recorded(
        switch_after(3, "pods.json", "pods-web-started.json"),
        KubeletConfig::default(),
    );
    let started = Instant::now();
    let workload = attestor
        .attest(&in_pod(ids::WEB_POD, ids::WEB))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(workload.pod.name, "web-5c6f7d8b9-q4w8z");
    assert_eq!(workload.container.name, "web");
    assert_eq!(
        offsets(&source.fetches(), started),
        vec![ms(0), ms(500), ms(1000), ms(1500)]
    );
}

/// The HTTPS client, recording when each fetch starts (the server only
/// sees a request after the TLS handshake, whose length varies).
struct TimedClient {
    client: KubeletClient,
    starts: std::sync::Mutex<Vec<Instant>>,
}

impl signet_agent::attest::kubelet::PodListSource for TimedClient {
    fn fetch(
        &self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<bytes::Bytes, KubeletError>> + Send + '_>,
    > {
        self.starts.lock().unwrap().push(Instant::now());
        Box::pin(self.client.get_pods())
    }
}

#[tokio::test]
async fn requests_over_https_are_spaced_too() {
    let s = setup(switch_after(2, "pods.json", "pods-web-started.json")).await;
    let config = KubeletConfig {
        poll_interval: ms(40),
        ..s.config()
    };
    let timed = Arc::new(TimedClient {
        client: KubeletClient::new(config.endpoint(|_| None).unwrap()),
        starts: std::sync::Mutex::new(Vec::new()),
    });
    let attestor =
        KubernetesAttestor::with_cache(PodCache::new(timed.clone(), config.poll_interval), &config);
    attestor
        .attest(&in_pod(ids::WEB_POD, ids::WEB))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.kubelet.request_count(), 3);
    let starts = timed.starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 3);
    for pair in starts.windows(2) {
        assert!(pair[1] - pair[0] >= ms(40), "{starts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn spacing_holds_across_callers() {
    let (source, attestor) = recorded(always("pods.json"), KubeletConfig::default());
    let started = Instant::now();
    attestor
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap();
    // Another caller misses right away: its request waits out the poll
    // interval instead of hitting the kubelet again at once.
    let unlisted = ContainerInfo {
        container_id: ContainerId::parse(ids::WEB),
        pod_uid: None,
        runtime: None,
    };
    assert!(attestor.attest(&unlisted).await.unwrap().is_none());
    assert_eq!(offsets(&source.fetches(), started), vec![ms(0), ms(500)]);
}

#[tokio::test(start_paused = true)]
async fn waiting_callers_share_each_fetch() {
    // Eight new containers of the same pod, none listed for two answers.
    let (source, attestor) = recorded(
        switch_after(2, "pods.json", "pods-web-started.json"),
        KubeletConfig::default(),
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let attestor = attestor.clone();
            tokio::spawn(async move { attestor.attest(&in_pod(ids::WEB_POD, ids::WEB)).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().is_some());
    }
    // Three fetches in all, not three per caller.
    assert_eq!(
        offsets(&source.fetches(), started),
        vec![ms(0), ms(500), ms(1000)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_fails_its_waiters_and_the_next_caller_retries() {
    let source = RecordedSource::with_latency(
        Box::new(|n| {
            if n == 0 {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    bytes::Bytes::from_static(b"starting"),
                )
            } else {
                (StatusCode::OK, fixture("pods.json"))
            }
        }),
        ms(10),
    );
    let config = KubeletConfig::default();
    let attestor = KubernetesAttestor::with_cache(
        PodCache::new(source.clone(), config.poll_interval),
        &config,
    );
    let started = Instant::now();
    let info = in_pod(ids::PROCESSOR_POD, ids::PROCESSOR);
    let (first, second) = tokio::join!(attestor.attest(&info), attestor.attest(&info));
    for result in [first, second] {
        let error = result.unwrap_err();
        assert_eq!(error.kind(), AttestErrorKind::Unavailable, "{error}");
    }
    assert_eq!(source.fetches().len(), 1);
    // Fails fast: the kubelet being down is not "container not listed yet".
    assert_eq!(started.elapsed(), ms(10));
    attestor.attest(&info).await.unwrap().unwrap();
    assert_eq!(offsets(&source.fetches(), started), vec![ms(0), ms(500)]);
}

#[tokio::test(start_paused = true)]
async fn a_pod_never_listed_fails_after_the_configured_attempts() {
    let (source, attestor) = recorded(always("pods.json"), KubeletConfig::default());
    let started = Instant::now();
    let unknown_pod = "0f0e0d0c-0b0a-4909-8807-060504030201";
    let error = attestor
        .attest(&in_pod(unknown_pod, ids::WEB))
        .await
        .unwrap_err();
    assert!(
        matches!(error, KubernetesError::PodNotListed { attempts: 60, .. }),
        "{error}"
    );
    assert_eq!(error.kind(), AttestErrorKind::DeadlineExceeded);
    // 60 requests, 500 ms apart: the ~30 s SPIRE users expect.
    assert_eq!(source.fetches().len(), 60);
    assert_eq!(started.elapsed(), ms(59 * 500));

    // Configurable.
    let config = KubeletConfig {
        max_poll_attempts: 3,
        poll_interval: ms(100),
        ..KubeletConfig::default()
    };
    let (source, attestor) = recorded(always("pods.json"), config);
    let started = Instant::now();
    let error = attestor
        .attest(&in_pod(unknown_pod, ids::WEB))
        .await
        .unwrap_err();
    assert!(
        matches!(error, KubernetesError::PodNotListed { attempts: 3, .. }),
        "{error}"
    );
    assert_eq!(
        offsets(&source.fetches(), started),
        vec![ms(0), ms(100), ms(200)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_listed_pod_without_the_container_fails_after_retries() {
    let config = KubeletConfig {
        max_poll_attempts: 4,
        ..KubeletConfig::default()
    };
    let (source, attestor) = recorded(always("pods.json"), config);
    // `web` is listed but its container has no ID yet, for good.
    let error = attestor
        .attest(&in_pod(ids::WEB_POD, ids::WEB))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            KubernetesError::ContainerNotListed { attempts: 4, pod_name, .. } if pod_name == "web-5c6f7d8b9-q4w8z"
        ),
        "{error}"
    );
    assert_eq!(error.kind(), AttestErrorKind::DeadlineExceeded);
    assert_eq!(source.fetches().len(), 4);
}

#[tokio::test]
async fn a_container_listed_in_two_pods_is_refused() {
    let s = setup(always("pods-duplicate-container.json")).await;
    let error = s
        .attestor()
        .attest(&in_pod(ids::DEBUG_POD, ids::APP))
        .await
        .unwrap_err();
    match &error {
        KubernetesError::DuplicateContainer { container_id, pods } => {
            assert_eq!(container_id, ids::APP);
            assert_eq!(pods.len(), 2, "{pods:?}");
        }
        other => panic!("unexpected {other}"),
    }
    assert_eq!(error.kind(), AttestErrorKind::PermissionDenied);
}

#[tokio::test]
async fn a_container_in_another_pod_than_its_cgroups_say_is_refused() {
    let s = setup(always("pods.json")).await;
    // The cgroups name the debug pod, the kubelet lists the container in
    // the payments pod.
    let error = s
        .attestor()
        .attest(&in_pod(ids::DEBUG_POD, ids::PROCESSOR))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, KubernetesError::PodUidMismatch { cgroup_pod_uid, listed_pod_uid, .. }
            if cgroup_pod_uid == ids::DEBUG_POD && listed_pod_uid == ids::PROCESSOR_POD),
        "{error}"
    );
    assert_eq!(error.kind(), AttestErrorKind::PermissionDenied);
}

#[tokio::test]
async fn init_sidecar_and_ephemeral_containers_are_attested() {
    let s = setup(always("pods.json")).await;
    let attestor = s.attestor();
    let envoy = attestor
        .attest(&in_pod(ids::PROCESSOR_POD, ids::ENVOY))
        .await
        .unwrap()
        .unwrap();
    let attributes = attributes_of(&envoy);
    assert_eq!(
        attributes.field(Field::KubernetesContainerName),
        Some("envoy")
    );
    assert_eq!(
        attributes.field(Field::KubernetesPodName),
        Some("processor-7d9f8b6c5-x2x7q")
    );

    let debugger = attestor
        .attest(&in_pod(ids::DEBUG_POD, ids::DEBUGGER))
        .await
        .unwrap()
        .unwrap();
    let attributes = attributes_of(&debugger);
    assert_eq!(
        attributes.field(Field::KubernetesContainerName),
        Some("debugger-x7k2p")
    );
    // A locally imported image has only its config digest.
    let image_id = attributes.field(Field::KubernetesContainerImageId).unwrap();
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    assert_eq!(s.kubelet.request_count(), 1);
}

#[tokio::test]
async fn static_pods_are_found_by_their_manifest_hash() {
    let s = setup(always("pods.json")).await;
    let info = in_pod(ids::ETCD_STATIC_POD, ids::ETCD);
    assert_eq!(
        info.pod_uid.as_ref().map(PodUid::as_str),
        Some(ids::ETCD_STATIC_POD)
    );
    let workload = s.attestor().attest(&info).await.unwrap().unwrap();
    assert_eq!(workload.pod.namespace, "kube-system");
    assert_eq!(workload.pod.name, "etcd-node-1");
}

#[tokio::test]
async fn processes_outside_pods_get_nothing_and_cost_little() {
    let s = setup(always("pods.json")).await;
    let attestor = s.attestor();
    // Not in a container: no kubelet request at all.
    let host = parse_proc_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n").unwrap();
    assert!(attestor.attest(&host).await.unwrap().is_none());
    // A plain Docker container: not a pod, no request either.
    let docker = parse_proc_cgroup(&format!("4:memory:/docker/{}\n", ids::WEB)).unwrap();
    assert!(attestor.attest(&docker).await.unwrap().is_none());
    assert_eq!(s.kubelet.request_count(), 0);
    // A container whose cgroups name no pod and that the kubelet does not
    // list: one look, then "not a pod".
    let unknown = parse_proc_cgroup(&format!("0::/../crio-{}.scope\n", "ab".repeat(32))).unwrap();
    assert!(attestor.attest(&unknown).await.unwrap().is_none());
    assert_eq!(s.kubelet.request_count(), 1);
    // ...but one it does list is attested without a pod UID.
    let listed = parse_proc_cgroup(&format!("0::/../crio-{}.scope\n", ids::APP)).unwrap();
    let workload = attestor.attest(&listed).await.unwrap().unwrap();
    assert_eq!(workload.pod.name, "debug-target");
}

#[tokio::test(start_paused = true)]
async fn an_old_list_is_refreshed_before_a_hit_is_trusted() {
    let (source, attestor) = recorded(always("pods.json"), KubeletConfig::default());
    let info = in_pod(ids::PROCESSOR_POD, ids::PROCESSOR);
    attestor.attest(&info).await.unwrap();
    tokio::time::advance(Duration::from_secs(30)).await;
    attestor.attest(&info).await.unwrap();
    assert_eq!(source.fetches().len(), 1);
    // Past pod_list_max_age (60 s): labels may have changed.
    tokio::time::advance(Duration::from_secs(31)).await;
    attestor.attest(&info).await.unwrap();
    assert_eq!(source.fetches().len(), 2);
}

#[tokio::test]
async fn the_cached_list_serves_other_callers() {
    let s = setup(always("pods.json")).await;
    let attestor = s.attestor();
    let cache = attestor.pod_cache();
    assert!(cache.snapshot().is_none());
    let list = cache.pods(Duration::from_secs(60)).await.unwrap();
    let names: Vec<_> = list
        .pods()
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    assert_eq!(
        names,
        [
            "payments/processor-7d9f8b6c5-x2x7q",
            "default/debug-target",
            "kube-system/etcd-node-1",
            "shop/web-5c6f7d8b9-q4w8z"
        ]
    );
    assert!(list.pods().iter().all(|p| p.node_name == NODE));
    // Attestation reuses it.
    attestor
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.kubelet.request_count(), 1);
    assert_eq!(cache.snapshot().unwrap().generation(), list.generation());
}

#[tokio::test]
async fn a_malformed_answer_is_an_error() {
    let s = setup(Box::new(|_| {
        (StatusCode::OK, bytes::Bytes::from_static(b"<html>"))
    }))
    .await;
    let error = s
        .attestor()
        .attest(&in_pod(ids::PROCESSOR_POD, ids::PROCESSOR))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            KubernetesError::Kubelet(KubeletError::Malformed { .. })
        ),
        "{error}"
    );
    // The recorded answers themselves parse.
    for name in [
        "pods.json",
        "pods-web-started.json",
        "pods-duplicate-container.json",
    ] {
        signet_agent::attest::kubelet::PodList::parse(&fixture(name), 1, Instant::now()).unwrap();
    }
}
