//! The Podman attestor: `workload.podman.*` from Podman's libpod API.
//!
//! The container ID comes from the process's cgroups; Podman is asked
//! `GET /v4.0.0/libpod/containers/<id>/json` and, for a container in a pod,
//! `GET /v4.0.0/libpod/pods/<pod id>/json` on its unix socket. There is no
//! default socket: rootful and rootless Podman listen in different places,
//! and a rootless socket is owned by an ordinary user who could answer
//! anything, so the operator must name the one to trust.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::cgroup::{ContainerInfo, ContainerRuntime};
use super::engine::{Backoff, EngineClient, EngineError};
use super::kind::AttestErrorKind;
use signet_policy::{Attributes, Field, LabelMap};

/// libpod API version in request paths; Podman 4 and 5 both serve it.
const LIBPOD_API_PREFIX: &str = "/v4.0.0/libpod";

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodmanAttestorConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The API service's socket, `unix:///path` (required when enabled).
    #[serde(default)]
    pub addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("podman: `addr` is required when the attestor is enabled")]
    MissingAddress,
    #[error("podman: {0}")]
    Engine(#[from] EngineError),
    #[error("podman: unexpected {what} document: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("podman answered for container {answered} when asked for {asked}")]
    WrongContainer { asked: String, answered: String },
}

impl PodmanError {
    pub fn kind(&self) -> AttestErrorKind {
        match self {
            Self::MissingAddress => AttestErrorKind::FailedPrecondition,
            Self::Engine(error) => error.kind(),
            Self::Malformed { .. } => AttestErrorKind::Unavailable,
            Self::WrongContainer { .. } => AttestErrorKind::PermissionDenied,
        }
    }
}

/// What Podman says about the caller's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodmanContainer {
    pub id: String,
    pub name: String,
    /// The image name the container was created from (`ImageName`).
    pub image: String,
    /// `sha256:<image ID>`: the content-addressed image.
    pub image_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The container's first process as the engine started it (`State.Pid`,
    /// in the engine's PID namespace, the host's); `None` when not running.
    /// A caller must share its PID and mount namespaces.
    pub init_pid: Option<u32>,
    /// The pod's ID as the container document names it.
    pub pod_id: Option<String>,
    pub pod: Option<PodmanPod>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodmanPod {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl PodmanContainer {
    /// `workload.podman.{container_id,container_name,image,image_id,labels.<k>,
    /// pod_name,pod_labels.<k>}`.
    pub fn add_attributes(&self, attributes: &mut Attributes) {
        attributes.set(Field::PodmanContainerId, self.id.as_str());
        attributes.set(Field::PodmanContainerName, self.name.as_str());
        attributes.set(Field::PodmanImage, self.image.as_str());
        if let Some(image_id) = &self.image_id {
            attributes.set(Field::PodmanImageId, image_id.as_str());
        }
        let skipped = attributes.set_representable_labels(LabelMap::PodmanLabels, &self.labels);
        if !skipped.is_empty() {
            tracing::debug!(container = %self.id, ?skipped, "label keys no policy can name were left out");
        }
        if let Some(pod) = &self.pod {
            attributes.set(Field::PodmanPodName, pod.name.as_str());
            let skipped =
                attributes.set_representable_labels(LabelMap::PodmanPodLabels, &pod.labels);
            if !skipped.is_empty() {
                tracing::debug!(pod = %pod.name, ?skipped, "pod label keys no policy can name were left out");
            }
        }
    }

    /// Parses a libpod `containers/<id>/json` document (the pod is looked
    /// up separately).
    pub fn from_inspect(body: &[u8]) -> Result<Self, PodmanError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            id: String,
            #[serde(default)]
            state: Option<State>,
            #[serde(default)]
            name: String,
            // Bare hex image ID.
            #[serde(default)]
            image: String,
            #[serde(default)]
            image_name: String,
            #[serde(default)]
            pod: String,
            #[serde(default)]
            config: Option<Config>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Config {
            #[serde(default)]
            image: String,
            #[serde(default)]
            labels: Option<BTreeMap<String, String>>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct State {
            #[serde(default)]
            pid: u32,
        }
        let inspect: Inspect =
            serde_json::from_slice(body).map_err(|error| PodmanError::Malformed {
                what: "container inspect",
                reason: error.to_string(),
            })?;
        let (config_image, labels) = inspect
            .config
            .map(|c| (c.image, c.labels.unwrap_or_default()))
            .unwrap_or_default();
        let image = if inspect.image_name.is_empty() {
            config_image
        } else {
            inspect.image_name
        };
        let image_id = match inspect.image.as_str() {
            "" => None,
            id if id.starts_with("sha256:") => Some(id.to_owned()),
            id => Some(format!("sha256:{id}")),
        };
        Ok(Self {
            id: inspect.id,
            name: inspect.name,
            image,
            image_id,
            labels,
            pod_id: (!inspect.pod.is_empty()).then_some(inspect.pod),
            pod: None,
            init_pid: inspect.state.map(|s| s.pid).filter(|pid| *pid != 0),
        })
    }
}

impl PodmanPod {
    /// Parses a libpod `pods/<id>/json` document.
    pub fn from_inspect(body: &[u8]) -> Result<Self, PodmanError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            id: String,
            #[serde(default)]
            name: String,
            #[serde(default)]
            labels: Option<BTreeMap<String, String>>,
        }
        let inspect: Inspect =
            serde_json::from_slice(body).map_err(|error| PodmanError::Malformed {
                what: "pod inspect",
                reason: error.to_string(),
            })?;
        Ok(Self {
            id: inspect.id,
            name: inspect.name,
            labels: inspect.labels.unwrap_or_default(),
        })
    }
}

