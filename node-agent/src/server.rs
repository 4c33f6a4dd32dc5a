//! The Workload API socket: accepting connections with the caller's
//! credentials, attesting callers, and serving the SPIFFE Workload API, Envoy
//! SDS and gRPC health on one tonic server.
//!
//! Peer credentials (`SO_PEERCRED`) are read once per connection, and the
//! caller's `/proc/<pid>` is opened right then: attestation later reads
//! through that handle, so a process that exits and whose PID is reused
//! cannot be mistaken for the one that connected.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use signet_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use signet_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::{Request, Status};

use crate::attest::procfs::{ProcError, ProcRoot, ProcessHandle};
use crate::attest::unix::PeerCredentials;
use crate::attest::{AttestErrorKind, Attributes, WorkloadAttestor};
use crate::cache::{CacheError, SvidCache};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::policy_watch::AgentPolicy;
use crate::sds::SdsService;
use crate::workload_api::WorkloadApiService;
use signet_runtime::h2_authority::FixedAuthority;

/// Why a Workload API or SDS call failed. The one place where failures
/// become gRPC codes, following the Workload API specification and SPIRE.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("security header workload.spiffe.io: true is missing from the request")]
    MissingHeader,
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the caller cannot be identified: {0}")]
    NoPeer(String),
    /// The process exited or was replaced (PID reuse) before it was attested.
    #[error("refusing to attest the caller: {0}")]
    ProcessChanged(String),
    #[error("workload attestation failed: {message}")]
    Attestation {
        kind: AttestErrorKind,
        message: String,
    },
    #[error("no identity issued: {0}")]
    NoIdentity(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid JWT-SVID: {0}")]
    InvalidToken(String),
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::MissingHeader | ApiError::InvalidArgument(_) | ApiError::InvalidToken(_) => {
                Status::invalid_argument(message)
            }
            ApiError::ProcessChanged(_) | ApiError::NoIdentity(_) => {
                Status::permission_denied(message)
            }
            // Contradictory evidence is a refusal; everything else about
            // attestation is transient (SPIRE answers Unavailable).
            ApiError::Attestation {
                kind: AttestErrorKind::PermissionDenied,
                ..
            } => Status::permission_denied(message),
            ApiError::NoPeer(_) | ApiError::Attestation { .. } | ApiError::Unavailable(_) => {
                Status::unavailable(message)
            }
        }
    }
}

impl From<CacheError> for ApiError {
    fn from(error: CacheError) -> Self {
        match error {
            CacheError::NoIdentity(reason) => Self::NoIdentity(reason),
            CacheError::Stopped => Self::Unavailable("the agent is shutting down".into()),
            CacheError::Sign(error) => Self::Unavailable(error.to_string()),
            CacheError::NoPolicy => {
                Self::Unavailable("waiting for the policy from the issuer".into())
            }
        }
    }
}

/// The status code a call result maps to, for metrics.
pub fn code_of<T>(result: &Result<T, Status>) -> tonic::Code {
    match result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

// === connections ===

/// What the server knows about the peer of one connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub credentials: Option<PeerCredentials>,
    /// The caller's process, opened at accept time.
    pub process: Result<Arc<ProcessHandle>, Arc<ProcError>>,
}

/// An accepted unix connection carrying its [`PeerInfo`] into every request.
pub type PeerStream = FixedAuthority<PeerInfo>;

/// Reads the caller's credentials and opens its process, once, at accept time.
pub fn accept_peer(stream: UnixStream, proc_root: &ProcRoot) -> PeerStream {
    let credentials = stream.peer_cred().ok().and_then(|cred| {
        Some(PeerCredentials {
            pid: u32::try_from(cred.pid()?).ok()?,
            uid: cred.uid(),
            gid: cred.gid(),
        })
    });
    let process = match credentials {
        Some(peer) => proc_root.open(peer.pid).map(Arc::new).map_err(Arc::new),
        None => Err(Arc::new(ProcError::Gone { pid: 0 })),
    };
    FixedAuthority::with_info(
        stream,
        PeerInfo {
            credentials,
            process,
        },
    )
}

