//! Why a Workload API or SDS call failed: the one place where failures
//! become gRPC codes, following the Workload API specification and SPIRE.

use tonic::Status;

use crate::attest::AttestErrorKind;
use crate::cache::CacheError;

/// Why a Workload API or SDS call failed.
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
