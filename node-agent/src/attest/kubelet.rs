//! The kubelet's view of the pods on this node, fetched from its `/pods`
//! endpoint and cached for every attestation on the node.
//!
//! - [`KubeletConfig`]: tbot's `kubelet:` keys plus Signet's node and retry
//!   settings.
//! - [`KubeletClient`]: one HTTPS `GET /pods` (bearer token, server verified
//!   with the service account CA for the node's name), re-reading the token
//!   and CA when their files change.
//! - [`PodCache`]: the latest [`PodList`], shared. Concurrent callers that
//!   need a newer list share one request ("single flight"), and request
//!   starts are spaced at least a poll interval apart however many callers
//!   are waiting, so a burst of new pods cannot hammer the kubelet.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::cgroup::ContainerId;
use super::kind::AttestErrorKind;

pub const DEFAULT_SECURE_PORT: u16 = 10250;
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const DEFAULT_CA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// Downward-API variable holding the node's name (`spec.nodeName`).
pub const NODE_NAME_ENV: &str = "SIGNET_NODE_NAME";
/// Downward-API variable holding the node's IP (`status.hostIP`), dialled
/// when set because node names often do not resolve inside pods.
pub const NODE_IP_ENV: &str = "SIGNET_NODE_IP";
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_MAX_POLL_ATTEMPTS: u32 = 60;
pub const DEFAULT_POD_LIST_MAX_AGE: Duration = Duration::from_secs(60);

/// Each kubelet request, from connecting to the last body byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A node's pod list is a few megabytes at most (~250 pods with managed
/// fields); a larger answer is refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Credentials are re-read at least this often even if their files look
/// unchanged (a rewrite within the same mtime tick must not go unseen).
const CREDENTIAL_MAX_AGE: Duration = Duration::from_secs(60);

/// `kubernetes.kubelet` in the agent configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KubeletConfig {
    /// HTTPS port; 10250 when neither port is set.
    pub secure_port: Option<u16>,
    /// Plain-HTTP read-only port (no authentication at all); 0 = unused.
    /// Mutually exclusive with `secure_port`.
    pub read_only_port: u16,
    /// Bearer token sent to the kubelet (re-read when the file changes).
    pub token_path: PathBuf,
    /// CA bundle that must have issued the kubelet's serving certificate.
    pub ca_path: PathBuf,
    /// Accept any kubelet certificate. For kubelets with self-signed serving
    /// certificates; the token is then exposed to whoever answers.
    pub skip_verify: bool,
    /// Send no token (kubelet with `--anonymous-auth`).
    pub anonymous: bool,
    /// The node's name, checked against the kubelet's certificate.
    /// Default: `$SIGNET_NODE_NAME`.
    pub node_name: Option<String>,
    /// Address to dial if not the node name (e.g. the node IP). Default:
    /// `$SIGNET_NODE_IP`, else the node name. The certificate is still
    /// checked against the node name.
    pub host: Option<String>,
    /// Minimum time between the starts of two kubelet requests.
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    /// Pod-list fetches an attestation may wait through for a container the
    /// kubelet does not list yet (60 × 500 ms ≈ 30 s).
    pub max_poll_attempts: u32,
    /// A cached list older than this is refreshed before it is trusted for
    /// a hit, so pod label changes reach attestations within this time.
    #[serde(with = "duration_text")]
    pub pod_list_max_age: Duration,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            secure_port: None,
            read_only_port: 0,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            ca_path: PathBuf::from(DEFAULT_CA_PATH),
            skip_verify: false,
            anonymous: false,
            node_name: None,
            host: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_poll_attempts: DEFAULT_MAX_POLL_ATTEMPTS,
            pod_list_max_age: DEFAULT_POD_LIST_MAX_AGE,
        }
    }
}

