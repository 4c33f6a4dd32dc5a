//! Exponential backoff with jitter, one instance per thing that can fail on
//! its own (an identity, a connection), so one failure never delays another.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay (±20 % jitter), doubling up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base, 0.2)
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `base` scaled by a random factor in [1 - spread, 1 + spread].
pub fn jitter(base: Duration, spread: f64) -> Duration {
    let unit = random_unit();
    base.mul_f64(1.0 - spread + 2.0 * spread * unit)
}

/// A duration drawn uniformly from [0, `max`) (zero when `max` is zero),
/// to spread work that many agents or SVIDs would otherwise do at once.
pub fn uniform(max: Duration) -> Duration {
    let span = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    // Fixed-point scaling keeps the result strictly below `max`, which a
    // float product rounded to nanoseconds would not.
    let offset = (u128::from(random_u64()) * u128::from(span)) >> 64;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(0))
}

/// A uniformly distributed value in [0, 1).
fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Jitter needs no cryptographic quality, but ring's generator is already
/// at hand and never blocks; should it fail, the midpoint will do.
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return 1 << 63;
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_within_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let expected = [500u64, 1000, 2000, 4000, 4000];
        for base in expected {
            let delay = backoff.next_delay().as_millis() as u64;
            assert!(
                delay >= base * 8 / 10 && delay <= base * 12 / 10,
                "{delay} vs {base}"
            );
        }
        backoff.reset();
        let delay = backoff.next_delay().as_millis() as u64;
        assert!((400..=600).contains(&delay));
    }

    #[test]
    fn uniform_stays_below_its_bound_and_spreads() {
        assert_eq!(uniform(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_secs(30);
        let draws: Vec<Duration> = (0..64).map(|_| uniform(max)).collect();
        assert!(draws.iter().all(|d| *d < max), "{draws:?}");
        assert!(draws.iter().any(|d| *d != draws[0]), "{draws:?}");
        assert!(uniform(Duration::from_nanos(1)).is_zero());
    }
}
