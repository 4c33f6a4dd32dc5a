//! The delegated API (`signet.issuer.v1.Delegated`) on the agent's admin
//! socket: SVIDs for a pod, asked for by signet-csi in files mode on the
//! pod's behalf rather than by the pod itself.
//!
//! The caller is not attested (it is the CSI driver, not the workload): it
//! names the pod, so the socket is the whole of the protection. It lives in
//! a directory of its own (0700) with mode 0600, and every call is checked
//! against the peer's `SO_PEERCRED` uid as well: only root (or the agent's
//! own user, for unprivileged test setups) may call.
//!
//! A pod becomes a workload with the attributes
//! `workload.kubernetes.{pod_uid,namespace,pod_name,service_account}` as
//! the kubelet described it to the CSI driver; when the Kubernetes attestor
//! is enabled the pod must also be in the kubelet's pod list under those
//! names, which adds its labels and node name. The workload goes through
//! the same [`SvidCache`] as any Workload API caller: the keys are generated
//! here and the SVIDs renewed at half-life. The issuer, in a cluster,
//! derives the Kubernetes attributes from its own pod watch by pod UID and
//! checks the pod's service-account token, which is kept in [`PodTokens`]
//! for the issuer client to attach.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use signet_policy::{Attributes, Field, LabelMap};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::delegated_server::{Delegated, DelegatedServer};
use signet_proto::issuer_protocol::MAX_AUDIENCE_LEN;
use signet_runtime::h2_authority::FixedAuthority;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::follow::{Step, follow, unique_hints};
use crate::attest::kubelet::{KubeletError, PodCache};
use crate::cache::{CacheError, IssuedX509, SvidCache, ViewStatus, WorkloadBundles, WorkloadView};
use crate::issuer::pod_tokens::{PodTokens, unverified_claims};

/// How old a kubelet pod list may be to describe a pod being published.
const POD_LIST_MAX_AGE: Duration = Duration::from_secs(10);
/// Longest accepted pod token (projected tokens are ~1 KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DelegatedError {
    #[error("the caller's credentials cannot be read from the admin socket")]
    NoPeer,
    #[error(
        "the delegated API serves root (signet-csi) only; the caller runs as uid {uid}, \
         the agent as uid {agent_uid}"
    )]
    NotPermitted { uid: u32, agent_uid: u32 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "pod {pod_uid} has no open SubscribePodSvids stream on this agent; \
         subscribe before asking for its JWT-SVIDs"
    )]
    UnknownPod { pod_uid: String },
    #[error("the kubelet does not list pod {pod_uid} on this node")]
    PodNotListed { pod_uid: String },
    #[error(
        "the kubelet lists pod {pod_uid} as {actual}, but the request names {claimed}; \
         refusing the contradiction"
    )]
    PodMismatch {
        pod_uid: String,
        actual: String,
        claimed: String,
    },
    #[error("no identity issued: {0}")]
    NoIdentity(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "admin_listen directory {dir} is {reason}: give the admin socket a directory of \
         its own, such as /run/signet-admin"
    )]
    AdminDir { dir: PathBuf, reason: String },
    #[error("admin socket: {0}")]
    Bind(#[from] signet_runtime::uds::UdsError),
}

impl From<DelegatedError> for Status {
    fn from(error: DelegatedError) -> Self {
        let message = error.to_string();
        match error {
            DelegatedError::InvalidArgument(_) => Status::invalid_argument(message),
            DelegatedError::NoPeer
            | DelegatedError::NotPermitted { .. }
            | DelegatedError::PodMismatch { .. }
            | DelegatedError::NoIdentity(_) => Status::permission_denied(message),
            DelegatedError::UnknownPod { .. } => Status::not_found(message),
            DelegatedError::PodNotListed { .. } | DelegatedError::Unavailable(_) => {
                Status::unavailable(message)
            }
            DelegatedError::AdminDir { .. } | DelegatedError::Bind(_) => Status::internal(message),
        }
    }
}

impl From<CacheError> for DelegatedError {
    fn from(error: CacheError) -> Self {
        match error {
            CacheError::NoIdentity(reason) => Self::NoIdentity(reason),
            CacheError::Stopped => Self::Unavailable("the agent is shutting down".into()),
            CacheError::Sign(error) => Self::Unavailable(error.to_string()),
            CacheError::NoPolicy => Self::Unavailable(
                "the agent has not received its policy from the issuer yet".into(),
            ),
        }
    }
}

