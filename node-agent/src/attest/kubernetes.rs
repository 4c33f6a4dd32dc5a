//! The Kubernetes attestor: `workload.kubernetes.*` for a process in a pod.
//!
//! The container ID and pod UID come from the process's cgroups only (see
//! [`super::cgroup`]); the kubelet's pod list ([`PodCache`]) then says
//! which pod and container they are. The kubelet is the node's authority
//! on its pods, and the issuer re-checks the pod against the API server.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::cgroup::{ContainerId, ContainerInfo, ContainerRuntime, PodUid};
use super::kind::AttestErrorKind;
use super::kubelet::{
    ContainerMatch, KubeletClient, KubeletConfig, KubeletError, Pod, PodCache, PodContainer,
    PodList,
};
use signet_policy::{Attributes, Field, LabelMap};

/// `attestors.kubernetes` in the agent configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAttestorConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub kubelet: KubeletConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
    #[error(
        "pod {pod_uid} (container {container_id}) is not listed by the kubelet after {attempts} attempts"
    )]
    PodNotListed {
        pod_uid: String,
        container_id: String,
        attempts: u32,
    },
    #[error(
        "container {container_id} of pod {namespace}/{pod_name} is not in the pod's status after {attempts} attempts"
    )]
    ContainerNotListed {
        container_id: String,
        namespace: String,
        pod_name: String,
        attempts: u32,
    },
    #[error("container {container_id} is listed in more than one pod: {pods:?}")]
    DuplicateContainer {
        container_id: String,
        pods: Vec<String>,
    },
    #[error(
        "the process's cgroups name pod {cgroup_pod_uid} but the kubelet lists container {container_id} in pod {listed_pod_uid}"
    )]
    PodUidMismatch {
        container_id: String,
        cgroup_pod_uid: String,
        listed_pod_uid: String,
    },
}

impl KubernetesError {
    pub fn kind(&self) -> AttestErrorKind {
        match self {
            Self::Kubelet(error) => error.kind(),
            Self::PodNotListed { .. } | Self::ContainerNotListed { .. } => {
                AttestErrorKind::DeadlineExceeded
            }
            Self::DuplicateContainer { .. } | Self::PodUidMismatch { .. } => {
                AttestErrorKind::PermissionDenied
            }
        }
    }
}

/// The pod and container a process belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesWorkload {
    pub pod: Arc<Pod>,
    pub container: PodContainer,
}

impl KubernetesWorkload {
    /// `workload.kubernetes.{namespace,pod_name,pod_uid,service_account,
    /// node_name,labels.<k>,container_name,container_image,container_image_id}`.
    pub fn add_attributes(&self, attributes: &mut Attributes) {
        let pod = &self.pod;
        attributes.set(Field::KubernetesNamespace, pod.namespace.as_str());
        attributes.set(Field::KubernetesPodName, pod.name.as_str());
        attributes.set(Field::KubernetesPodUid, pod.uid.as_str());
        attributes.set(
            Field::KubernetesServiceAccount,
            pod.service_account.as_str(),
        );
        attributes.set(Field::KubernetesNodeName, pod.node_name.as_str());
        let skipped = attributes.set_representable_labels(LabelMap::KubernetesLabels, &pod.labels);
        if !skipped.is_empty() {
            tracing::debug!(pod = %pod.uid, ?skipped, "pod label keys no policy can name were left out");
        }
        attributes.set(Field::KubernetesContainerName, self.container.name.as_str());
        // As the pod spec names it, like the issuer's pod watch says.
        attributes.set(
            Field::KubernetesContainerImage,
            self.container.image.as_str(),
        );
        if let Some(digest) = self.container.image_digest() {
            attributes.set(Field::KubernetesContainerImageId, digest);
        }
    }
}

/// Attests `workload.kubernetes.*`. Share one per agent.
#[derive(Clone, Debug)]
pub struct KubernetesAttestor {
    cache: PodCache,
    max_poll_attempts: u32,
    pod_list_max_age: Duration,
}

impl KubernetesAttestor {
    /// Builds the kubelet client from `config` and the downward-API
    /// environment (`SIGNET_NODE_NAME`, `SIGNET_NODE_IP`).
    pub fn new(config: &KubeletConfig) -> Result<Self, KubernetesError> {
        let endpoint = config.endpoint_from_env()?;
        tracing::info!(
            host = %endpoint.dial_host,
            port = endpoint.port,
            tls = endpoint.tls.is_some(),
            "kubernetes attestor uses the kubelet"
        );
        let cache = PodCache::new(Arc::new(KubeletClient::new(endpoint)), config.poll_interval);
        Ok(Self::with_cache(cache, config))
    }

