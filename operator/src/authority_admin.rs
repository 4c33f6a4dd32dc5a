//! Administering the trust domain's authorities: `signet-operator
//! authority show|prepare|activate|taint|revoke` (SPIRE's `localauthority`).
//! Standalone, the running operator answers on a unix socket in its state
//! directory (`admin.sock`, 0600, owner or root only), one JSON request and
//! one JSON answer per connection. Also reports each authority's state to
//! the metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use signet_identity::{AuthorityKind, AuthorityState, RotationEvent};
use signet_runtime::audit::rfc3339;
use signet_runtime::clock::Clock;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::ca::{Authority, AuthorityAction};
use crate::ledger::{AuthorityRef, SvidLedger};
use crate::metrics::{AuthorityLabels, AuthorityStateLabels, Metrics};

/// The socket's name in the standalone state directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Where a cluster replica serves it (the chart mounts an emptyDir at
/// `/run/signet-operator`): `kubectl exec` into a replica and run
/// `signet-operator authority --state-dir /run/signet-operator/admin ...`.
pub const CLUSTER_ADMIN_DIR: &str = "/run/signet-operator/admin";
/// Longest request line accepted (requests are a few dozen bytes).
const MAX_REQUEST: usize = 4096;

/// Why the admin socket could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the operator's answer is not understood: {0}")]
    Protocol(String),
}

/// What an administrator asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum AdminRequest {
    Show,
    Prepare {
        kind: AuthorityKind,
    },
    Activate {
        kind: AuthorityKind,
    },
    Taint {
        kind: AuthorityKind,
        id: String,
    },
    Revoke {
        kind: AuthorityKind,
        id: String,
        /// Revoke although live SVIDs still depend on it (they stop
        /// verifying at once).
        #[serde(default)]
        force: bool,
    },
}

/// One authority as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityReport {
    pub kind: AuthorityKind,
    pub id: String,
    pub state: AuthorityState,
    pub tainted: bool,
    pub not_before: String,
    pub not_after: String,
    /// SVIDs it signed that are still in use (the latest of each holder,
    /// not expired), as far as this operator signed them.
    pub live_svids: u64,
    /// X.509 CAs: signed by the upstream CA (not self-signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_signed: Option<bool>,
}

/// The answer: what was done, and the authorities afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub authorities: Vec<AuthorityReport>,
    /// Some SVIDs were not counted (the ledger was full): counts are low.
    #[serde(default)]
    pub counts_incomplete: bool,
}

/// Carries out requests against the running authority.
#[derive(Clone)]
pub struct AuthorityAdmin {
    pub authority: Arc<Authority>,
    pub ledger: Arc<SvidLedger>,
    pub clock: Clock,
    /// The ledger holds only what this replica signed (a cluster with
    /// several replicas): a revoke cannot be shown safe here.
    pub counts_are_partial: bool,
}

fn describe(event: &RotationEvent) -> String {
    match event {
        RotationEvent::Prepared { kind, id, .. } => format!("{kind} authority {id} prepared"),
        RotationEvent::Activated { kind, id } => format!("{kind} authority {id} activated"),
        RotationEvent::Retired { kind, id } => format!("{kind} authority {id} retired"),
        RotationEvent::Pruned { kind, id } => format!("{kind} authority {id} expired"),
        RotationEvent::Tainted { kind, id } => {
            format!("{kind} authority {id} tainted: agents re-issue what it signed")
        }
        RotationEvent::Revoked { kind, id } => {
            format!("{kind} authority {id} revoked: removed from the bundle")
        }
    }
}

impl AuthorityAdmin {
    /// The authorities now, with their live SVID counts.
    pub fn report(&self) -> (Vec<AuthorityReport>, bool) {
        let now = self.clock.now();
        let live = self.ledger.live(now);
        let reports = self
            .authority
            .authorities()
            .into_iter()
            .map(|status| {
                let key = AuthorityRef {
                    kind: status.kind,
                    id: status.id.clone(),
                };
                AuthorityReport {
                    kind: status.kind,
                    live_svids: live.get(&key).copied().unwrap_or(0),
                    id: status.id,
                    state: status.state,
                    tainted: status.tainted,
                    not_before: rfc3339(status.not_before),
                    not_after: rfc3339(status.not_after),
                    upstream_signed: status.upstream_signed,
                }
            })
            .collect();
        (reports, self.ledger.incomplete())
    }