// === input validation ===

/// A pod as the kubelet described it in NodePublishVolume, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Lowercase.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

fn invalid(message: String) -> DelegatedError {
    DelegatedError::InvalidArgument(message)
}

/// A UUID, or the hash the kubelet uses as a static pod's UID.
pub fn check_pod_uid(uid: &str) -> Result<String, DelegatedError> {
    if uid.is_empty() {
        return Err(invalid("pod_uid is required".into()));
    }
    if uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(format!(
            "pod_uid {uid:?} is not a pod UID (letters, digits and '-', at most 64)"
        )));
    }
    Ok(uid.to_ascii_lowercase())
}

/// RFC 1123 label (namespaces) or subdomain (pod and service-account
/// names), as the API server validates them.
fn check_dns_name(field: &str, value: &str, subdomain: bool) -> Result<(), DelegatedError> {
    let max = if subdomain { 253 } else { 63 };
    let kind = if subdomain {
        "a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253)"
    } else {
        "a DNS label (lowercase letters, digits and '-', at most 63)"
    };
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let valid_part = |part: &str| {
        let bytes = part.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes.iter().all(|b| allowed(*b))
            }
            _ => false,
        }
    };
    let valid = value.len() <= max
        && if subdomain {
            value.split('.').all(valid_part)
        } else {
            valid_part(value)
        };
    if valid {
        Ok(())
    } else {
        Err(invalid(format!("{field} {value:?} is not {kind}")))
    }
}

/// A pod token, when given, must look like a JWT; it is verified by the
/// issuer, this only keeps garbage out of the registry and the logs.
fn check_token(token: &str) -> Result<(), DelegatedError> {
    if token.is_empty() {
        return Ok(());
    }
    let shaped = token.len() <= MAX_TOKEN_LEN
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='));
    if shaped {
        Ok(())
    } else {
        Err(invalid(
            "pod_token is not a JWT (three base64url parts separated by '.')".into(),
        ))
    }
}

impl PodRef {
    pub fn from_request(request: &pb::SubscribePodSvidsRequest) -> Result<Self, DelegatedError> {
        let uid = check_pod_uid(&request.pod_uid)?;
        check_dns_name("pod_namespace", &request.pod_namespace, false)?;
        check_dns_name("pod_name", &request.pod_name, true)?;
        check_dns_name("service_account", &request.service_account, true)?;
        check_token(&request.pod_token)?;
        Ok(Self {
            uid,
            namespace: request.pod_namespace.clone(),
            name: request.pod_name.clone(),
            service_account: request.service_account.clone(),
        })
    }

    /// A pod the operator says is bound to this node, checked like a
    /// request's.
    pub(crate) fn from_bound(
        pod: &signet_proto::issuer::v1::BoundPod,
    ) -> Result<Self, DelegatedError> {
        check_dns_name("pod_namespace", &pod.namespace, false)?;
        check_dns_name("pod_name", &pod.name, true)?;
        check_dns_name("service_account", &pod.service_account, true)?;
        Ok(Self {
            uid: check_pod_uid(&pod.uid)?,
            namespace: pod.namespace.clone(),
            name: pod.name.clone(),
            service_account: pod.service_account.clone(),
        })
    }

    /// The attributes the request itself testifies to.
    fn attributes(&self) -> Attributes {
        let mut attributes = Attributes::default();
        attributes
            .set(Field::KubernetesPodUid, self.uid.as_str())
            .set(Field::KubernetesNamespace, self.namespace.as_str())
            .set(Field::KubernetesPodName, self.name.as_str())
            .set(
                Field::KubernetesServiceAccount,
                self.service_account.as_str(),
            );
        attributes
    }
}

fn check_audiences(audiences: &[String]) -> Result<(), DelegatedError> {
    if audiences.is_empty() {
        return Err(invalid("audience must be specified".into()));
    }
    for audience in audiences {
        if audience.is_empty() || audience.len() > MAX_AUDIENCE_LEN {
            return Err(invalid(format!(
                "audience {audience:?} must be 1 to {MAX_AUDIENCE_LEN} bytes"
            )));
        }
    }
    Ok(())
}

// === connections ===

/// The admin socket's peer, read once per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminPeer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