/// Durations written as `500ms`, `30s`, `1m`.
mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Where and how to reach the kubelet, resolved from [`KubeletConfig`] and
/// the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletEndpoint {
    /// Host name or IP address to connect to.
    pub dial_host: String,
    pub port: u16,
    /// `None` for the read-only port (plain HTTP, no credentials).
    pub tls: Option<KubeletTls>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletTls {
    /// Sent as SNI and required in the kubelet's certificate.
    pub server_name: ServerName<'static>,
    /// `None` when `skip_verify`.
    pub ca_path: Option<PathBuf>,
    /// `None` when `anonymous`.
    pub token_path: Option<PathBuf>,
}

impl KubeletConfig {
    /// Resolves the endpoint with `SIGNET_NODE_NAME`/`SIGNET_NODE_IP` from
    /// the process environment.
    pub fn endpoint_from_env(&self) -> Result<KubeletEndpoint, KubeletError> {
        self.endpoint(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Resolves the endpoint, reading defaults through `env`.
    pub fn endpoint(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<KubeletEndpoint, KubeletError> {
        let config_error = |reason: &str| KubeletError::Config {
            reason: reason.to_owned(),
        };
        if self.max_poll_attempts == 0 {
            return Err(config_error("max_poll_attempts must be at least 1"));
        }
        let node_name = self.node_name.clone().or_else(|| env(NODE_NAME_ENV));
        let host = self
            .host
            .clone()
            .or_else(|| env(NODE_IP_ENV))
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned());
        if self.read_only_port != 0 {
            if self.secure_port.is_some() {
                return Err(config_error(
                    "secure_port and read_only_port are mutually exclusive",
                ));
            }
            let dial_host = host.or(node_name).unwrap_or_else(|| "127.0.0.1".to_owned());
            return Ok(KubeletEndpoint {
                dial_host,
                port: self.read_only_port,
                tls: None,
            });
        }
        // The certificate is checked against the node name; only without
        // verification may the dialled address stand in for it.
        let name = match (&node_name, &host) {
            (Some(name), _) => name.clone(),
            (None, Some(host)) if self.skip_verify => host.clone(),
            _ => {
                return Err(config_error(
                    "the node name is unknown: set kubelet.node_name or SIGNET_NODE_NAME (downward API spec.nodeName)",
                ));
            }
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| config_error("the node name is not a valid DNS name or IP address"))?;
        Ok(KubeletEndpoint {
            dial_host: host.unwrap_or(name),
            port: self.secure_port.unwrap_or(DEFAULT_SECURE_PORT),
            tls: Some(KubeletTls {
                server_name,
                ca_path: (!self.skip_verify).then(|| self.ca_path.clone()),
                token_path: (!self.anonymous).then(|| self.token_path.clone()),
            }),
        })
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("kubelet configuration: {reason}")]
    Config { reason: String },
    #[error("reading {path}: {source}")]
    ReadCredential {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{path}: {reason}")]
    BadCredential { path: PathBuf, reason: String },
    #[error("building the kubelet TLS configuration: {source}")]
    Tls {
        #[source]
        source: rustls::Error,
    },
    #[error("connecting to the kubelet at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(
        "TLS handshake with the kubelet at {addr} (expecting a certificate for {server_name}): {source}"
    )]
    Handshake {
        addr: String,
        server_name: String,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("HTTP exchange with the kubelet at {addr}: {source}")]
    Http {
        addr: String,
        #[source]
        source: Arc<hyper::Error>,
    },
    #[error(
        "the kubelet refused our credentials ({status}); it needs webhook token authentication and the agent RBAC on nodes/proxy"
    )]
    Refused { status: StatusCode },
    #[error("the kubelet answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("reading the kubelet's answer: {reason}")]
    Body { reason: String },
    #[error("no answer from the kubelet at {addr} within {REQUEST_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("the kubelet's pod list is malformed: {reason}")]
    Malformed { reason: String },
}

impl KubeletError {
    pub fn kind(&self) -> AttestErrorKind {
        match self {
            Self::Config { .. } | Self::BadCredential { .. } => AttestErrorKind::FailedPrecondition,
            Self::Tls { .. } => AttestErrorKind::Internal,
            _ => AttestErrorKind::Unavailable,
        }
    }
}

