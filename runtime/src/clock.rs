//! One time source for scheduling and for "now".
//!
//! Wall-clock time is derived from tokio's monotonic clock and a base taken
//! at start, so tests that pause tokio time (`start_paused`) control both:
//! SVID expiry (a `SystemTime`) and timers (a tokio `Instant`) move
//! together, and no test needs to sleep.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_instant: Instant,
    base_system: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    // The one place the system clock is read (clippy.toml disallows it
    // everywhere else).
    #[allow(clippy::disallowed_methods)]
    pub fn new() -> Self {
        Self {
            base_instant: Instant::now(),
            base_system: SystemTime::now(),
        }
    }

    /// A clock whose "now" is `base_system` at the current instant (tests).
    pub fn starting_at(base_system: SystemTime) -> Self {
        Self {
            base_instant: Instant::now(),
            base_system,
        }
    }

    pub fn now(&self) -> SystemTime {
        self.base_system + self.base_instant.elapsed()
    }

    /// The instant at which the wall clock will read `time` (now, if past).
    pub fn instant_at(&self, time: SystemTime) -> Instant {
        let now = Instant::now();
        match time.duration_since(self.now()) {
            Ok(ahead) => now + ahead,
            Err(_) => now,
        }
    }

    /// How long until `time`, zero if it has passed.
    pub fn until(&self, time: SystemTime) -> Duration {
        time.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn wall_clock_follows_paused_time() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Clock::starting_at(start);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        let target = start + Duration::from_secs(100);
        assert_eq!(clock.until(target), Duration::from_secs(10));
        assert_eq!(
            clock.instant_at(target) - Instant::now(),
            Duration::from_secs(10)
        );
        assert_eq!(clock.instant_at(start), Instant::now());
    }
}
