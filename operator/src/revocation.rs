//! Revoked agents: the names an operator has withdrawn trust from, and the
//! one check every agent call goes through.
//!
//! An agent SVID is valid until it expires, so revocation is enforced by the
//! issuer, not by the certificate: a revoked agent's renewals, joins and
//! signing requests are refused and its policy stream is closed. The list is
//! kept standalone in `<state_dir>/agents-revoked.json` and in a cluster in
//! the ConfigMap `signet-agent-revocations` (one key per node name); both
//! feed the same [`RevocationList`] watch.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::agents::AgentRecord;

/// One withdrawn agent.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Revocation {
    /// When it was revoked (seconds since the epoch; 0 when unknown).
    #[serde(default)]
    pub revoked_at_unix: u64,
    /// Why, as the administrator wrote it.
    #[serde(default)]
    pub reason: String,
}

/// The revoked agents by name (`agent.name`: the join name, or the node).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    #[serde(default)]
    pub revoked: BTreeMap<String, Revocation>,
}

impl RevocationList {
    pub fn get(&self, name: &str) -> Option<&Revocation> {
        self.revoked.get(name)
    }

    /// The list from a ConfigMap's data: each key an agent name, each value
    /// a [`Revocation`] as JSON. A value that is not that JSON (written by
    /// hand) still revokes, with the value as the reason: a typo must never
    /// re-admit an agent.
    pub fn from_config_map_data(data: &BTreeMap<String, String>) -> Self {
        let revoked = data
            .iter()
            .map(|(name, value)| {
                let revocation =
                    serde_json::from_str::<Revocation>(value).unwrap_or_else(|_| Revocation {
                        revoked_at_unix: 0,
                        reason: value.clone(),
                    });
                (name.clone(), revocation)
            })
            .collect();
        Self { revoked }
    }
}

/// Why an agent holding a valid SVID may not act.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct StandingRefusal {
    /// Short reason for metrics and the audit log.
    pub reason: &'static str,
    pub message: String,
}

impl StandingRefusal {
    pub fn revoked(name: &str, revocation: &Revocation) -> Self {
        let why = if revocation.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", revocation.reason)
        };
        Self {
            reason: "agent_revoked",
            message: format!("agent {name:?} is revoked{why}"),
        }
    }
}

/// Whether an agent may still act. The issuer asks on every join (for the
/// name it would admit), renewal, signing batch and policy stream.
pub trait AgentStanding: Send + Sync + 'static {
    /// `Ok` when the agent is still trusted. `renewal` asks for the stronger
    /// check a new agent SVID needs (standalone: its join name is still
    /// configured; cluster: its pod still runs on its node).
    fn check<'a>(
        &'a self,
        agent: &'a AgentRecord,
        renewal: bool,
    ) -> BoxFuture<'a, Result<(), StandingRefusal>>;

    /// The revocation list as it changes, so open streams can close.
    fn revocations(&self) -> watch::Receiver<Arc<RevocationList>>;
}

/// The check both modes share: `name` is not on `list`.
pub fn not_revoked(list: &RevocationList, name: &str) -> Result<(), StandingRefusal> {
    match list.get(name) {
        Some(revocation) => Err(StandingRefusal::revoked(name, revocation)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_config_map_values_still_revoke() {
        let data = BTreeMap::from([
            (
                "node-a".to_owned(),
                r#"{"revoked_at_unix": 5, "reason": "stolen disk"}"#.to_owned(),
            ),
            ("node-b".to_owned(), "decommissioned".to_owned()),
            ("node-c".to_owned(), String::new()),
        ]);
        let list = RevocationList::from_config_map_data(&data);
        assert_eq!(list.get("node-a").unwrap().reason, "stolen disk");
        assert_eq!(list.get("node-a").unwrap().revoked_at_unix, 5);
        assert_eq!(list.get("node-b").unwrap().reason, "decommissioned");
        assert!(not_revoked(&list, "node-c").is_err());
        assert!(not_revoked(&list, "node-d").is_ok());
        assert_eq!(
            not_revoked(&list, "node-b").unwrap_err().message,
            "agent \"node-b\" is revoked: decommissioned"
        );
    }
}
