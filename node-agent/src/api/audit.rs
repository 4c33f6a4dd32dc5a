//! Refusals the agent makes on its own: a caller that could not be attested
//! (its process changed, its evidence contradicts itself, a runtime could
//! not be asked) or that no identity applies to never reaches the issuer,
//! so the issuer's audit log cannot show them. They go to the agent's audit
//! log, in the issuer's schema (`svid.denied`).
//!
//! A process that retries in a loop must not flood the log: per reason and
//! caller uid, the first refusal is written in full and the rest of a
//! window only counted; when the window ends, one summary carries the count
//! (`suppressed`) and the last of them. A metric counts every refusal by
//! reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use signet_policy::{Attributes, Field};
use signet_runtime::audit::{AuditEvent, AuditLog, CredentialKind, Outcome, rfc3339};
use signet_runtime::clock::Clock;

use super::error::ApiError;
use crate::attest::AttestErrorKind;
use crate::attest::unix::PeerCredentials;
use crate::metrics::Metrics;

/// Distinct (reason, uid) windows kept; beyond it, refusals of new uids are
/// summarised together per reason, so memory stays bounded under a flood
/// of uids too.
const MAX_WINDOWS: usize = 1024;

/// Why the agent refused a caller, as `reason` in the event and the metric
/// label. A closed set: label values never come from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalDenial {
    /// The process exited or changed (PID reuse, exec) while attested.
    ProcessChanged,
    /// Contradictory evidence: a forged container identity, credentials
    /// that do not match the process.
    EvidenceMismatch,
    /// An attestor could not answer (runtime down, kubelet unreachable).
    AttestationUnavailable,
    /// The attestor is misconfigured or failed internally.
    AttestationFailed,
    /// No peer credentials on the connection.
    NoPeer,
    /// Attested, but no WorkloadIdentity applies (or one was withheld).
    NoIdentity,
}

