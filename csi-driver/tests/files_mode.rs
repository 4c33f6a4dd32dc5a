//! Files mode with real tmpfs mounts in a temporary directory (root only),
//! fed by a real standalone stack: the `signet-operator` and
//! `signet-agent` binaries (built by `cargo build --bins`, as `make test`
//! does), with the agent's delegated API on an admin socket in the stack's
//! directory. Policy changes make the agent issue new SVIDs, which is how
//! the tests trigger a renewal without waiting for half-life.
//!
//! Proves: the files and their modes (with and without the pod's fsGroup),
//! idempotent publish (one mount in /proc/self/mountinfo), path traversal
//! rejected with nothing mounted, files replaced while a reader holds the
//! old ones open, unpublish unmounting, a restarted driver resuming renewal
//! from its state directory, and publish failing cleanly when the pod is
//! entitled to nothing or the agent cannot be reached.

// Test helpers outside #[test] functions panic on setup failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signet_e2e::deadline::{Deadline, Stopwatch, wall_now};

use rustix::mount::UnmountFlags;
use signet_csi::config::{DriverConfig, FilesConfig};
use signet_csi::mountinfo;
use signet_csi::service::{EPHEMERAL_KEY, NodeService};
use signet_e2e::standalone::Stack;
use signet_identity::x509::certs_from_pem;
use signet_identity::{PrivateKey, TrustBundle, TrustDomain, validate_jwt_svid, verify_x509_svid};
use signet_proto::csi::v1::{self as csi, node_server::Node, volume_capability};
use tonic::{Code, Request};

#[allow(clippy::print_stderr)] // the reason a test did not run
fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

/// Why tmpfs mounts cannot be made here, if they cannot.
fn cannot_mount(dir: &Path) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("tmpfs mounts need root (run the tests as root)".to_owned());
    }
    let target = dir.join("probe");
    std::fs::create_dir_all(&target).unwrap();
    match rustix::mount::mount(
        "probe",
        &target,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    ) {
        Ok(()) => {
            rustix::mount::unmount(&target, UnmountFlags::DETACH).unwrap();
            None
        }
        Err(error) => Some(format!(
            "root but tmpfs mounts are not permitted here: {error}"
        )),
    }
}

/// Pods in namespace `payments` get `/ns/<ns>/sa/<sa>`; `san` is the DNS
/// SAN, changed to make the agent issue new SVIDs.
fn policy(san: &str) -> String {
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: pods, labels: {{suite: csi}}}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.kubernetes.namespace, eq: payments}}]
  spiffe:
    id: "/ns/{{{{ workload.kubernetes.namespace }}}}/sa/{{{{ workload.kubernetes.service_account }}}}"
    hint: payments
    x509:
      ttl: 1h
      dnsSans: ["{san}"]
    jwt: {{ttl: 5m}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {{name: csi-agents}}
spec:
  subjects: [{{kind: Agent, name: "*"}}]
  allow: {{workloadIdentityLabels: {{suite: [csi]}}}}
"#
    )
}

const SPIFFE_ID: &str = "spiffe://example.org/ns/payments/sa/api";

/// A kubelet-like tree in a temp dir, a driver service on it, and the
/// stack; whatever a failed test left mounted is lazily unmounted.
struct Fixture {
    dir: tempfile::TempDir,
    base: PathBuf,
    pods: PathBuf,
    config: Arc<DriverConfig>,
    service: Option<NodeService>,
    stack: Stack,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.service.take();
        if let Ok(entries) = mountinfo::read() {
            for entry in entries.iter().rev() {
                if entry.mount_point.starts_with(&self.base) {
                    let _ = rustix::mount::unmount(&entry.mount_point, UnmountFlags::DETACH);
                }
            }
        }
        let _ = &self.dir;
    }
}

impl Fixture {
    fn service(&self) -> &NodeService {
        self.service.as_ref().unwrap()
    }

    /// The parent the kubelet creates for a pod's volume, and the target.
    fn target(&self, pod_uid: &str, volume: &str) -> PathBuf {
        let parent = self
            .pods
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(volume);
        std::fs::create_dir_all(&parent).unwrap();
        parent.join("mount")
    }

    fn bundle(&self) -> TrustBundle {
        let json = std::fs::read(self.stack.path("operator/bundle.spiffe.json")).unwrap();
        TrustBundle::from_spiffe_json(TrustDomain::new("example.org").unwrap(), &json).unwrap()
    }
}

