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
//!
//! The caller's executable is pinned here too. What happens between the
//! caller's `connect()` and our `accept()` (a fork, then an exec of a
//! trusted binary by the process that connected) cannot be seen by any
//! agent that reads the kernel's peer credentials; accepting promptly keeps
//! that window short, and an exec after it is refused.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use signet_policy::Attributes;
use signet_runtime::h2_authority::FixedAuthority;
use tokio::net::{UnixListener, UnixStream};

use super::idle::{CallCounter, ConnectionCalls, IdleClose};
use super::limits::{ConnectionRefusal, ConnectionSlot, ConnectionTracker};
use crate::attest::procfs::{ProcError, ProcRoot, ProcessHandle};
use crate::attest::unix::PeerCredentials;

/// What the server knows about the peer of one connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub credentials: Option<PeerCredentials>,
    /// The caller's process, opened at accept time.
    pub process: Result<Arc<ProcessHandle>, Arc<ProcError>>,
    /// The connection's place in the per-uid count, given back when the
    /// connection and its last request are gone.
    pub slot: Option<Arc<ConnectionSlot>>,
    /// The calls open on the connection (it is closed once idle).
    pub calls: Arc<CallCounter>,
    /// The caller's attributes as last attested on this connection.
    pub attested: Arc<AttestationMemo>,
}

/// The attributes a connection's caller was attested with, and when: later
/// calls on the connection reuse them for a while, once the pinned process
/// is checked to be unchanged.
#[derive(Debug, Default)]
pub struct AttestationMemo {
    last: Mutex<Option<(Attributes, tokio::time::Instant)>>,
}

impl AttestationMemo {
    /// The attributes, if attested less than `max_age` ago.
    pub fn fresh(&self, max_age: Duration) -> Option<Attributes> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(_, at)| at.elapsed() < max_age)
            .map(|(attributes, _)| attributes.clone())
    }

    pub fn remember(&self, attributes: &Attributes) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((attributes.clone(), tokio::time::Instant::now()));
    }
}

impl ConnectionCalls for PeerInfo {
    fn calls(&self) -> &Arc<CallCounter> {
        &self.calls
    }
}

/// An accepted unix connection carrying its [`PeerInfo`] into every
/// request, closed once it holds no call for the idle timeout.
pub type PeerStream = IdleClose<FixedAuthority<PeerInfo>>;

fn peer_credentials(stream: &UnixStream) -> Option<PeerCredentials> {
    stream.peer_cred().ok().and_then(|cred| {
        Some(PeerCredentials {
            pid: u32::try_from(cred.pid()?).ok()?,
            uid: cred.uid(),
            gid: cred.gid(),
        })
    })
}

fn peer_info(stream: &UnixStream, proc_root: &ProcRoot) -> PeerInfo {
    let credentials = peer_credentials(stream);
    let process = match credentials {
        Some(peer) => open_pinned(stream, peer.pid, proc_root)
            .map(Arc::new)
            .map_err(Arc::new),
        None => Err(Arc::new(ProcError::Gone { pid: 0 })),
    };
    PeerInfo {
        credentials,
        process,
        slot: None,
        calls: CallCounter::new(),
        attested: Arc::default(),
    }
}