/// Accepted connections for `serve_with_incoming`. Accept errors (e.g. out
/// of descriptors) are logged and retried rather than ending the server.
pub fn incoming(
    listener: UnixListener,
    proc_root: ProcRoot,
) -> impl Stream<Item = Result<PeerStream, io::Error>> {
    futures::stream::unfold((listener, proc_root), |(listener, proc_root)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let accepted = accept_peer(stream, &proc_root);
                    return Some((Ok(accepted), (listener, proc_root)));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a Workload API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

// === shared state ===

/// Everything the Workload API and SDS handlers share.
pub struct ServerState {
    pub cache: SvidCache,
    pub policy: watch::Receiver<Option<Arc<AgentPolicy>>>,
    pub attestor: Arc<WorkloadAttestor>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// How long a first answer waits for SVIDs (or the policy).
    pub first_svid_timeout: Duration,
    /// Set when the server stops, so open streams end (with Unavailable:
    /// clients reconnect) and graceful shutdown does not wait for them.
    pub stopping: watch::Sender<bool>,
}

impl ServerState {
    pub fn new(
        cache: SvidCache,
        policy: watch::Receiver<Option<Arc<AgentPolicy>>>,
        attestor: Arc<WorkloadAttestor>,
        metrics: Arc<Metrics>,
        clock: Clock,
        first_svid_timeout: Duration,
    ) -> Self {
        Self {
            cache,
            policy,
            attestor,
            metrics,
            clock,
            first_svid_timeout,
            stopping: watch::channel(false).0,
        }
    }

    /// Resolves when the server is stopping.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Attests the caller of `request` with the process handle taken when
    /// its connection was accepted.
    pub async fn attest<T>(&self, request: &Request<T>) -> Result<Attributes, ApiError> {
        let info = request
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| ApiError::NoPeer("not a unix socket connection".into()))?;
        let peer = info
            .credentials
            .ok_or_else(|| ApiError::NoPeer("no peer credentials on the socket".into()))?;
        let process = match &info.process {
            Ok(process) => process.clone(),
            Err(error) => {
                self.metrics
                    .attestation_failure(AttestErrorKind::Unauthenticated);
                return Err(match error.as_ref() {
                    ProcError::Gone { .. } | ProcError::Changed { .. } => {
                        ApiError::ProcessChanged(format!(
                            "process {} could not be inspected when it connected: {error}",
                            peer.pid
                        ))
                    }
                    other => ApiError::NoPeer(other.to_string()),
                });
            }
        };
        match self.attestor.attest(peer, process).await {
            Ok(attributes) => Ok(attributes),
            Err(error) => {
                let kind = error.kind();
                self.metrics.attestation_failure(kind);
                tracing::warn!(pid = peer.pid, uid = peer.uid, %error, "attestation failed");
                Err(if kind == AttestErrorKind::Unauthenticated {
                    ApiError::ProcessChanged(format!(
                        "process {} exited or changed during attestation (PID reuse?): {error}",
                        peer.pid
                    ))
                } else {
                    ApiError::Attestation {
                        kind,
                        message: error.to_string(),
                    }
                })
            }
        }
    }

    /// The policy in force, waiting up to `first_svid_timeout` for the first.
    pub async fn policy(&self) -> Result<Arc<AgentPolicy>, ApiError> {
        let mut receiver = self.policy.clone();
        let waited =
            tokio::time::timeout(self.first_svid_timeout, receiver.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(policy)) => policy
                .clone()
                .ok_or_else(|| ApiError::Unavailable("no policy".into())),
            _ => Err(ApiError::Unavailable(
                "the agent has not received its policy from the issuer yet".into(),
            )),
        }
    }
}

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
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(SpiffeWorkloadApiServer::new(WorkloadApiService::new(
            state.clone(),
        )))
        .add_service(SecretDiscoveryServiceServer::new(SdsService::new(state)))
        .serve_with_incoming_shutdown(incoming(listener, proc_root), shutdown)
        .await
}
