//! Target path validation: a path the CO asks us to mount on must resolve
//! under the kubelet's pods directory.
//!
//! The kubelet creates the parent of a CSI target
//! (`<kubelet-dir>/pods/<uid>/volumes/kubernetes.io~csi/<name>/`) and the
//! driver creates the target itself. The parent is canonicalized (so
//! symlinks in it are resolved before the check) and the last component must
//! be a plain name that is not a symlink.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("target path is empty")]
    Empty,
    #[error("target path {0:?} must be absolute")]
    Relative(PathBuf),
    #[error("target path {0:?} must not contain '..' components")]
    ParentReference(PathBuf),
    #[error("target path {0:?} must not contain NUL bytes")]
    Nul(PathBuf),
    #[error("target path {0:?} has no final file name")]
    NoName(PathBuf),
    #[error(
        "the parent directory of target path {path:?} does not exist ({source}); \
         the kubelet creates it before NodePublishVolume"
    )]
    ParentMissing {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kubelet pods directory {path:?} cannot be resolved ({source}); \
         check --kubelet-dir"
    )]
    PodsDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "target path {path:?} resolves to {resolved:?}, outside the kubelet pods directory {root:?}"
    )]
    Outside {
        path: PathBuf,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("target path {0:?} is a symlink; refusing to mount on it")]
    Symlink(PathBuf),
    #[error("target path {0:?} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("inspecting target path {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A target path that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The path with its parent canonicalized; it lies strictly below the
    /// canonical pods directory.
    pub path: PathBuf,
    /// Whether the target itself exists (as a directory, never a symlink).
    pub exists: bool,
}

/// Checks the shape of `target` without touching the filesystem: non-empty,
/// absolute, no `..`, no NUL, ends in a name.
pub fn check_syntax(target: &str) -> Result<&Path, PathError> {
    if target.is_empty() {
        return Err(PathError::Empty);
    }
    let path = Path::new(target);
    if target.contains('\0') {
        return Err(PathError::Nul(path.to_owned()));
    }
    if !path.is_absolute() {
        return Err(PathError::Relative(path.to_owned()));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::ParentReference(path.to_owned()));
    }
    if path.file_name().is_none() {
        return Err(PathError::NoName(path.to_owned()));
    }
    Ok(path)
}

