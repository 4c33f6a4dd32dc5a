//! Cluster agent inventory: one cluster-scoped `Agent` object per agent,
//! named after it, owned by its Node (deleted with it), its status merged
//! from the replica's [`AgentInventory`] every [`WRITE_INTERVAL`]. The
//! leader deletes records of agents no replica has seen for
//! [`FORGET_AFTER`] (a Node that is gone for good, a renamed node).
//!
//! Agents talk to one replica at a time (one HTTP/2 connection), so the
//! replica serving an agent writes its record; `firstJoin` is kept from the
//! object once there is one.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use signet_policy::crd::{Agent, AgentStatus};
use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::cluster::config::is_dns_subdomain;
use crate::inventory::{AgentEntry, AgentInventory};

/// How long a change may wait before it reaches the API server: bounds the
/// write rate with a thousand agents to a hundred objects a second at most.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(10);
/// An agent not seen (policy stream, join or renewal) for this long is gone.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// How often the leader looks for records to forget.
const COLLECT_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0:?} cannot name a Kubernetes object")]
    BadName(String),
}

/// What this replica knows of an Agent object: it exists, and its first join.
struct Known {
    first_join: Option<String>,
}

pub async fn keep(
    agents: Api<Agent>,
    nodes: Api<Node>,
    inventory: AgentInventory,
    leading: watch::Receiver<bool>,
    clock: Clock,
) {
    let mut known = restore(&agents, &inventory).await;
    let mut ticker = tokio::time::interval(WRITE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_collect: Option<tokio::time::Instant> = None;
    loop {
        ticker.tick().await;
        for entry in inventory.take_changed() {
            if let Err(error) = write(&agents, &nodes, &mut known, &entry).await {
                tracing::warn!(agent = %entry.name, %error, "could not write the Agent record; retrying");
                if !matches!(error, RecordError::BadName(_)) {
                    inventory.mark_changed(&entry.name);
                }
            }
        }
        let due = last_collect.is_none_or(|at| at.elapsed() >= COLLECT_INTERVAL);
        if *leading.borrow() && due {
            last_collect = Some(tokio::time::Instant::now());
            if let Err(error) = collect(&agents, &inventory, &mut known, clock.now()).await {
                tracing::warn!(%error, "could not collect stale Agent records");
            }
        }
    }
}

/// Reads the records there are, so a restarted replica keeps first joins.
async fn restore(agents: &Api<Agent>, inventory: &AgentInventory) -> HashMap<String, Known> {
    let mut delay = Duration::from_secs(1);
    loop {
        match agents.list(&ListParams::default()).await {
            Ok(list) => {
                let mut known = HashMap::new();
                let mut entries = Vec::new();
                for agent in list.items {
                    let Some(name) = agent.metadata.name.clone() else {
                        continue;
                    };
                    let status = agent.status.unwrap_or_default();
                    known.insert(
                        name.clone(),
                        Known {
                            first_join: status.first_join.clone(),
                        },
                    );
                    entries.push(AgentEntry {
                        name,
                        spec: agent.spec,
                        status,
                    });
                }
                inventory.restore(entries);
                return known;
            }
            Err(error) => {
                tracing::warn!(%error, "could not list Agent records; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn write(
    agents: &Api<Agent>,
    nodes: &Api<Node>,
    known: &mut HashMap<String, Known>,
    entry: &AgentEntry,
) -> Result<(), RecordError> {
    if !is_dns_subdomain(&entry.name) {
        return Err(RecordError::BadName(entry.name.clone()));
    }
    if !known.contains_key(&entry.name) {
        let first_join = match agents.get_opt(&entry.name).await? {
            Some(existing) => existing.status.and_then(|status| status.first_join),
            None => {
                create(agents, nodes, entry).await?;
                None
            }
        };
        known.insert(entry.name.clone(), Known { first_join });
    }
    let mut status = entry.status.clone();
    if let Some(Known {
        first_join: Some(first),
    }) = known.get(&entry.name)
    {
        status.first_join = Some(first.clone());
    }
    match patch_status(agents, &entry.name, &status).await {
        Err(kube::Error::Api(response)) if response.code == 404 => {
            // Deleted meanwhile (its Node went, or the leader collected it).
            create(agents, nodes, entry).await?;
            patch_status(agents, &entry.name, &status).await?;
        }
        other => {
            other?;
        }
    }
    if let Some(known) = known.get_mut(&entry.name) {
        known.first_join = status.first_join;
    }
    Ok(())
}

async fn patch_status(
    agents: &Api<Agent>,
    name: &str,
    status: &AgentStatus,
) -> Result<Agent, kube::Error> {
    let patch = serde_json::json!({ "status": status });
    agents
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

async fn create(
    agents: &Api<Agent>,
    nodes: &Api<Node>,
    entry: &AgentEntry,
) -> Result<(), RecordError> {
    let mut owner = None;
    if let Some(node) = &entry.spec.node_name
        && let Some(meta) = nodes.get_metadata_opt(node).await?
        && let Some(uid) = meta.metadata.uid
    {
        owner = Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.clone(),
            uid,
            ..OwnerReference::default()
        });
    }
    let agent = Agent {
        metadata: ObjectMeta {
            name: Some(entry.name.clone()),
            owner_references: owner.map(|owner| vec![owner]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "signet-operator".to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: entry.spec.clone(),
        status: None,
    };
    match agents.create(&PostParams::default(), &agent).await {
        Ok(_) => Ok(()),
        // Another replica made it first.
        Err(kube::Error::Api(response)) if response.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The leader's sweep: deletes records unseen for [`FORGET_AFTER`].
async fn collect(
    agents: &Api<Agent>,
    inventory: &AgentInventory,
    known: &mut HashMap<String, Known>,
    now: SystemTime,
) -> Result<(), kube::Error> {
    for agent in agents.list(&ListParams::default()).await?.items {
        let Some(name) = agent.metadata.name.clone() else {
            continue;
        };
        let created = agent
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|time| SystemTime::from(time.0));
        if !is_stale(agent.status.as_ref(), created, now) {
            continue;
        }
        tracing::info!(agent = %name, "forgetting an agent not seen for an hour");
        match agents.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(response)) if response.code == 404 => {}
            Err(error) => return Err(error),
        }
        inventory.forget(&name);
        known.remove(&name);
    }
    Ok(())
}

/// Whether nothing in a record is newer than [`FORGET_AFTER`] ago.
fn is_stale(status: Option<&AgentStatus>, created: Option<SystemTime>, now: SystemTime) -> bool {
    let parsed = |time: &Option<String>| {
        time.as_deref()
            .and_then(|text| humantime::parse_rfc3339_weak(text).ok())
    };
    let latest = status
        .into_iter()
        .flat_map(|status| {
            [
                parsed(&status.last_seen),
                parsed(&status.last_renewal),
                parsed(&status.last_join),
            ]
        })
        .flatten()
        .chain(created)
        .max();
    latest.is_some_and(|latest| now.duration_since(latest).unwrap_or_default() >= FORGET_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_runtime::audit::rfc3339;

    #[test]
    fn a_record_is_stale_only_when_nothing_in_it_is_recent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let ago = |seconds: u64| Some(rfc3339(now - Duration::from_secs(seconds)));
        let old = now - FORGET_AFTER * 2;
        let seen = AgentStatus {
            last_join: ago(7200),
            last_seen: ago(60),
            ..AgentStatus::default()
        };
        assert!(!is_stale(Some(&seen), Some(old), now));
        let renewed = AgentStatus {
            last_seen: ago(7200),
            last_renewal: ago(600),
            ..AgentStatus::default()
        };
        assert!(!is_stale(Some(&renewed), Some(old), now));
        let gone = AgentStatus {
            last_join: ago(9000),
            last_seen: ago(3700),
            ..AgentStatus::default()
        };
        assert!(is_stale(Some(&gone), Some(old), now));
        // A record just created with no status yet is not collected.
        assert!(!is_stale(None, Some(now - Duration::from_secs(5)), now));
        assert!(is_stale(None, Some(old), now));
    }
}