/// Accepted connections for `serve_with_incoming`, within `tracker`'s
/// bounds. The caller's credentials and process are taken as soon as a
/// connection is accepted; it reaches the server once it has sent its first
/// bytes, and is closed if it sends none within the handshake timeout.
/// Accept errors (e.g. out of descriptors) are logged and retried rather
/// than ending the server.
pub fn incoming(
    listener: UnixListener,
    proc_root: ProcRoot,
    tracker: Arc<ConnectionTracker>,
) -> impl Stream<Item = Result<PeerStream, io::Error>> {
    let (ready, connections) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = ready.closed() => return,
            };
            match accepted {
                Ok((stream, _)) => admit(stream, &proc_root, &tracker, &ready),
                Err(error) => {
                    tracing::warn!(%error, "accepting a Workload API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::UnboundedReceiverStream::new(connections).map(Ok)
}

fn admit(
    stream: UnixStream,
    proc_root: &ProcRoot,
    tracker: &Arc<ConnectionTracker>,
    ready: &tokio::sync::mpsc::UnboundedSender<PeerStream>,
) {
    // Counted before /proc is touched, so a flood costs one syscall each.
    let uid = peer_credentials(&stream).map(|peer| peer.uid);
    let Ok(slot) = tracker.admit(uid) else {
        return;
    };
    let mut info = peer_info(&stream, proc_root);
    info.slot = Some(Arc::new(slot));
    let timeout = tracker.limits().handshake_timeout;
    let idle_timeout = tracker.limits().idle_timeout;
    let tracker = tracker.clone();
    let ready = ready.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(timeout, first_bytes(&stream)).await {
            Ok(Ok(())) => {
                let calls = info.calls.clone();
                let stream = FixedAuthority::with_info(stream, info);
                let _ = ready.send(IdleClose::new(stream, calls, idle_timeout, tracker));
            }
            Ok(Err(_)) => {}
            Err(_) => tracker.refused(ConnectionRefusal::HandshakeTimeout),
        }
    });
}

/// Resolves once the peer has sent something (or closed its end).
/// `readable()` alone may wake spuriously, so the socket is peeked.
async fn first_bytes(stream: &UnixStream) -> io::Result<()> {
    loop {
        stream.readable().await?;
        let peeked = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut byte = [0u8; 1];
            rustix::net::recv(
                stream,
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            )
            .map_err(io::Error::from)
        });
        match peeked {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
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
    // As early as we can: a caller that execs another binary after this
    // is attested as what it connected as, and then refused as changed.
    let _ = handle.pinned_exe();
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
    #[tokio::test(start_paused = true)]
    async fn attested_attributes_are_reused_only_while_fresh() {
        let memo = AttestationMemo::default();
        let interval = Duration::from_secs(5);
        assert_eq!(memo.fresh(interval), None, "nothing attested yet");
        let mut attributes = Attributes::default();
        attributes.set(signet_policy::Field::UnixUid, "1000");
        memo.remember(&attributes);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(memo.fresh(interval), Some(attributes.clone()));
        assert_eq!(memo.fresh(Duration::ZERO), None, "zero: always attest");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(memo.fresh(interval), None, "stale: attest again");
    }

    use std::process::{Child, Command};

    use signet_policy::Field;

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

    /// Connect, then exec something else while keeping the connection: the
    /// program the agent would attest is no longer the one holding the
    /// socket's other end. The executable pinned at accept is attested; once
    /// the process has exec'd, attestation is refused.
    #[tokio::test]
    async fn a_caller_that_execs_after_connecting_is_refused() {
        use std::io::Write;
        use std::process::Stdio;

        use crate::attest::WorkloadAttestor;
        use crate::attest::unix::UnixAttestor;

        const CONNECT_THEN_EXEC: &str = "import os, socket, sys\n\
            s = socket.socket(socket.AF_UNIX)\n\
            s.connect(sys.argv[1])\n\
            os.set_inheritable(s.fileno(), True)\n\
            sys.stdin.readline()\n\
            os.execvp('sleep', ['sleep', '30'])\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", CONNECT_THEN_EXEC])
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let peer = peer_info(&stream, &ProcRoot::default());
        let credentials = peer.credentials.unwrap();
        let process = peer.process.unwrap();
        let attestor = WorkloadAttestor::from_parts(UnixAttestor::default(), None, None, None);

        let before = attestor.attest(credentials, process.clone()).await.unwrap();
        let attested = before.field(Field::UnixBinaryPath).unwrap().to_owned();
        assert!(attested.contains("python"), "{attested}");

        child.stdin.take().unwrap().write_all(b"exec\n").unwrap();
        let exe = format!("/proc/{}/exe", child.id());
        for _ in 0..500 {
            match std::fs::read_link(&exe) {
                Ok(now) if now.to_string_lossy() != attested => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        assert_ne!(
            std::fs::read_link(&exe).unwrap().to_string_lossy(),
            attested
        );
        let refused = attestor
            .attest(credentials, process)
            .await
            .expect_err("the exec'd process is not what was attested");
        assert!(refused.to_string().contains("executable"), "{refused}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