/// Accepted admin connections, each carrying its [`AdminPeer`].
fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = Result<FixedAuthority<AdminPeer>, std::io::Error>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let peer = admin_peer(&stream);
                    return Some((Ok(FixedAuthority::with_info(stream, peer)), listener));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting an admin connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

fn admin_peer(stream: &UnixStream) -> AdminPeer {
    match stream.peer_cred() {
        Ok(cred) => AdminPeer {
            uid: Some(cred.uid()),
            pid: cred.pid(),
        },
        Err(_) => AdminPeer {
            uid: None,
            pid: None,
        },
    }
}

/// Prepares the admin socket's directory (0700) and binds the socket (0600).
///
/// The directory is created if missing. An existing one that other users
/// can enter is tightened only when it holds nothing but this socket (a
/// directory of its own, e.g. created 0755 by a hostPath volume); a shared
/// directory is refused, since changing its mode would break its other users.
pub fn bind_admin_socket(path: &Path) -> Result<UnixListener, DelegatedError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = path.parent().ok_or_else(|| DelegatedError::AdminDir {
        dir: PathBuf::new(),
        reason: "missing (the socket path has no parent)".into(),
    })?;
    let admin_dir = |reason: String| DelegatedError::AdminDir {
        dir: dir.to_owned(),
        reason,
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(error) => return Err(admin_dir(format!("not creatable ({error})"))),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| admin_dir(e.to_string()))?;
    if !meta.is_dir() {
        return Err(admin_dir("not a directory".into()));
    }
    if meta.mode() & 0o077 != 0 {
        let socket_name = path.file_name().unwrap_or_default();
        let entries = std::fs::read_dir(dir).map_err(|e| admin_dir(e.to_string()))?;
        let foreign: Vec<String> = entries
            .flatten()
            .map(|entry| entry.file_name())
            .filter(|name| {
                // bind_unix_listener's staging directories start with ".s".
                name != socket_name && !name.to_string_lossy().starts_with(".s")
            })
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        if !foreign.is_empty() {
            return Err(admin_dir(format!(
                "accessible to other users (mode {:o}) and shared with {foreign:?}",
                meta.mode() & 0o777
            )));
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| admin_dir(format!("not restrictable to 0700 ({e})")))?;
        tracing::info!(dir = %dir.display(), "restricted the admin socket directory to 0700");
    }
    Ok(signet_runtime::uds::bind_unix_listener(path, 0o600)?)
}

/// The pod's workload attributes: the request's, checked against and
/// completed from the kubelet's pod list when the Kubernetes attestor is
/// enabled (labels and node name, so that local policy sees what the
/// issuer will).
pub async fn pod_attributes(
    kubelet: Option<&PodCache>,
    pod: &PodRef,
) -> Result<Attributes, DelegatedError> {
    let Some(kubelet) = kubelet else {
        return Ok(pod.attributes());
    };
    let unavailable = |e: KubeletError| DelegatedError::Unavailable(e.to_string());
    let list = kubelet.pods(POD_LIST_MAX_AGE).await.map_err(unavailable)?;
    let listed = match list.find_pod(&pod.uid) {
        Some(listed) => listed.clone(),
        // A pod the kubelet admitted a moment ago may postdate the list.
        None => kubelet
            .refresh_newer_than(list.generation())
            .await
            .map_err(unavailable)?
            .find_pod(&pod.uid)
            .cloned()
            .ok_or_else(|| DelegatedError::PodNotListed {
                pod_uid: pod.uid.clone(),
            })?,
    };
    if listed.namespace != pod.namespace
        || listed.name != pod.name
        || listed.service_account != pod.service_account
    {
        return Err(DelegatedError::PodMismatch {
            pod_uid: pod.uid.clone(),
            actual: format!(
                "{}/{} (service account {})",
                listed.namespace, listed.name, listed.service_account
            ),
            claimed: format!(
                "{}/{} (service account {})",
                pod.namespace, pod.name, pod.service_account
            ),
        });
    }
    Ok(pod_level_attributes(pod, &listed.node_name, &listed.labels))
}

