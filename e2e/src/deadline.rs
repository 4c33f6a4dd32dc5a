//! Wall-clock deadlines for waiting on real processes.
//!
//! The end-to-end tests wait on other processes (the Signet binaries, the
//! kubelet, containers) whose clocks a paused tokio clock cannot move, so
//! their timeouts are real time. This is the one place the harness reads the
//! monotonic clock (clippy.toml refuses it elsewhere).

use std::time::{Duration, Instant};

/// A point in real time after which a wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

impl Deadline {
    #[allow(clippy::disallowed_methods)]
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now() + timeout)
    }

    #[allow(clippy::disallowed_methods)]
    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }
}

/// Real time elapsed since a start (for reporting how long a wait took).
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The wall clock, for comparing against certificate validity written by
/// another process.
#[allow(clippy::disallowed_methods)]
pub fn wall_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}
