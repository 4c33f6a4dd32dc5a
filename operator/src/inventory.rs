//! The agent inventory: what this replica's issuer has seen of each agent
//! (joins, renewals, its policy stream, the workloads it signed for), kept
//! in memory and published by a sink: `Agent` objects in a cluster
//! ([`crate::cluster::agent_records`]), `<state_dir>/agents.json`
//! standalone ([`crate::standalone::agent_file`]).
//!
//! The issuer only records; it never waits for a sink. Sinks take the
//! changed records every few seconds, so a thousand agents renewing and
//! signing cost a bounded number of writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use signet_identity::SpiffeId;
use signet_policy::Field;
use signet_policy::crd::{AgentSpec, AgentStatus};
use signet_runtime::audit::rfc3339;
use signet_runtime::clock::Clock;

use crate::agents::AgentRecord;

/// How long a workload counts towards an agent's `workloads` after the
/// issuer last signed for it. SVIDs renew at half-life, so any workload
/// with an SVID of up to two hours is counted while it runs.
pub const WORKLOAD_WINDOW: Duration = Duration::from_secs(3600);
/// How often `lastSeen` is refreshed while a policy stream stays open: a
/// record older than this (plus a sink interval) means the agent is gone.
pub const SEEN_REFRESH: Duration = Duration::from_secs(120);
/// Distinct workloads remembered per agent; beyond this the count stops
/// growing rather than memory (a node runs at most a few hundred pods).
pub const MAX_WORKLOADS_TRACKED: usize = 10_000;

/// How an agent proved itself at `Join`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinMethod {
    /// A projected service-account token (in-cluster agents).
    Kubernetes,
    /// A configured join token (standalone agents).
    JoinToken,
}

impl JoinMethod {
    pub const fn as_str(self) -> &'static str {
        match self {
            JoinMethod::Kubernetes => "kubernetes",
            JoinMethod::JoinToken => "join_token",
        }
    }
}

/// One agent's record as a sink publishes it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentEntry {
    pub name: String,
    pub spec: AgentSpec,
    pub status: AgentStatus,
}

struct Tracked {
    entry: AgentEntry,
    /// Workload key → when the issuer last signed for it.
    workloads: HashMap<String, SystemTime>,
    open_streams: u32,
    last_seen: Option<SystemTime>,
    changed: bool,
}

/// The inventory. Cheap to clone; every method is a short critical section.
#[derive(Clone)]
pub struct AgentInventory {
    clock: Clock,
    agents: Arc<Mutex<BTreeMap<String, Tracked>>>,
}