// ---------------------------------------------------------------------------
// The pod model: only what attestation and pre-issuance need.

/// Which list of the pod's status a container came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    Regular,
    Init,
    Ephemeral,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub name: String,
    pub kind: ContainerKind,
    /// Absent until the runtime has created the container.
    pub id: Option<ContainerId>,
    /// The image as the pod spec names it (a tag, usually).
    pub image: String,
    /// What the runtime resolved it to (`repo@sha256:...` or `sha256:...`);
    /// empty until known.
    pub image_id: String,
}

impl PodContainer {
    /// The image by digest, once the runtime reported it: the kubelet's
    /// `imageID` minus the `docker-pullable://`/`docker://` scheme
    /// dockershim added; `registry/repo@sha256:<hex>` for a pulled image (the
    /// manifest digest, what image policies pin), `sha256:<hex>` for an
    /// image that never came from a registry.
    pub fn image_digest(&self) -> Option<&str> {
        let digest = self
            .image_id
            .split_once("://")
            .map_or(self.image_id.as_str(), |(_, rest)| rest);
        (!digest.is_empty()).then_some(digest)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// As the kubelet reports it: a UUID, or a static pod's manifest hash.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub node_name: String,
    pub containers: Vec<PodContainer>,
}

/// The outcome of looking a container ID up in a [`PodList`].
#[derive(Debug)]
pub enum ContainerMatch<'a> {
    Found {
        pod: &'a Arc<Pod>,
        container: &'a PodContainer,
    },
    /// Listed more than once: the list cannot be trusted for this ID.
    Duplicate {
        pods: Vec<&'a Arc<Pod>>,
    },
    Missing,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    One { pod: usize, container: usize },
    Duplicate,
}

/// One fetched pod list, indexed by container ID and pod UID.
#[derive(Debug)]
pub struct PodList {
    pods: Vec<Arc<Pod>>,
    by_container: HashMap<ContainerId, Slot>,
    by_uid: HashMap<String, usize>,
    generation: u64,
    fetched_at: Instant,
}

impl PodList {
    /// Parses a kubelet `/pods` answer (a v1 `PodList`).
    pub fn parse(json: &[u8], generation: u64, fetched_at: Instant) -> Result<Self, KubeletError> {
        let raw: raw::PodList =
            serde_json::from_slice(json).map_err(|e| KubeletError::Malformed {
                reason: e.to_string(),
            })?;
        let pods = raw
            .items
            .into_iter()
            .map(raw::Pod::into_pod)
            .map(Arc::new)
            .collect();
        Ok(Self::index(pods, generation, fetched_at))
    }

    fn index(pods: Vec<Arc<Pod>>, generation: u64, fetched_at: Instant) -> Self {
        let mut by_container = HashMap::new();
        let mut by_uid = HashMap::new();
        for (pod_index, pod) in pods.iter().enumerate() {
            by_uid.insert(pod.uid.to_ascii_lowercase(), pod_index);
            for (container_index, container) in pod.containers.iter().enumerate() {
                let Some(id) = &container.id else { continue };
                by_container
                    .entry(id.clone())
                    .and_modify(|slot| *slot = Slot::Duplicate)
                    .or_insert(Slot::One {
                        pod: pod_index,
                        container: container_index,
                    });
            }
        }
        Self {
            pods,
            by_container,
            by_uid,
            generation,
            fetched_at,
        }
    }

    pub fn pods(&self) -> &[Arc<Pod>] {
        &self.pods
    }

