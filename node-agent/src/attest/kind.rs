//! How an attestation failed, for callers to map to a status: the one type
//! every attestor's error reduces to.

/// What kind of failure an attestation error is, for the caller to map to
/// a status (the Workload API maps each to the gRPC code of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttestErrorKind {
    /// The caller is gone or changed (PID reuse): who it is is unknown.
    Unauthenticated,
    /// The evidence contradicts itself (credentials, cgroups, the kubelet's
    /// list): the caller must not get an identity from it.
    PermissionDenied,
    /// The agent is misconfigured.
    FailedPrecondition,
    /// The kubelet or a container engine could not be asked; retry.
    Unavailable,
    /// The container stayed unknown to its runtime through every retry.
    DeadlineExceeded,
    /// A bug or an unexpected local failure.
    Internal,
}
