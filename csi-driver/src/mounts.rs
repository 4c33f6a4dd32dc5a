//! Mounting onto validated targets and undoing it: in socket mode a
//! read-only bind of the agent's socket directory, in files mode a small
//! private tmpfs the driver fills with SVID files.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::mountinfo;

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error(
        "the agent socket directory {path:?} is not available ({source}); \
         is signet-agent running on this node, and does --socket-dir name its socket directory?"
    )]
    SocketDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the socket directory {dir:?} holds {name:?}, a socket other users cannot connect to \
         (such as the agent's admin socket); pods must not see it: give the Workload API \
         socket a directory of its own and point --socket-dir at it"
    )]
    PrivateSocket { dir: PathBuf, name: String },
    #[error(
        "target path {path:?} already has another filesystem mounted on it; \
         unmount it (umount {path:?}) and retry"
    )]
    Occupied { path: PathBuf },
    #[error("target path {path:?} changed while it was being mounted (now {now:?}); retry")]
    Raced { path: PathBuf, now: PathBuf },
    #[error("target path {path:?} is not empty after unmounting; refusing to remove it")]
    NotEmpty { path: PathBuf },
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn errno<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> MountError + 'a {
    move |errno| MountError::Io {
        op,
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// What a successful publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// A new bind mount was made.
    Mounted,
    /// The socket directory was already mounted there (kubelet retry or
    /// restart); nothing was stacked.
    AlreadyMounted,
}

/// The source name of files-mode tmpfs mounts: what tells them apart in
/// mountinfo from anything else mounted at a target.
pub const TMPFS_SOURCE: &str = "signet-csi";

/// Files-mode tmpfs options: room for a few SVIDs, bundles and JWTs (a few
/// KiB each) twice over while a new set replaces the old, and no more, so a
/// volume cannot be used to eat the node's memory.
const TMPFS_OPTIONS: &std::ffi::CStr = c"size=1m,nr_inodes=1024,mode=0755";

/// Flags of the read-only remount: read-only and nothing executable,
/// no devices, no set-uid.
fn read_only_flags() -> MountFlags {
    MountFlags::BIND
        | MountFlags::RDONLY
        | MountFlags::NOSUID
        | MountFlags::NODEV
        | MountFlags::NOEXEC
}

fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Refuses a socket directory that holds a socket not meant for everyone
/// (the agent's root-only admin socket, mode 0600): the bind mount would
/// show it to every pod, and a pod running as root could connect to it.
pub fn check_socket_dir_contents(socket_dir: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::FileTypeExt;
    let entries = std::fs::read_dir(socket_dir).map_err(|source| MountError::SocketDir {
        path: socket_dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(io("listing", socket_dir))?;
        let Ok(meta) = entry.metadata() else {
            continue; // replaced while listing
        };
        if meta.file_type().is_socket() && meta.mode() & 0o002 == 0 {
            return Err(MountError::PrivateSocket {
                dir: socket_dir.to_owned(),
                name: entry.file_name().to_string_lossy().into_owned(),
            });
        }
    }
    Ok(())
}

fn socket_dir_metadata(socket_dir: &Path) -> Result<std::fs::Metadata, MountError> {
    let meta = std::fs::metadata(socket_dir).map_err(|source| MountError::SocketDir {
        path: socket_dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(MountError::SocketDir {
            path: socket_dir.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        });
    }
    Ok(meta)
}

/// What is mounted at a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MountView {
    /// The mount is read-only.
    pub read_only: bool,
    /// The mount shows the socket directory (same device and inode); false
    /// if something else is mounted there, or the socket directory was
    /// deleted (and perhaps recreated) since.
    pub is_socket_dir: bool,
}

/// The topmost mount at `target`, if `target` is a mount point.
pub fn inspect(socket_dir: &Path, target: &Path) -> Result<Option<MountView>, MountError> {
    let entries = mountinfo::read().map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
    let Some(entry) = mountinfo::mount_at(&entries, target) else {
        return Ok(None);
    };
    let mounted = std::fs::metadata(target).map_err(io("inspecting", target))?;
    let is_socket_dir = std::fs::metadata(socket_dir)
        .map(|source| same_inode(&source, &mounted))
        .unwrap_or(false);
    Ok(Some(MountView {
        read_only: entry.has_option("ro"),
        is_socket_dir,
    }))
}

/// Bind-mounts `socket_dir` read-only (and nosuid, nodev, noexec) on
/// `target`, creating the target directory. `target` must have been
/// validated (see [`crate::paths::resolve_target`]); the mount goes through
/// an `O_PATH|O_NOFOLLOW` descriptor checked to still name `target`, so a
/// symlink swapped in after validation cannot redirect it.
pub fn publish_socket(socket_dir: &Path, target: &Path) -> Result<Published, MountError> {
    socket_dir_metadata(socket_dir)?;
    check_socket_dir_contents(socket_dir)?;
    match std::fs::DirBuilder::new().mode(0o755).create(target) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(io("creating the target directory", target)(source)),
    }

    match inspect(socket_dir, target)? {
        Some(MountView {
            is_socket_dir: false,
            ..
        }) => {
            return Err(MountError::Occupied {
                path: target.to_owned(),
            });
        }
        Some(MountView {
            read_only: true, ..
        }) => return Ok(Published::AlreadyMounted),
        Some(_) => {
            // Bound earlier but the read-only remount did not happen (crash
            // in between): finish the job instead of stacking another mount.
            rustix::mount::mount_remount(target, read_only_flags(), "")
                .map_err(errno("remounting read-only", target))?;
            return Ok(Published::AlreadyMounted);
        }
        None => {}
    }

    let (_fd, fd_path) = pinned_target(target)?;
    rustix::mount::mount_bind(socket_dir, &fd_path).map_err(errno("bind-mounting onto", target))?;
    if let Err(error) = rustix::mount::mount_remount(target, read_only_flags(), "") {
        // Never leave a writable view of the agent's directory behind.
        let _ = rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
        return Err(errno("remounting read-only", target)(error));
    }
    Ok(Published::Mounted)
}