fn fixture_with(publish_timeout: Duration, admin_socket: Option<PathBuf>) -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    if let Some(reason) = cannot_mount(dir.path()) {
        skip(&reason);
        return None;
    }
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let mut stack = Stack::operator_only(&policy("web.payments.svc"));
    let admin = stack.path("admin/admin.sock");
    stack.set_agent_extra(&format!("admin_listen: unix://{}\n", admin.display()));
    stack.start_agent();
    let deadline = Deadline::after(Duration::from_secs(20));
    while !admin.exists() {
        assert!(
            !deadline.passed(),
            "the agent's admin socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kubelet = base.join("kubelet");
    let pods = kubelet.join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let socket_dir = base.join("run/signet");
    std::fs::create_dir_all(&socket_dir).unwrap();
    let config = Arc::new(DriverConfig {
        driver_name: "csi.signet.dev".to_owned(),
        node_id: "node-1".to_owned(),
        socket_dir,
        kubelet_dir: kubelet,
        files: FilesConfig {
            admin_socket: admin_socket.unwrap_or(admin),
            state_dir: base.join("state"),
            pod_token_audience: "signet-csi".to_owned(),
            publish_timeout,
        },
    });
    Some(Fixture {
        dir,
        base,
        pods,
        service: Some(NodeService::new(config.clone())),
        config,
        stack,
    })
}

fn fixture() -> Option<Fixture> {
    fixture_with(Duration::from_secs(20), None)
}

/// A JWT-shaped token, as the kubelet's tokenRequests would pass.
const POD_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3ZWItMCJ9.c2ln";

fn publish_request(
    target: &Path,
    pod_uid: &str,
    namespace: &str,
    extra: &[(&str, &str)],
) -> csi::NodePublishVolumeRequest {
    let mut context = HashMap::from([
        (EPHEMERAL_KEY.to_owned(), "true".to_owned()),
        ("mode".to_owned(), "files".to_owned()),
        ("csi.storage.k8s.io/pod.name".to_owned(), "web-0".to_owned()),
        (
            "csi.storage.k8s.io/pod.namespace".to_owned(),
            namespace.to_owned(),
        ),
        ("csi.storage.k8s.io/pod.uid".to_owned(), pod_uid.to_owned()),
        (
            "csi.storage.k8s.io/serviceAccount.name".to_owned(),
            "api".to_owned(),
        ),
        (
            "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
            format!(
                r#"{{"signet-csi": {{"token": "{POD_TOKEN}", "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}"#
            ),
        ),
    ]);
    for (key, value) in extra {
        context.insert((*key).to_owned(), (*value).to_owned());
    }
    csi::NodePublishVolumeRequest {
        volume_id: format!("csi-{pod_uid}"),
        target_path: target.to_str().unwrap().to_owned(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: true,
        volume_context: context,
        ..Default::default()
    }
}

fn with_mount_group(
    mut request: csi::NodePublishVolumeRequest,
    group: &str,
) -> csi::NodePublishVolumeRequest {
    request.volume_capability = Some(csi::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(
            volume_capability::MountVolume {
                volume_mount_group: group.to_owned(),
                ..Default::default()
            },
        )),
        access_mode: None,
    });
    request
}

fn unpublish_request(target: &Path, pod_uid: &str) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: format!("csi-{pod_uid}"),
        target_path: target.to_str().unwrap().to_owned(),
    }
}

fn mounts_at(path: &Path) -> Vec<mountinfo::MountEntry> {
    mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|e| e.mount_point == path)
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o777
}

/// Reads `svid.pem`, `svid_key.pem` and `bundle.pem`: the key must be the
/// leaf's, the chain verify against `bundle` and name the pod's identity,
/// and bundle.pem hold the trust domain's authorities. Returns the leaf's
/// DNS SANs.
fn read_svid(dir: &Path, bundle: &TrustBundle) -> Result<Vec<String>, String> {
    use x509_parser::prelude::FromDer;
    let read =
        |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let chain = certs_from_pem(&read("svid.pem")?).map_err(|e| e.to_string())?;
    let key = PrivateKey::from_pkcs8_pem(&read("svid_key.pem")?).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("empty svid.pem")?;
    let (_, parsed) =
        x509_parser::certificate::X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    if parsed.public_key().raw != key.public_key().spki_der() {
        return Err("svid_key.pem is not the key of svid.pem".into());
    }
    let verified = verify_x509_svid(&chain, bundle, wall_now()).map_err(|e| e.to_string())?;
    if verified.spiffe_id.as_str() != SPIFFE_ID {
        return Err(format!("unexpected SPIFFE ID {}", verified.spiffe_id));
    }
    let authorities = certs_from_pem(&read("bundle.pem")?).map_err(|e| e.to_string())?;
    if authorities != bundle.x509_authorities {
        return Err("bundle.pem is not the trust domain's bundle".into());
    }
    Ok(verified.dns_sans)
}