    /// Increases with every fetch of the cache that produced this list.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn fetched_at(&self) -> Instant {
        self.fetched_at
    }

    pub fn find_container(&self, id: &ContainerId) -> ContainerMatch<'_> {
        match self.by_container.get(id) {
            None => ContainerMatch::Missing,
            Some(Slot::One { pod, container }) => match self.pods.get(*pod) {
                Some(pod_ref) => match pod_ref.containers.get(*container) {
                    Some(container) => ContainerMatch::Found {
                        pod: pod_ref,
                        container,
                    },
                    None => ContainerMatch::Missing,
                },
                None => ContainerMatch::Missing,
            },
            Some(Slot::Duplicate) => ContainerMatch::Duplicate {
                pods: self
                    .pods
                    .iter()
                    .filter(|pod| pod.containers.iter().any(|c| c.id.as_ref() == Some(id)))
                    .collect(),
            },
        }
    }

    /// The pod with this UID (compared case-insensitively).
    pub fn find_pod(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.by_uid
            .get(&uid.to_ascii_lowercase())
            .and_then(|index| self.pods.get(*index))
    }
}

/// The subset of the Kubernetes v1 Pod JSON that is read.
mod raw {
    use super::*;

    #[derive(Deserialize)]
    pub struct PodList {
        #[serde(default)]
        pub items: Vec<Pod>,
    }

    #[derive(Deserialize)]
    pub struct Pod {
        #[serde(default)]
        metadata: Metadata,
        #[serde(default)]
        spec: Spec,
        #[serde(default)]
        status: Status,
    }

    #[derive(Default, Deserialize)]
    struct Metadata {
        #[serde(default)]
        uid: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        namespace: String,
        #[serde(default)]
        labels: Option<BTreeMap<String, String>>,
    }

    #[derive(Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        #[serde(default)]
        service_account_name: String,
        #[serde(default)]
        node_name: String,
    }

    #[derive(Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Status {
        #[serde(default)]
        container_statuses: Option<Vec<ContainerStatus>>,
        #[serde(default)]
        init_container_statuses: Option<Vec<ContainerStatus>>,
        #[serde(default)]
        ephemeral_container_statuses: Option<Vec<ContainerStatus>>,
    }

    #[derive(Deserialize)]
    struct ContainerStatus {
        #[serde(default)]
        name: String,
        #[serde(default, rename = "containerID")]
        container_id: String,
        #[serde(default)]
        image: String,
        #[serde(default, rename = "imageID")]
        image_id: String,
    }

    impl Pod {
        pub fn into_pod(self) -> super::Pod {
            let mut containers = Vec::new();
            for (kind, statuses) in [
                (ContainerKind::Regular, self.status.container_statuses),
                (ContainerKind::Init, self.status.init_container_statuses),
                (
                    ContainerKind::Ephemeral,
                    self.status.ephemeral_container_statuses,
                ),
            ] {
                for status in statuses.unwrap_or_default() {
                    containers.push(PodContainer {
                        name: status.name,
                        kind,
                        // Empty while the container is being created.
                        id: ContainerId::parse_qualified(&status.container_id),
                        image: status.image,
                        image_id: status.image_id,
                    });
                }
            }
            super::Pod {
                uid: self.metadata.uid,
                name: self.metadata.name,
                namespace: self.metadata.namespace,
                labels: self.metadata.labels.unwrap_or_default(),
                service_account: self.spec.service_account_name,
                node_name: self.spec.node_name,
                containers,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Fetching.

/// Something that returns the node's pod list as kubelet `/pods` JSON. The
/// kubelet in production; tests may substitute a recorded answer.
pub trait PodListSource: Send + Sync + 'static {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, KubeletError>> + Send + '_>>;
}

/// A file's identity and version, as far as `stat` can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
        }
    }
}

/// A value loaded from a file, reloaded when the file changes.
#[derive(Debug)]
struct Loaded<T> {
    stamp: FileStamp,
    loaded_at: Instant,
    value: T,
}