/// A pod's attributes without any container or process: what signet-csi's
/// files mode subscribes, and what SVIDs are signed ahead for when the pod
/// is bound (the two must agree for files mode to find them).
pub(crate) fn pod_level_attributes(
    pod: &PodRef,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> Attributes {
    let mut attributes = pod.attributes();
    attributes.set(Field::KubernetesNodeName, node_name);
    attributes.set_representable_labels(LabelMap::KubernetesLabels, labels);
    attributes
}

// === state ===

struct PodRecord {
    attributes: Attributes,
    streams: usize,
}

/// Everything the delegated handlers share.
pub struct DelegatedState {
    cache: SvidCache,
    pod_tokens: PodTokens,
    /// The Kubernetes attestor's pod list, when that attestor is enabled.
    kubelet: Option<PodCache>,
    first_svid_timeout: Duration,
    /// Pods with open SubscribePodSvids streams, by lowercase UID.
    pods: Arc<Mutex<HashMap<String, PodRecord>>>,
    /// The agent's own uid, allowed besides root.
    agent_uid: u32,
    stopping: watch::Sender<bool>,
}

impl DelegatedState {
    pub fn new(
        cache: SvidCache,
        pod_tokens: PodTokens,
        kubelet: Option<PodCache>,
        first_svid_timeout: Duration,
    ) -> Self {
        Self {
            cache,
            pod_tokens,
            kubelet,
            first_svid_timeout,
            pods: Arc::new(Mutex::new(HashMap::new())),
            agent_uid: rustix::process::geteuid().as_raw(),
            stopping: watch::channel(false).0,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<AdminPeer, DelegatedError> {
        let peer = request
            .extensions()
            .get::<AdminPeer>()
            .copied()
            .ok_or(DelegatedError::NoPeer)?;
        let uid = peer.uid.ok_or(DelegatedError::NoPeer)?;
        if uid != 0 && uid != self.agent_uid {
            tracing::warn!(uid, pid = ?peer.pid, "refused a delegated API caller");
            return Err(DelegatedError::NotPermitted {
                uid,
                agent_uid: self.agent_uid,
            });
        }
        Ok(peer)
    }

    async fn wait_for_policy(&self) -> Result<(), DelegatedError> {
        self.cache
            .wait_for_policy(self.first_svid_timeout)
            .await
            .map_err(|_| {
                DelegatedError::Unavailable(
                    "the agent has not received its policy from the issuer yet".into(),
                )
            })
    }

    /// Records an open stream for the pod until the returned guard drops.
    fn register(&self, pod_uid: &str, attributes: Attributes) -> PodRegistration {
        let mut pods = match self.pods.lock() {
            Ok(pods) => pods,
            Err(poisoned) => poisoned.into_inner(),
        };
        let record = pods.entry(pod_uid.to_owned()).or_insert(PodRecord {
            attributes: attributes.clone(),
            streams: 0,
        });
        record.attributes = attributes;
        record.streams += 1;
        PodRegistration {
            pods: self.pods.clone(),
            pod_tokens: self.pod_tokens.clone(),
            pod_uid: pod_uid.to_owned(),
        }
    }

    fn registered(&self, pod_uid: &str) -> Option<Attributes> {
        let pods = match self.pods.lock() {
            Ok(pods) => pods,
            Err(poisoned) => poisoned.into_inner(),
        };
        pods.get(pod_uid).map(|record| record.attributes.clone())
    }

    /// Resolves when the server is stopping.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.subscribe();
        async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        }
    }
}

/// Keeps a pod known (for FetchPodJwtSvids) while a stream for it is open;
/// the last one closing forgets its attributes and token.
struct PodRegistration {
    pods: Arc<Mutex<HashMap<String, PodRecord>>>,
    pod_tokens: PodTokens,
    pod_uid: String,
}

impl Drop for PodRegistration {
    fn drop(&mut self) {
        let mut pods = match self.pods.lock() {
            Ok(pods) => pods,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(record) = pods.get_mut(&self.pod_uid) {
            record.streams = record.streams.saturating_sub(1);
            if record.streams == 0 {
                pods.remove(&self.pod_uid);
                self.pod_tokens.remove(&self.pod_uid);
            }
        }
    }
}

// === messages ===

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The full state for a pod holding `svids` (default first); empty when the
/// pod is entitled to nothing (no bundle either, as the Workload API gives
/// no bundles to a workload without identity).
pub fn pod_update(
    svids: &[Arc<IssuedX509>],
    bundles: Option<&WorkloadBundles>,
) -> pb::PodSvidsUpdate {
    let Some(bundles) = bundles.filter(|_| !svids.is_empty()) else {
        return pb::PodSvidsUpdate::default();
    };
    let hints = unique_hints(
        svids
            .iter()
            .map(|s| (s.spiffe_id.as_str(), s.hint.as_deref())),
    );
    pb::PodSvidsUpdate {
        svids: svids
            .iter()
            .zip(hints)
            .map(|(svid, hint)| pb::PodSvid {
                spiffe_id: svid.spiffe_id.to_string(),
                cert_chain: svid.cert_chain.clone(),
                private_key: svid.private_key.to_vec(),
                hint,
                expires_at_unix: unix_seconds(svid.not_after),
            })
            .collect(),
        bundle: bundles
            .own
            .x509_authorities
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        federated_bundles: bundles
            .federated
            .iter()
            .map(|b| (b.trust_domain.id().to_string(), b.to_x509_der()))
            .collect(),
    }
}

/// The next pod stream message for a view. Losing every identity is a
/// state like any other (an empty update); no valid SVID left with none
/// obtainable ends the stream with Unavailable.
fn pod_step(view: &WorkloadView) -> Step<pb::PodSvidsUpdate> {
    match &view.status {
        ViewStatus::NoIdentity { reason } => {
            tracing::info!(%reason, "pod no longer entitled to an identity");
            Step::Send(pb::PodSvidsUpdate::default())
        }
        _ if !view.svids.is_empty() => Step::Send(pod_update(&view.svids, view.bundles.as_deref())),
        ViewStatus::Unavailable { message } => {
            Step::End(DelegatedError::Unavailable(format!("no valid SVID left: {message}")).into())
        }
        _ => Step::Wait,
    }
}

// === service ===

pub struct DelegatedService {
    state: Arc<DelegatedState>,
}

impl DelegatedService {
    pub fn new(state: Arc<DelegatedState>) -> Self {
        Self { state }
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribePodSvidsRequest>,
    ) -> Result<ReceiverStream<Result<pb::PodSvidsUpdate, Status>>, DelegatedError> {
        let peer = self.state.authorize(&request)?;
        let request = request.into_inner();
        let pod = PodRef::from_request(&request)?;
        let attributes = pod_attributes(self.state.kubelet.as_ref(), &pod).await?;
        // Before subscribing: the cache signs right away, with the token.
        self.state.pod_tokens.offer(&pod.uid, &request.pod_token);
        let registration = self.state.register(&pod.uid, attributes.clone());
        let mut subscription = self.state.cache.subscribe(&attributes).await?;
        let view = subscription
            .first_settled(self.state.first_svid_timeout)
            .await;
        self.state.wait_for_policy().await?;
        let first = match &view.status {
            ViewStatus::Ready => pod_update(&view.svids, view.bundles.as_deref()),
            ViewStatus::NoIdentity { reason } => {
                tracing::info!(
                    pod_uid = %pod.uid,
                    namespace = %pod.namespace,
                    pod = %pod.name,
                    %reason,
                    "pod entitled to no identity"
                );
                pb::PodSvidsUpdate::default()
            }
            ViewStatus::Unavailable { message } => {
                return Err(DelegatedError::Unavailable(format!(
                    "no SVID could be obtained: {message}"
                )));
            }
            ViewStatus::Pending => {
                return Err(DelegatedError::Unavailable(
                    "SVIDs are still being issued; retry".into(),
                ));
            }
        };
        tracing::info!(
            pod_uid = %pod.uid,
            namespace = %pod.namespace,
            pod = %pod.name,
            svids = first.svids.len(),
            caller_pid = ?peer.pid,
            "delegated SVID stream opened"
        );
        // The registration lives as long as the stream.
        let step = move |view: &WorkloadView| {
            let _open = &registration;
            pod_step(view)
        };
        Ok(follow(subscription, first, step, self.state.stopped()))
    }

    async fn fetch_jwt(
        &self,
        request: Request<pb::FetchPodJwtSvidsRequest>,
    ) -> Result<pb::FetchPodJwtSvidsResponse, DelegatedError> {
        self.state.authorize(&request)?;
        let request = request.into_inner();
        let pod_uid = check_pod_uid(&request.pod_uid)?;
        check_audiences(&request.audience)?;
        check_token(&request.pod_token)?;
        let attributes =
            self.state
                .registered(&pod_uid)
                .ok_or_else(|| DelegatedError::UnknownPod {
                    pod_uid: pod_uid.clone(),
                })?;
        self.state.pod_tokens.offer(&pod_uid, &request.pod_token);
        self.state.wait_for_policy().await?;
        let svids = self
            .state
            .cache
            .fetch_jwt(&attributes, &request.audience, None)
            .await?;
        let hints = unique_hints(
            svids
                .iter()
                .map(|s| (s.spiffe_id.as_str(), s.hint.as_deref())),
        );
        Ok(pb::FetchPodJwtSvidsResponse {
            svids: svids
                .iter()
                .zip(hints)
                .map(|(svid, hint)| pb::JwtSvid {
                    workload_identity: svid.workload_identity.clone(),
                    spiffe_id: svid.spiffe_id.to_string(),
                    token: svid.token.clone(),
                    hint,
                    expires_at_unix: unix_seconds(svid.expires_at),
                    jti: unverified_claims(&svid.token)
                        .and_then(|claims| claims.get("jti")?.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }
}

fn respond<T>(rpc: &'static str, result: Result<T, DelegatedError>) -> Result<Response<T>, Status> {
    match result {
        Ok(value) => Ok(Response::new(value)),
        Err(error) => {
            let status = Status::from(error);
            tracing::info!(rpc, code = ?status.code(), message = status.message(), "delegated call refused");
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl Delegated for DelegatedService {
    type SubscribePodSvidsStream = ReceiverStream<Result<pb::PodSvidsUpdate, Status>>;

    async fn subscribe_pod_svids(
        &self,
        request: Request<pb::SubscribePodSvidsRequest>,
    ) -> Result<Response<Self::SubscribePodSvidsStream>, Status> {
        respond("SubscribePodSvids", self.subscribe(request).await)
    }

    async fn fetch_pod_jwt_svids(
        &self,
        request: Request<pb::FetchPodJwtSvidsRequest>,
    ) -> Result<Response<pb::FetchPodJwtSvidsResponse>, Status> {
        respond("FetchPodJwtSvids", self.fetch_jwt(request).await)
    }
}

/// Serves the delegated API on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: UnixListener,
    state: Arc<DelegatedState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.send_replace(true);
    };
    tonic::transport::Server::builder()
        .add_service(DelegatedServer::new(DelegatedService::new(state)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uid: &str, ns: &str, name: &str, sa: &str) -> pb::SubscribePodSvidsRequest {
        pb::SubscribePodSvidsRequest {
            pod_uid: uid.into(),
            pod_namespace: ns.into(),
            pod_name: name.into(),
            service_account: sa.into(),
            pod_token: String::new(),
        }
    }

    #[test]
    fn valid_pods_are_accepted() {
        let pod = PodRef::from_request(&request(
            "0B6C7E1A-0000-4000-8000-000000000001",
            "payments",
            "web-0.v2",
            "api",
        ))
        .unwrap();
        assert_eq!(pod.uid, "0b6c7e1a-0000-4000-8000-000000000001");
        let attributes = pod.attributes();
        assert_eq!(
            attributes.field(Field::KubernetesNamespace),
            Some("payments")
        );
        assert_eq!(
            attributes.field(Field::KubernetesServiceAccount),
            Some("api")
        );
        // A static pod's UID is the manifest hash.
        assert!(check_pod_uid("8f2a0b9c4d5e6f708192a3b4c5d6e7f8").is_ok());
    }

    #[test]
    fn bad_pods_are_refused_with_the_field_named() {
        let cases = [
            (request("", "ns", "p", "sa"), "pod_uid is required"),
            (request("a/b", "ns", "p", "sa"), "pod_uid"),
            (request(&"a".repeat(65), "ns", "p", "sa"), "pod_uid"),
            (request("u", "", "p", "sa"), "pod_namespace is required"),
            (request("u", "Payments", "p", "sa"), "pod_namespace"),
            (request("u", "a.b", "p", "sa"), "pod_namespace"),
            (request("u", "ns", "-p", "sa"), "pod_name"),
            (request("u", "ns", "p..q", "sa"), "pod_name"),
            (request("u", "ns", "p", ""), "service_account is required"),
            (request("u", "ns", "p", "s a"), "service_account"),
        ];
        for (request, field) in cases {
            let error = PodRef::from_request(&request).unwrap_err();
            assert!(matches!(error, DelegatedError::InvalidArgument(_)));
            assert!(error.to_string().contains(field), "{error} / {field}");
            assert_eq!(Status::from(error).code(), tonic::Code::InvalidArgument);
        }
        let mut with_token = request("u", "ns", "p", "sa");
        with_token.pod_token = "not a jwt".into();
        assert!(PodRef::from_request(&with_token).is_err());
        with_token.pod_token = "aGVhZA.cGF5bG9hZA.c2ln".into();
        assert!(PodRef::from_request(&with_token).is_ok());
    }

    /// The kubelet's pod list, served from memory.
    struct StaticPods(&'static str);

    impl crate::attest::kubelet::PodListSource for StaticPods {
        fn fetch(
            &self,
        ) -> std::pin::Pin<
            Box<
                dyn Future<Output = Result<bytes::Bytes, crate::attest::kubelet::KubeletError>>
                    + Send
                    + '_,
            >,
        > {
            let body = bytes::Bytes::from_static(self.0.as_bytes());
            Box::pin(async move { Ok(body) })
        }
    }

    const PODS: &str = r#"{"items": [{
        "metadata": {"name": "web-0", "namespace": "payments", "uid": "UID-1",
                     "labels": {"app": "web", "team": "payments"}},
        "spec": {"serviceAccountName": "api", "nodeName": "node-1", "containers": []},
        "status": {}
    }]}"#;

    #[tokio::test]
    async fn the_kubelet_confirms_the_pod_and_adds_labels() {
        let kubelet = PodCache::new(Arc::new(StaticPods(PODS)), Duration::from_millis(1));
        let pod = PodRef::from_request(&request("uid-1", "payments", "web-0", "api")).unwrap();
        let attributes = pod_attributes(Some(&kubelet), &pod).await.unwrap();
        assert_eq!(
            attributes.label(LabelMap::KubernetesLabels, "app"),
            Some("web")
        );
        assert_eq!(attributes.field(Field::KubernetesNodeName), Some("node-1"));
        assert_eq!(attributes.field(Field::KubernetesPodUid), Some("uid-1"));

        // The request contradicts the kubelet: refused.
        let forged = PodRef::from_request(&request("uid-1", "payments", "web-0", "admin")).unwrap();
        let error = pod_attributes(Some(&kubelet), &forged).await.unwrap_err();
        assert!(
            matches!(error, DelegatedError::PodMismatch { .. }),
            "{error}"
        );
        assert_eq!(Status::from(error).code(), tonic::Code::PermissionDenied);

        // A pod the kubelet does not run.
        let absent = PodRef::from_request(&request("uid-2", "payments", "web-0", "api")).unwrap();
        let error = pod_attributes(Some(&kubelet), &absent).await.unwrap_err();
        assert!(
            matches!(error, DelegatedError::PodNotListed { .. }),
            "{error}"
        );

        // Without the Kubernetes attestor, the request's word only.
        let plain = pod_attributes(None, &forged).await.unwrap();
        assert_eq!(plain.field(Field::KubernetesServiceAccount), Some("admin"));
        assert_eq!(plain.field(Field::KubernetesNodeName), None);
    }

    #[test]
    fn audiences_are_checked() {
        assert!(check_audiences(&[]).is_err());
        assert!(check_audiences(&[String::new()]).is_err());
        assert!(check_audiences(&["a".repeat(MAX_AUDIENCE_LEN + 1)]).is_err());
        assert!(check_audiences(&["vault".into(), "https://example.org".into()]).is_ok());
    }

    #[test]
    fn refusals_map_to_codes() {
        let code = |e: DelegatedError| Status::from(e).code();
        assert_eq!(
            code(DelegatedError::NotPermitted {
                uid: 1000,
                agent_uid: 0
            }),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(DelegatedError::UnknownPod {
                pod_uid: "u".into()
            }),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(DelegatedError::Unavailable("x".into())),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn the_admin_directory_is_private_and_not_shared() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        // Created 0700, socket 0600.
        let path = dir.path().join("admin/admin.sock");
        let _listener = bind_admin_socket(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("admin")), 0o700);
        assert_eq!(mode(&path), 0o600);
        // A directory of its own left 0755 (a hostPath volume) is tightened.
        let own = dir.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _own = bind_admin_socket(&own.join("admin.sock")).unwrap();
        assert_eq!(mode(&own), 0o700);
        // A shared directory is refused and left alone.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::write(shared.join("other"), b"x").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let error = bind_admin_socket(&shared.join("admin.sock")).unwrap_err();
        assert!(
            error.to_string().contains("directory of its own"),
            "{error}"
        );
        assert_eq!(mode(&shared), 0o755);
    }
}
