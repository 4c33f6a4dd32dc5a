//! One tonic server for the Workload API, Envoy SDS and gRPC health on the
//! agent's unix socket.

use std::sync::Arc;

use signet_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use signet_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::UnixListener;

use super::idle::CallTrackingLayer;
use super::limits::ConnectionTracker;
use super::peer::{PeerInfo, incoming};
use super::sds::SdsService;
use super::state::ServerState;
use super::workload::WorkloadApiService;
use crate::attest::procfs::ProcRoot;

/// Serves the Workload API, SDS and health on `listener` until `shutdown`.
pub async fn serve(
    listener: UnixListener,
    proc_root: ProcRoot,
    state: Arc<ServerState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<SpiffeWorkloadApiServer<WorkloadApiService>>()
        .await;
    reporter
        .set_serving::<SecretDiscoveryServiceServer<SdsService>>()
        .await;
    let tracker = ConnectionTracker::new(state.limits.clone(), state.metrics.clone());
    let streams_per_connection = state.limits.streams_per_connection;
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    tonic::transport::Server::builder()
        .max_concurrent_streams(streams_per_connection)
        .layer(CallTrackingLayer::<PeerInfo>::new())
        .add_service(health)
        .add_service(SpiffeWorkloadApiServer::new(WorkloadApiService::new(
            state.clone(),
        )))
        .add_service(SecretDiscoveryServiceServer::new(SdsService::new(state)))
        .serve_with_incoming_shutdown(incoming(listener, proc_root, tracker), shutdown)
        .await
}