    /// Uses an existing cache (shared with pre-issuance, or fed by a test
    /// source); the retry settings come from `config`.
    pub fn with_cache(cache: PodCache, config: &KubeletConfig) -> Self {
        Self {
            cache,
            max_poll_attempts: config.max_poll_attempts.max(1),
            pod_list_max_age: config.pod_list_max_age,
        }
    }

    /// The node's pod list, for callers other than attestation.
    pub fn pod_cache(&self) -> &PodCache {
        &self.cache
    }

    /// The pod and container of the process whose cgroups gave `info`.
    ///
    /// - Not in a container, or in a Docker/Podman container outside any
    ///   pod: `Ok(None)`.
    /// - The cgroups name a pod: the pod list is re-fetched (spaced by the
    ///   poll interval) until the container shows up, up to
    ///   `max_poll_attempts` fetches, because the kubelet lists a container
    ///   only some time after it starts. Then an error.
    /// - A container without a pod in its cgroups (CRI-O under a cgroup
    ///   namespace) is looked up in one fresh list: if the kubelet does not
    ///   know it, it is not a pod's, and `Ok(None)`.
    pub async fn attest(
        &self,
        info: &ContainerInfo,
    ) -> Result<Option<KubernetesWorkload>, KubernetesError> {
        let Some(container_id) = &info.container_id else {
            return Ok(None);
        };
        if info.pod_uid.is_none()
            && matches!(
                info.runtime,
                Some(ContainerRuntime::Docker | ContainerRuntime::Podman)
            )
        {
            return Ok(None);
        }
        let budget = if info.pod_uid.is_some() {
            self.max_poll_attempts
        } else {
            1
        };
        let cached = self.cache.snapshot();
        let mut seen = cached.as_ref().map_or(0, |list| list.generation());
        let mut list = cached.filter(|list| list.fetched_at().elapsed() <= self.pod_list_max_age);
        let mut attempts = 0;
        loop {
            if let Some(list) = &list {
                if let Some(found) = find(list, container_id, info.pod_uid.as_ref())? {
                    return Ok(Some(found));
                }
                seen = list.generation();
            }
            if attempts >= budget {
                return self.not_found(
                    list.as_deref(),
                    container_id,
                    info.pod_uid.as_ref(),
                    attempts,
                );
            }
            if attempts > 0 {
                tracing::debug!(%container_id, attempts, "container not listed by the kubelet yet");
            }
            list = Some(self.cache.refresh_newer_than(seen).await?);
            attempts += 1;
        }
    }

    fn not_found(
        &self,
        list: Option<&PodList>,
        container_id: &ContainerId,
        pod_uid: Option<&PodUid>,
        attempts: u32,
    ) -> Result<Option<KubernetesWorkload>, KubernetesError> {
        let Some(pod_uid) = pod_uid else {
            tracing::debug!(%container_id, "container not known to the kubelet: not a pod");
            return Ok(None);
        };
        match list.and_then(|list| list.find_pod(pod_uid.as_str())) {
            Some(pod) => Err(KubernetesError::ContainerNotListed {
                container_id: container_id.to_string(),
                namespace: pod.namespace.clone(),
                pod_name: pod.name.clone(),
                attempts,
            }),
            None => Err(KubernetesError::PodNotListed {
                pod_uid: pod_uid.to_string(),
                container_id: container_id.to_string(),
                attempts,
            }),
        }
    }
}

/// Looks the container up in one list; conflicts are errors, absence is
/// `Ok(None)` (try a newer list).
fn find(
    list: &PodList,
    container_id: &ContainerId,
    pod_uid: Option<&PodUid>,
) -> Result<Option<KubernetesWorkload>, KubernetesError> {
    match list.find_container(container_id) {
        ContainerMatch::Missing => Ok(None),
        ContainerMatch::Duplicate { pods } => Err(KubernetesError::DuplicateContainer {
            container_id: container_id.to_string(),
            pods: pods
                .iter()
                .map(|pod| format!("{}/{} ({})", pod.namespace, pod.name, pod.uid))
                .collect(),
        }),
        ContainerMatch::Found { pod, container } => {
            if let Some(expected) = pod_uid
                && !pod.uid.eq_ignore_ascii_case(expected.as_str())
            {
                return Err(KubernetesError::PodUidMismatch {
                    container_id: container_id.to_string(),
                    cgroup_pod_uid: expected.to_string(),
                    listed_pod_uid: pod.uid.clone(),
                });
            }
            Ok(Some(KubernetesWorkload {
                pod: pod.clone(),
                container: container.clone(),
            }))
        }
    }
}
