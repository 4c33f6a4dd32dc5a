//! The Podman attestor against a REAL Podman API service (Debian's podman
//! 4.3, as root; `tests/setup-podman.sh` installs it). Each test run starts
//! its own `podman system service` on a socket the test binds and hands
//! over by systemd socket activation, so the service is reachable the
//! moment it is spawned. The test image is made locally from the static
//! busybox binary with `podman import`; nothing is pulled.
//!
//! Containers are run with explicit `--ulimit nofile=...,nproc=...`: as
//! installed, rootful podman raises NOFILE/NPROC to values above this
//! sandbox's hard limits, and without CAP_SYS_RESOURCE runc then fails with
//! "error setting rlimit type 6/7: operation not permitted". (A
//! containers.conf `default_ulimits` with values under the hard limits works
//! too; `--ulimit host` does not on 4.3.) Pods are created without an infra
//! container, which would need the catatonit pause image.
//!
//! Without podman the tests print a SKIPPED line and pass, unless
//! `SIGNET_REQUIRE_PODMAN=1` is set, which turns that into a failure.

// Helpers outside #[test] functions unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use signet_policy::{Field, LabelMap};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use signet_agent::attest::cgroup::{ContainerId, ContainerInfo, ContainerRuntime};
use signet_agent::attest::engine::{Backoff, EngineError};
use signet_agent::attest::podman::{PodmanAttestor, PodmanAttestorConfig, PodmanError};
use signet_agent::attest::procfs::ProcRoot;
use signet_agent::attest::unix::PeerCredentials;
use signet_agent::attest::{AttestErrorKind, AttestorsConfig, WorkloadAttestor};

const IMAGE: &str = "localhost/signet-attest-test:dev";
/// Under this sandbox's hard limits (see the module comment).
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

fn podman(args: &[&str]) -> Result<String, String> {
    let output = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running podman: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A `podman system service` of this test binary, stopped on drop.
struct Service {
    dir: tempfile::TempDir,
    child: Child,
}

impl Service {
    fn addr(&self) -> String {
        format!("unix://{}", self.dir.path().join("podman.sock").display())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_service() -> Result<Service, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let listener = UnixListener::bind(dir.path().join("podman.sock")).map_err(|e| e.to_string())?;
    // Socket activation: the listening socket becomes fd 3 of the service,
    // which accepts the connections queued on it.
    let child = Command::new("sh")
        .args([
            "-c",
            "exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec podman system service --time=0",
        ])
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting podman system service: {e}"))?;
    Ok(Service { dir, child })
}

/// A service for one test (stopped when the test ends), or why there is
/// none. Podman and the image are checked once per test binary.
fn service() -> Result<Service, String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            podman(&["version", "--format", "{{.Client.Version}}"])?;
            build_image()
        })
        .clone()?;
    start_service()
}

fn build_image() -> Result<(), String> {
    if podman(&["image", "exists", IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = std::path::Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    let rootfs = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir(rootfs.path().join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy(busybox, rootfs.path().join("bin/busybox")).map_err(|e| e.to_string())?;
    let script = format!(
        "tar -C {} -c . | podman import -c 'ENTRYPOINT [\"/bin/busybox\"]' - {IMAGE}",
        rootfs.path().display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building {IMAGE} failed"))
    }
}

/// The service when the test may run; otherwise reports the skip on the
/// real stderr (not captured by the harness), or fails when Podman is
/// required.
fn podman_or_skip(test: &str) -> Option<Service> {
    match service() {
        Ok(service) => Some(service),
        Err(reason) => {
            if std::env::var("SIGNET_REQUIRE_PODMAN").as_deref() == Ok("1") {
                panic!("{test}: Podman is required (SIGNET_REQUIRE_PODMAN=1) but {reason}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {reason}; run node-agent/tests/setup-podman.sh as root, and set SIGNET_REQUIRE_PODMAN=1 to fail instead of skipping"
            );
            None
        }
    }
}

/// Podman objects removed on drop.
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for command in &self.0 {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let _ = podman(&args);
        }
    }
}

fn unique(name: &str) -> String {
    format!("signet-attest-{}-{name}", std::process::id())
}

fn run_container(name: &str, extra: &[&str], cleanup: &mut Cleanup) -> (String, u32) {
    let _ = podman(&["rm", "-f", name]);
    let mut args = vec!["run", "-d", "--network", "none", "--name", name];
    args.extend_from_slice(&ULIMITS);
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, "sleep", "300"]);
    let id = podman(&args).unwrap();
    // `-t 0`: busybox as PID 1 ignores SIGTERM; do not wait 10 s for it.
    cleanup.0.insert(
        0,
        vec![
            "rm".into(),
            "-f".into(),
            "-t".into(),
            "0".into(),
            id.clone(),
        ],
    );
    let pid = podman(&["inspect", "-f", "{{.State.Pid}}", &id])
        .unwrap()
        .parse()
        .unwrap();
    (id, pid)
}