    /// Answers one request; refusals come back with `ok: false` and why.
    pub async fn handle(&self, request: AdminRequest) -> AdminResponse {
        let now = self.clock.now();
        let action = match request {
            AdminRequest::Show => None,
            AdminRequest::Prepare { kind } => Some(AuthorityAction::Prepare { kind }),
            AdminRequest::Activate { kind } => Some(AuthorityAction::Activate { kind }),
            AdminRequest::Taint { kind, id } => Some(AuthorityAction::Taint { kind, id }),
            AdminRequest::Revoke { kind, id, force } => {
                if let Err(refusal) = self.may_revoke(kind, &id, force, now) {
                    return self.refused(refusal);
                }
                Some(AuthorityAction::Revoke { kind, id })
            }
        };
        let mut events = Vec::new();
        if let Some(action) = action {
            match self.authority.act(&action, now).await {
                Ok(done) => events = done.iter().map(describe).collect(),
                Err(error) => return self.refused(error.to_string()),
            }
        }
        let (authorities, counts_incomplete) = self.report();
        AdminResponse {
            ok: true,
            error: None,
            events,
            authorities,
            counts_incomplete,
        }
    }

    /// A tainted authority leaves the bundle only once nothing live
    /// depends on it, unless forced.
    fn may_revoke(
        &self,
        kind: AuthorityKind,
        id: &str,
        force: bool,
        now: SystemTime,
    ) -> Result<(), String> {
        if force {
            return Ok(());
        }
        if self.counts_are_partial {
            return Err(format!(
                "this replica counts only the SVIDs it signed; check that sum(signet_operator_authority_live_svids{{id=\"{id}\"}}) over all replicas is 0, then revoke with --force"
            ));
        }
        let status = self
            .authority
            .authorities()
            .into_iter()
            .find(|a| a.kind == kind && a.id.eq_ignore_ascii_case(id));
        let Some(status) = status else {
            // The keyset gives the precise refusal.
            return Ok(());
        };
        let live = self.ledger.live_for(
            &AuthorityRef {
                kind,
                id: status.id.clone(),
            },
            now,
        );
        if live > 0 {
            return Err(format!(
                "{live} live SVIDs signed by {kind} authority {} are still in use; agents re-issue them after a taint (watch `authority show`), or revoke with --force to cut them off now",
                status.id
            ));
        }
        if self.ledger.incomplete() {
            return Err(
                "live SVID counts are incomplete (the ledger was full), so revoking cannot be shown safe; use --force"
                    .to_owned(),
            );
        }
        Ok(())
    }

    fn refused(&self, error: String) -> AdminResponse {
        let (authorities, counts_incomplete) = self.report();
        AdminResponse {
            ok: false,
            error: Some(error),
            events: Vec::new(),
            authorities,
            counts_incomplete,
        }
    }

    /// Keeps the per-authority metrics current, every `interval`.
    pub async fn report_metrics(self, metrics: Arc<Metrics>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let live = self.ledger.live(self.clock.now());
            metrics.authority_state.clear();
            metrics.authority_live_svids.clear();
            metrics.authority_not_after.clear();
            let mut on_tainted = 0;
            for status in self.authority.authorities() {
                let kind = match status.kind {
                    AuthorityKind::X509 => "x509",
                    AuthorityKind::Jwt => "jwt",
                };
                let state = match (status.tainted, status.state) {
                    (true, _) => "tainted",
                    (false, AuthorityState::Prepared) => "prepared",
                    (false, AuthorityState::Active) => "active",
                    (false, AuthorityState::Retired) => "retired",
                };
                let count = live
                    .get(&AuthorityRef {
                        kind: status.kind,
                        id: status.id.clone(),
                    })
                    .copied()
                    .unwrap_or(0);
                if status.tainted {
                    on_tainted += count;
                }
                let labels = AuthorityLabels {
                    kind,
                    id: status.id.clone(),
                };
                metrics
                    .authority_state
                    .get_or_create(&AuthorityStateLabels {
                        kind,
                        id: status.id,
                        state,
                    })
                    .set(1);
                metrics
                    .authority_live_svids
                    .get_or_create(&labels)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
                metrics.authority_not_after.get_or_create(&labels).set(
                    status
                        .not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                );
            }
            metrics
                .svids_on_tainted_authorities
                .set(i64::try_from(on_tainted).unwrap_or(i64::MAX));
        }
    }
}