impl AgentInventory {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            agents: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Starts from what a sink published before (a restart keeps each
    /// agent's first join).
    pub fn restore(&self, entries: impl IntoIterator<Item = AgentEntry>) {
        let mut agents = self.lock();
        for entry in entries {
            agents.entry(entry.name.clone()).or_insert(Tracked {
                entry,
                workloads: HashMap::new(),
                open_streams: 0,
                last_seen: None,
                changed: false,
            });
        }
    }

    /// An agent joined and was issued an SVID expiring at `expiry`.
    pub fn joined(
        &self,
        spiffe_id: &SpiffeId,
        name: &str,
        node_name: Option<&str>,
        method: JoinMethod,
        expiry: SystemTime,
    ) {
        let now = rfc3339(self.clock.now());
        self.update(name, spiffe_id, node_name, |tracked| {
            let status = &mut tracked.entry.status;
            tracked.entry.spec.join_method = method.as_str().to_owned();
            status.first_join.get_or_insert_with(|| now.clone());
            status.last_join = Some(now);
            status.svid_expiry = Some(rfc3339(expiry));
        });
    }

    /// An agent renewed its SVID, now expiring at `expiry`.
    pub fn renewed(&self, agent: &AgentRecord, expiry: SystemTime) {
        let now = rfc3339(self.clock.now());
        self.update_agent(agent, |tracked| {
            tracked.entry.status.last_renewal = Some(now);
            tracked.entry.status.svid_expiry = Some(rfc3339(expiry));
        });
    }

    /// An agent opened its policy stream; the record says it is seen
    /// until the returned guard is dropped (the stream ended).
    pub fn stream_opened(&self, agent: &AgentRecord, version: &str) -> StreamGuard {
        let now = self.clock.now();
        let version = bounded_version(version);
        self.update_agent(agent, |tracked| {
            tracked.open_streams += 1;
            tracked.last_seen = Some(now);
            tracked.entry.status.last_seen = Some(rfc3339(now));
            if version.is_some() {
                tracked.entry.status.version = version;
            }
        });
        StreamGuard {
            inventory: self.clone(),
            agent: agent.clone(),
        }
    }

    /// The issuer signed an SVID for a workload of this agent.
    pub fn served(&self, agent: &AgentRecord, workload: &BTreeMap<String, String>) {
        let Some(key) = workload_key(workload) else {
            return;
        };
        let now = self.clock.now();
        let mut agents = self.lock();
        // An agent that joined at another replica (or before a restart)
        // is recorded by what it does here.
        let tracked = tracked_mut(
            &mut agents,
            &agent.name,
            &agent.spiffe_id,
            agent.node_name.as_deref(),
        );
        if tracked.workloads.len() < MAX_WORKLOADS_TRACKED || tracked.workloads.contains_key(&key) {
            tracked.workloads.insert(key, now);
        }
    }

    /// Removes an agent's record (its object was deleted).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The records that changed since the last call, after refreshing
    /// `lastSeen` of open streams and the workload counts.
    pub fn take_changed(&self) -> Vec<AgentEntry> {
        self.collect(true)
    }

    /// Every record, current (for a sink that writes the whole set).
    pub fn all(&self) -> Vec<AgentEntry> {
        self.collect(false)
    }

    fn collect(&self, changed_only: bool) -> Vec<AgentEntry> {
        let now = self.clock.now();
        let mut agents = self.lock();
        let mut out = Vec::new();
        for tracked in agents.values_mut() {
            if tracked.open_streams > 0
                && tracked
                    .last_seen
                    .is_none_or(|seen| now.duration_since(seen).unwrap_or_default() >= SEEN_REFRESH)
            {
                tracked.last_seen = Some(now);
                tracked.entry.status.last_seen = Some(rfc3339(now));
                tracked.changed = true;
            }
            tracked.workloads.retain(|_, signed| {
                now.duration_since(*signed).unwrap_or_default() < WORKLOAD_WINDOW
            });
            let count = Some(u32::try_from(tracked.workloads.len()).unwrap_or(u32::MAX));
            if tracked.entry.status.workloads != count
                && !(count == Some(0) && tracked.entry.status.workloads.is_none())
            {
                tracked.entry.status.workloads = count;
                tracked.changed = true;
            }
            if tracked.changed || !changed_only {
                out.push(tracked.entry.clone());
            }
            if changed_only {
                tracked.changed = false;
            }
        }
        out
    }

    /// Marks every record changed (a sink lost its writes and must redo them).
    pub fn mark_all_changed(&self) {
        for tracked in self.lock().values_mut() {
            tracked.changed = true;
        }
    }

    /// Marks one record changed (its write failed; the next round retries).
    pub fn mark_changed(&self, name: &str) {
        if let Some(tracked) = self.lock().get_mut(name) {
            tracked.changed = true;
        }
    }

    fn update_agent(&self, agent: &AgentRecord, change: impl FnOnce(&mut Tracked)) {
        self.update(
            &agent.name,
            &agent.spiffe_id,
            agent.node_name.as_deref(),
            change,
        );
    }

    fn update(
        &self,
        name: &str,
        spiffe_id: &SpiffeId,
        node_name: Option<&str>,
        change: impl FnOnce(&mut Tracked),
    ) {
        let mut agents = self.lock();
        let tracked = tracked_mut(&mut agents, name, spiffe_id, node_name);
        change(tracked);
        tracked.changed = true;
    }

    fn stream_closed(&self, agent: &AgentRecord) {
        let now = self.clock.now();
        if let Some(tracked) = self.lock().get_mut(&agent.name) {
            tracked.open_streams = tracked.open_streams.saturating_sub(1);
            tracked.last_seen = Some(now);
            tracked.entry.status.last_seen = Some(rfc3339(now));
            tracked.changed = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tracked>> {
        // The map stays consistent at every await-free step, so a panic
        // elsewhere leaves nothing half-done.
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The record of agent `name`, created on first sight; its spec follows
/// the agent's SVID.
fn tracked_mut<'a>(
    agents: &'a mut BTreeMap<String, Tracked>,
    name: &str,
    spiffe_id: &SpiffeId,
    node_name: Option<&str>,
) -> &'a mut Tracked {
    let tracked = agents.entry(name.to_owned()).or_insert_with(|| Tracked {
        entry: AgentEntry {
            name: name.to_owned(),
            spec: AgentSpec::default(),
            status: AgentStatus::default(),
        },
        workloads: HashMap::new(),
        open_streams: 0,
        last_seen: None,
        changed: true,
    });
    let spec = &mut tracked.entry.spec;
    let spiffe_id = spiffe_id.to_string();
    if spec.spiffe_id != spiffe_id {
        spec.spiffe_id = spiffe_id;
        tracked.changed = true;
    }
    spec.node_name = node_name.map(str::to_owned);
    if spec.join_method.is_empty() {
        spec.join_method = match node_name {
            Some(_) => JoinMethod::Kubernetes,
            None => JoinMethod::JoinToken,
        }
        .as_str()
        .to_owned();
    }
    tracked
}

/// Held while an agent's policy stream is open.
pub struct StreamGuard {
    inventory: AgentInventory,
    agent: AgentRecord,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.inventory.stream_closed(&self.agent);
    }
}

/// The agent's reported version, if it looks like one: the agent says it,
/// so it is bounded and printable before it reaches an object or a file.
fn bounded_version(version: &str) -> Option<String> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-+_".contains(&b));
    ok.then(|| version.to_owned())
}

/// What makes two signings one workload: the pod, else the container,
/// else the whole attribute set (the agent's own cache key: a unix
/// process's uid, gid and binary; never its pid).
/// A stable name for one workload (pod, container, or the attributes' hash).
pub fn workload_key(workload: &BTreeMap<String, String>) -> Option<String> {
    if workload.is_empty() {
        return None;
    }
    for field in [
        Field::KubernetesPodUid,
        Field::DockerContainerId,
        Field::PodmanContainerId,
    ] {
        if let Some(value) = workload.get(field.as_str()) {
            return Some(format!("{}={value}", field.as_str()));
        }
    }
    let mut hasher = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(workload, &mut hasher);
    Some(format!(
        "attributes={:016x}",
        std::hash::Hasher::finish(&hasher)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::TrustDomain;

    fn agent(name: &str) -> AgentRecord {
        let td = TrustDomain::new("example.org").unwrap();
        AgentRecord::for_node(&td, name).unwrap()
    }

    fn pod(uid: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(Field::KubernetesPodUid.as_str().to_owned(), uid.to_owned())])
    }

    #[tokio::test(start_paused = true)]
    async fn records_join_renewal_stream_and_workloads() {
        let clock = Clock::new();
        let inventory = AgentInventory::new(clock);
        let node = agent("node-a");
        let expiry = clock.now() + Duration::from_secs(3600);
        inventory.joined(
            &node.spiffe_id,
            "node-a",
            Some("node-a"),
            JoinMethod::Kubernetes,
            expiry,
        );
        let first = inventory.take_changed();
        assert_eq!(first.len(), 1);
        let status = &first[0].status;
        assert_eq!(first[0].spec.join_method, "kubernetes");
        assert_eq!(first[0].spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(status.first_join, status.last_join);
        assert_eq!(status.svid_expiry, Some(rfc3339(expiry)));
        assert!(inventory.take_changed().is_empty(), "nothing new to write");

        tokio::time::advance(Duration::from_secs(60)).await;
        let guard = inventory.stream_opened(&node, "0.4.0");
        inventory.served(&node, &pod("uid-1"));
        inventory.served(&node, &pod("uid-1"));
        inventory.served(&node, &pod("uid-2"));
        let seen = inventory.take_changed();
        assert_eq!(seen[0].status.version.as_deref(), Some("0.4.0"));
        assert_eq!(seen[0].status.workloads, Some(2), "two distinct pods");
        assert_ne!(seen[0].status.first_join, seen[0].status.last_seen);

        // An open stream refreshes lastSeen; a quiet one writes nothing.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(inventory.take_changed().is_empty());
        tokio::time::advance(SEEN_REFRESH).await;
        let refreshed = inventory.take_changed();
        assert_eq!(refreshed[0].status.last_seen, Some(rfc3339(clock.now())));
        drop(guard);
        tokio::time::advance(SEEN_REFRESH * 2).await;
        let closed = inventory.take_changed();
        assert_eq!(closed.len(), 1, "closing is written once");
        assert!(
            inventory.take_changed().is_empty(),
            "a closed stream is not refreshed"
        );

        // Workloads age out of the count.
        tokio::time::advance(WORKLOAD_WINDOW).await;
        assert_eq!(inventory.take_changed()[0].status.workloads, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn restored_records_keep_their_first_join() {
        let clock = Clock::new();
        let before = AgentInventory::new(clock);
        let node = agent("node-a");
        before.joined(
            &node.spiffe_id,
            "node-a",
            Some("node-a"),
            JoinMethod::Kubernetes,
            clock.now(),
        );
        let published = before.all();
        tokio::time::advance(Duration::from_secs(600)).await;
        let after = AgentInventory::new(clock);
        after.restore(published.clone());
        assert!(after.take_changed().is_empty(), "restoring is not a change");
        after.joined(
            &node.spiffe_id,
            "node-a",
            Some("node-a"),
            JoinMethod::Kubernetes,
            clock.now(),
        );
        let rejoined = after.take_changed();
        assert_eq!(
            rejoined[0].status.first_join,
            published[0].status.first_join
        );
        assert_ne!(rejoined[0].status.last_join, published[0].status.last_join);
    }

    #[test]
    fn an_agents_version_is_taken_only_when_it_looks_like_one() {
        assert_eq!(
            bounded_version("0.4.0-rc.1+g1234").as_deref(),
            Some("0.4.0-rc.1+g1234")
        );
        assert_eq!(bounded_version(""), None);
        assert_eq!(bounded_version("1.0\n\x1b[31m"), None);
        assert_eq!(bounded_version(&"9".repeat(65)), None);
    }

    #[test]
    fn a_workload_is_its_pod_then_container_then_process() {
        let mut attributes = pod("uid-1");
        attributes.insert(Field::UnixPid.as_str().into(), "42".into());
        assert_eq!(
            workload_key(&attributes).as_deref(),
            Some("workload.kubernetes.pod_uid=uid-1")
        );
        let process = |uid: &str| {
            BTreeMap::from([
                (Field::UnixUid.as_str().to_owned(), uid.to_owned()),
                (
                    Field::UnixBinaryPath.as_str().to_owned(),
                    "/bin/app".to_owned(),
                ),
            ])
        };
        assert_eq!(
            workload_key(&process("1000")),
            workload_key(&process("1000"))
        );
        assert_ne!(
            workload_key(&process("1000")),
            workload_key(&process("1001"))
        );
        assert_eq!(workload_key(&BTreeMap::new()), None);
    }
}
