//! `signet-pause`: the pod sandbox process of the local e2e cluster.
//!
//! It runs as PID 1 of a pod's namespaces and does nothing but hold them:
//! it sleeps until SIGINT or SIGTERM (then exits 0) and reaps every zombie
//! that is re-parented to it (SIGCHLD). The signals are blocked and taken
//! with `sigwait`, so no handler runs and PID 1's "no default action" rule
//! does not swallow them (blocked signals are queued, never ignored).
//!
//! `signet-pause -v` prints the version and exits.
#![allow(unsafe_code)] // sigprocmask/sigwait/waitpid through libc; see SAFETY notes.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        let _ = writeln!(
            std::io::stdout(),
            "signet-pause {}",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    let set = match block(&[libc::SIGINT, libc::SIGTERM, libc::SIGCHLD]) {
        Ok(set) => set,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "signet-pause: sigprocmask: {e}");
            return ExitCode::FAILURE;
        }
    };
    if std::process::id() != 1 {
        let _ = writeln!(
            std::io::stderr(),
            "signet-pause: warning: not running as PID 1"
        );
    }
    loop {
        reap();
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset_t and `sig` a valid out pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        if rc != 0 {
            continue; // EINTR cannot happen for blocked signals; retry anyway.
        }
        match sig {
            libc::SIGINT | libc::SIGTERM => {
                let _ = writeln!(
                    std::io::stderr(),
                    "signet-pause: shutting down, got signal {sig}"
                );
                reap();
                return ExitCode::SUCCESS;
            }
            _ => {} // SIGCHLD: reaped at the top of the loop.
        }
    }
}

/// Blocks `signals` for this (single-threaded) process and returns the set.
fn block(signals: &[libc::c_int]) -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` points to a valid sigset_t for all calls below.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(set)
}

/// Reaps every exited child without blocking.
fn reap() {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid status pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return; // 0: children still running; -1/ECHILD: none left.
        }
    }
}
