//! The audit trail: one JSON object per line for every issuance and every
//! denial, so "who got which identity, and who was refused why" can be
//! answered after the fact. The operator records what it signs and refuses;
//! the agent, in the same schema, what it refuses without asking the issuer.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("opening audit log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of credential an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    X509Svid,
    JwtSvid,
    AgentSvid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Issued,
    Denied,
}

/// One audit record. Field names are part of the user-facing contract
/// (documented in the README); add fields, never rename them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 time of the decision.
    pub time: String,
    /// `svid.issued` or `svid.denied` (`agent.joined` / `agent.join_denied` /
    /// `agent.renewed` / `agent.refused` for agents).
    pub event: &'static str,
    pub outcome: Outcome,
    pub credential: CredentialKind,
    /// The agent that asked (its join name or node), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_spiffe_id: Option<String>,
    /// The workload's attributes as the issuer evaluated them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub workload: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_sans: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_sans: Vec<String>,
    /// Certificate serial (hex) for X.509-SVIDs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// `jti` of a JWT-SVID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_id: Option<String>,
    /// The authority that signed it: the CA's subject key id (hex) for an
    /// X.509-SVID, the key's `kid` for a JWT-SVID (what `authority taint`
    /// names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Machine-readable reason of a denial (`no_matching_rule`, `role_denied`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Policy version the decision was made under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// On a summary: how many more events with this `reason` (for this
    /// `workload.unix.uid`) were counted but not written since the first
    /// one; the rest of the summary is the last of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

impl AuditEvent {
    /// A skeleton event; callers fill in what they know.
    pub fn new(credential: CredentialKind, outcome: Outcome, now: SystemTime) -> Self {
        let event = match (credential, outcome) {
            (CredentialKind::AgentSvid, Outcome::Issued) => "agent.joined",
            (CredentialKind::AgentSvid, Outcome::Denied) => "agent.join_denied",
            (_, Outcome::Issued) => "svid.issued",
            (_, Outcome::Denied) => "svid.denied",
        };
        Self {
            time: rfc3339(now),
            event,
            outcome,
            credential,
            agent: None,
            agent_spiffe_id: None,
            workload: BTreeMap::new(),
            workload_identity: None,
            spiffe_id: None,
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            serial: None,
            jwt_id: None,
            authority_id: None,
            audiences: Vec::new(),
            ttl_seconds: None,
            expires_at: None,
            reason: None,
            message: None,
            policy_version: None,
            suppressed: None,
        }
    }
}

/// Bytes of one agent-supplied value a denial event keeps: enough to tell
/// what was asked, never the whole of an oversized request.
pub const MAX_REFUSED_VALUE_LEN: usize = 256;
/// Attributes (or audiences) of a refused request a denial event keeps.
pub const MAX_REFUSED_ENTRIES: usize = 64;

/// `value`, cut to [`MAX_REFUSED_VALUE_LEN`] bytes (on a character
/// boundary) with a note of how much was left out.
pub fn bounded(value: &str) -> String {
    if value.len() <= MAX_REFUSED_VALUE_LEN {
        return value.to_owned();
    }
    let mut end = MAX_REFUSED_VALUE_LEN;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[{} more bytes]", &value[..end], value.len() - end)
}

impl AuditEvent {
    /// Bounds what a denial records of the request: each agent-supplied
    /// string (attribute names and values, identity name, audiences,
    /// message) and how many of them, so a refused oversized request is
    /// never written to the audit log whole.
    pub fn bound_refused_input(&mut self) {
        let left_out = self.workload.len().saturating_sub(MAX_REFUSED_ENTRIES);
        let mut workload: BTreeMap<String, String> = std::mem::take(&mut self.workload)
            .into_iter()
            .take(MAX_REFUSED_ENTRIES)
            .map(|(name, value)| (bounded(&name), bounded(&value)))
            .collect();
        if left_out > 0 {
            // Not an attribute name, so it cannot be mistaken for one.
            workload.insert("...".to_owned(), format!("{left_out} more attributes"));
        }
        self.workload = workload;
        self.workload_identity = self.workload_identity.as_deref().map(bounded);
        let audiences = self.audiences.len();
        self.audiences = std::mem::take(&mut self.audiences)
            .iter()
            .take(MAX_REFUSED_ENTRIES)
            .map(|audience| bounded(audience))
            .collect();
        if audiences > MAX_REFUSED_ENTRIES {
            self.audiences
                .push(format!("...[{} more]", audiences - MAX_REFUSED_ENTRIES));
        }
        self.message = self.message.as_deref().map(bounded);
    }
}

