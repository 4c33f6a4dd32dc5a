//! Runs the two binaries as a pod would.

// The binaries run in real time, so the timeouts here are real time too.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn pause_exits_zero_on_sigterm_and_sigint() {
    for signal in ["-TERM", "-INT"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_signet-pause"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn signet-pause: {e}"));
        // Still running after a while: it sleeps rather than exits.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "signet-pause exited early"
        );
        let killed = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .map(|s| s.success());
        assert!(matches!(killed, Ok(true)), "kill {signal} failed");
        let status = wait_exit(&mut child, Duration::from_secs(5));
        assert!(
            matches!(status, Some(s) if s.code() == Some(0)),
            "signet-pause did not exit 0 on {signal}: {status:?}"
        );
    }
}

#[test]
fn pause_prints_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_signet-pause"))
        .arg("-v")
        .output();
    let out = out.unwrap_or_else(|e| panic!("run signet-pause -v: {e}"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("signet-pause "));
}

#[test]
fn probe_resolves_and_connects() {
    let out = Command::new(env!("CARGO_BIN_EXE_signet-probe"))
        .args(["dns", "localhost"])
        .output()
        .unwrap_or_else(|e| panic!("run signet-probe: {e}"));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("localhost "));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    let server = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"hello from test\n");
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_signet-probe"))
        .args(["tcp", &addr.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("run signet-probe: {e}"));
    let _ = server.join();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from test"));
}

#[test]
fn probe_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_signet-probe")).output();
    let out = out.unwrap_or_else(|e| panic!("run signet-probe: {e}"));
    assert_eq!(out.status.code(), Some(2));
}
