//! The issuer's own view of pods, and the workload verifier built on it.
//!
//! Agents name a pod by UID; everything Kubernetes says about it
//! (namespace, service account, labels, node) comes from this cache, fed by
//! a watch of the API server, never from the agent. Only the fields policy
//! needs are kept, so memory stays small with tens of thousands of pods.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use signet_policy::{AttributeName, Attributes, Field, LabelMap, Producer};
use signet_proto::issuer::v1 as pb;
use signet_runtime::clock::Clock;
use tokio::sync::{broadcast, watch};

use crate::agents::AgentRecord;
use crate::issuer::workload::{WorkloadRejection, WorkloadVerifier, testimony};

/// A container of a pod, as the issuer keeps it. Strings are boxed, not
/// `String`s: with tens of thousands of pods every word counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFacts {
    pub name: Box<str>,
    /// The image as the pod spec names it.
    pub image: Box<str>,
    /// The image by digest, as the kubelet reports it in the pod's status
    /// (`imageID`); `None` until it has.
    pub image_id: Option<Box<str>>,
}

/// What the issuer keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: Box<str>,
    pub name: Box<str>,
    pub uid: Box<str>,
    pub service_account: Box<str>,
    /// Empty until the pod is scheduled.
    pub node_name: Box<str>,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Containers (init containers too).
    pub containers: Box<[ContainerFacts]>,
    /// When this replica saw the pod bound to its node; `None` when it was
    /// already bound at the first sight (after a start or a relist).
    pub bound_at: Option<SystemTime>,
}

impl PodFacts {
    /// Trims a pod to its facts; `None` without a UID.
    pub fn from_pod(pod: Pod) -> Option<Self> {
        let metadata = pod.metadata;
        let uid = metadata.uid?;
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let mut image_ids: HashMap<String, String> = status
            .init_container_statuses
            .unwrap_or_default()
            .into_iter()
            .chain(status.container_statuses.unwrap_or_default())
            // The kubelet reports "" until the image is resolved.
            .filter(|status| !status.image_id.is_empty())
            .map(|status| (status.name, status.image_id))
            .collect();
        let containers = spec
            .init_containers
            .unwrap_or_default()
            .into_iter()
            .chain(spec.containers)
            .map(|c| ContainerFacts {
                image_id: image_ids.remove(&c.name).map(String::into_boxed_str),
                name: c.name.into_boxed_str(),
                image: c.image.unwrap_or_default().into_boxed_str(),
            })
            .collect();
        let labels = metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key.into_boxed_str(), value.into_boxed_str()))
            .collect();
        Some(Self {
            namespace: metadata.namespace.unwrap_or_default().into_boxed_str(),
            name: metadata.name.unwrap_or_default().into_boxed_str(),
            uid: uid.into_boxed_str(),
            service_account: spec
                .service_account_name
                .unwrap_or_else(|| "default".to_owned())
                .into_boxed_str(),
            node_name: spec.node_name.unwrap_or_default().into_boxed_str(),
            labels,
            terminating: metadata.deletion_timestamp.is_some(),
            containers,
            bound_at: None,
        })
    }

    /// Whether what agents are told of a bound pod differs (containers
    /// and their images are not told: the issuer reads them itself).
    fn told_differently(&self, other: &PodFacts) -> bool {
        self.node_name != other.node_name
            || self.namespace != other.namespace
            || self.name != other.name
            || self.service_account != other.service_account
            || self.labels != other.labels
            || self.terminating != other.terminating
    }

    /// As the agents of its node are told of it.
    pub fn to_bound_pod(&self) -> pb::BoundPod {
        let bound_at_unix_ms = self
            .bound_at
            .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(0));
        pb::BoundPod {
            uid: self.uid.to_string(),
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            service_account: self.service_account.to_string(),
            labels: self
                .labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            bound_at_unix_ms,
            terminating: self.terminating,
        }
    }

    pub fn container(&self, name: &str) -> Option<&ContainerFacts> {
        self.containers.iter().find(|c| &*c.name == name)
    }
}

/// A change the agents of a node are told of.
#[derive(Clone, Debug)]
pub enum PodChange {
    /// A pod bound to a node, new or changed.
    Bound(Arc<PodFacts>),
    /// A pod bound to `node` was deleted.
    Gone { node: Box<str>, uid: Box<str> },
    /// The watch relisted: followers start again from a snapshot.
    Resynced,
}

/// Changes queued per node for slow followers; one that falls further
/// behind starts again from a snapshot of its node.
const CHANGES_QUEUED: usize = 1024;

