//! The `attestors:` section of the agent configuration.

use serde::Deserialize;

use super::docker::DockerAttestorConfig;
use super::kubernetes::KubernetesAttestorConfig;
use super::podman::PodmanAttestorConfig;
use super::unix::UnixAttestorConfig;

/// `attestors:` in the agent configuration, shaped like tbot's:
///
/// ```yaml
/// attestors:
///   unix: {binary_hash_max_size_bytes: 1073741824}
///   kubernetes:
///     enabled: true
///     kubelet: {secure_port: 10250, skip_verify: false}
///   docker: {enabled: true, addr: unix:///var/run/docker.sock}
///   podman: {enabled: true, addr: unix:///run/podman/podman.sock}
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AttestorsConfig {
    #[serde(default)]
    pub unix: UnixAttestorConfig,
    #[serde(default)]
    pub kubernetes: Option<KubernetesAttestorConfig>,
    #[serde(default)]
    pub docker: Option<DockerAttestorConfig>,
    #[serde(default)]
    pub podman: Option<PodmanAttestorConfig>,
}
