//! What the Workload API and SDS handlers share, and attesting a caller.

use std::sync::Arc;
use std::time::Duration;

use signet_policy::{Attributes, Field};
use signet_runtime::audit::CredentialKind;
use signet_runtime::clock::Clock;
use tokio::sync::watch;
use tonic::Request;

use super::audit::LocalAudit;
use super::error::ApiError;
use super::limits::ConnectionLimits;
use super::peer::PeerInfo;
use crate::attest::procfs::ProcError;
use crate::attest::unix::PeerCredentials;
use crate::attest::{AttestErrorKind, WorkloadAttestor};
use crate::cache::SvidCache;
use crate::metrics::Metrics;

/// [`ServerState::reattest_interval`] unless configured.
pub const DEFAULT_REATTEST_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the Workload API and SDS handlers share.
pub struct ServerState {
    pub cache: SvidCache,
    pub attestor: Arc<WorkloadAttestor>,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    /// How long a first answer waits for SVIDs (or the policy).
    pub first_svid_timeout: Duration,
    /// Set when the server stops, so open streams end (with Unavailable:
    /// clients reconnect) and graceful shutdown does not wait for them.
    pub stopping: watch::Sender<bool>,
    /// Refusals made here, without the issuer.
    pub audit: Arc<LocalAudit>,
    /// Bounds on connections and streams per caller.
    pub limits: ConnectionLimits,
    /// How long a caller's attributes are reused for further calls on its
    /// connection (zero: every call is attested).
    pub reattest_interval: Duration,
}

impl ServerState {
    pub fn new(
        cache: SvidCache,
        attestor: Arc<WorkloadAttestor>,
        metrics: Arc<Metrics>,
        clock: Clock,
        first_svid_timeout: Duration,
        audit: Arc<LocalAudit>,
    ) -> Self {
        Self {
            cache,
            attestor,
            metrics,
            clock,
            first_svid_timeout,
            stopping: watch::channel(false).0,
            audit,
            limits: ConnectionLimits::default(),
            reattest_interval: DEFAULT_REATTEST_INTERVAL,
        }
    }

    /// Resolves when the server is stopping.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }

    /// Attests the caller of `request` (asking for `credential`) with the
    /// process handle taken when its connection was accepted. A refusal is
    /// audited.
    pub async fn attest<T>(
        &self,
        request: &Request<T>,
        credential: CredentialKind,
    ) -> Result<Attributes, ApiError> {
        let result = self.attest_peer(request).await;
        if let Err(error) = &result {
            let peer = request
                .extensions()
                .get::<PeerInfo>()
                .and_then(|info| info.credentials);
            self.audit.refused(peer, None, credential, error);
        }
        result
    }

    /// Audits `result` when it refuses the attested `workload` (no
    /// identity), and passes it on.
    pub fn audited<T>(
        &self,
        workload: &Attributes,
        credential: CredentialKind,
        result: Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        if let Err(error @ ApiError::NoIdentity(_)) = &result {
            let peer = peer_of(workload);
            self.audit.refused(peer, Some(workload), credential, error);
        }
        result
    }

    async fn attest_peer<T>(&self, request: &Request<T>) -> Result<Attributes, ApiError> {
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
                    ProcError::Gone { .. }
                    | ProcError::Changed { .. }
                    | ProcError::ExitedBeforeAccept { .. } => ApiError::ProcessChanged(format!(
                        "process {} could not be inspected when it connected: {error}",
                        peer.pid
                    )),
                    other => ApiError::NoPeer(other.to_string()),
                });
            }
        };
        // A later call on the connection: the process it was attested as is
        // pinned, so checking that it has not changed (start time, uids,
        // gids, executable) is enough while the attributes are fresh.
        if let Some(attributes) = info.attested.fresh(self.reattest_interval) {
            return match process.verify_unchanged() {
                Ok(()) => Ok(attributes),
                Err(error) => {
                    self.metrics
                        .attestation_failure(AttestErrorKind::Unauthenticated);
                    Err(ApiError::ProcessChanged(format!(
                        "process {} exited or changed since it was attested on this connection (PID reuse?): {error}",
                        peer.pid
                    )))
                }
            };
        }
        match self.attestor.attest(peer, process).await {
            Ok(attributes) => {
                info.attested.remember(&attributes);
                Ok(attributes)
            }
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

    /// Waits up to `first_svid_timeout` for the first policy.
    pub async fn wait_for_policy(&self) -> Result<(), ApiError> {
        self.cache
            .wait_for_policy(self.first_svid_timeout)
            .await
            .map_err(|_| {
                ApiError::Unavailable(
                    "the agent has not received its policy from the issuer yet".into(),
                )
            })
    }
}

/// The caller's credentials as attested (for the audit's per-uid windows).
fn peer_of(workload: &Attributes) -> Option<PeerCredentials> {
    let number = |field| workload.field(field)?.parse().ok();
    Some(PeerCredentials {
        pid: number(Field::UnixPid)?,
        uid: number(Field::UnixUid)?,
        gid: number(Field::UnixGid)?,
    })
}
