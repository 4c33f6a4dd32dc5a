//! Socket mode with real bind mounts in a temporary directory (root only):
//! idempotent publish, read-only enforcement, path traversal and symlink
//! escapes rejected, idempotent unpublish.

// Test helpers outside #[test] functions panic on setup failure too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::mount::UnmountFlags;
use signet_csi::config::{DriverConfig, FilesConfig};
use signet_csi::mountinfo;
use signet_csi::service::{EPHEMERAL_KEY, NodeService};
use signet_proto::csi::v1::{self as csi, node_server::Node, volume_capability};
use tonic::{Code, Request};

#[allow(clippy::print_stderr)] // the reason a test did not run
fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

/// Why mount tests cannot run here, if they cannot.
fn cannot_mount(dir: &Path) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("bind mounts need root (run the tests as root)".to_owned());
    }
    let source = dir.join("probe-source");
    let target = dir.join("probe-target");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::create_dir_all(&target).unwrap();
    match rustix::mount::mount_bind(&source, &target) {
        Ok(()) => {
            rustix::mount::unmount(&target, UnmountFlags::DETACH).unwrap();
            None
        }
        Err(error) => Some(format!(
            "root but bind mounts are not permitted here: {error}"
        )),
    }
}

/// A kubelet-like tree in a temp dir; lazily unmounts whatever a failed
/// test left behind before the directory is removed.
struct Fixture {
    dir: tempfile::TempDir,
    pods: PathBuf,
    socket_dir: PathBuf,
    volume_dir: PathBuf,
    service: NodeService,
    _agent: std::os::unix::net::UnixListener,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(entries) = mountinfo::read() {
            let base = std::fs::canonicalize(self.dir.path()).unwrap_or_default();
            for entry in entries.iter().rev() {
                if entry.mount_point.starts_with(&base) {
                    let _ = rustix::mount::unmount(&entry.mount_point, UnmountFlags::DETACH);
                }
            }
        }
    }
}

fn fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    if let Some(reason) = cannot_mount(dir.path()) {
        skip(&reason);
        return None;
    }
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let kubelet = base.join("kubelet");
    let pods = kubelet.join("pods");
    let volume_dir = pods.join("pod-uid-1/volumes/kubernetes.io~csi/spiffe");
    std::fs::create_dir_all(&volume_dir).unwrap();
    let socket_dir = base.join("run/signet");
    std::fs::create_dir_all(&socket_dir).unwrap();
    let agent = std::os::unix::net::UnixListener::bind(socket_dir.join("agent.sock")).unwrap();
    // The Workload API socket is open to every local process, like the agent's.
    std::fs::set_permissions(
        socket_dir.join("agent.sock"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let service = NodeService::new(Arc::new(DriverConfig {
        driver_name: "csi.signet.dev".to_owned(),
        node_id: "node-1".to_owned(),
        socket_dir: socket_dir.clone(),
        kubelet_dir: kubelet,
        files: FilesConfig {
            admin_socket: base.join("no-agent/admin.sock"),
            state_dir: base.join("state"),
            pod_token_audience: "signet-csi".to_owned(),
            publish_timeout: std::time::Duration::from_secs(1),
        },
    }));
    Some(Fixture {
        dir,
        pods,
        socket_dir,
        volume_dir,
        service,
        _agent: agent,
    })
}

fn publish_request(target: &Path) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: "csi-0123".to_owned(),
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
        volume_context: HashMap::from([
            (EPHEMERAL_KEY.to_owned(), "true".to_owned()),
            ("csi.storage.k8s.io/pod.name".to_owned(), "web-0".to_owned()),
            (
                "csi.storage.k8s.io/pod.uid".to_owned(),
                "pod-uid-1".to_owned(),
            ),
        ]),
        ..Default::default()
    }
}