/// Opens `target` as an `O_PATH|O_NOFOLLOW` descriptor and checks that it
/// still names `target` (no symlink swapped in since validation); returns
/// it with its `/proc/self/fd` path to mount onto.
fn pinned_target(target: &Path) -> Result<(rustix::fd::OwnedFd, PathBuf), MountError> {
    let fd = rustix::fs::open(
        target,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("opening the target directory", target))?;
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let now = std::fs::read_link(&fd_path).map_err(io("resolving", &fd_path))?;
    if now != target {
        return Err(MountError::Raced {
            path: target.to_owned(),
            now,
        });
    }
    Ok((fd, fd_path))
}

/// Whether the topmost mount at `target` is a files-mode tmpfs.
pub fn is_files_mount(target: &Path) -> Result<bool, MountError> {
    let entries = mountinfo::read().map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
    Ok(mountinfo::mount_at(&entries, target)
        .is_some_and(|entry| entry.fs_type == "tmpfs" && entry.source == TMPFS_SOURCE))
}

/// Mounts a files-mode tmpfs (nodev, nosuid, noexec, 1 MiB) on `target`,
/// creating the target directory; a validated target as for
/// [`publish_socket`]. A files-mode tmpfs already there is kept (kubelet
/// retry, driver restart: its files stay); anything else is refused.
pub fn publish_tmpfs(target: &Path) -> Result<Published, MountError> {
    match std::fs::DirBuilder::new().mode(0o755).create(target) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(io("creating the target directory", target)(source)),
    }
    let entries = mountinfo::read().map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
    match mountinfo::mount_at(&entries, target) {
        Some(entry) if entry.fs_type == "tmpfs" && entry.source == TMPFS_SOURCE => {
            return Ok(Published::AlreadyMounted);
        }
        Some(_) => {
            return Err(MountError::Occupied {
                path: target.to_owned(),
            });
        }
        None => {}
    }
    let (_fd, fd_path) = pinned_target(target)?;
    rustix::mount::mount(
        TMPFS_SOURCE,
        &fd_path,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
        TMPFS_OPTIONS,
    )
    .map_err(errno("mounting a tmpfs onto", target))?;
    Ok(Published::Mounted)
}

/// Unmounts everything mounted at `target` and removes the directory.
/// A missing or already-unmounted target is fine.
pub fn unpublish(target: &Path) -> Result<(), MountError> {
    // Bounded: each round removes one stacked mount.
    for _ in 0..16 {
        let entries =
            mountinfo::read().map_err(io("reading", Path::new("/proc/self/mountinfo")))?;
        if mountinfo::mount_at(&entries, target).is_none() {
            break;
        }
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => {
                rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .map_err(errno("unmounting (detached)", target))?;
            }
            // Not a mount point (any more): done.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => break,
            Err(error) => return Err(errno("unmounting", target)(error)),
        }
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            Err(MountError::NotEmpty {
                path: target.to_owned(),
            })
        }
        Err(source) => Err(io("removing the target directory", target)(source)),
    }
}
