//! [`WorkloadAttestor`] runs the configured attestors for one caller: unix
//! first (credentials, binary), then the container attestors (Kubernetes,
//! Docker, Podman) on the container found in the caller's cgroups, and
//! finally checks that the process did not change meanwhile. A container
//! or pod named by the cgroups is only believed when the path is the
//! runtime's own and, where the engine names the container's first process,
//! the caller shares its namespaces (`forgery.rs`). Unlike tbot,
//! every failure of an enabled attestor fails the attestation: silently
//! dropping attributes could make a deny rule miss.

use std::path::PathBuf;
use std::sync::Arc;

use signet_policy::Attributes;

use super::cgroup::{CgroupError, parse_proc_cgroup};
use super::config::AttestorsConfig;
use super::docker::{DockerAttestor, DockerError};
use super::forgery::{ForgeryError, check_cgroup_paths, check_shares_namespaces};
use super::kind::AttestErrorKind;
use super::kubernetes::{KubernetesAttestor, KubernetesError};
use super::podman::{PodmanAttestor, PodmanError};
use super::procfs::{ProcError, ProcessHandle};
use super::unix::{PeerCredentials, UnixAttestor, UnixError};

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("unix attestation: {0}")]
    Unix(#[from] UnixError),
    #[error("reading the cgroups of process {pid}: {source}")]
    ReadCgroups {
        pid: u32,
        #[source]
        source: ProcError,
    },
    #[error("locating the container of process {pid}: {source}")]
    Cgroups {
        pid: u32,
        #[source]
        source: CgroupError,
    },
    #[error("kubernetes attestation: {0}")]
    Kubernetes(#[from] KubernetesError),
    #[error("docker attestation: {0}")]
    Docker(#[from] DockerError),
    #[error("podman attestation: {0}")]
    Podman(#[from] PodmanError),
    #[error("refusing a forged container identity: {0}")]
    Forged(#[from] ForgeryError),
    #[error("refusing attestation: {0}")]
    ProcessChanged(#[source] ProcError),
    #[error("attestation task failed: {reason}")]
    Task { reason: String },
}

fn proc_error_kind(error: &ProcError) -> AttestErrorKind {
    match error {
        ProcError::Gone { .. }
        | ProcError::Changed { .. }
        | ProcError::ExitedBeforeAccept { .. } => AttestErrorKind::Unauthenticated,
        ProcError::Io { .. } | ProcError::Parse { .. } => AttestErrorKind::Internal,
    }
}

impl AttestError {
    pub fn kind(&self) -> AttestErrorKind {
        match self {
            Self::Unix(UnixError::Proc(error)) => proc_error_kind(error),
            Self::Unix(UnixError::CredentialMismatch { .. }) => AttestErrorKind::PermissionDenied,
            Self::Unix(UnixError::Hash { .. }) => AttestErrorKind::Internal,
            Self::ReadCgroups { source, .. } => proc_error_kind(source),
            Self::Cgroups { source, .. } => match source {
                CgroupError::ConflictingContainerIds { .. }
                | CgroupError::ConflictingPodUids { .. } => AttestErrorKind::PermissionDenied,
                CgroupError::Malformed { .. } => AttestErrorKind::Internal,
            },
            Self::Kubernetes(error) => error.kind(),
            Self::Docker(error) => error.kind(),
            Self::Podman(error) => error.kind(),
            Self::Forged(_) => AttestErrorKind::PermissionDenied,
            Self::ProcessChanged(_) => AttestErrorKind::Unauthenticated,
            Self::Task { .. } => AttestErrorKind::Internal,
        }
    }
}

/// All enabled attestors, shared by every connection of the agent.
#[derive(Debug)]
pub struct WorkloadAttestor {
    unix: Arc<UnixAttestor>,
    kubernetes: Option<KubernetesAttestor>,
    docker: Option<DockerAttestor>,
    podman: Option<PodmanAttestor>,
    /// Where the agent sees the cgroup hierarchies (`/sys/fs/cgroup`, or
    /// `SIGNET_CGROUP_ROOT`), to check who owns a container's cgroup.
    cgroup_root: PathBuf,
}

/// `/sys/fs/cgroup`, or the directory named by `SIGNET_CGROUP_ROOT` (an
/// agent in a container with the host's cgroupfs mounted elsewhere).
fn cgroup_root_from_env() -> PathBuf {
    match std::env::var_os("SIGNET_CGROUP_ROOT") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("/sys/fs/cgroup"),
    }
}

impl WorkloadAttestor {
    /// Builds the enabled attestors. The Kubernetes attestor reads
    /// `SIGNET_NODE_NAME`/`SIGNET_NODE_IP` for unset kubelet settings.
    pub fn new(config: &AttestorsConfig) -> Result<Self, AttestError> {
        let kubernetes = match &config.kubernetes {
            Some(k) if k.enabled => Some(KubernetesAttestor::new(&k.kubelet)?),
            _ => None,
        };
        let docker = match &config.docker {
            Some(d) if d.enabled => Some(DockerAttestor::new(d)?),
            _ => None,
        };
        let podman = match &config.podman {
            Some(p) if p.enabled => Some(PodmanAttestor::new(p)?),
            _ => None,
        };
        Ok(Self::from_parts(
            UnixAttestor::new(config.unix.clone()),
            kubernetes,
            docker,
            podman,
        ))
    }

    /// Assembles already-built attestors (tests, benchmarks, or an agent
    /// sharing its pod cache).
    pub fn from_parts(
        unix: UnixAttestor,
        kubernetes: Option<KubernetesAttestor>,
        docker: Option<DockerAttestor>,
        podman: Option<PodmanAttestor>,
    ) -> Self {
        Self {
            unix: Arc::new(unix),
            kubernetes,
            docker,
            podman,
            cgroup_root: cgroup_root_from_env(),
        }
    }

    /// Replaces where the cgroup hierarchies are looked for.
    pub fn with_cgroup_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.cgroup_root = root.into();
        self
    }

    /// The Kubernetes attestor, whose pod cache also serves pre-issuance.
    pub fn kubernetes(&self) -> Option<&KubernetesAttestor> {
        self.kubernetes.as_ref()
    }

    /// Attests the process behind a connection. `peer` are the socket's
    /// credentials, `process` the handle opened for `peer.pid` when the
    /// connection was accepted.
    pub async fn attest(
        &self,
        peer: PeerCredentials,
        process: Arc<ProcessHandle>,
    ) -> Result<Attributes, AttestError> {
        let pid = process.pid();
        let wants_cgroups =
            self.kubernetes.is_some() || self.docker.is_some() || self.podman.is_some();
        let unix = self.unix.clone();
        let handle = process.clone();
        // The unix attestor may hash a large binary: keep it off the
        // async workers.
        let (mut attributes, cgroups) = tokio::task::spawn_blocking(move || {
            let mut attributes = Attributes::default();
            unix.attest(peer, &handle, &mut attributes)?;
            let cgroups = if wants_cgroups {
                Some(
                    handle
                        .cgroup()
                        .map_err(|source| AttestError::ReadCgroups { pid, source })?,
                )
            } else {
                None
            };
            Ok::<_, AttestError>((attributes, cgroups))
        })
        .await
        .map_err(|error| AttestError::Task {
            reason: error.to_string(),
        })??;

        if let Some(cgroups) = cgroups {
            let info = parse_proc_cgroup(&cgroups)
                .map_err(|source| AttestError::Cgroups { pid, source })?;
            if info.is_container() {
                check_cgroup_paths(&cgroups, &self.cgroup_root)?;
            }
            let kubernetes = async {
                match &self.kubernetes {
                    Some(attestor) => Ok(attestor.attest(&info).await?),
                    None => Ok::<_, AttestError>(None),
                }
            };
            let docker = async {
                match &self.docker {
                    Some(attestor) => Ok(attestor.attest(&info).await?),
                    None => Ok::<_, AttestError>(None),
                }
            };
            let podman = async {
                match &self.podman {
                    Some(attestor) => Ok(attestor.attest(&info).await?),
                    None => Ok::<_, AttestError>(None),
                }
            };
            // Independent questions to independent daemons: ask at once,
            // and stop at the first failure.
            let (kubernetes, docker, podman) = tokio::try_join!(kubernetes, docker, podman)?;
            if let Some(workload) = kubernetes {
                workload.add_attributes(&mut attributes);
            }
            if let Some(container) = docker {
                check_shares_namespaces(&process, &container.id, container.init_pid)?;
                container.add_attributes(&mut attributes);
            }
            if let Some(container) = podman {
                check_shares_namespaces(&process, &container.id, container.init_pid)?;
                container.add_attributes(&mut attributes);
            }
        }

        // Last, so that everything above is known to describe the process
        // that connected and not one that reused its PID meanwhile.
        process
            .verify_unchanged()
            .map_err(AttestError::ProcessChanged)?;
        tracing::debug!(pid, "workload attested");
        Ok(attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_policy::Field;

    #[test]
    fn tbot_shaped_configuration() {
        let yaml = r#"
unix: {binary_hash_max_size_bytes: 1024}
kubernetes:
  enabled: true
  kubelet:
    secure_port: 10250
    read_only_port: 0
    token_path: /var/run/secrets/kubernetes.io/serviceaccount/token
    ca_path: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    skip_verify: false
    anonymous: false
docker: {enabled: true, addr: "unix:///var/run/docker.sock"}
podman: {enabled: true, addr: "unix:///run/podman/podman.sock"}
"#;
        let config: AttestorsConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(config.unix.binary_hash_max_size_bytes, 1024);
        let kubernetes = config.kubernetes.unwrap();
        assert!(kubernetes.enabled);
        assert_eq!(kubernetes.kubelet.secure_port, Some(10250));
        assert!(config.docker.unwrap().enabled);
        assert_eq!(
            config.podman.unwrap().addr.as_deref(),
            Some("unix:///run/podman/podman.sock")
        );
        let empty: AttestorsConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(empty, AttestorsConfig::default());
        assert!(serde_yaml::from_str::<AttestorsConfig>("systemd: {enabled: true}").is_err());
    }

    #[test]
    fn enabled_attestors_must_be_configurable() {
        let config: AttestorsConfig = serde_yaml::from_str("podman: {enabled: true}").unwrap();
        let error = WorkloadAttestor::new(&config).unwrap_err();
        assert_eq!(error.kind(), AttestErrorKind::FailedPrecondition);
        // Disabled sections are not validated.
        let config: AttestorsConfig = serde_yaml::from_str(
            "podman: {enabled: false}\ndocker: {enabled: false, addr: tcp://x}",
        )
        .unwrap();
        let attestor = WorkloadAttestor::new(&config).unwrap();
        assert!(attestor.kubernetes().is_none());
    }

    #[tokio::test]
    async fn unix_only_attestation_of_this_process() {
        let attestor = WorkloadAttestor::new(&AttestorsConfig::default()).unwrap();
        let process = Arc::new(
            crate::attest::procfs::ProcRoot::default()
                .open(std::process::id())
                .unwrap(),
        );
        let peer = PeerCredentials {
            pid: std::process::id(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        let attributes = attestor.attest(peer, process).await.unwrap();
        assert_eq!(
            attributes.field(Field::UnixUid),
            Some(peer.uid.to_string().as_str())
        );
        assert!(attributes.field(Field::KubernetesNamespace).is_none());
    }
}