/// Returns the cached value unless the file changed (projected service
/// account tokens are swapped in by a symlink flip, which changes the
/// inode) or the value is older than [`CREDENTIAL_MAX_AGE`].
async fn reload_if_changed<T: Clone>(
    slot: &mut Option<Loaded<T>>,
    path: &Path,
    parse: impl FnOnce(Vec<u8>) -> Result<T, KubeletError>,
) -> Result<T, KubeletError> {
    let read_error = |source| KubeletError::ReadCredential {
        path: path.to_owned(),
        source: Arc::new(source),
    };
    let stamp = FileStamp::of(&tokio::fs::metadata(path).await.map_err(read_error)?);
    if let Some(loaded) = slot
        && loaded.stamp == stamp
        && loaded.loaded_at.elapsed() < CREDENTIAL_MAX_AGE
    {
        return Ok(loaded.value.clone());
    }
    let bytes = tokio::fs::read(path).await.map_err(read_error)?;
    let value = parse(bytes)?;
    tracing::debug!(path = %path.display(), "loaded kubelet credential");
    *slot = Some(Loaded {
        stamp,
        loaded_at: Instant::now(),
        value: value.clone(),
    });
    Ok(value)
}

#[derive(Debug, Default)]
struct Credentials {
    token: Option<Loaded<Arc<str>>>,
    tls: Option<Loaded<Arc<rustls::ClientConfig>>>,
    /// The configuration used with `skip_verify` (no CA file to watch).
    unverified_tls: Option<Arc<rustls::ClientConfig>>,
}

/// HTTP(S) client for the kubelet's `/pods`.
#[derive(Debug)]
pub struct KubeletClient {
    endpoint: KubeletEndpoint,
    provider: Arc<CryptoProvider>,
    credentials: tokio::sync::Mutex<Credentials>,
}

impl KubeletClient {
    pub fn new(endpoint: KubeletEndpoint) -> Self {
        Self {
            endpoint,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            credentials: tokio::sync::Mutex::new(Credentials::default()),
        }
    }

    pub fn endpoint(&self) -> &KubeletEndpoint {
        &self.endpoint
    }

    fn addr(&self) -> String {
        match self.endpoint.dial_host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.endpoint.port),
            _ => format!("{}:{}", self.endpoint.dial_host, self.endpoint.port),
        }
    }

    /// `GET /pods`, returning the raw JSON.
    pub async fn get_pods(&self) -> Result<Bytes, KubeletError> {
        let addr = self.addr();
        match tokio::time::timeout(REQUEST_TIMEOUT, self.get_pods_inner(&addr)).await {
            Ok(result) => result,
            Err(_) => Err(KubeletError::Timeout { addr }),
        }
    }

    async fn get_pods_inner(&self, addr: &str) -> Result<Bytes, KubeletError> {
        let tcp = TcpStream::connect((self.endpoint.dial_host.as_str(), self.endpoint.port))
            .await
            .map_err(|source| KubeletError::Connect {
                addr: addr.to_owned(),
                source: Arc::new(source),
            })?;
        // Best effort: only latency depends on it.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.endpoint.tls else {
            return exchange(tcp, addr, addr, None).await;
        };
        let (config, token) = self.credentials(tls).await?;
        let server_name = tls.server_name.clone();
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|source| KubeletError::Handshake {
                addr: addr.to_owned(),
                server_name: server_name.to_str().into_owned(),
                source: Arc::new(source),
            })?;
        let authority = match &server_name {
            ServerName::IpAddress(_) | ServerName::DnsName(_) => {
                host_authority(&server_name.to_str(), self.endpoint.port)
            }
            _ => addr.to_owned(),
        };
        exchange(stream, addr, &authority, token.as_deref()).await
    }

    async fn credentials(
        &self,
        tls: &KubeletTls,
    ) -> Result<(Arc<rustls::ClientConfig>, Option<Arc<str>>), KubeletError> {
        let mut credentials = self.credentials.lock().await;
        let config = match &tls.ca_path {
            Some(ca_path) => {
                let provider = self.provider.clone();
                reload_if_changed(&mut credentials.tls, ca_path, |pem| {
                    verified_config(provider, ca_path, &pem)
                })
                .await?
            }
            None => match &credentials.unverified_tls {
                Some(config) => config.clone(),
                None => {
                    let config = unverified_config(self.provider.clone())?;
                    credentials.unverified_tls = Some(config.clone());
                    config
                }
            },
        };
        let token = match &tls.token_path {
            Some(token_path) => Some(
                reload_if_changed(&mut credentials.token, token_path, |bytes| {
                    parse_token(token_path, bytes)
                })
                .await?,
            ),
            None => None,
        };
        Ok((config, token))
    }
}