/// RFC 3339 with second precision, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Seconds between two instants, saturating at zero.
pub fn seconds_between(from: SystemTime, to: SystemTime) -> u64 {
    to.duration_since(from).unwrap_or(Duration::ZERO).as_secs()
}

enum Sink {
    Stdout,
    File(std::fs::File),
    /// Kept in memory, for tests.
    Memory(Vec<AuditEvent>),
}

/// Where audit events go. Writes are synchronous and flushed per line: an
/// issuance is not reported to the agent before its record is written.
pub struct AuditLog {
    sink: Mutex<Sink>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// `-` means standard output; anything else is a file opened for
    /// appending (created 0600: events contain workload attributes).
    pub fn open(destination: &Path) -> Result<Self, AuditError> {
        if destination == Path::new("-") {
            return Ok(Self {
                sink: Mutex::new(Sink::Stdout),
            });
        }
        if let Some(parent) = destination.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| AuditError::Open {
                path: destination.to_owned(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(destination)
            .map_err(|source| AuditError::Open {
                path: destination.to_owned(),
                source,
            })?;
        Ok(Self {
            sink: Mutex::new(Sink::File(file)),
        })
    }

    /// An audit log that keeps events in memory (tests, benchmarks).
    pub fn in_memory() -> Self {
        Self {
            sink: Mutex::new(Sink::Memory(Vec::new())),
        }
    }

    pub fn record(&self, event: AuditEvent) {
        let Ok(mut sink) = self.sink.lock() else {
            tracing::error!("audit log lock poisoned; event lost");
            return;
        };
        let line = match serde_json::to_string(&event) {
            Ok(line) => line,
            Err(error) => {
                tracing::error!(%error, "audit event could not be encoded");
                return;
            }
        };
        let written = match &mut *sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}").and_then(|()| out.flush())
            }
            Sink::File(file) => writeln!(file, "{line}").and_then(|()| file.flush()),
            Sink::Memory(events) => {
                events.push(event);
                Ok(())
            }
        };
        if let Err(error) = written {
            tracing::error!(%error, "writing the audit log failed");
        }
    }

    /// Events recorded by an in-memory log (empty for other sinks).
    pub fn recorded(&self) -> Vec<AuditEvent> {
        match self.sink.lock().as_deref() {
            Ok(Sink::Memory(events)) => events.clone(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_input_is_bounded() {
        let now = SystemTime::UNIX_EPOCH;
        let mut event = AuditEvent::new(CredentialKind::JwtSvid, Outcome::Denied, now);
        let huge = "a".repeat(1 << 20);
        event.audiences = vec![huge.clone(); 100];
        event.workload_identity = Some(huge.clone());
        event.message = Some(format!("bad {huge}"));
        for i in 0..100 {
            event
                .workload
                .insert(format!("workload.docker.labels.k{i:03}"), huge.clone());
        }
        event.bound_refused_input();
        let line = serde_json::to_string(&event).unwrap();
        assert!(line.len() < 64 * 1024, "{} bytes", line.len());
        assert_eq!(event.audiences.len(), MAX_REFUSED_ENTRIES + 1);
        assert!(event.audiences[0].ends_with(&format!("[{} more bytes]", (1 << 20) - 256)));
        assert_eq!(event.workload.len(), MAX_REFUSED_ENTRIES + 1);
        assert_eq!(event.workload["..."], "36 more attributes");
        assert!(event.workload_identity.unwrap().len() < 300);
        assert_eq!(bounded("short"), "short");
        // A multi-byte character straddling the cut is not split.
        let cut = bounded(&format!("a{}", "é".repeat(200)));
        assert!(
            cut.starts_with(&format!("a{}...", "é".repeat(127))),
            "{cut}"
        );
    }

    #[test]
    fn file_log_appends_one_json_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut issued = AuditEvent::new(CredentialKind::X509Svid, Outcome::Issued, now);
        issued.spiffe_id = Some("spiffe://example.org/web".into());
        issued.serial = Some("0a1b".into());
        issued
            .workload
            .insert("workload.unix.uid".into(), "1000".into());
        log.record(issued);
        let mut denied = AuditEvent::new(CredentialKind::JwtSvid, Outcome::Denied, now);
        denied.reason = Some("role_denied".into());
        denied.audiences = vec!["vault".into()];
        log.record(denied);

        let contents = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = contents
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "svid.issued");
        assert_eq!(lines[0]["time"], "2023-11-14T22:13:20Z");
        assert_eq!(lines[0]["workload"]["workload.unix.uid"], "1000");
        assert_eq!(lines[1]["event"], "svid.denied");
        assert_eq!(lines[1]["reason"], "role_denied");
        assert_eq!(lines[1]["audiences"][0], "vault");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }
}
