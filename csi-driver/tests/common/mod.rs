//! Running the signet-csi binary in integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use signet_e2e::deadline::Deadline;

/// A running signet-csi process; stopped when dropped, however the test ends:
/// SIGTERM (a clean shutdown removes the socket), then SIGKILL after a grace
/// period.
pub struct Driver {
    child: Child,
    pub endpoint: PathBuf,
}

impl Driver {
    /// Starts signet-csi with `--endpoint unix://<endpoint>` plus `args`, with
    /// the node id from `SIGNET_NODE_NAME`, and waits for its socket.
    pub fn start(endpoint: &Path, args: &[&std::ffi::OsStr]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_signet-csi"))
            .arg("--endpoint")
            .arg(format!("unix://{}", endpoint.display()))
            .args(args)
            .env("SIGNET_NODE_NAME", "test-node")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut driver = Self {
            child,
            endpoint: endpoint.to_owned(),
        };
        let deadline = Deadline::after(Duration::from_secs(20));
        while !endpoint.exists() {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!("signet-csi exited before listening: {status}");
            }
            assert!(!deadline.passed(), "signet-csi did not create {endpoint:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// SIGTERM and wait; `None` if it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Deadline::after(Duration::from_secs(10));
        while !deadline.passed() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
