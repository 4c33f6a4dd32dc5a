//! The operator's view of Nodes, the source of `node.*`: a watch of Node
//! *metadata* only (no specs or statuses in memory), kept in a reflector
//! store. Each agent's Node is the one its SVID names; its policy stream
//! follows that Node and is woken only when the Node's facts change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use signet_policy::NodeFacts;
use tokio::sync::watch;

use crate::agents::NodeDirectory;

type NodeMeta = PartialObjectMeta<Node>;

/// Nodes by name, and the agents' streams following them.
pub struct NodeCache {
    store: Store<NodeMeta>,
    /// One sender per Node some agent's stream follows.
    followers: Mutex<HashMap<String, watch::Sender<Option<NodeFacts>>>>,
    synced: watch::Sender<bool>,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache").finish_non_exhaustive()
    }
}

/// Keeps what policy may use and what the store needs; a Node's managed
/// fields and annotations can be many times the size of its labels.
fn trim(node: &mut NodeMeta) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
}

impl NodeCache {
    /// An empty cache and the writer [`Self::run`] (or a test) feeds it with.
    pub fn new() -> (Self, reflector::store::Writer<NodeMeta>) {
        let (store, writer) = reflector::store();
        let cache = Self {
            store,
            followers: Mutex::new(HashMap::new()),
            synced: watch::channel(false).0,
        };
        (cache, writer)
    }

    /// Nodes in the cache.
    pub fn len(&self) -> usize {
        self.store.state().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the first complete list arrived.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.synced.subscribe()
    }

    fn facts(&self, name: &str) -> Option<NodeFacts> {
        let node = self.store.get(&ObjectRef::new(name))?;
        Some(NodeFacts::new(name, node.labels().clone()))
    }

    /// Tells the streams following a Node that `event` (already applied to
    /// the store) touched when its facts changed; heartbeats and annotation
    /// changes wake nobody.
    pub fn observe(&self, event: &watcher::Event<NodeMeta>) {
        match event {
            watcher::Event::Apply(node) | watcher::Event::Delete(node) => {
                self.notify(&node.name_any());
            }
            watcher::Event::InitDone => {
                // A relist may have changed any Node while the watch was down.
                let names: Vec<String> = match self.followers.lock() {
                    Ok(followers) => followers.keys().cloned().collect(),
                    Err(_) => Vec::new(),
                };
                for name in names {
                    self.notify(&name);
                }
                if !*self.synced.borrow() {
                    tracing::info!(nodes = self.len(), "node cache synced");
                }
                self.synced.send_replace(true);
            }
            // The store swaps in a relist only at InitDone.
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
    }

    fn notify(&self, name: &str) {
        let Ok(followers) = self.followers.lock() else {
            return;
        };
        if let Some(sender) = followers.get(name) {
            let facts = self.facts(name);
            sender.send_if_modified(|current| {
                let changed = *current != facts;
                if changed {
                    *current = facts;
                }
                changed
            });
        }
    }

    /// Watches Node metadata until the task is dropped, reconnecting with
    /// backoff.
    /// `api` is an `Api<PartialObjectMeta<Node>>`, which lists and watches
    /// with metadata-only requests.
    pub async fn run(
        self: Arc<Self>,
        api: Api<NodeMeta>,
        writer: reflector::store::Writer<NodeMeta>,
    ) {
        let events = watcher(api, watcher::Config::default())
            .modify(trim)
            .default_backoff()
            .reflect(writer);
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.observe(&event),
                Err(error) => tracing::warn!(%error, "node watch failed; retrying"),
            }
        }
    }
}

impl NodeDirectory for NodeCache {
    fn node(&self, name: &str) -> Option<NodeFacts> {
        self.facts(name)
    }

    fn follow(&self, name: &str) -> Option<watch::Receiver<Option<NodeFacts>>> {
        let mut followers = self.followers.lock().ok()?;
        // Streams that closed leave senders nobody listens to.
        followers.retain(|_, sender| sender.receiver_count() > 0);
        let sender = followers
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(None).0);
        // Current as of now, whatever it was when the entry was made.
        sender.send_replace(self.facts(name));
        Some(sender.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;
    use signet_identity::{SpiffeId, TrustDomain};
    use signet_policy::{Attributes, Field, PolicyDocument};

    use super::*;
    use crate::agents::AgentRecord;

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeMeta {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut meta = NodeMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                annotations: Some([("big".to_owned(), "x".repeat(10_000))].into()),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        };
        trim(&mut meta);
        meta
    }

    /// Feeds an event to the store and the cache, as the watch does.
    fn feed(
        writer: &mut reflector::store::Writer<NodeMeta>,
        cache: &NodeCache,
        event: watcher::Event<NodeMeta>,
    ) {
        writer.apply_watcher_event(&event);
        cache.observe(&event);
    }

