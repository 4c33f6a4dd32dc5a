//! Standalone agents' standing: a join agent may act while its join name
//! is configured and not revoked.
//!
//! Revocations live in `<state_dir>/agents-revoked.json` (0600), written by
//! `signet-operator agent revoke` and re-read by the running operator within
//! [`POLL_INTERVAL`], so no restart is needed and a revocation survives one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::agents::AgentRecord;
use crate::revocation::{AgentStanding, Revocation, RevocationList, StandingRefusal, not_revoked};

pub const REVOKED_FILE: &str = "agents-revoked.json";
/// How often the running operator looks at the revocation file. A stat per
/// second is cheap, and it bounds how long a revoked agent keeps its stream.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RevocationFileError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a revocation list: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Reads the revocation list; a missing file is an empty list.
pub fn read_revocations(path: &Path) -> Result<RevocationList, RevocationFileError> {
    let contents =
        signet_runtime::files::read_optional(path).map_err(|e| RevocationFileError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    match contents {
        None => Ok(RevocationList::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| RevocationFileError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Changes the list in `state_dir` under an exclusive lock (two
/// administrators revoking at once both count) and returns the result.
pub fn update_revocations(
    state_dir: &Path,
    change: impl FnOnce(&mut RevocationList),
) -> Result<RevocationList, RevocationFileError> {
    let path = state_dir.join(REVOKED_FILE);
    let write_error = |reason: String| RevocationFileError::Write {
        path: path.clone(),
        reason,
    };
    let lock_path = state_dir.join(".agents-revoked.lock");
    let lock = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| write_error(format!("opening {}: {e}", lock_path.display())))?
    };
    lock.lock()
        .map_err(|e| write_error(format!("locking {}: {e}", lock_path.display())))?;
    let mut list = read_revocations(&path)?;
    change(&mut list);
    let mut json = serde_json::to_vec_pretty(&list).map_err(|e| write_error(e.to_string()))?;
    json.push(b'\n');
    signet_runtime::files::write_atomic(&path, &json, 0o600)
        .map_err(|e| write_error(e.to_string()))?;
    Ok(list)
}

/// Adds `name` to the list (a second revocation keeps the first's time and
/// reason). Returns whether it was newly revoked.
pub fn revoke(
    state_dir: &Path,
    name: &str,
    reason: &str,
    now: SystemTime,
) -> Result<bool, RevocationFileError> {
    let mut added = false;
    update_revocations(state_dir, |list| {
        if !list.revoked.contains_key(name) {
            added = true;
            list.revoked.insert(
                name.to_owned(),
                Revocation {
                    revoked_at_unix: now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    reason: reason.to_owned(),
                },
            );
        }
    })?;
    Ok(added)
}

/// Takes `name` off the list. Returns whether it was revoked.
pub fn unrevoke(state_dir: &Path, name: &str) -> Result<bool, RevocationFileError> {
    let mut removed = false;
    update_revocations(state_dir, |list| {
        removed = list.revoked.remove(name).is_some();
    })?;
    Ok(removed)
}

/// Inode, length and modification time: a version of the file, known
/// without reading it.
type FileVersion = (u64, u64, i64, i64);

fn file_version(path: &Path) -> Option<FileVersion> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec()))
}

/// Publishes the file's list whenever it changes. A file that cannot be
/// read or parsed keeps the last good list in force (and says so): an edit
/// in progress must not re-admit every revoked agent.
pub async fn follow_revocations(path: PathBuf, sender: watch::Sender<Arc<RevocationList>>) {
    // Read on the first tick whatever the file is, so a change made between
    // the caller's first read and this task's start is not missed.
    let mut seen: Option<Option<FileVersion>> = None;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let version = Some(file_version(&path));
        if version == seen {
            continue;
        }
        seen = version;
        match read_revocations(&path) {
            Ok(list) => {
                let names: Vec<&String> = list.revoked.keys().collect();
                tracing::info!(revoked = ?names, "agent revocation list changed");
                sender.send_if_modified(|current| {
                    let changed = **current != list;
                    *current = Arc::new(list.clone());
                    changed
                });
            }
            Err(error) => {
                tracing::error!(%error, "keeping the previous agent revocation list");
            }
        }
        if sender.is_closed() {
            return;
        }
    }
}

/// Standalone standing: configured join names, minus revoked ones.
pub struct JoinedAgents {
    configured: BTreeSet<String>,
    revocations: watch::Receiver<Arc<RevocationList>>,
}