fn check_svid(dir: &Path, bundle: &TrustBundle) -> Vec<String> {
    read_svid(dir, bundle).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Waits for `svid.pem` to name `san` (a renewal after a policy change).
fn wait_for_san(dir: &Path, bundle: &TrustBundle, san: &str) {
    let deadline = Deadline::after(Duration::from_secs(30));
    loop {
        let sans = read_svid(dir, bundle);
        if matches!(&sans, Ok(sans) if sans.iter().any(|s| s == san)) {
            return;
        }
        assert!(
            !deadline.passed(),
            "svid.pem never got the SAN {san}: {sans:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn stats(service: &NodeService, target: &Path, pod_uid: &str) -> csi::VolumeCondition {
    service
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: format!("csi-{pod_uid}"),
            volume_path: target.to_str().unwrap().to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .volume_condition
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_have_the_right_modes_and_publish_is_idempotent() {
    let Some(f) = fixture() else { return };
    let target = f.target("pod-a", "svid");
    let request = publish_request(
        &target,
        "pod-a",
        "payments",
        &[("jwtAudiences", "vault, https://sts.example.com")],
    );
    f.service()
        .node_publish_volume(Request::new(request.clone()))
        .await
        .unwrap();

    // One tmpfs, not executable, no devices, no set-uid.
    let mounts = mounts_at(&target);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(
        (mounts[0].fs_type.as_str(), mounts[0].source.as_str()),
        ("tmpfs", "signet-csi")
    );
    for option in ["nosuid", "nodev", "noexec"] {
        assert!(mounts[0].has_option(option), "{option} missing: {mounts:?}");
    }

    // The files: keys readable by the pod's users (no fsGroup given).
    let bundle = f.bundle();
    assert_eq!(check_svid(&target, &bundle), ["web.payments.svc"]);
    for (name, expected) in [
        ("svid.pem", 0o644),
        ("svid_key.pem", 0o644),
        ("bundle.pem", 0o644),
        ("jwt_vault.token", 0o644),
        ("jwt_https%3A%2F%2Fsts.example.com.token", 0o644),
    ] {
        assert_eq!(mode(&target.join(name)), expected, "{name}");
        assert_eq!(
            std::fs::metadata(target.join(name)).unwrap().uid(),
            0,
            "{name}"
        );
    }
    for audience in ["vault", "https://sts.example.com"] {
        let name = signet_csi::pod_info::Audience::new(audience)
            .unwrap()
            .file_name();
        let token = std::fs::read_to_string(target.join(name)).unwrap();
        let jwt = validate_jwt_svid(&token, audience, &bundle, wall_now()).unwrap();
        assert_eq!(jwt.spiffe_id.as_str(), SPIFFE_ID);
    }

    // The kubelet publishes again (restart, requiresRepublish): still one
    // mount, the same files.
    let before = std::fs::read(target.join("svid.pem")).unwrap();
    f.service()
        .node_publish_volume(Request::new(request.clone()))
        .await
        .unwrap();
    assert_eq!(mounts_at(&target).len(), 1);
    assert_eq!(std::fs::read(target.join("svid.pem")).unwrap(), before);

    let condition = stats(f.service(), &target, "pod-a").await;
    assert!(!condition.abnormal, "{condition:?}");
    assert!(condition.message.contains(SPIFFE_ID), "{condition:?}");

    // The volume is recorded for restarts, without keys or tokens.
    let records: Vec<PathBuf> = std::fs::read_dir(f.base.join("state/volumes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(records.len(), 1);
    assert_eq!(mode(&records[0]), 0o600);
    assert_eq!(mode(&f.base.join("state")), 0o700);
    let record = std::fs::read_to_string(&records[0]).unwrap();
    assert!(
        record.contains("pod-a") && !record.contains(POD_TOKEN),
        "{record}"
    );
    assert!(!record.contains("PRIVATE KEY"));

    // With the pod's fsGroup: keys and JWTs belong to root and the group,
    // readable by the group only.
    let grouped = f.target("pod-b", "svid");
    f.service()
        .node_publish_volume(Request::new(with_mount_group(
            publish_request(&grouped, "pod-b", "payments", &[("jwtAudiences", "vault")]),
            "2000",
        )))
        .await
        .unwrap();
    for (name, expected) in [
        ("svid.pem", 0o644),
        ("bundle.pem", 0o644),
        ("svid_key.pem", 0o640),
        ("jwt_vault.token", 0o640),
    ] {
        let meta = std::fs::metadata(grouped.join(name)).unwrap();
        assert_eq!(
            (meta.mode() & 0o777, meta.uid(), meta.gid()),
            (expected, 0, 2000),
            "{name}"
        );
    }

    // Unpublish: unmounted, gone, forgotten; again is fine.
    for (path, uid) in [(&target, "pod-a"), (&grouped, "pod-b")] {
        f.service()
            .node_unpublish_volume(Request::new(unpublish_request(path, uid)))
            .await
            .unwrap();
        assert!(mounts_at(path).is_empty());
        assert!(!path.exists());
        f.service()
            .node_unpublish_volume(Request::new(unpublish_request(path, uid)))
            .await
            .unwrap();
    }
    assert_eq!(
        std::fs::read_dir(f.base.join("state/volumes"))
            .unwrap()
            .count(),
        0
    );
    let status = f
        .service()
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-pod-a".to_owned(),
            volume_path: target.to_str().unwrap().to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_replaced_while_a_reader_holds_the_old_ones_open() {
    let Some(f) = fixture() else { return };
    let target = f.target("pod-r", "svid");
    f.service()
        .node_publish_volume(Request::new(publish_request(
            &target,
            "pod-r",
            "payments",
            &[],
        )))
        .await
        .unwrap();
    let bundle = f.bundle();
    let old_cert = std::fs::read(target.join("svid.pem")).unwrap();
    let old_key = std::fs::read(target.join("svid_key.pem")).unwrap();
    let mut held_cert = std::fs::File::open(target.join("svid.pem")).unwrap();
    let mut held_key = std::fs::File::open(target.join("svid_key.pem")).unwrap();

    // The policy changes: the agent issues a new SVID (new key), the
    // driver replaces the files.
    f.stack
        .write_policy("policy.yaml", &policy("web-v2.payments.svc"));
    wait_for_san(&target, &bundle, "web-v2.payments.svc");

    // The reader's open files still hold the old, consistent pair...
    let mut cert = Vec::new();
    held_cert.rewind().unwrap();
    held_cert.read_to_end(&mut cert).unwrap();
    let mut key = Vec::new();
    held_key.rewind().unwrap();
    held_key.read_to_end(&mut key).unwrap();
    assert_eq!(cert, old_cert);
    assert_eq!(key, old_key);
    // ...while a new open gets the new pair (checked to match).
    assert_ne!(std::fs::read(target.join("svid.pem")).unwrap(), old_cert);
    assert_ne!(std::fs::read(target.join("svid_key.pem")).unwrap(), old_key);
    check_svid(&target, &bundle);

    // One set of files left, no temporaries: `..data`, one data
    // directory, and the visible names.
    let names: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let (hidden, visible): (Vec<&String>, Vec<&String>) =
        names.iter().partition(|name| name.starts_with('.'));
    let mut visible: Vec<&str> = visible.into_iter().map(String::as_str).collect();
    visible.sort_unstable();
    assert_eq!(visible, ["bundle.pem", "svid.pem", "svid_key.pem"]);
    assert_eq!(hidden.len(), 2, "..data and one set: {names:?}");
    let current = std::fs::read_link(target.join("..data")).unwrap();
    assert!(
        hidden
            .iter()
            .any(|name| Path::new(name.as_str()) == current)
    );
    assert_eq!(mounts_at(&target).len(), 1);

    f.service()
        .node_unpublish_volume(Request::new(unpublish_request(&target, "pod-r")))
        .await
        .unwrap();
    assert!(mounts_at(&target).is_empty());
    // The held files were in the tmpfs: still readable, still old.
    held_cert.rewind().unwrap();
    let mut after = Vec::new();
    held_cert.read_to_end(&mut after).unwrap();
    assert_eq!(after, old_cert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_driver_resumes_renewal_from_its_state_dir() {
    let Some(mut f) = fixture() else { return };
    let target = f.target("pod-s", "svid");
    f.service()
        .node_publish_volume(Request::new(publish_request(
            &target,
            "pod-s",
            "payments",
            &[],
        )))
        .await
        .unwrap();
    // A record of a volume that went away while the driver was down.
    let gone = f.target("pod-gone", "svid");
    signet_csi::state::StateDir::new(&f.config.files.state_dir)
        .save(&signet_csi::state::VolumeRecord::new(
            "csi-pod-gone".to_owned(),
            gone.clone(),
            signet_csi::pod_info::PodInfo {
                uid: "pod-gone".into(),
                namespace: "payments".into(),
                name: "web-1".into(),
                service_account: "api".into(),
            },
            Vec::new(),
            None,
        ))
        .unwrap();

    // The driver stops as on SIGTERM (its renewal with it); the mount stays.
    f.service().files().stop_all().await;
    f.service.take();
    assert_eq!(mounts_at(&target).len(), 1);
    let bundle = f.bundle();
    check_svid(&target, &bundle);

    // A new driver process: resumes the mounted volume, drops the other.
    let restarted = NodeService::new(f.config.clone());
    assert_eq!(restarted.resume_files().await, 1);
    assert_eq!(restarted.files().volume_ids(), ["csi-pod-s"]);
    assert_eq!(
        std::fs::read_dir(f.base.join("state/volumes"))
            .unwrap()
            .count(),
        1,
        "the stale record is gone"
    );
    f.service = Some(restarted);

    // Renewal works again: a policy change reaches the files.
    f.stack
        .write_policy("policy.yaml", &policy("web-v3.payments.svc"));
    wait_for_san(&target, &bundle, "web-v3.payments.svc");
    let condition = stats(f.service(), &target, "pod-s").await;
    assert!(!condition.abnormal, "{condition:?}");

    // The kubelet re-publishes after the restart: nothing stacks.
    f.service()
        .node_publish_volume(Request::new(publish_request(
            &target,
            "pod-s",
            "payments",
            &[],
        )))
        .await
        .unwrap();
    assert_eq!(mounts_at(&target).len(), 1);

    f.service()
        .node_unpublish_volume(Request::new(unpublish_request(&target, "pod-s")))
        .await
        .unwrap();
    assert!(mounts_at(&target).is_empty());
    assert_eq!(
        std::fs::read_dir(f.base.join("state/volumes"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_bad_targets_and_pods_without_identity() {
    let Some(f) = fixture() else { return };

    // '..' in the path, and a pod directory symlinked outside the pods dir.
    let outside = f.base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dotdot = PathBuf::from(format!(
        "{}/../../../../../outside/mount",
        f.target("pod-t", "svid").parent().unwrap().display()
    ));
    let evil = f.pods.join("pod-evil");
    std::os::unix::fs::symlink(&outside, &evil).unwrap();
    for bad in [dotdot, evil.join("mount"), outside.join("mount")] {
        let status = f
            .service()
            .node_publish_volume(Request::new(publish_request(
                &bad,
                "pod-t",
                "payments",
                &[],
            )))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
    }
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

    // A pod the policy gives nothing: refused, and nothing left behind.
    let target = f.target("pod-n", "svid");
    let status = f
        .service()
        .node_publish_volume(Request::new(publish_request(&target, "pod-n", "shop", &[])))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("entitled to no SPIFFE identity"),
        "{}",
        status.message()
    );
    assert!(mounts_at(&target).is_empty());
    assert!(!target.exists());

    // Without podInfoOnMount the kubelet sends no pod: FailedPrecondition.
    let mut no_pod = publish_request(&target, "pod-n", "payments", &[]);
    no_pod
        .volume_context
        .remove("csi.storage.k8s.io/serviceAccount.name");
    let status = f
        .service()
        .node_publish_volume(Request::new(no_pod))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("podInfoOnMount"), "{status:?}");

    // Something else mounted on the target: refused, not stacked.
    std::fs::create_dir_all(&target).unwrap();
    rustix::mount::mount(
        "other",
        &target,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    let status = f
        .service()
        .node_publish_volume(Request::new(publish_request(
            &target,
            "pod-n",
            "payments",
            &[],
        )))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(mounts_at(&target).len(), 1);

    let mounted: Vec<_> = mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|e| e.mount_point.starts_with(&f.base) && e.source == "signet-csi")
        .collect();
    assert!(mounted.is_empty(), "{mounted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_with_unavailable_when_the_agent_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let missing = std::fs::canonicalize(dir.path())
        .unwrap()
        .join("no-agent/admin.sock");
    let Some(f) = fixture_with(Duration::from_secs(2), Some(missing.clone())) else {
        return;
    };
    let target = f.target("pod-u", "svid");
    let started = Stopwatch::start();
    let status = f
        .service()
        .node_publish_volume(Request::new(publish_request(
            &target,
            "pod-u",
            "payments",
            &[],
        )))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(missing.to_str().unwrap()),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded wait");
    assert!(mounts_at(&target).is_empty());
    assert!(!target.exists());
    assert!(
        !f.base.join("state/volumes").exists()
            || std::fs::read_dir(f.base.join("state/volumes"))
                .unwrap()
                .count()
                == 0
    );
}