impl PodListSource for KubeletClient {
    fn fetch(&self) -> Pin<Box<dyn Future<Output = Result<Bytes, KubeletError>> + Send + '_>> {
        Box::pin(self.get_pods())
    }
}

fn host_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn parse_token(path: &Path, bytes: Vec<u8>) -> Result<Arc<str>, KubeletError> {
    let bad = |reason: &str| KubeletError::BadCredential {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("token is not UTF-8"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad("token file is empty"));
    }
    // A header value must be visible ASCII; refuse rather than mangle.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("token contains characters not allowed in a header"));
    }
    Ok(Arc::from(token))
}

fn verified_config(
    provider: Arc<CryptoProvider>,
    ca_path: &Path,
    pem: &[u8],
) -> Result<Arc<rustls::ClientConfig>, KubeletError> {
    let bad = |reason: String| KubeletError::BadCredential {
        path: ca_path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| bad(format!("invalid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no CA certificate found".to_owned()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| KubeletError::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn unverified_config(
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ClientConfig>, KubeletError> {
    let verifier = Arc::new(AcceptAnyServerCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| KubeletError::Tls { source })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `skip_verify`: any certificate is accepted, but the handshake signature
/// must still be made with its key (so at least the peer holds it).
#[derive(Debug)]
struct AcceptAnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// One HTTP/1.1 `GET /pods` over an established connection.
async fn exchange<I>(
    io: I,
    addr: &str,
    authority: &str,
    token: Option<&str>,
) -> Result<Bytes, KubeletError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |source| KubeletError::Http {
        addr: addr.to_owned(),
        source: Arc::new(source),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http_error)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "kubelet connection closed with an error");
        }
    });
    let mut request = Request::get("/pods")
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json");
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| KubeletError::Body {
            reason: format!("building the request: {e}"),
        })?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| KubeletError::Body {
            reason: e.to_string(),
        })?
        .to_bytes();
    match status {
        StatusCode::OK => Ok(body),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(KubeletError::Refused { status }),
        status => Err(KubeletError::Status {
            status,
            message: String::from_utf8_lossy(&body).chars().take(512).collect(),
        }),
    }
}

// ---------------------------------------------------------------------------
// The shared cache.

type Flight = Shared<BoxFuture<'static, Result<Arc<PodList>, KubeletError>>>;

#[derive(Default)]
struct FlightState {
    /// Fetches started so far; the generation of the list each produced.
    started: u64,
    /// When the next fetch may start at the earliest.
    next_start: Option<Instant>,
    in_flight: Option<Flight>,
}

struct CacheInner {
    source: Arc<dyn PodListSource>,
    poll_interval: Duration,
    current: RwLock<Option<Arc<PodList>>>,
    flight: Mutex<FlightState>,
}

/// The node's pod list, shared by all attestations (and later by
/// pre-issuance, which lists the pods of the node from it).
#[derive(Clone)]
pub struct PodCache {
    inner: Arc<CacheInner>,
}

impl std::fmt::Debug for PodCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCache")
            .field("poll_interval", &self.inner.poll_interval)
            .field("generation", &self.snapshot().map(|l| l.generation()))
            .finish_non_exhaustive()
    }
}

