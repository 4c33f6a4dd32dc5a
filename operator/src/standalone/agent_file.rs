//! Standalone agent inventory: `<state_dir>/agents.json` (0600), rewritten
//! atomically within [`WRITE_INTERVAL`] of a change and read back at start,
//! so `signet agents list --state-dir` shows what the operator saw, also
//! across its restarts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::inventory::{AgentEntry, AgentInventory};

pub const AGENTS_FILE: &str = "agents.json";
/// How long a change may wait before it reaches the file.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentFileError {
    #[error("{path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not an agent inventory: {reason}")]
    Parse { path: PathBuf, reason: String },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AgentFile {
    agents: Vec<AgentEntry>,
}

/// The inventory in `state_dir`; none yet is an empty one.
pub fn read_agents(state_dir: &Path) -> Result<Vec<AgentEntry>, AgentFileError> {
    let path = state_dir.join(AGENTS_FILE);
    let contents =
        signet_runtime::files::read_optional(&path).map_err(|e| AgentFileError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    let Some(bytes) = contents else {
        return Ok(Vec::new());
    };
    let file: AgentFile = serde_json::from_slice(&bytes).map_err(|e| AgentFileError::Parse {
        path,
        reason: e.to_string(),
    })?;
    Ok(file.agents)
}

/// Restores the inventory from `state_dir`, then keeps the file current.
/// A file that cannot be read is set aside (`agents.json.unreadable`), not
/// overwritten unseen.
pub async fn keep(inventory: AgentInventory, state_dir: PathBuf) {
    match read_agents(&state_dir) {
        Ok(entries) => inventory.restore(entries),
        Err(error) => {
            let path = state_dir.join(AGENTS_FILE);
            let aside = state_dir.join(format!("{AGENTS_FILE}.unreadable"));
            tracing::warn!(%error, aside = %aside.display(), "agent inventory unreadable; starting a new one");
            if let Err(error) = std::fs::rename(&path, &aside) {
                tracing::warn!(%error, "could not set the unreadable inventory aside");
            }
        }
    }
    let path = state_dir.join(AGENTS_FILE);
    let mut ticker = tokio::time::interval(WRITE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if inventory.take_changed().is_empty() {
            continue;
        }
        let file = AgentFile {
            agents: inventory.all(),
        };
        let written = serde_json::to_vec_pretty(&file)
            .map_err(|e| e.to_string())
            .and_then(|json| {
                signet_runtime::files::write_atomic(&path, &json, 0o600).map_err(|e| e.to_string())
            });
        if let Err(error) = written {
            tracing::warn!(path = %path.display(), %error, "could not write the agent inventory; retrying");
            inventory.mark_all_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use signet_identity::{SpiffeId, TrustDomain};
    use signet_runtime::clock::Clock;

    use super::*;
    use crate::inventory::JoinMethod;

    #[tokio::test(start_paused = true)]
    async fn the_file_follows_the_inventory_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::new();
        let td = TrustDomain::new("example.org").unwrap();
        let id = SpiffeId::from_path(&td, "/signet/agent/join/edge-1").unwrap();
        let inventory = AgentInventory::new(clock);
        let task = tokio::spawn(keep(inventory.clone(), dir.path().to_owned()));
        inventory.joined(&id, "edge-1", None, JoinMethod::JoinToken, clock.now());
        tokio::time::sleep(WRITE_INTERVAL * 2).await;
        let written = read_agents(dir.path()).unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].spec.join_method, "join_token");
        let mode = std::fs::metadata(dir.path().join(AGENTS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        task.abort();

        let restarted = AgentInventory::new(clock);
        let task = tokio::spawn(keep(restarted.clone(), dir.path().to_owned()));
        tokio::time::sleep(WRITE_INTERVAL * 2).await;
        assert_eq!(restarted.all(), written);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(AGENTS_FILE), b"not json").unwrap();
        assert!(matches!(
            read_agents(dir.path()),
            Err(AgentFileError::Parse { .. })
        ));
        let inventory = AgentInventory::new(Clock::new());
        let task = tokio::spawn(keep(inventory, dir.path().to_owned()));
        tokio::time::sleep(WRITE_INTERVAL).await;
        task.abort();
        let aside = std::fs::read(dir.path().join("agents.json.unreadable")).unwrap();
        assert_eq!(aside, b"not json");
    }
}
