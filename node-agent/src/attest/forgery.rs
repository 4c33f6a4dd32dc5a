//! Refusing container and pod identities a caller made up.
//!
//! The cgroup parser believes the container ID and pod UID it finds in the
//! caller's cgroup path, and a path is something a user with a delegated
//! cgroup subtree (`systemd-run --user --scope`, a writable cgroupfs) can
//! build: `.../docker/<victim id>`, `...pod<victim uid>/<victim id>`. Two
//! checks stop that:
//!
//! - [`check_cgroup_paths`]: a container's cgroup lies where the runtime
//!   puts it, never under a user slice or user service, and every directory
//!   from the hierarchy's root down to it is owned by root. Directories the
//!   agent cannot see (its own cgroup namespace, a path relative to it) are
//!   not checked: the caller cannot hide a directory from the agent, only
//!   the deployment can, and the namespace check below still applies.
//! - [`check_shares_namespaces`]: where the engine reports the container's
//!   first process (Docker and Podman do), the caller must share its PID
//!   and mount namespaces, which a process outside the container cannot.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::procfs::{Namespace, ProcError, ProcessHandle};

#[derive(Debug, thiserror::Error)]
pub enum ForgeryError {
    #[error(
        "cgroup {path} lies under a user slice or service, not where a container runtime puts containers"
    )]
    UserSlice { path: String },
    #[error("cgroup directory {dir} is owned by uid {uid}, not root: the path may be self-made")]
    NotRootOwned { dir: PathBuf, uid: u32 },
    #[error(
        "process {pid} is not in the {namespace} namespace of container {container}'s first process {init_pid}"
    )]
    ForeignNamespace {
        pid: u32,
        container: String,
        init_pid: u32,
        namespace: &'static str,
    },
    #[error("reading the owner of cgroup directory {dir}: {source}")]
    Unreadable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the engine reports no running process for container {container}; refusing to attribute it"
    )]
    NotRunning { container: String },
    #[error("comparing the namespaces of container {container}: {source}")]
    Compare {
        container: String,
        #[source]
        source: ProcError,
    },
}

/// Whether a cgroup path segment is systemd's per-user tree:
/// `user.slice`, `user-1000.slice`, `user@1000.service`.
fn is_user_segment(segment: &str) -> bool {
    segment == "user.slice"
        || (segment.starts_with("user-") && segment.ends_with(".slice"))
        || (segment.starts_with("user@") && segment.ends_with(".service"))
}

/// The directories under `cgroup_root` where a `/proc/<pid>/cgroup` line's
/// hierarchy may be mounted: `unified` or the root itself for v2 (`0::`),
/// the named or controller directories for v1.
fn hierarchy_dirs(cgroup_root: &Path, controllers: &str) -> Vec<PathBuf> {
    if controllers.is_empty() {
        return vec![cgroup_root.join("unified"), cgroup_root.to_path_buf()];
    }
    let mut dirs = vec![cgroup_root.join(controllers.trim_start_matches("name="))];
    if controllers.contains(',') {
        dirs.extend(controllers.split(',').map(|c| cgroup_root.join(c)));
    }
    dirs
}

