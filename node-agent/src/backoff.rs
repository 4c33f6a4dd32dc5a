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

/// A uniformly distributed value in [0, 1). Jitter needs no cryptographic
/// quality, but ring's generator is already at hand and never blocks.
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
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
}
