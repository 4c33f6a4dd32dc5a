//! The Docker attestor: `workload.docker.*` from the Docker Engine API.
//!
//! The container ID comes from the process's cgroups (see [`super::cgroup`]);
//! the engine is only asked what it knows about that ID
//! (`GET /v<api>/containers/<id>/json` on its unix socket).

use std::collections::BTreeMap;

use serde::Deserialize;
use tokio::sync::OnceCell;

use super::cgroup::{ContainerInfo, ContainerRuntime};
use super::engine::{Backoff, EngineClient, EngineError};
use super::kind::AttestErrorKind;
use signet_policy::{Attributes, Field, LabelMap};

pub const DEFAULT_DOCKER_ADDR: &str = "unix:///var/run/docker.sock";

/// The API version asked for when the daemon supports it. 1.41 is what
/// Debian's dockerd 20.10 speaks; the fields read here have not changed
/// since long before it. Daemons that dropped 1.41 (Docker 29 requires at
/// least 1.44) are asked in their own minimum version instead.
const PREFERRED_API_VERSION: ApiVersion = ApiVersion(1, 41);

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DockerAttestorConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The engine's socket, `unix:///path`.
    #[serde(default = "default_addr")]
    pub addr: String,
}

fn default_addr() -> String {
    DEFAULT_DOCKER_ADDR.to_owned()
}

impl Default for DockerAttestorConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            addr: default_addr(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("docker: {0}")]
    Engine(#[from] EngineError),
    #[error("docker: unexpected {what} document: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("docker answered for container {answered} when asked for {asked}")]
    WrongContainer { asked: String, answered: String },
}

impl DockerError {
    pub fn kind(&self) -> AttestErrorKind {
        match self {
            Self::Engine(error) => error.kind(),
            Self::Malformed { .. } => AttestErrorKind::Unavailable,
            Self::WrongContainer { .. } => AttestErrorKind::PermissionDenied,
        }
    }
}

/// What Docker says about the caller's container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerContainer {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    /// The image as the container was created from it (`Config.Image`).
    pub image: String,
    /// The image's content-addressed ID (`sha256:<config digest>`), which
    /// unlike `image` cannot be re-pointed by retagging.
    pub image_id: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The container's first process as the engine started it (`State.Pid`,
    /// in the engine's PID namespace, the host's); `None` when not running.
    /// A caller must share its PID and mount namespaces.
    pub init_pid: Option<u32>,
}

impl DockerContainer {
    /// `workload.docker.{container_id,container_name,image,image_id,labels.<k>}`.
    pub fn add_attributes(&self, attributes: &mut Attributes) {
        attributes.set(Field::DockerContainerId, self.id.as_str());
        attributes.set(Field::DockerContainerName, self.name.as_str());
        attributes.set(Field::DockerImage, self.image.as_str());
        if let Some(image_id) = &self.image_id {
            attributes.set(Field::DockerImageId, image_id.as_str());
        }
        let skipped = attributes.set_representable_labels(LabelMap::DockerLabels, &self.labels);
        if !skipped.is_empty() {
            tracing::debug!(container = %self.id, ?skipped, "label keys no policy can name were left out");
        }
    }

