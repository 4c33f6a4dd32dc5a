//! Reading a caller's process information from procfs without being fooled
//! by PID reuse.
//!
//! A [`ProcessHandle`] holds an open descriptor of `/proc/<pid>`. Every file
//! is read relative to that descriptor, so once the original process exits
//! the reads fail instead of silently describing whichever process reuses
//! the PID. [`ProcessHandle::verify_unchanged`] repeats the identity checks
//! (start time, uid, gid) after attestation, as SPIRE's peer tracker does.
//!
//! The executable is pinned too ([`ProcessHandle::pinned_exe`]): opened once,
//! when the connection is accepted, and hashed through that descriptor, so
//! a process that connects and then execs a trusted binary is attested as
//! what it was, and `verify_unchanged` refuses it once its executable is no
//! longer the pinned one.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{Mode, OFlags};

/// procfs files read here are small; anything larger is not what we expect.
const MAX_PROC_FILE_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {pid} no longer exists")]
    Gone { pid: u32 },
    #[error("reading {file} of process {pid}: {source}")]
    Io {
        pid: u32,
        file: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected contents in {file} of process {pid}: {reason}")]
    Parse {
        pid: u32,
        file: &'static str,
        reason: &'static str,
    },
    #[error("process {pid} changed during attestation ({what}); the PID may have been reused")]
    Changed { pid: u32, what: &'static str },
    #[error(
        "process {pid} exited before its connection was accepted; the PID may now be another process's"
    )]
    ExitedBeforeAccept { pid: u32 },
}

impl ProcError {
    fn io(pid: u32, file: &'static str, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(code) if code == libc_esrch() || code == libc_enoent() => Self::Gone { pid },
            _ => Self::Io { pid, file, source },
        }
    }
}

fn libc_esrch() -> i32 {
    rustix::io::Errno::SRCH.raw_os_error()
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

/// The procfs mount to read, `/proc` unless `HOST_PROC` says otherwise (an
/// agent in a container sees the host's processes through a mounted
/// host procfs).
#[derive(Clone, Debug)]
pub struct ProcRoot {
    path: PathBuf,
}

impl Default for ProcRoot {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcRoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `/proc`, or the directory named by the `HOST_PROC` environment variable.
    pub fn from_env() -> Self {
        match std::env::var_os("HOST_PROC") {
            Some(path) if !path.is_empty() => Self::new(path),
            _ => Self::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the process and records its identity for later re-checks.
    pub fn open(&self, pid: u32) -> Result<ProcessHandle, ProcError> {
        if pid == 0 {
            // SO_PEERCRED reports 0 for a peer in another PID namespace.
            return Err(ProcError::Gone { pid });
        }
        let dir = rustix::fs::open(
            self.path.join(pid.to_string()),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ProcError::io(pid, "directory", e.into()))?;
        let mut handle = ProcessHandle {
            pid,
            dir,
            root: self.path.clone(),
            identity: ProcessIdentity::default(),
            exe: OnceLock::new(),
        };
        handle.identity = handle.read_identity()?;
        Ok(handle)
    }
}

/// Start time and credentials: what must not change while we attest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Clock ticks since boot at which the process started (stat field 22).
    pub start_time: u64,
    /// Real, effective, saved and filesystem UIDs.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem GIDs.
    pub gids: [u32; 4],
}

impl ProcessIdentity {
    pub fn effective_uid(&self) -> u32 {
        self.uids[1]
    }

    pub fn effective_gid(&self) -> u32 {
        self.gids[1]
    }
}

/// An open `/proc/<pid>` directory.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    dir: OwnedFd,
    /// The procfs mount it was opened from, for processes it is compared with.
    root: PathBuf,
    identity: ProcessIdentity,
    /// The executable, opened the first time it is asked for.
    exe: OnceLock<Result<PinnedExe, ExeUnavailable>>,
}

/// The executable a process ran when it was pinned: an open descriptor of
/// the very file (not its path, which may have been replaced since).
#[derive(Debug)]
pub struct PinnedExe {
    file: File,
    /// The `exe` link's target, as the process's mount namespace names it
    /// (`<path> (deleted)` for a binary removed or replaced on disk).
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl PinnedExe {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Why a process's executable could not be pinned. Worded without the PID,
/// since it becomes part of the workload's attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExeUnavailable {
    /// The process ended first.
    Gone,
    /// The kernel refused us (a process of another user, without
    /// `CAP_SYS_PTRACE`), or another I/O error.
    Unreadable(String),
}

/// A namespace a process can share with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Namespace {
    Pid,
    Mount,
}

impl Namespace {
    pub fn file(self) -> &'static str {
        match self {
            Self::Pid => "ns/pid",
            Self::Mount => "ns/mnt",
        }
    }
}

