//! `WorkloadAttestor` end to end on one machine: a process in a fake procfs
//! (`HOST_PROC`-style root) whose cgroups place it in a pod, and the
//! in-process HTTPS kubelet serving RECORDED `/pods` answers
//! (`tests/fixtures/kubelet/`; no real kubelet is available here).

// Helpers outside #[test] functions unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod attest_support;

use signet_policy::Field;
use std::sync::Arc;
use std::time::Duration;

use attest_support::{Credentials, FakeKubelet, FakeProc, NODE, Pki, always, ids, pod_cgroup};
use http::StatusCode;
use signet_agent::attest::docker::{DockerAttestor, DockerAttestorConfig};
use signet_agent::attest::engine::Backoff;
use signet_agent::attest::kubelet::{KubeletClient, KubeletConfig, PodCache};
use signet_agent::attest::kubernetes::KubernetesAttestor;
use signet_agent::attest::unix::{PeerCredentials, UnixAttestor};
use signet_agent::attest::{AttestError, AttestErrorKind, WorkloadAttestor};

const TOKEN: &str = "workload-test-token";
const PID: u32 = 4242;

struct Setup {
    _credentials: Credentials,
    kubelet: FakeKubelet,
    attestor: WorkloadAttestor,
}

async fn setup(responder: attest_support::Responder, docker: Option<DockerAttestor>) -> Setup {
    let pki = Pki::new(&[NODE]);
    let credentials = Credentials::write(&pki, TOKEN);
    let kubelet = FakeKubelet::start(&pki, Some(TOKEN), responder).await;
    let config: KubeletConfig = credentials.config(&kubelet);
    let cache = PodCache::new(
        Arc::new(KubeletClient::new(config.endpoint(|_| None).unwrap())),
        config.poll_interval,
    );
    let kubernetes = KubernetesAttestor::with_cache(cache, &config);
    let attestor =
        WorkloadAttestor::from_parts(UnixAttestor::default(), Some(kubernetes), docker, None);
    Setup {
        _credentials: credentials,
        kubelet,
        attestor,
    }
}

/// A Docker attestor whose engine socket does not exist.
fn absent_docker() -> DockerAttestor {
    DockerAttestor::new(&DockerAttestorConfig {
        enabled: true,
        addr: "unix:///nonexistent/signet-test/docker.sock".into(),
    })
    .unwrap()
    .with_backoff(Backoff {
        initial: Duration::from_millis(1),
        attempts: 2,
    })
}

#[tokio::test]
async fn a_process_in_a_pod_gets_unix_and_kubernetes_attributes() {
    let s = setup(always("pods.json"), Some(absent_docker())).await;
    let process = FakeProc::new(PID, &pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR));
    let attributes = s
        .attestor
        .attest(process.peer(), process.handle())
        .await
        .unwrap();
    assert_eq!(attributes.field(Field::UnixPid), Some("4242"));
    assert!(attributes.field(Field::UnixBinaryHash).is_some());
    assert_eq!(
        attributes.field(Field::KubernetesNamespace),
        Some("payments")
    );
    assert_eq!(
        attributes.field(Field::KubernetesServiceAccount),
        Some("processor")
    );
    assert_eq!(
        attributes.field(Field::KubernetesPodUid),
        Some(ids::PROCESSOR_POD)
    );
    // The cgroups name containerd: Docker (here unreachable) is not asked.
    assert!(attributes.field(Field::DockerContainerId).is_none());
    assert_eq!(s.kubelet.request_count(), 1);
}

#[tokio::test]
async fn a_process_that_changes_during_attestation_is_refused() {
    let process = Arc::new(FakeProc::new(
        PID,
        &pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR),
    ));
    // While the kubelet is being asked, the PID is reused by another
    // process (a new start time).
    let reused = process.clone();
    let body = attest_support::fixture("pods.json");
    let s = setup(
        Box::new(move |_| {
            reused.set_start_time(999_999);
            (StatusCode::OK, body.clone())
        }),
        None,
    )
    .await;
    let error = s
        .attestor
        .attest(process.peer(), process.handle())
        .await
        .unwrap_err();
    assert!(matches!(error, AttestError::ProcessChanged(_)), "{error}");
    assert_eq!(error.kind(), AttestErrorKind::Unauthenticated);
    assert_eq!(s.kubelet.request_count(), 1);
}

#[tokio::test]
async fn a_host_process_gets_only_unix_attributes() {
    let s = setup(always("pods.json"), Some(absent_docker())).await;
    let process = FakeProc::new(
        PID,
        "12:memory:/user.slice/user-1000.slice/session-4.scope\n0::/user.slice/user-1000.slice/session-4.scope\n",
    );
    let attributes = s
        .attestor
        .attest(process.peer(), process.handle())
        .await
        .unwrap();
    assert!(attributes.field(Field::UnixUid).is_some());
    assert!(attributes.field(Field::KubernetesNamespace).is_none());
    assert_eq!(s.kubelet.request_count(), 0);
}

#[tokio::test]
async fn an_enabled_attestor_that_cannot_answer_fails_the_attestation() {
    // The kubelet refuses the agent: no silent "unix attributes only".
    let s = setup(
        Box::new(|_| (StatusCode::INTERNAL_SERVER_ERROR, bytes::Bytes::new())),
        None,
    )
    .await;
    let process = FakeProc::new(PID, &pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR));
    let error = s
        .attestor
        .attest(process.peer(), process.handle())
        .await
        .unwrap_err();
    assert!(matches!(error, AttestError::Kubernetes(_)), "{error}");
    assert_eq!(error.kind(), AttestErrorKind::Unavailable);

    // Likewise a Docker container when Docker cannot be reached.
    let s = setup(always("pods.json"), Some(absent_docker())).await;
    let process = FakeProc::new(PID, &format!("4:memory:/docker/{}\n", ids::WEB));
    let error = s
        .attestor
        .attest(process.peer(), process.handle())
        .await
        .unwrap_err();
    assert!(matches!(error, AttestError::Docker(_)), "{error}");
    assert_eq!(error.kind(), AttestErrorKind::Unavailable);
}

#[tokio::test]
async fn contradictory_evidence_is_permission_denied() {
    let s = setup(always("pods.json"), None).await;
    // Two cgroup lines naming different containers.
    let process = FakeProc::new(
        PID,
        &format!(
            "{}4:cpu:/kubepods/pod{}/{}\n",
            pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR),
            ids::PROCESSOR_POD,
            ids::ENVOY
        ),
    );
    let error = s
        .attestor
        .attest(process.peer(), process.handle())
        .await
        .unwrap_err();
    assert!(matches!(error, AttestError::Cgroups { .. }), "{error}");
    assert_eq!(error.kind(), AttestErrorKind::PermissionDenied);

    // Socket credentials that are not the process's.
    let process = FakeProc::new(PID, &pod_cgroup(ids::PROCESSOR_POD, ids::PROCESSOR));
    let forged = PeerCredentials {
        uid: process.peer().uid.wrapping_add(1),
        ..process.peer()
    };
    let error = s
        .attestor
        .attest(forged, process.handle())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), AttestErrorKind::PermissionDenied);
    assert_eq!(s.kubelet.request_count(), 0);
}
