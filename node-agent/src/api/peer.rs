//! Accepting Workload API connections with the caller's credentials.
//!
//! Peer credentials (`SO_PEERCRED`) are read once per connection, and the
//! caller's `/proc/<pid>` is opened right then: attestation later reads
//! through that handle, so a process that exits and whose PID is reused
//! cannot be mistaken for the one that connected.
//!
//! That leaves the gap between `connect()` and our `accept()`: the caller
//! may exit and its PID go to another process before we open `/proc/<pid>`.
//! Where the kernel has `SO_PEERPIDFD` (Linux 6.5+) the socket gives a
//! pidfd for the very process that connected; after opening `/proc/<pid>`
//! we check through it that this process still holds the PID, so the
//! directory we opened is the caller's. Older kernels keep the check above.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use signet_runtime::h2_authority::FixedAuthority;
use tokio::net::{UnixListener, UnixStream};

use crate::attest::procfs::{ProcError, ProcRoot, ProcessHandle};
use crate::attest::unix::PeerCredentials;

/// What the server knows about the peer of one connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub credentials: Option<PeerCredentials>,
    /// The caller's process, opened at accept time.
    pub process: Result<Arc<ProcessHandle>, Arc<ProcError>>,
}

/// An accepted unix connection carrying its [`PeerInfo`] into every request.
pub type PeerStream = FixedAuthority<PeerInfo>;

/// Reads the caller's credentials and opens its process, once, at accept time.
pub fn accept_peer(stream: UnixStream, proc_root: &ProcRoot) -> PeerStream {
    let info = peer_info(&stream, proc_root);
    FixedAuthority::with_info(stream, info)
}

fn peer_info(stream: &UnixStream, proc_root: &ProcRoot) -> PeerInfo {
    let credentials = stream.peer_cred().ok().and_then(|cred| {
        Some(PeerCredentials {
            pid: u32::try_from(cred.pid()?).ok()?,
            uid: cred.uid(),
            gid: cred.gid(),
        })
    });
    let process = match credentials {
        Some(peer) => open_pinned(stream, peer.pid, proc_root)
            .map(Arc::new)
            .map_err(Arc::new),
        None => Err(Arc::new(ProcError::Gone { pid: 0 })),
    };
    PeerInfo {
        credentials,
        process,
    }
}

/// Accepted connections for `serve_with_incoming`. Accept errors (e.g. out
/// of descriptors) are logged and retried rather than ending the server.
pub fn incoming(
    listener: UnixListener,
    proc_root: ProcRoot,
) -> impl Stream<Item = Result<PeerStream, io::Error>> {
    futures::stream::unfold((listener, proc_root), |(listener, proc_root)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let accepted = accept_peer(stream, &proc_root);
                    return Some((Ok(accepted), (listener, proc_root)));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a Workload API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// Opens `/proc/<pid>` of the process that connected `stream`, refusing it
/// when the pidfd shows that process gave up the PID before we opened it.
fn open_pinned(
    stream: &UnixStream,
    pid: u32,
    proc_root: &ProcRoot,
) -> Result<ProcessHandle, ProcError> {
    let pidfd = peer_pidfd(stream);
    let handle = proc_root.open(pid)?;
    match pidfd {
        PeerPidfd::Pinned(pidfd) => match pidfd_pid(&pidfd) {
            Some(holder) if holder == i64::from(pid) => Ok(handle),
            _ => Err(ProcError::ExitedBeforeAccept { pid }),
        },
        PeerPidfd::Exited => Err(ProcError::ExitedBeforeAccept { pid }),
        PeerPidfd::Unsupported => Ok(handle),
    }
}

enum PeerPidfd {
    Pinned(OwnedFd),
    /// The kernel could not give a pidfd: no process is left behind the
    /// connection (or none could be pinned).
    Exited,
    /// No `SO_PEERPIDFD` (kernel before 6.5, or not a unix socket).
    Unsupported,
}

/// `SO_PEERPIDFD` (x86_64 and most architectures; not in every libc).
const SO_PEERPIDFD: libc::c_int = 77;

fn peer_pidfd(stream: &UnixStream) -> PeerPidfd {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `stream` owns an open socket descriptor for the duration of
    // the call; `fd` and `len` are valid for writes of the sizes given, and
    // the kernel writes at most `len` bytes.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    if result == 0 && fd >= 0 {
        // SAFETY: the kernel just created `fd` for us; nothing else owns it.
        #[allow(unsafe_code)]
        return PeerPidfd::Pinned(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // Only a kernel without the option falls back; any other failure
    // (ESRCH or EINVAL for a reaped caller, by kernel version) refuses.
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOPROTOOPT) => PeerPidfd::Unsupported,
        _ => PeerPidfd::Exited,
    }
}

/// The PID a pidfd's process holds in our PID namespace, from
/// `/proc/self/fdinfo`: -1 once it has exited and been reaped (its PID
/// free for reuse), `None` when the kernel does not say.
fn pidfd_pid(pidfd: &OwnedFd) -> Option<i64> {
    let fdinfo =
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    const CONNECT: &str = "import socket, sys, time\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        time.sleep(float(sys.argv[2]))\n";

    /// A real process (python3) that connects to `socket` and stays `secs`.
    fn caller(socket: &std::path::Path, secs: &str) -> Child {
        Command::new("python3")
            .args(["-c", CONNECT])
            .arg(socket)
            .arg(secs)
            .spawn()
            .unwrap()
    }

    /// Another process given exactly `pid`, through `ns_last_pid` (root).
    /// Other threads may take the PID first, so it tries a few times.
    fn squat(pid: u32) -> Option<Child> {
        for _ in 0..200 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let mut child = Command::new("sleep").arg("30").spawn().unwrap();
            if child.id() == pid {
                return Some(child);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        None
    }

    /// The attack the accept-time check alone misses: the caller connects
    /// and exits before the agent accepts, and another process is given its
    /// PID. Needs root (`ns_last_pid`) and Linux 6.5+ (`SO_PEERPIDFD`);
    /// fails rather than skips without root, like the other root tests.
    #[tokio::test]
    async fn a_pid_reused_before_accept_is_not_taken_for_the_caller() {
        if rustix::process::geteuid().as_raw() != 0 {
            assert!(
                std::env::var("SIGNET_REQUIRE_ROOT").as_deref() != Ok("1"),
                "this test needs root (SIGNET_REQUIRE_ROOT=1)"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let proc_root = ProcRoot::default();

        // A caller that is still there is opened, by its own PID.
        let mut live = caller(&path, "30");
        let (stream, _) = listener.accept().await.unwrap();
        let peer = peer_info(&stream, &proc_root);
        assert_eq!(peer.credentials.unwrap().pid, live.id());
        assert_eq!(peer.process.as_ref().unwrap().pid(), live.id());
        live.kill().unwrap();
        live.wait().unwrap();

        // The caller connects and is gone (reaped) before the accept.
        let mut gone = caller(&path, "0");
        let victim = gone.id();
        assert!(gone.wait().unwrap().success());
        let mut squatter = squat(victim).expect("a process given the caller's PID");
        // The attack is real: /proc/<pid> now describes the squatter.
        assert!(proc_root.open(victim).is_ok());

        let (stream, _) = listener.accept().await.unwrap();
        let peer = peer_info(&stream, &proc_root);
        assert_eq!(peer.credentials.unwrap().pid, victim);
        let refused = peer.process.expect_err("the squatter is not the caller");
        assert!(
            matches!(*refused, ProcError::ExitedBeforeAccept { pid } if pid == victim),
            "{refused}"
        );
        squatter.kill().unwrap();
        squatter.wait().unwrap();
    }
}