impl PodCache {
    pub fn new(source: Arc<dyn PodListSource>, poll_interval: Duration) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                source,
                poll_interval,
                current: RwLock::new(None),
                flight: Mutex::new(FlightState::default()),
            }),
        }
    }

    /// The latest list fetched, however old, without asking the kubelet.
    pub fn snapshot(&self) -> Option<Arc<PodList>> {
        self.inner
            .current
            .read()
            .ok()
            .and_then(|current| current.clone())
    }

    /// The latest list if it is at most `max_age` old, else a fresh one.
    pub async fn pods(&self, max_age: Duration) -> Result<Arc<PodList>, KubeletError> {
        let current = self.snapshot();
        match current {
            Some(list) if list.fetched_at().elapsed() <= max_age => Ok(list),
            other => {
                self.refresh_newer_than(other.map_or(0, |l| l.generation()))
                    .await
            }
        }
    }

    /// A list newer than `generation`: the current one if it already is,
    /// else the result of the fetch in flight (joined, not repeated), else
    /// of a new fetch started no sooner than a poll interval after the
    /// previous one started. A failed fetch fails everyone who waited for it.
    pub async fn refresh_newer_than(&self, generation: u64) -> Result<Arc<PodList>, KubeletError> {
        let flight = {
            let mut state = match self.inner.flight.lock() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(list) = self.snapshot()
                && list.generation() > generation
            {
                return Ok(list);
            }
            match &state.in_flight {
                Some(flight) => flight.clone(),
                None => {
                    let now = Instant::now();
                    let start = state.next_start.map_or(now, |next| next.max(now));
                    state.next_start = Some(start + self.inner.poll_interval);
                    state.started += 1;
                    let flight = Self::fetch(self.inner.clone(), state.started, start)
                        .boxed()
                        .shared();
                    state.in_flight = Some(flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    async fn fetch(
        inner: Arc<CacheInner>,
        generation: u64,
        start: Instant,
    ) -> Result<Arc<PodList>, KubeletError> {
        tokio::time::sleep_until(start).await;
        // Space the next fetch from when this one really starts: timers
        // wake on a millisecond tick, possibly after `start`.
        {
            let mut state = match inner.flight.lock() {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
            state.next_start = Some(Instant::now() + inner.poll_interval);
        }
        let result = match inner.source.fetch().await {
            Ok(body) => PodList::parse(&body, generation, Instant::now()).map(Arc::new),
            Err(error) => Err(error),
        };
        match &result {
            Ok(list) => {
                tracing::debug!(generation, pods = list.pods().len(), "pod list fetched");
                if let Ok(mut current) = inner.current.write() {
                    *current = Some(list.clone());
                }
            }
            Err(error) => tracing::warn!(%error, "fetching the kubelet's pod list failed"),
        }
        // Later callers start a new fetch instead of reusing this result.
        let mut state = match inner.flight.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        state.in_flight = None;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn yaml_shape_and_defaults() {
        let config: KubeletConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(config, KubeletConfig::default());
        let config: KubeletConfig = serde_yaml::from_str(
            "secure_port: 10250\ntoken_path: /t\nca_path: /c\nskip_verify: false\nanonymous: false\n\
             node_name: n1\nhost: 10.0.0.7\npoll_interval: 250ms\nmax_poll_attempts: 8\npod_list_max_age: 2m",
        )
        .unwrap();
        assert_eq!(config.poll_interval, Duration::from_millis(250));
        assert_eq!(config.pod_list_max_age, Duration::from_secs(120));
        assert_eq!(config.max_poll_attempts, 8);
        assert!(serde_yaml::from_str::<KubeletConfig>("port: 1").is_err());
        assert!(serde_yaml::from_str::<KubeletConfig>("poll_interval: soon").is_err());
    }

    #[test]
    fn node_name_from_the_downward_api_is_the_server_name() {
        let endpoint = KubeletConfig::default()
            .endpoint(env(&[(NODE_NAME_ENV, "node-1")]))
            .unwrap();
        assert_eq!(endpoint.dial_host, "node-1");
        assert_eq!(endpoint.port, 10250);
        let tls = endpoint.tls.unwrap();
        assert_eq!(tls.server_name.to_str(), "node-1");
        assert_eq!(tls.ca_path, Some(PathBuf::from(DEFAULT_CA_PATH)));
        assert_eq!(tls.token_path, Some(PathBuf::from(DEFAULT_TOKEN_PATH)));

        // The node IP is dialled, the name still verified.
        let endpoint = KubeletConfig::default()
            .endpoint(env(&[(NODE_NAME_ENV, "node-1"), (NODE_IP_ENV, "10.1.2.3")]))
            .unwrap();
        assert_eq!(endpoint.dial_host, "10.1.2.3");
        assert_eq!(endpoint.tls.unwrap().server_name.to_str(), "node-1");

        // Configuration beats the environment.
        let config = KubeletConfig {
            node_name: Some("node-2".into()),
            host: Some("[fd00::5]".into()),
            ..KubeletConfig::default()
        };
        let endpoint = config
            .endpoint(env(&[(NODE_NAME_ENV, "node-1"), (NODE_IP_ENV, "10.1.2.3")]))
            .unwrap();
        assert_eq!(endpoint.dial_host, "fd00::5");
        assert_eq!(endpoint.tls.unwrap().server_name.to_str(), "node-2");
    }

    #[test]
    fn verification_needs_a_node_name() {
        let error = KubeletConfig::default().endpoint(env(&[])).unwrap_err();
        assert!(matches!(error, KubeletError::Config { .. }));
        assert_eq!(error.kind(), AttestErrorKind::FailedPrecondition);
        // Even with an address to dial: the certificate names the node.
        assert!(
            KubeletConfig::default()
                .endpoint(env(&[(NODE_IP_ENV, "10.1.2.3")]))
                .is_err()
        );
        // Without verification the address will do.
        let config = KubeletConfig {
            skip_verify: true,
            anonymous: true,
            ..KubeletConfig::default()
        };
        let endpoint = config.endpoint(env(&[(NODE_IP_ENV, "10.1.2.3")])).unwrap();
        let tls = endpoint.tls.unwrap();
        assert_eq!(tls.ca_path, None);
        assert_eq!(tls.token_path, None);
    }

    #[test]
    fn read_only_port_excludes_the_secure_port() {
        let config = KubeletConfig {
            read_only_port: 10255,
            ..KubeletConfig::default()
        };
        let endpoint = config.endpoint(env(&[])).unwrap();
        assert_eq!(endpoint.tls, None);
        assert_eq!(endpoint.dial_host, "127.0.0.1");
        assert_eq!(endpoint.port, 10255);
        let both = KubeletConfig {
            secure_port: Some(10250),
            ..config
        };
        assert!(matches!(
            both.endpoint(env(&[])),
            Err(KubeletError::Config { .. })
        ));
    }

    #[test]
    fn image_digest_drops_the_dockershim_scheme() {
        let container = |image_id: &str| PodContainer {
            name: "c".into(),
            kind: ContainerKind::Regular,
            id: None,
            image: "nginx:1.27".into(),
            image_id: image_id.into(),
        };
        assert_eq!(container("").image_digest(), None);
        assert_eq!(
            container("docker.io/library/nginx@sha256:ab").image_digest(),
            Some("docker.io/library/nginx@sha256:ab")
        );
        assert_eq!(
            container("docker-pullable://nginx@sha256:ab").image_digest(),
            Some("nginx@sha256:ab")
        );
        assert_eq!(container("sha256:cd").image_digest(), Some("sha256:cd"));
    }

    #[test]
    fn tokens_are_trimmed_and_checked() {
        let path = Path::new("/t");
        assert_eq!(
            &*parse_token(path, b"abc.def\n".to_vec()).unwrap(),
            "abc.def"
        );
        assert!(parse_token(path, b"  \n".to_vec()).is_err());
        assert!(parse_token(path, b"a\nb".to_vec()).is_err());
    }
}