/// Validates `target` against `pods_dir` (e.g. `/var/lib/kubelet/pods`).
pub fn resolve_target(pods_dir: &Path, target: &str) -> Result<Target, PathError> {
    let path = check_syntax(target)?;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(PathError::NoName(path.to_owned()));
    };
    let root = std::fs::canonicalize(pods_dir).map_err(|source| PathError::PodsDir {
        path: pods_dir.to_owned(),
        source,
    })?;
    let parent = std::fs::canonicalize(parent).map_err(|source| PathError::ParentMissing {
        path: path.to_owned(),
        source,
    })?;
    if parent == root || !parent.starts_with(&root) {
        return Err(PathError::Outside {
            path: path.to_owned(),
            resolved: parent.join(name),
            root,
        });
    }
    let resolved = parent.join(name);
    let exists = match std::fs::symlink_metadata(&resolved) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(PathError::Symlink(resolved)),
        Ok(meta) if !meta.is_dir() => return Err(PathError::NotADirectory(resolved)),
        Ok(_) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(PathError::Io {
                path: resolved,
                source,
            });
        }
    };
    Ok(Target {
        path: resolved,
        exists,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        base: PathBuf,
        pods: PathBuf,
        volume_dir: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let pods = base.join("kubelet/pods");
        let volume_dir = pods.join("uid-1/volumes/kubernetes.io~csi/spiffe");
        std::fs::create_dir_all(&volume_dir).unwrap();
        Fixture {
            _dir: dir,
            base,
            pods,
            volume_dir,
        }
    }

    fn s(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    #[test]
    fn syntax_rules() {
        assert!(matches!(check_syntax(""), Err(PathError::Empty)));
        assert!(matches!(
            check_syntax("var/lib/kubelet/pods/x/mount"),
            Err(PathError::Relative(_))
        ));
        assert!(matches!(
            check_syntax("/var/lib/kubelet/pods/../../etc/mount"),
            Err(PathError::ParentReference(_))
        ));
        assert!(matches!(
            check_syntax("/var/lib/kubelet/pods/x/.."),
            Err(PathError::ParentReference(_))
        ));
        assert!(matches!(check_syntax("/"), Err(PathError::NoName(_))));
        assert!(matches!(
            check_syntax("/var/lib/kubelet/pods/x\0/mount"),
            Err(PathError::Nul(_))
        ));
        assert!(
            check_syntax("/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/v/mount").is_ok()
        );
    }

    #[test]
    fn accepts_a_new_target_under_pods() {
        let f = fixture();
        let target = f.volume_dir.join("mount");
        let resolved = resolve_target(&f.pods, s(&target)).unwrap();
        assert_eq!(
            resolved,
            Target {
                path: target.clone(),
                exists: false
            }
        );
        std::fs::create_dir(&target).unwrap();
        assert!(resolve_target(&f.pods, s(&target)).unwrap().exists);
        // A trailing slash or "." components name the same directory.
        let slashed = format!("{}/./", s(&target));
        assert_eq!(resolve_target(&f.pods, &slashed).unwrap().path, target);
    }

    #[test]
    fn rejects_targets_outside_pods() {
        let f = fixture();
        let outside = f.base.join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        assert!(matches!(
            resolve_target(&f.pods, s(&outside.join("mount"))),
            Err(PathError::Outside { .. })
        ));
        // The pods directory itself and direct children are not targets.
        assert!(matches!(
            resolve_target(&f.pods, s(&f.pods)),
            Err(PathError::Outside { .. })
        ));
        assert!(matches!(
            resolve_target(&f.pods, s(&f.pods.join("mount"))),
            Err(PathError::Outside { .. })
        ));
        // A sibling whose name shares the prefix is not inside.
        let sibling = f.base.join("kubelet/pods-evil/uid");
        std::fs::create_dir_all(&sibling).unwrap();
        assert!(matches!(
            resolve_target(&f.pods, s(&sibling.join("mount"))),
            Err(PathError::Outside { .. })
        ));
    }

    #[test]
    fn rejects_symlink_escapes() {
        let f = fixture();
        let outside = f.base.join("etc");
        std::fs::create_dir_all(&outside).unwrap();
        // A symlinked parent resolving outside is caught by canonicalization.
        let link_parent = f.pods.join("uid-2");
        std::os::unix::fs::symlink(&outside, &link_parent).unwrap();
        let err = resolve_target(&f.pods, s(&link_parent.join("mount"))).unwrap_err();
        assert!(matches!(err, PathError::Outside { .. }), "{err}");
        // A symlink as the final component is refused even if it points inside.
        let link_target = f.volume_dir.join("mount");
        std::os::unix::fs::symlink(&f.volume_dir, &link_target).unwrap();
        assert!(matches!(
            resolve_target(&f.pods, s(&link_target)),
            Err(PathError::Symlink(_))
        ));
        // A symlink inside pods pointing to another place inside pods is fine
        // for the parent: what counts is where it resolves.
        let inner_link = f.pods.join("uid-3");
        std::os::unix::fs::symlink(&f.volume_dir, &inner_link).unwrap();
        let resolved = resolve_target(&f.pods, s(&inner_link.join("mount2"))).unwrap();
        assert_eq!(resolved.path, f.volume_dir.join("mount2"));
    }

    #[test]
    fn missing_parent_and_non_directories() {
        let f = fixture();
        assert!(matches!(
            resolve_target(&f.pods, s(&f.pods.join("nope/volumes/mount"))),
            Err(PathError::ParentMissing { .. })
        ));
        let file = f.volume_dir.join("mount");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            resolve_target(&f.pods, s(&file)),
            Err(PathError::NotADirectory(_))
        ));
        assert!(matches!(
            resolve_target(&f.base.join("no-kubelet"), s(&file)),
            Err(PathError::PodsDir { .. })
        ));
    }
}
