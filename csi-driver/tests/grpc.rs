//! The signet-csi binary over its unix socket, with the generated CSI
//! clients: flags, Identity, Node info and error codes as the kubelet sees
//! them. Runs without root and without csi-sanity.

// Test helpers outside #[test] functions panic on setup failure too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use signet_proto::csi::v1::{
    self as csi, identity_client::IdentityClient, node_client::NodeClient, node_service_capability,
    volume_capability,
};
use tonic::Code;
use tonic::transport::Channel;

mod common;
use common::Driver;

async fn channel(path: &Path) -> Channel {
    let path = path.to_owned();
    // The URI is a placeholder: the connector ignores it.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn identity_and_node_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let kubelet = base.join("kubelet");
    let state_dir = base.join("state");
    std::fs::create_dir_all(kubelet.join("pods/uid/volumes")).unwrap();
    let socket_dir = base.join("run/signet");
    let endpoint = base.join("plugins/csi.signet.dev/csi.sock");
    let mut driver = Driver::start(
        &endpoint,
        &[
            "--socket-dir".as_ref(),
            socket_dir.as_os_str(),
            "--kubelet-dir".as_ref(),
            kubelet.as_os_str(),
            "--driver-name".as_ref(),
            "csi.example.org".as_ref(),
            "--log-format".as_ref(),
            "json".as_ref(),
            // Hermetic: nothing read from or written to the host's default.
            "--state-dir".as_ref(),
            state_dir.as_os_str(),
        ],
    );
    // Only the kubelet (root) may talk to the driver.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&endpoint).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let channel = channel(&endpoint).await;
    let mut identity = IdentityClient::new(channel.clone());
    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "csi.example.org");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = identity
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.is_empty(), "{caps:?}");

    // Not ready until the agent's socket directory exists.
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(false));
    std::fs::create_dir_all(&socket_dir).unwrap();
    let probe = identity
        .probe(csi::ProbeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(probe.ready, Some(true));

    let mut node = NodeClient::new(channel);
    let info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "test-node");
    let caps = node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| {
            c.r#type
                .map(|node_service_capability::Type::Rpc(rpc)| rpc.r#type)
        })
        .collect();
    use node_service_capability::rpc::Type;
    assert_eq!(
        kinds,
        vec![
            Type::GetVolumeStats as i32,
            Type::VolumeCondition as i32,
            Type::VolumeMountGroup as i32
        ]
    );

    let status = node
        .node_stage_volume(csi::NodeStageVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let status = node
        .node_expand_volume(csi::NodeExpandVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);

    // A writable volume: the message tells the pod author what to change.
    let target = kubelet.join("pods/uid/volumes/mount");
    let status = node
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: "csi-1".to_owned(),
            target_path: target.to_str().unwrap().to_owned(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(
                    volume_capability::MountVolume::default(),
                )),
                access_mode: None,
            }),
            readonly: false,
            volume_context: HashMap::from([(
                "csi.storage.k8s.io/ephemeral".to_owned(),
                "true".to_owned(),
            )]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("readOnly: true"),
        "{}",
        status.message()
    );
    assert!(!target.exists());

    let stopped = driver.stop();
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    assert!(!endpoint.exists(), "the driver left its socket behind");
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_signet-csi"))
            .args(args)
            .env_remove("SIGNET_NODE_NAME")
            .output()
            .unwrap()
    };
    let out = run(&[
        "--node-id",
        "n",
        "--socket-dir",
        "/s",
        "--driver-name",
        "csi/signet",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--driver-name"), "{stderr}");

    let out = run(&[
        "--node-id",
        "n",
        "--socket-dir",
        "/s",
        "--endpoint",
        "tcp://127.0.0.1:1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unix://"));

    // No node id at all.
    let out = run(&["--socket-dir", "/s"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"));
}