/// Attests `workload.podman.*`. Share one per agent.
#[derive(Debug)]
pub struct PodmanAttestor {
    client: EngineClient,
    backoff: Backoff,
}

impl PodmanAttestor {
    pub fn new(config: &PodmanAttestorConfig) -> Result<Self, PodmanError> {
        let addr = config.addr.as_deref().ok_or(PodmanError::MissingAddress)?;
        Ok(Self {
            client: EngineClient::new(addr)?,
            backoff: Backoff::default(),
        })
    }

    /// Replaces the retry schedule for a container that is not found yet.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// What Podman knows about the process's container; `Ok(None)` in the
    /// same cases as [`super::docker::DockerAttestor::attest`].
    pub async fn attest(
        &self,
        info: &ContainerInfo,
    ) -> Result<Option<PodmanContainer>, PodmanError> {
        let Some(id) = &info.container_id else {
            return Ok(None);
        };
        let ours = match info.runtime {
            Some(ContainerRuntime::Podman) => true,
            None => false,
            Some(_) => return Ok(None),
        };
        let path = format!("{LIBPOD_API_PREFIX}/containers/{id}/json");
        let Some(body) = self.client.get_retrying(&path, self.backoff, ours).await? else {
            tracing::debug!(container_id = %id, "not a podman container");
            return Ok(None);
        };
        let mut container = PodmanContainer::from_inspect(&body)?;
        if container.id != id.as_str() {
            return Err(PodmanError::WrongContainer {
                asked: id.to_string(),
                answered: container.id,
            });
        }
        if let Some(pod_id) = &container.pod_id {
            // The container names its pod, so the pod must exist.
            let path = format!("{LIBPOD_API_PREFIX}/pods/{pod_id}/json");
            let body = self
                .client
                .get_retrying(&path, self.backoff, true)
                .await?
                .unwrap_or_default();
            container.pod = Some(PodmanPod::from_inspect(&body)?);
        }
        Ok(Some(container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_is_required_when_enabled() {
        let config: PodmanAttestorConfig = serde_yaml::from_str("enabled: true").unwrap();
        assert!(matches!(
            PodmanAttestor::new(&config),
            Err(PodmanError::MissingAddress)
        ));
        let config: PodmanAttestorConfig =
            serde_yaml::from_str("enabled: true\naddr: unix:///run/podman/podman.sock").unwrap();
        assert!(PodmanAttestor::new(&config).is_ok());
    }

    #[test]
    fn inspect_documents_map_to_attributes() {
        let container = br#"{
            "Id": "1e3d7daef42c7b714c81ef180697c80b8750e0546bec7b0c6ad0f352a64f9095",
            "Name": "sigc",
            "Image": "aa0554c2b56f6b1315e736729aea84f705e1536a7fb2495cb3b12b26313c7f9a",
            "ImageName": "localhost/signet-test:dev",
            "Pod": "e1863a0317ae810a2a18d8e08376b48838e284e3464ad0b2ec25bbdf31c5dac1",
            "Config": {"Image": "localhost/signet-test:dev", "Labels": {"app": "demo"}}
        }"#;
        let pod = br#"{"Id": "e1863a0317ae810a2a18d8e08376b48838e284e3464ad0b2ec25bbdf31c5dac1",
            "Name": "sigpod", "Labels": {"team": "payments"}}"#;
        let mut container = PodmanContainer::from_inspect(container).unwrap();
        container.pod = Some(PodmanPod::from_inspect(pod).unwrap());
        let mut attributes = Attributes::default();
        container.add_attributes(&mut attributes);
        assert_eq!(attributes.field(Field::PodmanContainerName), Some("sigc"));
        assert_eq!(
            attributes.field(Field::PodmanImage),
            Some("localhost/signet-test:dev")
        );
        assert_eq!(
            attributes.field(Field::PodmanImageId),
            Some("sha256:aa0554c2b56f6b1315e736729aea84f705e1536a7fb2495cb3b12b26313c7f9a")
        );
        assert_eq!(
            attributes.label(LabelMap::PodmanLabels, "app"),
            Some("demo")
        );
        assert_eq!(attributes.field(Field::PodmanPodName), Some("sigpod"));
        assert_eq!(
            attributes.label(LabelMap::PodmanPodLabels, "team"),
            Some("payments")
        );
    }
}