fn unpublish_request(target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: "csi-0123".to_owned(),
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

async fn publish_code(service: &NodeService, req: csi::NodePublishVolumeRequest) -> Code {
    match service.node_publish_volume(Request::new(req)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn publish_is_idempotent_read_only_and_unpublish_cleans_up() {
    let Some(f) = fixture() else { return };
    let target = f.volume_dir.join("mount");

    f.service
        .node_publish_volume(Request::new(publish_request(&target)))
        .await
        .unwrap();
    // A kubelet retry or restart publishes again: still one mount.
    f.service
        .node_publish_volume(Request::new(publish_request(&target)))
        .await
        .unwrap();
    let mounts = mounts_at(&target);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    for option in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(mounts[0].has_option(option), "{option} missing: {mounts:?}");
    }

    // The pod sees the agent socket...
    assert!(target.join("agent.sock").exists());
    // ...and cannot write, even as root.
    let error = std::fs::write(target.join("planted"), b"x").unwrap_err();
    assert_eq!(
        error.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );
    assert!(!f.socket_dir.join("planted").exists());

    // Stats and condition of the published volume.
    let stats = f
        .service
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-0123".to_owned(),
            volume_path: target.to_str().unwrap().to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage.len(), 2);
    let condition = stats.volume_condition.unwrap();
    assert!(!condition.abnormal, "{condition:?}");

    // The agent recreates its directory: running pods keep the old one,
    // and the volume condition says so.
    let moved = f.socket_dir.with_file_name("signet-old");
    std::fs::rename(&f.socket_dir, &moved).unwrap();
    std::fs::create_dir(&f.socket_dir).unwrap();
    let stats = f
        .service
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-0123".to_owned(),
            volume_path: target.to_str().unwrap().to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let condition = stats.volume_condition.unwrap();
    assert!(condition.abnormal, "{condition:?}");
    assert!(
        condition.message.contains("restart the pod"),
        "{condition:?}"
    );
    std::fs::remove_dir(&f.socket_dir).unwrap();
    std::fs::rename(&moved, &f.socket_dir).unwrap();

    f.service
        .node_unpublish_volume(Request::new(unpublish_request(&target)))
        .await
        .unwrap();
    assert!(mounts_at(&target).is_empty());
    assert!(!target.exists());
    // The agent's directory is untouched.
    assert!(f.socket_dir.join("agent.sock").exists());

    // Unpublish again, and for a pod whose directories are gone: fine.
    f.service
        .node_unpublish_volume(Request::new(unpublish_request(&target)))
        .await
        .unwrap();
    let gone = f
        .pods
        .join("pod-uid-gone/volumes/kubernetes.io~csi/spiffe/mount");
    f.service
        .node_unpublish_volume(Request::new(unpublish_request(&gone)))
        .await
        .unwrap();

    // Stats of an unpublished path: NotFound.
    let status = f
        .service
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-0123".to_owned(),
            volume_path: target.to_str().unwrap().to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn traversal_and_symlink_escapes_are_rejected() {
    let Some(f) = fixture() else { return };
    let base = f.pods.parent().unwrap().parent().unwrap().to_owned();
    let outside = base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();

    // '..' in the path, even if it would land back inside.
    let dotdot = PathBuf::from(format!(
        "{}/../../../../outside/mount",
        f.volume_dir.display()
    ));
    assert_eq!(
        publish_code(&f.service, publish_request(&dotdot)).await,
        Code::InvalidArgument
    );
    // A symlinked pod directory pointing outside the pods dir.
    let evil_pod = f.pods.join("pod-uid-evil");
    std::os::unix::fs::symlink(&outside, &evil_pod).unwrap();
    assert_eq!(
        publish_code(&f.service, publish_request(&evil_pod.join("mount"))).await,
        Code::InvalidArgument
    );
    // A symlink as the target itself.
    let link = f.volume_dir.join("mount");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    assert_eq!(
        publish_code(&f.service, publish_request(&link)).await,
        Code::InvalidArgument
    );
    // Outside the kubelet entirely, and relative.
    assert_eq!(
        publish_code(&f.service, publish_request(&outside.join("mount"))).await,
        Code::InvalidArgument
    );
    let mut relative = publish_request(&link);
    relative.target_path = "pods/x/mount".to_owned();
    assert_eq!(
        publish_code(&f.service, relative).await,
        Code::InvalidArgument
    );

    // Nothing was mounted or created anywhere.
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    let base_mounts: Vec<_> = mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|e| e.mount_point.starts_with(&base))
        .collect();
    assert!(base_mounts.is_empty(), "{base_mounts:?}");
}

#[tokio::test]
async fn request_checks_say_what_to_fix() {
    let Some(f) = fixture() else { return };
    let target = f.volume_dir.join("mount");

    let mut writable = publish_request(&target);
    writable.readonly = false;
    let status = f
        .service
        .node_publish_volume(Request::new(writable))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("readOnly: true"),
        "{}",
        status.message()
    );

    let mut persistent = publish_request(&target);
    persistent.volume_context.remove(EPHEMERAL_KEY);
    let status = f
        .service
        .node_publish_volume(Request::new(persistent))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("inline ephemeral"),
        "{}",
        status.message()
    );

    let mut block = publish_request(&target);
    block.volume_capability = Some(csi::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(
            volume_capability::BlockVolume {},
        )),
        access_mode: None,
    });
    assert_eq!(publish_code(&f.service, block).await, Code::InvalidArgument);

    // Files mode without the full pod info: the CSIDriver lacks
    // podInfoOnMount (this request has no namespace or service account).
    let mut files = publish_request(&target);
    files
        .volume_context
        .insert("mode".to_owned(), "files".to_owned());
    let status = f
        .service
        .node_publish_volume(Request::new(files))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("podInfoOnMount: true"),
        "{}",
        status.message()
    );

    // JWT audiences are for files mode only.
    let mut audiences = publish_request(&target);
    audiences
        .volume_context
        .insert("jwtAudiences".to_owned(), "vault".to_owned());
    assert_eq!(
        publish_code(&f.service, audiences).await,
        Code::InvalidArgument
    );

    let mut typo = publish_request(&target);
    typo.volume_context
        .insert("mdoe".to_owned(), "socket".to_owned());
    assert_eq!(publish_code(&f.service, typo).await, Code::InvalidArgument);
    assert!(!target.exists());

    // The agent's root-only admin socket beside the Workload API socket:
    // refused, it must not show up in pods.
    let admin_path = f.socket_dir.join("admin.sock");
    let admin = std::os::unix::net::UnixListener::bind(&admin_path).unwrap();
    std::fs::set_permissions(
        &admin_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let status = f
        .service
        .node_publish_volume(Request::new(publish_request(&target)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("admin.sock"),
        "{}",
        status.message()
    );
    assert!(!target.exists() || mounts_at(&target).is_empty());
    drop(admin);
    std::fs::remove_file(&admin_path).unwrap();
    let _ = std::fs::remove_dir(&target);

    // The agent's socket directory is missing: FailedPrecondition.
    std::fs::remove_file(f.socket_dir.join("agent.sock")).unwrap();
    std::fs::remove_dir(&f.socket_dir).unwrap();
    let status = f
        .service
        .node_publish_volume(Request::new(publish_request(&target)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("signet-agent"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_half_done_or_foreign_mount_is_not_stacked() {
    let Some(f) = fixture() else { return };
    let target = f.volume_dir.join("mount");

    // Crash between the bind and the read-only remount: a writable bind.
    std::fs::create_dir(&target).unwrap();
    rustix::mount::mount_bind(&f.socket_dir, &target).unwrap();
    assert!(!mounts_at(&target)[0].has_option("ro"));
    f.service
        .node_publish_volume(Request::new(publish_request(&target)))
        .await
        .unwrap();
    let mounts = mounts_at(&target);
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(mounts[0].has_option("ro"));
    f.service
        .node_unpublish_volume(Request::new(unpublish_request(&target)))
        .await
        .unwrap();

    // Something else mounted on the target: refused, not stacked.
    let other = f.pods.parent().unwrap().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::create_dir(&target).unwrap();
    rustix::mount::mount_bind(&other, &target).unwrap();
    let status = f
        .service
        .node_publish_volume(Request::new(publish_request(&target)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(mounts_at(&target).len(), 1);
    // Unpublish removes whatever is mounted there.
    f.service
        .node_unpublish_volume(Request::new(unpublish_request(&target)))
        .await
        .unwrap();
    assert!(mounts_at(&target).is_empty());
    assert!(!target.exists());
}