/// A namespace's identity: the device and inode of its `/proc/<pid>/ns/*`
/// link target, which are equal exactly when two processes share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceId {
    pub dev: u64,
    pub ino: u64,
}

impl ProcessHandle {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The identity recorded when the handle was opened.
    pub fn identity(&self) -> ProcessIdentity {
        self.identity
    }

    fn open_file(&self, name: &'static str) -> Result<File, ProcError> {
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ProcError::io(self.pid, name, e.into()))?;
        Ok(File::from(fd))
    }

    /// Reads a small procfs file relative to the process directory.
    pub fn read_file(&self, name: &'static str) -> Result<String, ProcError> {
        let file = self.open_file(name)?;
        let mut contents = String::new();
        file.take(MAX_PROC_FILE_BYTES)
            .read_to_string(&mut contents)
            .map_err(|e| ProcError::io(self.pid, name, e))?;
        Ok(contents)
    }

    /// Opens another process from the same procfs mount.
    pub fn open_other(&self, pid: u32) -> Result<ProcessHandle, ProcError> {
        ProcRoot::new(self.root.clone()).open(pid)
    }

    /// Which `namespace` the process is in.
    pub fn namespace(&self, namespace: Namespace) -> Result<NamespaceId, ProcError> {
        let stat = rustix::fs::statat(&self.dir, namespace.file(), rustix::fs::AtFlags::empty())
            .map_err(|e| ProcError::io(self.pid, namespace.file(), e.into()))?;
        Ok(NamespaceId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }

    /// The contents of `/proc/<pid>/cgroup`.
    pub fn cgroup(&self) -> Result<String, ProcError> {
        self.read_file("cgroup")
    }

    /// The executable, pinned on first use (the Workload API pins it when
    /// the connection is accepted). Opening `exe` works across mount
    /// namespaces because the kernel resolves the link to the mapped file.
    pub fn pinned_exe(&self) -> &Result<PinnedExe, ExeUnavailable> {
        self.exe.get_or_init(|| self.pin_exe())
    }

    fn pin_exe(&self) -> Result<PinnedExe, ExeUnavailable> {
        let unavailable = |error: ProcError| {
            match error {
            ProcError::Gone { .. } => ExeUnavailable::Gone,
            ProcError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                ExeUnavailable::Unreadable(
                    "the agent may not inspect the executable of this process (a process of another user needs CAP_SYS_PTRACE)".to_owned(),
                )
            }
            ProcError::Io { source, .. } => {
                ExeUnavailable::Unreadable(format!("opening the executable: {source}"))
            }
            other => ExeUnavailable::Unreadable(other.to_string()),
        }
        };
        let file = self.open_file("exe").map_err(unavailable)?;
        let target = rustix::fs::readlinkat(&self.dir, "exe", Vec::new())
            .map_err(|e| unavailable(ProcError::io(self.pid, "exe", e.into())))?;
        let metadata = file
            .metadata()
            .map_err(|e| unavailable(ProcError::io(self.pid, "exe", e)))?;
        Ok(PinnedExe {
            file,
            path: PathBuf::from(OsString::from_vec(target.into_bytes())),
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }

    fn read_identity(&self) -> Result<ProcessIdentity, ProcError> {
        let stat = self.read_file("stat")?;
        let start_time = parse_start_time(&stat).ok_or(ProcError::Parse {
            pid: self.pid,
            file: "stat",
            reason: "no start time",
        })?;
        let status = self.read_file("status")?;
        let uids = parse_id_line(&status, "Uid:").ok_or(ProcError::Parse {
            pid: self.pid,
            file: "status",
            reason: "no Uid line",
        })?;
        let gids = parse_id_line(&status, "Gid:").ok_or(ProcError::Parse {
            pid: self.pid,
            file: "status",
            reason: "no Gid line",
        })?;
        Ok(ProcessIdentity {
            start_time,
            uids,
            gids,
        })
    }

    /// Fails unless the process is still alive with the same start time and
    /// credentials as when the handle was opened.
    pub fn verify_unchanged(&self) -> Result<(), ProcError> {
        let now = self.read_identity()?;
        if now.start_time != self.identity.start_time {
            return Err(ProcError::Changed {
                pid: self.pid,
                what: "start time",
            });
        }
        if now.uids != self.identity.uids {
            return Err(ProcError::Changed {
                pid: self.pid,
                what: "uid",
            });
        }
        if now.gids != self.identity.gids {
            return Err(ProcError::Changed {
                pid: self.pid,
                what: "gid",
            });
        }
        if let Some(Ok(pinned)) = self.exe.get() {
            // Same start time, other executable: it called exec since it
            // was pinned, and whoever holds the connection may not be the
            // program that was attested.
            let now = rustix::fs::statat(&self.dir, "exe", rustix::fs::AtFlags::empty())
                .map_err(|e| ProcError::io(self.pid, "exe", e.into()))?;
            if now.st_dev != pinned.dev || now.st_ino != pinned.ino {
                return Err(ProcError::Changed {
                    pid: self.pid,
                    what: "executable",
                });
            }
        }
        Ok(())
    }
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name; start time is field 22.
    after_comm
        .split_ascii_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// Parses a `Uid:`/`Gid:` line of `/proc/<pid>/status`.
pub fn parse_id_line(status: &str, prefix: &str) -> Option<[u32; 4]> {
    let line = status.lines().find(|line| line.starts_with(prefix))?;
    let mut ids = [0u32; 4];
    let mut values = line[prefix.len()..].split_ascii_whitespace();
    for slot in &mut ids {
        *slot = values.next()?.parse().ok()?;
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_hostile_command_names() {
        let stat = "1234 (evil) 1 2 3 (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("1 (init) S"), None);
        assert_eq!(parse_start_time("no parens"), None);
    }

    #[test]
    fn id_lines_parse() {
        let status = "Name:\tx\nUid:\t1000\t1001\t1002\t1003\nGid:\t10\t11\t12\t13\n";
        assert_eq!(
            parse_id_line(status, "Uid:"),
            Some([1000, 1001, 1002, 1003])
        );
        assert_eq!(parse_id_line(status, "Gid:"), Some([10, 11, 12, 13]));
        assert_eq!(parse_id_line("Uid:\t1\t2\n", "Uid:"), None);
    }

    #[test]
    fn opens_own_process() {
        let handle = ProcRoot::default().open(std::process::id()).unwrap();
        assert_eq!(
            handle.identity().effective_uid(),
            rustix::process::geteuid().as_raw()
        );
        assert!(handle.pinned_exe().as_ref().unwrap().path().is_absolute());
        handle.verify_unchanged().unwrap();
        assert!(!handle.cgroup().unwrap().is_empty());
    }

    #[test]
    fn exited_process_is_gone_for_an_open_handle() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let handle = ProcRoot::default().open(child.id()).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        // The reaped process's directory is gone even though we hold its fd,
        // so a reused PID can never be read through this handle.
        assert!(matches!(
            handle.verify_unchanged(),
            Err(ProcError::Gone { .. })
        ));
        assert!(matches!(handle.cgroup(), Err(ProcError::Gone { .. })));
    }

    #[test]
    fn pid_zero_is_refused() {
        assert!(matches!(
            ProcRoot::default().open(0),
            Err(ProcError::Gone { pid: 0 })
        ));
    }

    #[test]
    fn host_proc_root_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let proc_dir = dir.path().join("42");
        std::fs::create_dir(&proc_dir).unwrap();
        std::fs::write(
            proc_dir.join("stat"),
            "42 (fake) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5555 0 0",
        )
        .unwrap();
        std::fs::write(
            proc_dir.join("status"),
            "Uid:\t7\t7\t7\t7\nGid:\t8\t8\t8\t8\n",
        )
        .unwrap();
        std::fs::write(proc_dir.join("cgroup"), "0::/docker/x\n").unwrap();
        let handle = ProcRoot::new(dir.path()).open(42).unwrap();
        assert_eq!(handle.identity().start_time, 5555);
        assert_eq!(handle.identity().effective_gid(), 8);
        assert_eq!(handle.cgroup().unwrap(), "0::/docker/x\n");
        std::fs::write(
            proc_dir.join("stat"),
            "42 (fake) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 6666 0 0",
        )
        .unwrap();
        assert!(matches!(
            handle.verify_unchanged(),
            Err(ProcError::Changed {
                what: "start time",
                ..
            })
        ));
    }
}
