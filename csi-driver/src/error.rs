//! Errors of the CSI services and their gRPC status codes. The kubelet shows
//! the message in the pod's events, so every message says what to fix.

use tonic::{Code, Status};

use crate::files_mode::FilesError;
use crate::mounts::MountError;
use crate::paths::PathError;
use crate::pod_info::PodInfoError;

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(
        "signet-csi volumes are filesystem volumes: use a mount volume capability, not block \
         (volumeMode: Filesystem)"
    )]
    BlockAccess,
    #[error(
        "signet-csi only serves inline ephemeral volumes: declare the volume in the pod's \
         spec.volumes[].csi (not through a PersistentVolume), and keep \
         volumeLifecycleModes: [Ephemeral] and podInfoOnMount: true in the CSIDriver \
         (the kubelet only sends csi.storage.k8s.io/ephemeral with podInfoOnMount)"
    )]
    NotEphemeral,
    #[error("signet-csi volumes are read-only: set readOnly: true on the pod's csi volume")]
    NotReadOnly,
    #[error("unknown volumeAttributes.mode {0:?}: use socket (the default) or files")]
    UnknownMode(String),
    #[error(
        "unknown volume attribute {0:?}: signet-csi reads mode and, in files mode, jwtAudiences"
    )]
    UnknownAttribute(String),
    #[error("volume attribute {0:?} only applies to mode: files")]
    FilesOnlyAttribute(String),
    #[error(transparent)]
    PodInfo(#[from] PodInfoError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("volume {volume_id:?} is not published at {path:?}")]
    NotPublished { volume_id: String, path: String },
    #[error(
        "{0} is not supported by signet-csi (inline ephemeral volumes need no staging or expansion)"
    )]
    Unimplemented(&'static str),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CsiError {
    pub fn code(&self) -> Code {
        match self {
            Self::Missing(_)
            | Self::BlockAccess
            | Self::NotEphemeral
            | Self::NotReadOnly
            | Self::UnknownMode(_)
            | Self::UnknownAttribute(_)
            | Self::FilesOnlyAttribute(_) => Code::InvalidArgument,
            // The CSIDriver object is misconfigured, not the request.
            Self::PodInfo(PodInfoError::Missing(_)) => Code::FailedPrecondition,
            Self::PodInfo(_) => Code::InvalidArgument,
            Self::Files(error) => match error {
                FilesError::NoIdentity { .. } | FilesError::Refused { .. } => {
                    Code::FailedPrecondition
                }
                FilesError::Timeout { .. } => Code::Unavailable,
                FilesError::OtherTarget { .. } => Code::AlreadyExists,
                FilesError::State(_) => Code::Internal,
            },
            Self::Path(error) => match error {
                PathError::Empty
                | PathError::Relative(_)
                | PathError::ParentReference(_)
                | PathError::Nul(_)
                | PathError::NoName(_)
                | PathError::Outside { .. }
                | PathError::Symlink(_)
                | PathError::ParentMissing { .. } => Code::InvalidArgument,
                PathError::NotADirectory(_) | PathError::PodsDir { .. } => Code::FailedPrecondition,
                PathError::Io { .. } => Code::Internal,
            },
            Self::Mount(error) => match error {
                MountError::SocketDir { .. }
                | MountError::PrivateSocket { .. }
                | MountError::Occupied { .. }
                | MountError::NotEmpty { .. } => Code::FailedPrecondition,
                MountError::Raced { .. } => Code::Aborted,
                MountError::Io { .. } => Code::Internal,
            },
            Self::NotPublished { .. } => Code::NotFound,
            Self::Unimplemented(_) => Code::Unimplemented,
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<CsiError> for Status {
    fn from(error: CsiError) -> Self {
        // The full source chain goes into the message: the kubelet only
        // shows this string.
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Status::new(error.code(), message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn codes_and_messages() {
        let status = Status::from(CsiError::NotReadOnly);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("readOnly: true"));
        let status = Status::from(CsiError::Path(PathError::Relative(PathBuf::from("a/b"))));
        assert_eq!(status.code(), Code::InvalidArgument);
        let status = Status::from(CsiError::Mount(MountError::SocketDir {
            path: PathBuf::from("/run/signet"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("--socket-dir"),
            "{}",
            status.message()
        );
        let status = Status::from(CsiError::Unimplemented("NodeStageVolume"));
        assert_eq!(status.code(), Code::Unimplemented);
        let status = Status::from(CsiError::PodInfo(PodInfoError::Missing(
            crate::pod_info::POD_UID_KEY,
        )));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("podInfoOnMount: true"));
        let status = Status::from(CsiError::Files(FilesError::NoIdentity {
            pod: "payments/web-0 (u)".into(),
        }));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("entitled to no SPIFFE identity"));
        let status = Status::from(CsiError::Files(FilesError::Timeout {
            pod: "payments/web-0 (u)".into(),
            timeout: std::time::Duration::from_secs(30),
            reason: "the agent has not answered yet".into(),
        }));
        assert_eq!(status.code(), Code::Unavailable);
    }
}