/// Serves `admin` on `<dir>/admin.sock` until the task is dropped: one
/// JSON request line, one JSON answer line, per connection. Only the
/// operator's own user and root may connect. `dir` is made (or narrowed
/// to) 0700 first.
pub async fn serve_socket(dir: &Path, admin: AuthorityAdmin) -> Result<(), AdminError> {
    let path = dir.join(ADMIN_SOCKET);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    signet_runtime::files::ensure_private_dir(dir, 0o700)
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    // Bound inside the 0700 directory, then narrowed before the first
    // accept: no one else can reach it in between.
    let listener = tokio::net::UnixListener::bind(&path).map_err(io)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io)?;
    let own_uid = rustix::process::geteuid().as_raw();
    tracing::info!(socket = %path.display(), "authority admin socket ready");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin socket accept failed");
                continue;
            }
        };
        let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
        if !matches!(peer_uid, Some(uid) if uid == own_uid || uid == 0) {
            tracing::warn!(?peer_uid, "refused an admin connection from another user");
            continue;
        }
        let admin = admin.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &admin).await {
                tracing::debug!(%error, "admin connection ended");
            }
        });
    }
}

async fn answer(stream: tokio::net::UnixStream, admin: &AuthorityAdmin) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(reader.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<AdminRequest>(line.trim()) {
        Ok(request) if read > 0 => admin.handle(request).await,
        Ok(_) => return Ok(()),
        Err(error) => AdminResponse {
            ok: false,
            error: Some(format!("bad request: {error}")),
            ..AdminResponse::default()
        },
    };
    let mut text = serde_json::to_string(&response).map_err(std::io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await?;
    writer.shutdown().await
}

/// Sends one request to the operator whose state directory is `state_dir`.
pub async fn call_socket(
    state_dir: &Path,
    request: &AdminRequest,
) -> Result<AdminResponse, AdminError> {
    let path = state_dir.join(ADMIN_SOCKET);
    let io = |source| AdminError::Io {
        path: path.clone(),
        source,
    };
    let stream = tokio::net::UnixStream::connect(&path).await.map_err(io)?;
    let (reader, mut writer) = stream.into_split();
    let mut text =
        serde_json::to_string(request).map_err(|e| AdminError::Protocol(e.to_string()))?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(reader)
        .read_line(&mut line)
        .await
        .map_err(io)?;
    serde_json::from_str(line.trim()).map_err(|e| AdminError::Protocol(format!("{e}: {line:?}")))
}

#[cfg(test)]
mod tests {
    use signet_identity::{CaConfig, TrustDomain};

    use super::*;
    use crate::ca::IssuerNames;
    use crate::ledger::Holder;
    use crate::standalone::keyset_file::FileKeysetStore;

    async fn admin(dir: &Path, counts_are_partial: bool) -> AuthorityAdmin {
        let clock = Clock::new();
        let authority = Authority::load_or_create(
            CaConfig::new(TrustDomain::new("example.org").unwrap()),
            Arc::new(FileKeysetStore::new(dir.join("keyset.json"))),
            IssuerNames::default(),
            clock.now(),
        )
        .await
        .unwrap();
        AuthorityAdmin {
            authority,
            ledger: Arc::new(SvidLedger::default()),
            clock,
            counts_are_partial,
        }
    }

    fn id_in(response: &AdminResponse, state: AuthorityState) -> String {
        response
            .authorities
            .iter()
            .find(|a| a.kind == AuthorityKind::X509 && a.state == state)
            .unwrap()
            .id
            .clone()
    }

    #[tokio::test]
    async fn revoke_waits_for_the_live_svids_of_a_tainted_ca_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path(), false).await;
        let kind = AuthorityKind::X509;
        let shown = admin.handle(AdminRequest::Show).await;
        let old = id_in(&shown, AuthorityState::Active);
        // A workload holds an SVID of the old CA.
        let now = admin.clock.now();
        let holder = Holder::WorkloadX509 {
            agent: "n1".into(),
            workload: "pod".into(),
            identity: "web".into(),
        };
        let old_ref = AuthorityRef {
            kind,
            id: old.clone(),
        };
        admin
            .ledger
            .signed(holder.clone(), old_ref, now + Duration::from_secs(600), now);
        assert!(admin.handle(AdminRequest::Prepare { kind }).await.ok);
        let activated = admin.handle(AdminRequest::Activate { kind }).await;
        let new = id_in(&activated, AuthorityState::Active);
        assert!(
            admin
                .handle(AdminRequest::Taint {
                    kind,
                    id: old.clone()
                })
                .await
                .ok
        );
        let refused = admin
            .handle(AdminRequest::Revoke {
                kind,
                id: old.clone(),
                force: false,
            })
            .await;
        assert!(!refused.ok);
        assert!(refused.error.unwrap().contains("1 live SVIDs"));
        let shown = admin.handle(AdminRequest::Show).await;
        let listed = shown.authorities.iter().find(|a| a.id == old).unwrap();
        assert_eq!((listed.tainted, listed.live_svids), (true, 1));
        // Re-issued under the new CA: nothing depends on the old one.
        admin.ledger.signed(
            holder,
            AuthorityRef { kind, id: new },
            now + Duration::from_secs(600),
            now,
        );
        let revoked = admin
            .handle(AdminRequest::Revoke {
                kind,
                id: old.clone(),
                force: false,
            })
            .await;
        assert!(revoked.ok, "{revoked:?}");
        assert!(revoked.authorities.iter().all(|a| a.id != old));
    }

    #[tokio::test]
    async fn a_replica_with_partial_counts_revokes_only_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path(), true).await;
        let kind = AuthorityKind::X509;
        let old = id_in(
            &admin.handle(AdminRequest::Show).await,
            AuthorityState::Active,
        );
        assert!(admin.handle(AdminRequest::Prepare { kind }).await.ok);
        assert!(admin.handle(AdminRequest::Activate { kind }).await.ok);
        assert!(
            admin
                .handle(AdminRequest::Taint {
                    kind,
                    id: old.clone()
                })
                .await
                .ok
        );
        let refused = admin
            .handle(AdminRequest::Revoke {
                kind,
                id: old.clone(),
                force: false,
            })
            .await;
        assert!(refused.error.unwrap().contains("over all replicas"));
        let forced = admin
            .handle(AdminRequest::Revoke {
                kind,
                id: old,
                force: true,
            })
            .await;
        assert!(forced.ok, "{forced:?}");
    }

    #[tokio::test]
    async fn the_socket_answers_its_owner_and_refuses_bad_requests() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path(), false).await;
        let socket_dir = dir.path().join("admin");
        let served = socket_dir.clone();
        let task = tokio::spawn(async move { serve_socket(&served, admin).await });
        let path = socket_dir.join(ADMIN_SOCKET);
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(&socket_dir).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let shown = call_socket(&socket_dir, &AdminRequest::Show).await.unwrap();
        assert!(shown.ok);
        assert_eq!(shown.authorities.len(), 2, "one X.509 CA, one JWT key");
        // A request that is not one gets a clear refusal, not a hang.
        let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        stream
            .write_all(b"{\"action\":\"format-disk\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await.unwrap();
        let answer: AdminResponse = serde_json::from_str(&answer).unwrap();
        assert!(!answer.ok);
        assert!(answer.error.unwrap().contains("bad request"));
        task.abort();
    }
}