    /// Parses a `GET /containers/<id>/json` document.
    pub fn from_inspect(body: &[u8]) -> Result<Self, DockerError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inspect {
            id: String,
            #[serde(default)]
            state: Option<State>,
            #[serde(default)]
            name: String,
            #[serde(default)]
            image: String,
            #[serde(default)]
            config: Option<Config>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Config {
            #[serde(default)]
            image: String,
            // `null` when the container has none.
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
            serde_json::from_slice(body).map_err(|error| DockerError::Malformed {
                what: "container inspect",
                reason: error.to_string(),
            })?;
        let config = inspect.config.unwrap_or(Config {
            image: String::new(),
            labels: None,
        });
        Ok(Self {
            id: inspect.id,
            name: inspect.name.trim_start_matches('/').to_owned(),
            image: config.image,
            image_id: (!inspect.image.is_empty()).then_some(inspect.image),
            labels: config.labels.unwrap_or_default(),
            init_pid: inspect.state.map(|s| s.pid).filter(|pid| *pid != 0),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ApiVersion(u32, u32);

impl ApiVersion {
    fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.split_once('.')?;
        Some(Self(major.parse().ok()?, minor.parse().ok()?))
    }
}

/// The version to put in request paths, given what the daemon supports.
fn choose_api_version(max: ApiVersion, min: Option<ApiVersion>) -> ApiVersion {
    if max < PREFERRED_API_VERSION {
        max
    } else {
        match min {
            Some(min) if min > PREFERRED_API_VERSION => min,
            _ => PREFERRED_API_VERSION,
        }
    }
}

/// Attests `workload.docker.*`. Share one per agent.
#[derive(Debug)]
pub struct DockerAttestor {
    client: EngineClient,
    backoff: Backoff,
    /// Negotiated once per attestor; a failed negotiation is retried by the
    /// next attestation.
    api_version: OnceCell<ApiVersion>,
}

impl DockerAttestor {
    pub fn new(config: &DockerAttestorConfig) -> Result<Self, DockerError> {
        Ok(Self {
            client: EngineClient::new(&config.addr)?,
            backoff: Backoff::default(),
            api_version: OnceCell::new(),
        })
    }

    /// Replaces the retry schedule for a container that is not found yet.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// What Docker knows about the process's container.
    ///
    /// `Ok(None)` when the process is not in a container, or its cgroups
    /// name another runtime, or they name none and Docker does not know the
    /// ID (a pod container of a CRI runtime, say). When the cgroups say the
    /// container is Docker's, a missing container is retried with backoff
    /// and then an error.
    pub async fn attest(
        &self,
        info: &ContainerInfo,
    ) -> Result<Option<DockerContainer>, DockerError> {
        let Some(id) = &info.container_id else {
            return Ok(None);
        };
        let ours = match info.runtime {
            Some(ContainerRuntime::Docker) => true,
            None => false,
            Some(_) => return Ok(None),
        };
        let version = self.api_version().await?;
        let path = format!("/v{}.{}/containers/{id}/json", version.0, version.1);
        let Some(body) = self.client.get_retrying(&path, self.backoff, ours).await? else {
            tracing::debug!(container_id = %id, "not a docker container");
            return Ok(None);
        };
        let container = DockerContainer::from_inspect(&body)?;
        if container.id != id.as_str() {
            return Err(DockerError::WrongContainer {
                asked: id.to_string(),
                answered: container.id,
            });
        }
        Ok(Some(container))
    }

    async fn api_version(&self) -> Result<ApiVersion, DockerError> {
        self.api_version
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct Version {
                    #[serde(rename = "ApiVersion")]
                    api_version: String,
                    #[serde(rename = "MinAPIVersion", default)]
                    min_api_version: Option<String>,
                }
                let body = self
                    .client
                    .get_retrying("/version", self.backoff, true)
                    .await?
                    .unwrap_or_default();
                let malformed = |reason: String| DockerError::Malformed {
                    what: "version",
                    reason,
                };
                let version: Version =
                    serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
                let max = ApiVersion::parse(&version.api_version)
                    .ok_or_else(|| malformed(format!("ApiVersion {:?}", version.api_version)))?;
                let min = version
                    .min_api_version
                    .as_deref()
                    .and_then(ApiVersion::parse);
                let chosen = choose_api_version(max, min);
                tracing::debug!(?max, ?min, ?chosen, "docker API version negotiated");
                Ok(chosen)
            })
            .await
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_shape() {
        let config: DockerAttestorConfig = serde_yaml::from_str("enabled: true").unwrap();
        assert_eq!(
            config,
            DockerAttestorConfig {
                enabled: true,
                addr: "unix:///var/run/docker.sock".into()
            }
        );
        assert!(serde_yaml::from_str::<DockerAttestorConfig>("enabled: true\nsocket: x").is_err());
    }

    #[test]
    fn api_version_prefers_1_41_within_the_daemon_range() {
        let v = ApiVersion;
        assert_eq!(choose_api_version(v(1, 41), Some(v(1, 12))), v(1, 41));
        assert_eq!(choose_api_version(v(1, 51), Some(v(1, 24))), v(1, 41));
        assert_eq!(choose_api_version(v(1, 52), Some(v(1, 44))), v(1, 44));
        assert_eq!(choose_api_version(v(1, 40), None), v(1, 40));
        assert_eq!(ApiVersion::parse("1.41"), Some(v(1, 41)));
        assert_eq!(ApiVersion::parse("1"), None);
    }

    #[test]
    fn inspect_document_maps_to_attributes() {
        let body = br#"{
            "Id": "78ce688a43026892c604836dddb74406e3e8d52e7fa76cac7ee89c768ebff77d",
            "Name": "/payments",
            "Image": "sha256:003230da9d51df8aa3d7af4e097b60a04f37280ac2de2a0cde2a68138de6d6b0",
            "State": {"Pid": 18233, "Running": true},
            "Config": {"Image": "localhost/signet-test:dev", "Labels": {"app": "demo", "com.example/tier": "x"}}
        }"#;
        let container = DockerContainer::from_inspect(body).unwrap();
        let mut attributes = Attributes::default();
        container.add_attributes(&mut attributes);
        assert_eq!(
            attributes.field(Field::DockerContainerName),
            Some("payments")
        );
        assert_eq!(
            attributes.field(Field::DockerImage),
            Some("localhost/signet-test:dev")
        );
        assert_eq!(
            attributes.field(Field::DockerImageId),
            Some("sha256:003230da9d51df8aa3d7af4e097b60a04f37280ac2de2a0cde2a68138de6d6b0")
        );
        assert_eq!(
            attributes.label(LabelMap::DockerLabels, "app"),
            Some("demo")
        );
        assert_eq!(
            attributes.label(LabelMap::DockerLabels, "com.example/tier"),
            Some("x")
        );
        // A container without labels reports `null`.
        let bare = DockerContainer::from_inspect(
            br#"{"Id": "x", "Name": "/n", "Config": {"Image": "i", "Labels": null}}"#,
        )
        .unwrap();
        assert!(bare.labels.is_empty());
        assert!(DockerContainer::from_inspect(b"[]").is_err());
    }
}