    #[test]
    fn nodes_are_unknown_until_seen_then_followed_by_their_agent_only() {
        let (cache, mut writer) = NodeCache::new();
        assert_eq!(cache.node("n1"), None);
        let mut n1 = cache.follow("n1").unwrap();
        let mut n2 = cache.follow("n2").unwrap();
        assert_eq!(*n1.borrow_and_update(), None);

        feed(
            &mut writer,
            &cache,
            watcher::Event::Apply(node("n1", &[("pool", "dmz")])),
        );
        assert!(n1.has_changed().unwrap());
        assert!(
            !n2.has_changed().unwrap(),
            "another Node's change wakes nobody here"
        );
        let seen = n1.borrow_and_update().clone().unwrap();
        assert_eq!(seen.name, "n1");
        assert_eq!(seen.labels, [("pool".to_owned(), "dmz".to_owned())].into());
        assert_eq!(cache.node("n1"), Some(seen.clone()));
        assert_eq!(cache.len(), 1);
        assert!(
            cache
                .store
                .get(&ObjectRef::new("n1"))
                .unwrap()
                .annotations()
                .is_empty(),
            "only what policy needs is kept"
        );

        // The same labels again (a heartbeat): nothing to push.
        feed(
            &mut writer,
            &cache,
            watcher::Event::Apply(node("n1", &[("pool", "dmz")])),
        );
        assert!(!n1.has_changed().unwrap());

        // Relabelled: pushed.
        feed(
            &mut writer,
            &cache,
            watcher::Event::Apply(node("n1", &[("pool", "web")])),
        );
        assert!(n1.has_changed().unwrap());
        assert_eq!(
            n1.borrow_and_update().as_ref().unwrap().labels["pool"],
            "web"
        );

        // Deleted: unknown again.
        feed(
            &mut writer,
            &cache,
            watcher::Event::Delete(node("n1", &[("pool", "web")])),
        );
        assert_eq!(*n1.borrow_and_update(), None);
        assert_eq!(cache.node("n1"), None);

        // A relist tells followers at its end, when the store has it.
        feed(&mut writer, &cache, watcher::Event::Init);
        feed(
            &mut writer,
            &cache,
            watcher::Event::InitApply(node("n2", &[("pool", "pci")])),
        );
        assert!(!n2.has_changed().unwrap());
        assert!(!*cache.synced().borrow());
        feed(&mut writer, &cache, watcher::Event::InitDone);
        assert!(*cache.synced().borrow());
        assert_eq!(
            n2.borrow_and_update().as_ref().unwrap().labels["pool"],
            "pci"
        );

        // Closed streams are forgotten.
        drop(n1);
        let _n3 = cache.follow("n3");
        assert!(!cache.followers.lock().unwrap().contains_key("n1"));
    }

    #[test]
    fn node_labels_reach_decisions_only_once_the_node_is_seen() {
        let policy = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: web, labels: {app: web}}
spec:
  spiffe: {id: "/web"}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: outside-dmz}
spec:
  subjects:
    - kind: Node
      selector:
        matchExpressions: [{key: pool, operator: NotIn, values: [dmz]}]
  allow: {workloadIdentityLabels: {app: [web]}}
"#;
        let objects = signet_policy::parse_yaml_documents(policy)
            .into_iter()
            .map(Result::unwrap);
        let td = TrustDomain::new("example.org").unwrap();
        let (snapshot, _) = PolicyDocument::from_objects(objects).compile(1, &td);
        let id = SpiffeId::parse("spiffe://example.org/signet/agent/k8s/n1").unwrap();
        let agent = AgentRecord::from_spiffe_id(&id, &td).unwrap();
        let (cache, mut writer) = NodeCache::new();
        let decide = |cache: &NodeCache| {
            let workload: Attributes = [(Field::UnixUid, "1000".to_owned())].into_iter().collect();
            let context = agent.context(cache.node("n1"));
            snapshot
                .decide(&workload.with_context(&context), "web")
                .map(|issued| issued.spiffe_id.to_string())
                .map_err(|denial| denial.reason.as_str())
        };
        // Unseen: the NotIn selector does not silently match.
        assert_eq!(decide(&cache), Err("no_role_allows"));
        feed(
            &mut writer,
            &cache,
            watcher::Event::Apply(node("n1", &[("pool", "dmz")])),
        );
        assert_eq!(decide(&cache), Err("no_role_allows"));
        feed(
            &mut writer,
            &cache,
            watcher::Event::Apply(node("n1", &[("pool", "web")])),
        );
        assert_eq!(decide(&cache).as_deref(), Ok("spiffe://example.org/web"));
    }
}
