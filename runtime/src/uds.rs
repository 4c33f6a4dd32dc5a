//! Unix socket listeners whose permissions are right before anyone can
//! connect.
//!
//! A socket bound at its final path with a default umask is briefly
//! reachable with the wrong mode. Instead the socket is bound inside a
//! private (0700) staging directory next to the target, given its final
//! mode, and only then renamed into place.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum UdsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket path {path} has no parent directory")]
    NoParent { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UdsError + '_ {
    move |source| UdsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Binds a listener at `path` with permission `mode` (e.g. 0o666 for the
/// Workload API, which any local process may call and attestation guards;
/// 0o600 for an admin socket).
///
/// An existing *socket* at `path` (left by a previous run) is replaced;
/// anything else there is an error, so a misconfigured path cannot delete
/// an unrelated file. The parent directory is created (0755) if missing.
pub fn bind_unix_listener(path: &Path, mode: u32) -> Result<UnixListener, UdsError> {
    let parent = path.parent().ok_or_else(|| UdsError::NoParent {
        path: path.to_owned(),
    })?;
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(io(parent))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(UdsError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(path)(error)),
    }

    // Short names: a socket path must fit in sun_path (108 bytes), and the
    // staged path must not be much longer than the final one.
    static STAGED: AtomicU64 = AtomicU64::new(0);
    let staging = parent.join(format!(
        ".s{}.{}",
        std::process::id(),
        STAGED.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging).map_err(io(&staging))?;
    let result = (|| {
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&staging))?;
        let staged = staging.join("s");
        let listener = UnixListener::bind(&staged).map_err(io(&staged))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .map_err(io(&staged))?;
        std::fs::rename(&staged, path).map_err(io(path))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// Removes the socket file on shutdown (only if it is still a socket).
pub fn remove_socket(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn socket_has_requested_mode_and_replaces_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/agent.sock");
        let first = bind_unix_listener(&path, 0o666).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o666);
        drop(first);
        // A stale socket from a crashed run is replaced.
        let second = bind_unix_listener(&path, 0o600).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let client = tokio::net::UnixStream::connect(&path).await;
        assert!(client.is_ok());
        let (_accepted, _) = second.accept().await.unwrap();
        // No staging directories left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("agent.sock")]);
    }

    #[tokio::test]
    async fn refuses_to_replace_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("important.txt");
        std::fs::write(&path, b"keep me").unwrap();
        assert!(matches!(
            bind_unix_listener(&path, 0o666),
            Err(UdsError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn a_long_socket_name_near_the_sun_path_limit_binds() {
        // The kubelet's plugins_registry/<driver>-reg.sock names are long;
        // staging must not add the name twice.
        let dir = tempfile::tempdir().unwrap();
        let budget = 100 - dir.path().as_os_str().len() - 1;
        let name = format!("{}-reg.sock", "d".repeat(budget - "-reg.sock".len()));
        let path = dir.path().join(name);
        assert_eq!(path.as_os_str().len(), 100);
        let listener = bind_unix_listener(&path, 0o600).unwrap();
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = listener.accept().await.unwrap();
    }
}