/// Pods by UID, kept current by [`PodCache::run`].
#[derive(Debug)]
pub struct PodCache {
    pods: RwLock<HashMap<Box<str>, Arc<PodFacts>>>,
    synced: watch::Sender<bool>,
    /// Per node, so a follower wakes for its own node's pods only.
    followers: Mutex<HashMap<Box<str>, broadcast::Sender<PodChange>>>,
    clock: Clock,
}

impl Default for PodCache {
    fn default() -> Self {
        Self::with_clock(Clock::new())
    }
}

impl PodCache {
    pub fn with_clock(clock: Clock) -> Self {
        Self {
            pods: RwLock::new(HashMap::new()),
            synced: watch::channel(false).0,
            followers: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Changes to the pods bound to `node` from now on.
    pub fn follow_node(&self, node: &str) -> broadcast::Receiver<PodChange> {
        let mut followers = match self.followers.lock() {
            Ok(followers) => followers,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Nodes nobody follows any more.
        followers.retain(|_, sender| sender.receiver_count() > 0);
        followers
            .entry(node.into())
            .or_insert_with(|| broadcast::channel(CHANGES_QUEUED).0)
            .subscribe()
    }

    fn tell(&self, node: &str, change: PodChange) {
        if let Ok(followers) = self.followers.lock()
            && let Some(sender) = followers.get(node)
        {
            // Followers gone meanwhile are fine.
            let _ = sender.send(change);
        }
    }

    fn tell_everyone(&self, change: &PodChange) {
        if let Ok(followers) = self.followers.lock() {
            for sender in followers.values() {
                let _ = sender.send(change.clone());
            }
        }
    }

    /// The pods bound to `node`, at this moment.
    pub fn on_node(&self, node: &str) -> Vec<Arc<PodFacts>> {
        self.pods
            .read()
            .map(|pods| {
                pods.values()
                    .filter(|pod| &*pod.node_name == node)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, uid: &str) -> Option<Arc<PodFacts>> {
        self.pods.read().ok()?.get(uid).cloned()
    }

    /// Whether any cached pod satisfies `wanted`.
    pub fn any(&self, wanted: impl Fn(&PodFacts) -> bool) -> bool {
        self.pods
            .read()
            .map(|pods| pods.values().any(|pod| wanted(pod)))
            .unwrap_or(false)
    }

    /// Every cached pod, at this moment.
    pub fn all(&self) -> Vec<Arc<PodFacts>> {
        self.pods
            .read()
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.pods.read().map(|pods| pods.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the first complete list arrived.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    /// A pod added or changed, seen live (so a first node name is the
    /// moment of binding).
    pub fn upsert(&self, pod: Pod) {
        let Some(mut facts) = PodFacts::from_pod(pod) else {
            return;
        };
        let Ok(mut pods) = self.pods.write() else {
            return;
        };
        let previous = pods.get(&facts.uid);
        facts.bound_at = match previous {
            Some(previous) if previous.node_name == facts.node_name => previous.bound_at,
            _ if facts.node_name.is_empty() => None,
            _ => Some(self.clock.now()),
        };
        let tell = !facts.node_name.is_empty()
            && previous.is_none_or(|previous| previous.told_differently(&facts));
        let facts = Arc::new(facts);
        pods.insert(facts.uid.clone(), facts.clone());
        drop(pods);
        if tell {
            let node = facts.node_name.clone();
            self.tell(&node, PodChange::Bound(facts));
        }
    }

    pub fn remove(&self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref() else {
            return;
        };
        let removed = self.pods.write().ok().and_then(|mut pods| pods.remove(uid));
        if let Some(removed) = removed
            && !removed.node_name.is_empty()
        {
            self.tell(
                &removed.node_name,
                PodChange::Gone {
                    node: removed.node_name.clone(),
                    uid: removed.uid.clone(),
                },
            );
        }
    }

    /// Replaces the whole cache after a (re)list. A pod bound before keeps
    /// the time it was seen bound; one first seen bound in the list has
    /// none (when it was bound is not known).
    pub fn replace(&self, mut fresh: HashMap<Box<str>, Arc<PodFacts>>) {
        if let Ok(mut pods) = self.pods.write() {
            for (uid, facts) in &mut fresh {
                if let Some(previous) = pods.get(uid)
                    && previous.node_name == facts.node_name
                    && previous.bound_at.is_some()
                {
                    Arc::make_mut(facts).bound_at = previous.bound_at;
                }
            }
            *pods = fresh;
        }
        self.synced.send_replace(true);
        self.tell_everyone(&PodChange::Resynced);
    }

    /// Watches every pod until the task is dropped, reconnecting with
    /// backoff.
    pub async fn run(self: Arc<Self>, api: Api<Pod>) {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut relist: HashMap<Box<str>, Arc<PodFacts>> = HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(pod)) => self.upsert(pod),
                Ok(watcher::Event::Delete(pod)) => self.remove(&pod),
                Ok(watcher::Event::Init) => relist = HashMap::new(),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let Some(facts) = PodFacts::from_pod(pod) {
                        relist.insert(facts.uid.clone(), Arc::new(facts));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = std::mem::take(&mut relist);
                    tracing::info!(pods = fresh.len(), "pod cache synced");
                    self.replace(fresh);
                }
                Err(error) => tracing::warn!(%error, "pod watch failed; retrying"),
            }
        }
    }
}

fn rejection(reason: &'static str, message: String, retryable: bool) -> WorkloadRejection {
    WorkloadRejection {
        reason,
        message,
        retryable,
    }
}

/// Whether the Kubernetes attestor (and in a cluster the pod watch) is
/// the one that sets `name`.
fn set_by_kubernetes(name: &str) -> bool {
    let Ok(name) = AttributeName::parse(name) else {
        return false;
    };
    let producer = match (name.field(), name.label_key()) {
        (Some(field), _) => Some(field.producer()),
        (None, Some((map, _))) => Some(map.producer()),
        (None, None) => None,
    };
    producer == Some(Producer::Kubernetes)
}

/// The pod's `workload.kubernetes.*` as the issuer knows them, plus the
/// agent's testimony about everything that is not Kubernetes.
pub fn pod_attributes(
    workload: &pb::Workload,
    pod: &PodFacts,
) -> Result<Attributes, WorkloadRejection> {
    let mut attributes = testimony(workload)?;
    // Which container called is the agent's testimony; it must at least be
    // one of the pod's, and everything else about it is the API server's.
    let container = attributes
        .field(Field::KubernetesContainerName)
        .map(str::to_owned);
    attributes.remove_produced_by(Producer::Kubernetes);
    attributes
        .set(Field::KubernetesNamespace, &*pod.namespace)
        .set(Field::KubernetesPodName, &*pod.name)
        .set(Field::KubernetesPodUid, &*pod.uid)
        .set(Field::KubernetesServiceAccount, &*pod.service_account)
        .set(Field::KubernetesNodeName, &*pod.node_name);
    for (key, value) in &pod.labels {
        match AttributeName::label(LabelMap::KubernetesLabels, key) {
            Ok(name) => {
                attributes.insert(name, &**value);
            }
            // The API server validates label keys, so this should not
            // happen; no policy could name such a key anyway.
            Err(error) => tracing::debug!(pod = %pod.name, %error, "pod label left out"),
        }
    }
    if let Some(container) = container {
        let Some(facts) = pod.container(&container) else {
            return Err(rejection(
                "invalid_attributes",
                format!(
                    "pod {}/{} has no container {container:?}",
                    pod.namespace, pod.name
                ),
                false,
            ));
        };
        attributes
            .set(Field::KubernetesContainerName, &*facts.name)
            .set(Field::KubernetesContainerImage, &*facts.image);
        if let Some(image_id) = &facts.image_id {
            attributes.set(Field::KubernetesContainerImageId, &**image_id);
        }
    }
    Ok(attributes)
}

/// Checks a pod's own service-account token (signet-csi files mode passes
/// the one the kubelet requested for the volume).
pub struct PodTokenReviewer {
    pub client: kube::Client,
    pub audience: String,
}

/// Verifies workloads against the pod cache: the pod must exist, run on
/// the calling agent's node and not be terminating; a pod token, when
/// given, must be the API server's for that very pod.
pub struct PodVerifier {
    pods: Arc<PodCache>,
    tokens: Option<PodTokenReviewer>,
}

impl PodVerifier {
    pub fn new(pods: Arc<PodCache>, tokens: Option<PodTokenReviewer>) -> Self {
        Self { pods, tokens }
    }

    async fn check_pod_token(&self, workload: &pb::Workload) -> Result<(), WorkloadRejection> {
        if workload.pod_token.is_empty() {
            return Ok(());
        }
        let Some(reviewer) = &self.tokens else {
            return Err(rejection(
                "invalid_pod_token",
                "this issuer does not check pod tokens".into(),
                false,
            ));
        };
        let reviewed = crate::cluster::token_review::review(
            &reviewer.client,
            &workload.pod_token,
            &reviewer.audience,
        )
        .await
        .map_err(|e| {
            // Worth a retry: the API server was unreachable, or the token
            // was refused (typically expired; the kubelet hands signet-csi a
            // fresh one on its next republish). A token of another pod,
            // below, is not.
            rejection("invalid_pod_token", e.message, true)
        })?;
        if reviewed.pod_uid != workload.pod_uid {
            return Err(rejection(
                "invalid_pod_token",
                format!(
                    "the pod token belongs to pod {}/{}, not to UID {}",
                    reviewed.namespace, reviewed.pod_name, workload.pod_uid
                ),
                false,
            ));
        }
        Ok(())
    }

    pub fn check(
        &self,
        agent: &AgentRecord,
        workload: &pb::Workload,
    ) -> Result<Attributes, WorkloadRejection> {
        let pod = if workload.pod_uid.is_empty() {
            None
        } else {
            self.pods.get(&workload.pod_uid)
        };
        check_workload(agent, workload, pod.as_deref())
    }
}

/// The pod checks and attributes of [`PodVerifier`], given the pod the
/// cache holds for `workload.pod_uid` (`None` when it holds none); also
/// what `signet explain pod` runs, so it answers as the issuer would.
pub fn check_workload(
    agent: &AgentRecord,
    workload: &pb::Workload,
    pod: Option<&PodFacts>,
) -> Result<Attributes, WorkloadRejection> {
    if workload.pod_uid.is_empty() {
        // A host process on the node: the agent's testimony, but it may
        // not claim anything about Kubernetes.
        let attributes = testimony(workload)?;
        if let Some((name, _)) = attributes.iter().find(|(name, _)| set_by_kubernetes(name)) {
            return Err(rejection(
                "invalid_attributes",
                format!("{name} needs pod_uid: Kubernetes attributes come from the API server"),
                false,
            ));
        }
        return Ok(attributes);
    }
    let Some(node) = agent.node_name.as_deref() else {
        return Err(rejection(
            "pod_not_on_node",
            format!(
                "agent {} is not bound to a node and cannot vouch for pods",
                agent.name
            ),
            false,
        ));
    };
    let Some(pod) = pod else {
        // The agent may have seen the pod before our watch did.
        return Err(rejection(
            "pod_not_found",
            format!("no pod with UID {} (yet)", workload.pod_uid),
            true,
        ));
    };
    if pod.node_name.is_empty() {
        // The agent sees it on its node: this replica's watch has not
        // caught up with the binding yet.
        return Err(rejection(
            "pod_not_found",
            format!(
                "pod {}/{} is not bound to a node yet (as far as this replica knows)",
                pod.namespace, pod.name
            ),
            true,
        ));
    }
    if &*pod.node_name != node {
        return Err(rejection(
            "pod_not_on_node",
            format!(
                "pod {}/{} runs on node {:?}, not on the agent's node {node:?}",
                pod.namespace, pod.name, pod.node_name
            ),
            false,
        ));
    }
    if pod.terminating {
        return Err(rejection(
            "pod_terminating",
            format!("pod {}/{} is being deleted", pod.namespace, pod.name),
            false,
        ));
    }
    pod_attributes(workload, pod)
}

impl WorkloadVerifier for PodVerifier {
    fn verify<'a>(
        &'a self,
        agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>> {
        Box::pin(async move {
            let attributes = self.check(agent, workload)?;
            self.check_pod_token(workload).await?;
            Ok(attributes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerStatus, PodSpec, PodStatus};
    use kube::api::ObjectMeta;
    use signet_identity::{SpiffeId, TrustDomain};

    fn pod(uid: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                labels: Some([("app".to_owned(), "web".to_owned())].into()),
                annotations: Some([("big".to_owned(), "x".repeat(10_000))].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some("web".into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry/web:1".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: None,
        }
    }

    fn agent(node: &str) -> AgentRecord {
        let td = TrustDomain::new("example.org").unwrap();
        let id = SpiffeId::parse(&format!("spiffe://example.org/signet/agent/k8s/{node}")).unwrap();
        AgentRecord::from_spiffe_id(&id, &td).unwrap()
    }

    fn workload(uid: &str, attributes: &[(&str, &str)]) -> pb::Workload {
        pb::Workload {
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            pod_uid: uid.into(),
            pod_token: String::new(),
        }
    }

    /// The pod as the kubelet reports it once its containers run.
    fn running(mut pod: Pod) -> Pod {
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                image: "registry/web:1".into(),
                image_id: "registry/web@sha256:0123".into(),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        pod
    }

    #[test]
    fn kubernetes_attributes_come_from_the_cache_not_the_agent() {
        let cache = Arc::new(PodCache::default());
        cache.upsert(pod("u1", "node-a"));
        let verifier = PodVerifier::new(cache.clone(), None);
        let reported = workload(
            "u1",
            &[
                ("workload.kubernetes.namespace", "kube-system"),
                ("workload.kubernetes.service_account", "admin"),
                ("workload.kubernetes.labels.admin", "true"),
                ("workload.kubernetes.container_name", "app"),
                ("workload.kubernetes.container_image", "evil:1"),
                ("workload.kubernetes.container_image_id", "evil@sha256:bad"),
                ("workload.unix.uid", "1000"),
            ],
        );
        let attrs = verifier.check(&agent("node-a"), &reported).unwrap();
        assert_eq!(attrs.field(Field::KubernetesNamespace), Some("shop"));
        assert_eq!(attrs.field(Field::KubernetesServiceAccount), Some("web"));
        assert_eq!(attrs.field(Field::KubernetesPodName), Some("web-1"));
        assert_eq!(attrs.field(Field::KubernetesPodUid), Some("u1"));
        assert_eq!(attrs.field(Field::KubernetesNodeName), Some("node-a"));
        let labels: Vec<_> = attrs.labels(LabelMap::KubernetesLabels).collect();
        assert_eq!(labels, [("app", "web")], "the agent's labels are dropped");
        assert_eq!(attrs.field(Field::KubernetesContainerName), Some("app"));
        assert_eq!(
            attrs.field(Field::KubernetesContainerImage),
            Some("registry/web:1")
        );
        assert_eq!(
            attrs.field(Field::KubernetesContainerImageId),
            None,
            "absent until the kubelet reports it, never the agent's"
        );
        assert_eq!(attrs.field(Field::UnixUid), Some("1000"));
        assert_eq!(
            attrs.field(Field::AgentNodeName),
            None,
            "the issuer adds agent.*"
        );

        // Once the kubelet reported the image by digest, that is the ID.
        cache.upsert(running(pod("u1", "node-a")));
        let attrs = verifier.check(&agent("node-a"), &reported).unwrap();
        assert_eq!(
            attrs.field(Field::KubernetesContainerImageId),
            Some("registry/web@sha256:0123")
        );
        // Without a container name there is no container to describe.
        let attrs = verifier
            .check(&agent("node-a"), &workload("u1", &[]))
            .unwrap();
        assert_eq!(attrs.field(Field::KubernetesContainerImage), None);
        assert_eq!(attrs.field(Field::KubernetesContainerImageId), None);
    }

    #[test]
    fn agents_may_not_testify_about_agents_or_nodes() {
        let cache = Arc::new(PodCache::default());
        cache.upsert(pod("u1", "node-a"));
        let verifier = PodVerifier::new(cache, None);
        for (uid, forged) in [
            ("u1", "agent.name"),
            ("u1", "node.labels.pool"),
            ("", "node.name"),
        ] {
            let rejected = verifier
                .check(&agent("node-a"), &workload(uid, &[(forged, "x")]))
                .unwrap_err();
            assert_eq!(rejected.reason, "invalid_attributes", "{forged}");
        }
    }

    #[test]
    fn pods_elsewhere_unknown_or_terminating_are_refused() {
        let cache = Arc::new(PodCache::default());
        cache.upsert(pod("u1", "node-a"));
        let mut dying = pod("u2", "node-b");
        dying.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        cache.upsert(dying);
        let verifier = PodVerifier::new(cache.clone(), None);
        let other = verifier
            .check(&agent("node-b"), &workload("u1", &[]))
            .unwrap_err();
        assert_eq!((other.reason, other.retryable), ("pod_not_on_node", false));
        let unknown = verifier
            .check(&agent("node-a"), &workload("nope", &[]))
            .unwrap_err();
        assert_eq!((unknown.reason, unknown.retryable), ("pod_not_found", true));
        // Bound as the agent sees it, not yet as this replica does: retried.
        cache.upsert(pod("u3", ""));
        let unbound = verifier
            .check(&agent("node-a"), &workload("u3", &[]))
            .unwrap_err();
        assert_eq!((unbound.reason, unbound.retryable), ("pod_not_found", true));
        let dying = verifier
            .check(&agent("node-b"), &workload("u2", &[]))
            .unwrap_err();
        assert_eq!(dying.reason, "pod_terminating");
        let container = verifier
            .check(
                &agent("node-a"),
                &workload("u1", &[("workload.kubernetes.container_name", "sidecar")]),
            )
            .unwrap_err();
        assert_eq!(container.reason, "invalid_attributes");
        // A host process may not claim Kubernetes attributes.
        let forged = verifier
            .check(
                &agent("node-a"),
                &workload("", &[("workload.kubernetes.namespace", "x")]),
            )
            .unwrap_err();
        assert_eq!(forged.reason, "invalid_attributes");
        // Deletion removes the pod.
        cache.remove(&pod("u1", "node-a"));
        assert!(cache.get("u1").is_none());
    }

    async fn next_update(
        updates: &mut tokio::sync::mpsc::Receiver<Result<pb::NodePodsUpdate, tonic::Status>>,
    ) -> pb::NodePodsUpdate {
        tokio::time::timeout(std::time::Duration::from_secs(5), updates.recv())
            .await
            .expect("an update")
            .expect("the stream is open")
            .expect("not an error")
    }

    fn uids(pods: &[pb::BoundPod]) -> Vec<&str> {
        let mut uids: Vec<&str> = pods.iter().map(|p| p.uid.as_str()).collect();
        uids.sort_unstable();
        uids
    }

    #[tokio::test]
    async fn an_agent_is_told_of_its_own_nodes_pods_only() {
        let listed = |pods: Vec<Pod>| -> HashMap<Box<str>, Arc<PodFacts>> {
            pods.into_iter()
                .filter_map(PodFacts::from_pod)
                .map(|facts| (facts.uid.clone(), Arc::new(facts)))
                .collect()
        };
        let cache = Arc::new(PodCache::default());
        // The first list: when these were bound is not known.
        cache.replace(listed(vec![pod("old-a", "node-a"), pod("old-b", "node-b")]));
        let mut pending = pod("new", "");
        cache.upsert(pending.clone());
        let (revocations_tx, revocations) = watch::channel(Arc::default());
        let (sender, mut updates) = tokio::sync::mpsc::channel(4);
        let feed = crate::issuer::node_pods::NodePodsFeed {
            pods: cache.clone(),
            node: "node-a".into(),
            revocations,
        };
        tokio::spawn(feed.run(agent("node-a"), sender));

        let snapshot = next_update(&mut updates).await;
        assert!(snapshot.snapshot);
        assert_eq!(uids(&snapshot.pods), ["old-a"]);
        assert_eq!(snapshot.pods[0].labels["app"], "web");
        assert_eq!(snapshot.pods[0].service_account, "web");

        // Pods scheduled elsewhere, and changes the agent is not told of
        // (container status), send nothing; the binding of a pod to the
        // agent's node does, with the time it was seen bound.
        cache.upsert(pod("other", "node-b"));
        cache.upsert(running(pod("old-a", "node-a")));
        pending.spec.as_mut().unwrap().node_name = Some("node-a".into());
        cache.upsert(pending.clone());
        let bound = next_update(&mut updates).await;
        assert!(!bound.snapshot);
        assert_eq!(uids(&bound.pods), ["new"]);
        assert!(bound.pods[0].bound_at_unix_ms > 0);
        assert!(bound.removed_pod_uids.is_empty());
        let bound_at = cache.get("new").unwrap().bound_at;
        assert!(bound_at.is_some());

        // A relist keeps the time a pod was seen bound; the agent gets a
        // snapshot again.
        cache.replace(listed(vec![pod("new", "node-a"), pod("old-a", "node-a")]));
        assert_eq!(cache.get("new").unwrap().bound_at, bound_at);
        assert_eq!(cache.get("old-a").unwrap().bound_at, None);
        let again = next_update(&mut updates).await;
        assert!(again.snapshot);
        assert_eq!(uids(&again.pods), ["new", "old-a"]);

        // Deletion, then revocation closes the stream.
        cache.remove(&pod("new", "node-a"));
        let removed = next_update(&mut updates).await;
        assert_eq!(removed.removed_pod_uids, ["new"]);
        assert!(removed.pods.is_empty());
        let mut revoked = crate::revocation::RevocationList::default();
        revoked.revoked.insert(
            "node-a".into(),
            crate::revocation::Revocation {
                revoked_at_unix: 1,
                reason: "stolen".into(),
            },
        );
        revocations_tx.send_replace(Arc::new(revoked));
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), updates.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(closed.unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}