impl JoinedAgents {
    pub fn new(
        configured: impl IntoIterator<Item = String>,
        revocations: watch::Receiver<Arc<RevocationList>>,
    ) -> Self {
        Self {
            configured: configured.into_iter().collect(),
            revocations,
        }
    }

    fn decide(&self, agent: &AgentRecord) -> Result<(), StandingRefusal> {
        not_revoked(&self.revocations.borrow(), &agent.name)?;
        // Node agents only exist in a cluster; a join name removed from the
        // configuration is no longer trusted, even with a valid SVID.
        if agent.node_name.is_some() || !self.configured.contains(&agent.name) {
            return Err(StandingRefusal {
                reason: "agent_not_configured",
                message: format!(
                    "agent {:?} is no longer configured on this issuer",
                    agent.name
                ),
            });
        }
        Ok(())
    }
}

impl AgentStanding for JoinedAgents {
    fn check<'a>(
        &'a self,
        agent: &'a AgentRecord,
        _renewal: bool,
    ) -> BoxFuture<'a, Result<(), StandingRefusal>> {
        Box::pin(std::future::ready(self.decide(agent)))
    }

    fn revocations(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.revocations.clone()
    }
}

#[cfg(test)]
mod tests {
    use signet_identity::{SpiffeId, TrustDomain};

    use super::*;

    fn agent(id: &str) -> AgentRecord {
        AgentRecord::from_spiffe_id(
            &SpiffeId::parse(id).unwrap(),
            &TrustDomain::new("example.org").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn revocations_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REVOKED_FILE);
        assert_eq!(read_revocations(&path).unwrap(), RevocationList::default());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(revoke(dir.path(), "vm-1", "lost laptop", now).unwrap());
        assert!(!revoke(dir.path(), "vm-1", "again", now).unwrap());
        let list = read_revocations(&path).unwrap();
        assert_eq!(list.get("vm-1").unwrap().reason, "lost laptop");
        assert_eq!(list.get("vm-1").unwrap().revoked_at_unix, 1_000);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(unrevoke(dir.path(), "vm-1").unwrap());
        assert!(!unrevoke(dir.path(), "vm-1").unwrap());
        assert_eq!(read_revocations(&path).unwrap(), RevocationList::default());
    }

    #[test]
    fn a_malformed_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REVOKED_FILE);
        std::fs::write(&path, "{\"revoked\": [").unwrap();
        assert!(matches!(
            read_revocations(&path),
            Err(RevocationFileError::Parse { .. })
        ));
        assert!(revoke(dir.path(), "vm-1", "", SystemTime::UNIX_EPOCH).is_err());
    }

    #[test]
    fn configured_unrevoked_join_agents_stand() {
        let (sender, receiver) = watch::channel(Arc::new(RevocationList::default()));
        let agents = JoinedAgents::new(["vm-1".to_owned(), "vm-2".to_owned()], receiver);
        let vm1 = agent("spiffe://example.org/signet/agent/join/vm-1");
        assert_eq!(agents.decide(&vm1), Ok(()));
        let gone = agent("spiffe://example.org/signet/agent/join/vm-9");
        assert_eq!(
            agents.decide(&gone).unwrap_err().reason,
            "agent_not_configured"
        );
        let node = agent("spiffe://example.org/signet/agent/k8s/vm-1");
        assert_eq!(
            agents.decide(&node).unwrap_err().reason,
            "agent_not_configured"
        );
        let mut list = RevocationList::default();
        list.revoked.insert("vm-1".into(), Revocation::default());
        sender.send(Arc::new(list)).unwrap();
        assert_eq!(agents.decide(&vm1).unwrap_err().reason, "agent_revoked");
        let vm2 = agent("spiffe://example.org/signet/agent/join/vm-2");
        assert_eq!(agents.decide(&vm2), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_running_operator_follows_the_file_and_keeps_the_last_good_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(REVOKED_FILE);
        let (sender, mut receiver) = watch::channel(Arc::new(RevocationList::default()));
        tokio::spawn(follow_revocations(path.clone(), sender));
        revoke(dir.path(), "vm-1", "", SystemTime::UNIX_EPOCH).unwrap();
        receiver.changed().await.unwrap();
        assert!(receiver.borrow_and_update().get("vm-1").is_some());
        // A broken edit: the revocation stays in force.
        std::fs::write(&path, "not json").unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert!(!receiver.has_changed().unwrap());
        assert!(receiver.borrow().get("vm-1").is_some());
        std::fs::remove_file(&path).unwrap();
        receiver.changed().await.unwrap();
        assert!(receiver.borrow().get("vm-1").is_none());
    }
}
