//! Bounds on what one local user can hold open on the workload socket.
//!
//! The socket is reachable by every process on the node (0666), so without
//! bounds one user could exhaust the agent's descriptors and memory with
//! idle connections and starve everyone else. Connections are counted per
//! caller uid and in total when they are accepted, before any byte is read;
//! one over a bound is closed at once. A connection that has not sent
//! anything by the handshake timeout is closed too, so is one that holds
//! no call for the idle timeout ([`super::idle`]), and the HTTP/2 server
//! caps streams per connection.
//!
//! The per-uid bound is generous by default: containers on a node often
//! all run as uid 0, and each may hold a connection or two (Envoy SDS, the
//! application's Workload API stream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::metrics::Metrics;

/// The `limits:` section of the agent's configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Open connections one caller uid may hold (default 1024).
    pub connections_per_uid: usize,
    /// Open connections in all (default 4096).
    pub connections: usize,
    /// Concurrent streams (calls) on one connection (default 128).
    pub streams_per_connection: u32,
    /// A connection that has sent nothing by then is closed (default 10s).
    #[serde(with = "signet_runtime::duration")]
    pub handshake_timeout: Duration,
    /// A connection with no call open for this long is closed (default 5m).
    #[serde(with = "signet_runtime::duration")]
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            connections_per_uid: 1024,
            connections: 4096,
            streams_per_connection: 128,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl ConnectionLimits {
    /// Checks that every bound admits something.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections_per_uid == 0
            || self.connections == 0
            || self.streams_per_connection == 0
        {
            return Err("limits: connections_per_uid, connections and streams_per_connection must be more than 0".into());
        }
        if self.connections_per_uid > self.connections {
            return Err(format!(
                "limits: connections_per_uid ({}) is more than connections ({})",
                self.connections_per_uid, self.connections
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err("limits: handshake_timeout must be more than 0".into());
        }
        if self.idle_timeout.is_zero() {
            return Err("limits: idle_timeout must be more than 0".into());
        }
        Ok(())
    }
}

/// Why a connection was closed at accept, as the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRefusal {
    PerUid,
    Total,
    HandshakeTimeout,
    /// Closed after holding no call for the idle timeout.
    IdleTimeout,
}

impl ConnectionRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerUid => "per_uid_limit",
            Self::Total => "total_limit",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Open connections per uid; `None` for peers without credentials.
    by_uid: HashMap<Option<u32>, usize>,
    /// Uids already warned about since they last dropped below the bound,
    /// so a flood logs once rather than once per connection.
    warned: std::collections::HashSet<Option<u32>>,
}

/// Counts open connections; hands out a [`ConnectionSlot`] per admitted one.
pub struct ConnectionTracker {
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    counts: Mutex<Counts>,
}

impl std::fmt::Debug for ConnectionTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionTracker")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ConnectionTracker {
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            metrics,
            counts: Mutex::new(Counts::default()),
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Admits a connection from `uid`, or says which bound it would break.
    pub fn admit(self: &Arc<Self>, uid: Option<u32>) -> Result<ConnectionSlot, ConnectionRefusal> {
        let refusal = {
            let Ok(mut counts) = self.counts.lock() else {
                return Err(ConnectionRefusal::Total);
            };
            let held = counts.by_uid.get(&uid).copied().unwrap_or(0);
            let refusal = if counts.total >= self.limits.connections {
                Some(ConnectionRefusal::Total)
            } else if held >= self.limits.connections_per_uid {
                Some(ConnectionRefusal::PerUid)
            } else {
                None
            };
            match refusal {
                None => {
                    counts.total += 1;
                    *counts.by_uid.entry(uid).or_insert(0) += 1;
                    self.metrics.set_connections(counts.total);
                    return Ok(ConnectionSlot {
                        tracker: self.clone(),
                        uid,
                    });
                }
                Some(refusal) => (refusal, counts.warned.insert(uid), held),
            }
        };
        let (refusal, first, held) = refusal;
        self.refused(refusal);
        if first {
            tracing::warn!(
                uid = uid.map(i64::from).unwrap_or(-1),
                held,
                limit = match refusal {
                    ConnectionRefusal::PerUid => self.limits.connections_per_uid,
                    _ => self.limits.connections,
                },
                reason = refusal.as_str(),
                "closing new Workload API connections: too many open (logged once until it drops below the limit)"
            );
        }
        Err(refusal)
    }

    pub fn refused(&self, refusal: ConnectionRefusal) {
        self.metrics.connection_refused(refusal.as_str());
    }

    fn release(&self, uid: Option<u32>) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.by_uid.get_mut(&uid) {
            *held -= 1;
            if *held == 0 {
                counts.by_uid.remove(&uid);
            }
        }
        counts.warned.remove(&uid);
        self.metrics.set_connections(counts.total);
    }

    /// Open connections of `uid`, for tests.
    pub fn held_by(&self, uid: Option<u32>) -> usize {
        self.counts
            .lock()
            .map(|counts| counts.by_uid.get(&uid).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// One admitted connection; released when the connection and every request
/// on it are done (requests hold clones of the connection's peer info).
pub struct ConnectionSlot {
    tracker: Arc<ConnectionTracker>,
    uid: Option<u32>,
}

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlot")
            .field("uid", &self.uid)
            .finish()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.tracker.release(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(per_uid: usize, total: usize) -> Arc<ConnectionTracker> {
        ConnectionTracker::new(
            ConnectionLimits {
                connections_per_uid: per_uid,
                connections: total,
                ..ConnectionLimits::default()
            },
            Arc::new(Metrics::default()),
        )
    }

    #[test]
    fn one_uid_cannot_take_another_uids_share() {
        let tracker = tracker(2, 3);
        let a1 = tracker.admit(Some(1)).unwrap();
        let _a2 = tracker.admit(Some(1)).unwrap();
        assert_eq!(
            tracker.admit(Some(1)).unwrap_err(),
            ConnectionRefusal::PerUid
        );
        let _b = tracker.admit(Some(2)).unwrap();
        assert_eq!(
            tracker.admit(Some(3)).unwrap_err(),
            ConnectionRefusal::Total
        );
        drop(a1);
        assert_eq!(tracker.held_by(Some(1)), 1);
        let _c = tracker.admit(Some(3)).unwrap();
    }

    #[test]
    fn a_released_slot_is_reusable_and_counts_return_to_zero() {
        let tracker = tracker(1, 1);
        for _ in 0..10 {
            let slot = tracker.admit(None).unwrap();
            assert!(tracker.admit(None).is_err());
            drop(slot);
        }
        assert_eq!(tracker.held_by(None), 0);
    }

    #[test]
    fn bounds_that_admit_nothing_are_refused() {
        let zero = ConnectionLimits {
            connections_per_uid: 0,
            ..ConnectionLimits::default()
        };
        assert!(zero.validate().is_err());
        let inverted = ConnectionLimits {
            connections_per_uid: 10,
            connections: 5,
            ..ConnectionLimits::default()
        };
        assert!(
            inverted
                .validate()
                .unwrap_err()
                .contains("more than connections")
        );
        assert!(ConnectionLimits::default().validate().is_ok());
    }
}
