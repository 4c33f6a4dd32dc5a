//! Rate limit on `Join`, the one call a client may make without an agent
//! SVID. Each join verifies a token (a hash, or a TokenReview against the
//! API server) and writes an audit line, so an unthrottled peer could
//! guess tokens at line rate, load the API server and fill the audit log.
//!
//! A token bucket per peer IP: a burst for a rollout of agents behind one
//! address, then a steady trickle. A throttled join is refused with
//! `ResourceExhausted` before any token is looked at, counted, and logged
//! once per peer until it is admitted again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use signet_runtime::clock::Clock;

/// Joins a peer may make at once.
pub const JOIN_BURST: u32 = 20;
/// One more join is allowed every this long.
pub const JOIN_REFILL: Duration = Duration::from_secs(3);
/// Peers tracked; beyond it, buckets that have refilled are forgotten, and
/// if none has, new peers share one bucket.
const MAX_PEERS: usize = 4096;

struct Bucket {
    tokens: f64,
    updated: SystemTime,
    warned: bool,
}

/// Per-peer join budget.
pub struct JoinThrottle {
    clock: Clock,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

/// A join refused for its rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// Whether this is the first refusal since the peer was last admitted.
    pub first: bool,
}

impl JoinThrottle {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one join from `peer`'s budget (`None`: address unknown).
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<(), Throttled> {
        let now = self.clock.now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        let mut key = peer;
        if !buckets.contains_key(&key) && buckets.len() >= MAX_PEERS {
            buckets.retain(|_, bucket| refilled(bucket, now) < f64::from(JOIN_BURST));
            if buckets.len() >= MAX_PEERS {
                key = None;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: f64::from(JOIN_BURST),
            updated: now,
            warned: false,
        });
        bucket.tokens = refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            bucket.warned = false;
            return Ok(());
        }
        let first = !bucket.warned;
        bucket.warned = true;
        Err(Throttled {
            retry_after: JOIN_REFILL.mul_f64(1.0 - bucket.tokens),
            first,
        })
    }
}

fn refilled(bucket: &Bucket, now: SystemTime) -> f64 {
    let elapsed = now.duration_since(bucket.updated).unwrap_or_default();
    (bucket.tokens + elapsed.as_secs_f64() / JOIN_REFILL.as_secs_f64()).min(f64::from(JOIN_BURST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_join_per_refill_period() {
        let throttle = JoinThrottle::new(Clock::new());
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        for _ in 0..JOIN_BURST {
            throttle.admit(peer).unwrap();
        }
        let refused = throttle.admit(peer).unwrap_err();
        assert!(refused.first);
        assert!(!throttle.admit(peer).unwrap_err().first, "logged once");
        // Another peer has its own budget.
        throttle.admit(Some(IpAddr::from([10, 0, 0, 2]))).unwrap();
        tokio::time::advance(JOIN_REFILL).await;
        throttle.admit(peer).unwrap();
        assert!(throttle.admit(peer).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn many_peers_stay_bounded() {
        let throttle = JoinThrottle::new(Clock::new());
        for i in 0..(MAX_PEERS as u32 + 100) {
            let _ = throttle.admit(Some(IpAddr::from(i.to_be_bytes())));
        }
        assert!(throttle.buckets.lock().unwrap().len() <= MAX_PEERS + 1);
    }
}
