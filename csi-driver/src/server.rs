//! Serving the CSI services on a unix socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use signet_proto::csi::v1::identity_server::IdentityServer;
use signet_proto::csi::v1::node_server::NodeServer;

use crate::config::DriverConfig;
use crate::service::{IdentityService, NodeService};

/// How long in-flight calls get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding the CSI endpoint: {0}")]
    Bind(#[from] signet_runtime::uds::UdsError),
    #[error("serving CSI: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds `socket` (0600: only the kubelet, running as root, talks to it) and
/// serves Identity and Node until `shutdown` resolves; then removes the socket.
pub async fn serve(
    socket: &Path,
    config: DriverConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = signet_runtime::uds::bind_unix_listener(socket, 0o600)?;
    tracing::info!(
        endpoint = %socket.display(),
        driver = config.driver_name,
        node_id = config.node_id,
        socket_dir = %config.socket_dir.display(),
        pods_dir = %config.pods_dir().display(),
        agent_admin_socket = %config.files.admin_socket.display(),
        state_dir = %config.files.state_dir.display(),
        "signet-csi serving"
    );
    let config = Arc::new(config);
    let node = NodeService::new(config.clone());
    // Files-mode volumes published before a restart keep being renewed.
    let resumed = node.resume_files().await;
    if resumed > 0 {
        tracing::info!(volumes = resumed, "resumed renewing files-mode volumes");
    }
    let files = node.files().clone();
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let server = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(config.clone())))
        .add_service(NodeServer::new(node))
        // The kubelet's gRPC client sends the socket path as :authority.
        .serve_with_incoming_shutdown(
            signet_runtime::h2_authority::unix_incoming(listener),
            signal,
        );
    // A graceful shutdown waits for clients to hang up, and the kubelet keeps
    // its connection open: after a short grace period, stop anyway (mounts
    // outlive the process).
    let grace = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = grace => {
            tracing::info!("clients still connected after the shutdown grace period; stopping");
            Ok(())
        }
    };
    signet_runtime::uds::remove_socket(socket);
    // The files stay; a restarted driver resumes renewing them.
    files.stop_all().await;
    tracing::info!("signet-csi stopped");
    Ok(result?)
}
