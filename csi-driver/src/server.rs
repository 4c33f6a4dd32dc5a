//! Serving the CSI services on a unix socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use signet_proto::csi::v1::identity_server::IdentityServer;
use signet_proto::csi::v1::node_server::NodeServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::DriverConfig;
use crate::service::{IdentityService, NodeService};

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
        "signet-csi serving"
    );
    let config = Arc::new(config);
    let result = tonic::transport::Server::builder()
        .add_service(IdentityServer::new(IdentityService::new(config.clone())))
        .add_service(NodeServer::new(NodeService::new(config)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    signet_runtime::uds::remove_socket(socket);
    Ok(result?)
}