impl LocalDenial {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProcessChanged => "process_changed",
            Self::EvidenceMismatch => "evidence_mismatch",
            Self::AttestationUnavailable => "attestation_unavailable",
            Self::AttestationFailed => "attestation_failed",
            Self::NoPeer => "no_peer",
            Self::NoIdentity => "no_identity",
        }
    }

    /// The denial an API error stands for, if it is a refusal of the
    /// caller (not, say, an issuer outage or a malformed request).
    pub fn of(error: &ApiError) -> Option<Self> {
        Some(match error {
            ApiError::ProcessChanged(_) => Self::ProcessChanged,
            ApiError::NoPeer(_) => Self::NoPeer,
            ApiError::NoIdentity(_) => Self::NoIdentity,
            ApiError::Attestation { kind, .. } => match kind {
                AttestErrorKind::Unauthenticated => Self::ProcessChanged,
                AttestErrorKind::PermissionDenied => Self::EvidenceMismatch,
                AttestErrorKind::Unavailable | AttestErrorKind::DeadlineExceeded => {
                    Self::AttestationUnavailable
                }
                AttestErrorKind::FailedPrecondition | AttestErrorKind::Internal => {
                    Self::AttestationFailed
                }
            },
            ApiError::MissingHeader
            | ApiError::InvalidArgument(_)
            | ApiError::Unavailable(_)
            | ApiError::InvalidToken(_) => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct WindowKey {
    reason: LocalDenial,
    /// `None` for the shared window of uids beyond [`MAX_WINDOWS`].
    uid: Option<u32>,
}

struct Window {
    opened: SystemTime,
    suppressed: u64,
    /// The latest suppressed refusal, written with the summary.
    last: Option<AuditEvent>,
}

/// The agent's audit log of local refusals, summarised per window.
pub struct LocalAudit {
    log: Option<AuditLog>,
    metrics: Arc<Metrics>,
    clock: Clock,
    window: Duration,
    windows: Mutex<HashMap<WindowKey, Window>>,
}

impl std::fmt::Debug for LocalAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAudit")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl LocalAudit {
    /// Writes to `log` (none: only the metric counts), summarising repeats
    /// over `window`.
    pub fn new(
        log: Option<AuditLog>,
        metrics: Arc<Metrics>,
        clock: Clock,
        window: Duration,
    ) -> Self {
        Self {
            log,
            metrics,
            clock,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Records that a call for `credential` was refused with `error`;
    /// `workload` are its attested attributes, if attestation got that far.
    /// Errors that are not refusals of the caller are ignored.
    pub fn refused(
        &self,
        peer: Option<PeerCredentials>,
        workload: Option<&Attributes>,
        credential: CredentialKind,
        error: &ApiError,
    ) {
        let Some(reason) = LocalDenial::of(error) else {
            return;
        };
        self.metrics.local_denial(reason.as_str());
        let now = self.clock.now();
        let mut event = AuditEvent::new(credential, Outcome::Denied, now);
        event.workload = match workload {
            Some(attributes) => attributes
                .testimony()
                .iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
            None => peer
                .map(|peer| {
                    [
                        (Field::UnixPid, peer.pid),
                        (Field::UnixUid, peer.uid),
                        (Field::UnixGid, peer.gid),
                    ]
                    .into_iter()
                    .map(|(field, value)| (field.as_str().to_owned(), value.to_string()))
                    .collect()
                })
                .unwrap_or_default(),
        };
        event.reason = Some(reason.as_str().to_owned());
        event.message = Some(error.to_string());
        event.bound_refused_input();
        let uid = peer.map(|peer| peer.uid);

        let (summaries, write_now) = {
            let Ok(mut windows) = self.windows.lock() else {
                return;
            };
            let summaries = Self::take_expired(&mut windows, now, self.window);
            let mut key = WindowKey { reason, uid };
            if !windows.contains_key(&key) && windows.len() >= MAX_WINDOWS {
                key.uid = None;
            }
            match windows.get_mut(&key) {
                Some(window) => {
                    window.suppressed += 1;
                    window.last = Some(event);
                    (summaries, None)
                }
                None => {
                    windows.insert(
                        key,
                        Window {
                            opened: now,
                            suppressed: 0,
                            last: None,
                        },
                    );
                    (summaries, Some(event))
                }
            }
        };
        for summary in summaries {
            self.write(summary);
        }
        if let Some(event) = write_now {
            self.write(event);
        }
    }

    /// Writes the summaries of windows that have ended. Called on every
    /// refusal and periodically ([`LocalAudit::run`]), so a burst that
    /// stops is still summarised.
    pub fn flush(&self) {
        let now = self.clock.now();
        let summaries = match self.windows.lock() {
            Ok(mut windows) => Self::take_expired(&mut windows, now, self.window),
            Err(_) => return,
        };
        for summary in summaries {
            self.write(summary);
        }
    }

    /// Flushes ended windows every `window` until the process exits.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush();
        }
    }

    fn take_expired(
        windows: &mut HashMap<WindowKey, Window>,
        now: SystemTime,
        length: Duration,
    ) -> Vec<AuditEvent> {
        let mut summaries = Vec::new();
        windows.retain(|_, window| {
            let ended = now
                .duration_since(window.opened)
                .is_ok_and(|open| open >= length);
            if !ended {
                return true;
            }
            if let Some(mut last) = window.last.take() {
                let count = window.suppressed;
                last.suppressed = Some(count);
                last.message = Some(format!(
                    "{count} more like this since {} (not written one by one); the last: {}",
                    rfc3339(window.opened),
                    last.message.as_deref().unwrap_or_default()
                ));
                last.bound_refused_input();
                summaries.push(last);
            }
            false
        });
        summaries
    }

    fn write(&self, event: AuditEvent) {
        if let Some(log) = &self.log {
            log.record(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> PeerCredentials {
        PeerCredentials {
            pid: 4242,
            uid,
            gid: uid,
        }
    }

    fn no_identity() -> ApiError {
        ApiError::NoIdentity("no WorkloadIdentity applies to the workload".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_loop_is_written_once_then_summarised() {
        let audit = LocalAudit::new(
            Some(AuditLog::in_memory()),
            Arc::new(Metrics::default()),
            Clock::new(),
            Duration::from_secs(60),
        );
        let mut workload = Attributes::new();
        workload
            .set(Field::UnixUid, "1000")
            .set(Field::UnixPid, "4242");
        for _ in 0..10_000 {
            audit.refused(
                Some(peer(1000)),
                Some(&workload),
                CredentialKind::X509Svid,
                &no_identity(),
            );
        }
        // Another uid and another reason have windows of their own.
        audit.refused(
            Some(peer(1001)),
            None,
            CredentialKind::JwtSvid,
            &ApiError::ProcessChanged("process 7 changed".into()),
        );
        // Not a refusal of the caller: not audited.
        audit.refused(
            Some(peer(1000)),
            None,
            CredentialKind::X509Svid,
            &ApiError::Unavailable("issuer down".into()),
        );
        let log = audit.log.as_ref().unwrap();
        let written = log.recorded();
        assert_eq!(written.len(), 2, "{written:?}");
        assert_eq!(written[0].reason.as_deref(), Some("no_identity"));
        assert_eq!(written[0].event, "svid.denied");
        assert_eq!(written[0].workload["workload.unix.uid"], "1000");
        assert_eq!(written[0].suppressed, None);
        assert_eq!(written[1].reason.as_deref(), Some("process_changed"));
        assert_eq!(written[1].workload["workload.unix.uid"], "1001");

        // Nothing more until the window ends; then one summary.
        tokio::time::advance(Duration::from_secs(59)).await;
        audit.flush();
        assert_eq!(log.recorded().len(), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        audit.flush();
        let written = log.recorded();
        assert_eq!(written.len(), 3, "{written:?}");
        assert_eq!(written[2].suppressed, Some(9_999));
        assert!(
            written[2]
                .message
                .as_deref()
                .unwrap()
                .starts_with("9999 more like this"),
            "{:?}",
            written[2].message
        );
        // The uid-1001 window had nothing suppressed: no summary for it.
        audit.flush();
        assert_eq!(log.recorded().len(), 3);

        // A new window starts with a full event again.
        audit.refused(
            Some(peer(1000)),
            Some(&workload),
            CredentialKind::X509Svid,
            &no_identity(),
        );
        assert_eq!(log.recorded().len(), 4);
        assert_eq!(log.recorded()[3].suppressed, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_uids_keeps_the_windows_bounded() {
        let audit = LocalAudit::new(
            Some(AuditLog::in_memory()),
            Arc::new(Metrics::default()),
            Clock::new(),
            Duration::from_secs(60),
        );
        for uid in 0..(MAX_WINDOWS as u32 * 4) {
            audit.refused(
                Some(peer(uid)),
                None,
                CredentialKind::X509Svid,
                &no_identity(),
            );
        }
        assert_eq!(audit.windows.lock().unwrap().len(), MAX_WINDOWS + 1);
        // One per uid up to the limit, one for the shared window.
        assert_eq!(
            audit.log.as_ref().unwrap().recorded().len(),
            MAX_WINDOWS + 1
        );
    }
}