/// Checks the cgroup paths of a caller the parser placed in a container
/// (`cgroups` is its `/proc/<pid>/cgroup`; `cgroup_root` where the agent
/// sees the hierarchies, normally `/sys/fs/cgroup`).
pub fn check_cgroup_paths(cgroups: &str, cgroup_root: &Path) -> Result<(), ForgeryError> {
    for line in cgroups.lines() {
        let mut fields = line.trim_end().splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.split('/').any(is_user_segment) {
            return Err(ForgeryError::UserSlice {
                path: path.to_owned(),
            });
        }
        // Paths relative to a cgroup namespace cannot be mapped to a
        // directory the agent sees.
        let relative = Path::new(path);
        if !relative.is_absolute() || relative.components().any(|c| c == Component::ParentDir) {
            continue;
        }
        for hierarchy in hierarchy_dirs(cgroup_root, controllers) {
            let leaf = hierarchy.join(relative.strip_prefix("/").unwrap_or(relative));
            if !leaf.is_dir() {
                continue;
            }
            // From the container's directory up to the hierarchy's root.
            let mut dir = leaf.as_path();
            loop {
                let uid = std::fs::metadata(dir)
                    .map_err(|source| ForgeryError::Unreadable {
                        dir: dir.to_path_buf(),
                        source,
                    })?
                    .uid();
                if uid != 0 {
                    return Err(ForgeryError::NotRootOwned {
                        dir: dir.to_path_buf(),
                        uid,
                    });
                }
                if dir == hierarchy {
                    break;
                }
                match dir.parent() {
                    Some(parent) => dir = parent,
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// Fails unless `process` shares the PID and mount namespaces of the
/// container's first process `init_pid` (from the engine).
pub fn check_shares_namespaces(
    process: &ProcessHandle,
    container: &str,
    init_pid: Option<u32>,
) -> Result<(), ForgeryError> {
    let Some(init_pid) = init_pid else {
        return Err(ForgeryError::NotRunning {
            container: container.to_owned(),
        });
    };
    let compare = |source| ForgeryError::Compare {
        container: container.to_owned(),
        source,
    };
    let init = process.open_other(init_pid).map_err(compare)?;
    for (namespace, name) in [(Namespace::Pid, "PID"), (Namespace::Mount, "mount")] {
        if process.namespace(namespace).map_err(compare)?
            != init.namespace(namespace).map_err(compare)?
        {
            return Err(ForgeryError::ForeignNamespace {
                pid: process.pid(),
                container: container.to_owned(),
                init_pid,
                namespace: name,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::procfs::ProcRoot;

    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn user_slices_are_never_a_containers_place() {
        for path in [
            format!(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{CID}.scope"
            ),
            format!("0::/user.slice/user-1000.slice/session-2.scope/kubepods/pod1/{CID}"),
            format!("1:name=systemd:/user.slice/user-1000.slice/libpod-{CID}.scope"),
        ] {
            let error = check_cgroup_paths(&path, Path::new("/nonexistent")).unwrap_err();
            assert!(
                matches!(error, ForgeryError::UserSlice { .. }),
                "{path}: {error}"
            );
        }
        // The runtimes' own places pass (nothing to see under the root).
        for path in [
            format!("0::/system.slice/docker-{CID}.scope"),
            format!("4:memory:/kubepods/burstable/pod1/{CID}"),
            format!("0::/../../pod1/{CID}"),
        ] {
            check_cgroup_paths(&path, Path::new("/nonexistent")).unwrap();
        }
    }

    /// Needs root (chown); fails rather than skips without it, like the
    /// other root tests in CI.
    #[test]
    fn a_directory_not_owned_by_root_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            assert!(
                std::env::var("SIGNET_REQUIRE_ROOT").as_deref() != Ok("1"),
                "this test needs root (SIGNET_REQUIRE_ROOT=1)"
            );
            return;
        }
        let root = tempfile::tempdir().unwrap();
        for hierarchy in ["pids", "unified"] {
            std::fs::create_dir_all(root.path().join(hierarchy).join("docker").join(CID)).unwrap();
        }
        let v1 = format!("8:pids:/docker/{CID}\n7:memory:/\n");
        let v2 = format!("0::/docker/{CID}\n");
        check_cgroup_paths(&v1, root.path()).unwrap();
        check_cgroup_paths(&v2, root.path()).unwrap();
        // Delegated: the container's directory, or only an ancestor.
        for (hierarchy, path, cgroups) in [
            ("pids", format!("docker/{CID}"), &v1),
            ("unified", "docker".to_owned(), &v2),
        ] {
            let dir = root.path().join(hierarchy).join(path);
            std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
            let error = check_cgroup_paths(cgroups, root.path()).unwrap_err();
            assert!(
                matches!(&error, ForgeryError::NotRootOwned { dir: d, uid: 65534 } if *d == dir),
                "{error}"
            );
        }
    }

    #[test]
    fn this_process_shares_its_own_namespaces_only() {
        let me = ProcRoot::default().open(std::process::id()).unwrap();
        check_shares_namespaces(&me, CID, Some(std::process::id())).unwrap();
        assert!(matches!(
            check_shares_namespaces(&me, CID, None),
            Err(ForgeryError::NotRunning { .. })
        ));
        // A process that does not exist cannot vouch for anyone.
        assert!(matches!(
            check_shares_namespaces(&me, CID, Some(u32::MAX - 1)),
            Err(ForgeryError::Compare { .. })
        ));
    }
}