fn attestor_for(service: &Service) -> WorkloadAttestor {
    let config: AttestorsConfig = serde_yaml::from_str(&format!(
        "podman: {{enabled: true, addr: \"{}\"}}",
        service.addr()
    ))
    .unwrap();
    WorkloadAttestor::new(&config).unwrap()
}

fn peer_of(process: &signet_agent::attest::procfs::ProcessHandle) -> PeerCredentials {
    PeerCredentials {
        pid: process.pid(),
        uid: process.identity().effective_uid(),
        gid: process.identity().effective_gid(),
    }
}

#[tokio::test]
async fn a_process_in_a_podman_pod_is_attested() {
    let Some(service) = podman_or_skip("a_process_in_a_podman_pod_is_attested") else {
        return;
    };
    let mut cleanup = Cleanup(Vec::new());
    let pod = unique("pod");
    let _ = podman(&["pod", "rm", "-f", &pod]);
    podman(&[
        "pod",
        "create",
        "--infra=false",
        "--name",
        &pod,
        "--label",
        "team=payments",
    ])
    .unwrap();
    cleanup.0.push(vec![
        "pod".into(),
        "rm".into(),
        "-f".into(),
        "-t".into(),
        "0".into(),
        pod.clone(),
    ]);
    let name = unique("in-pod");
    let (id, pid) = run_container(
        &name,
        &["--pod", &pod, "--label", "app=processor"],
        &mut cleanup,
    );

    let process = Arc::new(ProcRoot::from_env().open(pid).unwrap());
    let attributes = attestor_for(&service)
        .attest(peer_of(&process), process)
        .await
        .unwrap();
    assert_eq!(
        attributes.field(Field::PodmanContainerId),
        Some(id.as_str())
    );
    assert_eq!(
        attributes.field(Field::PodmanContainerName),
        Some(name.as_str())
    );
    assert_eq!(attributes.field(Field::PodmanImage), Some(IMAGE));
    let image_id = podman(&["image", "inspect", "-f", "{{.Id}}", IMAGE]).unwrap();
    assert_eq!(
        attributes.field(Field::PodmanImageId),
        Some(format!("sha256:{image_id}").as_str())
    );
    assert_eq!(
        attributes.label(LabelMap::PodmanLabels, "app"),
        Some("processor")
    );
    assert_eq!(attributes.field(Field::PodmanPodName), Some(pod.as_str()));
    assert_eq!(
        attributes.label(LabelMap::PodmanPodLabels, "team"),
        Some("payments")
    );
}

#[tokio::test]
async fn a_container_outside_pods_has_no_pod_attributes() {
    let Some(service) = podman_or_skip("a_container_outside_pods_has_no_pod_attributes") else {
        return;
    };
    let mut cleanup = Cleanup(Vec::new());
    let name = unique("standalone");
    let (id, pid) = run_container(&name, &[], &mut cleanup);
    let process = Arc::new(ProcRoot::from_env().open(pid).unwrap());
    let attributes = attestor_for(&service)
        .attest(peer_of(&process), process)
        .await
        .unwrap();
    assert_eq!(
        attributes.field(Field::PodmanContainerId),
        Some(id.as_str())
    );
    assert!(attributes.field(Field::PodmanPodName).is_none());
}

#[tokio::test]
async fn a_podman_container_podman_does_not_know_is_an_error_after_retries() {
    let Some(service) =
        podman_or_skip("a_podman_container_podman_does_not_know_is_an_error_after_retries")
    else {
        return;
    };
    let attestor = PodmanAttestor::new(&PodmanAttestorConfig {
        enabled: true,
        addr: Some(service.addr()),
    })
    .unwrap()
    .with_backoff(Backoff {
        initial: Duration::from_millis(5),
        attempts: 3,
    });
    let unknown = ContainerInfo {
        container_id: ContainerId::parse(&"7c".repeat(32)),
        pod_uid: None,
        runtime: Some(ContainerRuntime::Podman),
    };
    let error = attestor.attest(&unknown).await.unwrap_err();
    assert!(
        matches!(
            error,
            PodmanError::Engine(EngineError::NotFound { attempts: 3, .. })
        ),
        "{error}"
    );
    assert_eq!(error.kind(), AttestErrorKind::DeadlineExceeded);
}
