//! The unix attestor: who the caller is according to the kernel.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Mutex;

use serde::Deserialize;

use signet_policy::{Attributes, Field};

use super::procfs::{ExeUnavailable, PinnedExe, ProcError, ProcessHandle};

/// Hashing stops being worth it (and becomes a denial-of-service lever) for
/// huge binaries; above the limit `binary_hash` is unavailable (identities
/// whose deny rules read it are withheld).
pub const DEFAULT_BINARY_HASH_MAX_SIZE_BYTES: i64 = 1 << 30;
/// Distinct binaries whose hash is remembered.
const HASH_CACHE_CAPACITY: usize = 1024;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixAttestorConfig {
    /// Largest executable that is hashed for `workload.unix.binary_hash`;
    /// -1 hashes any size, 0 disables hashing.
    #[serde(default = "default_hash_limit")]
    pub binary_hash_max_size_bytes: i64,
}

fn default_hash_limit() -> i64 {
    DEFAULT_BINARY_HASH_MAX_SIZE_BYTES
}

impl Default for UnixAttestorConfig {
    fn default() -> Self {
        Self {
            binary_hash_max_size_bytes: DEFAULT_BINARY_HASH_MAX_SIZE_BYTES,
        }
    }
}

/// Credentials the kernel recorded for the peer of a unix socket
/// (`SO_PEERCRED`, taken when it connected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(
        "process {pid} runs as uid {proc_uid}/gid {proc_gid} but connected as uid {peer_uid}/gid {peer_gid}"
    )]
    CredentialMismatch {
        pid: u32,
        proc_uid: u32,
        proc_gid: u32,
        peer_uid: u32,
        peer_gid: u32,
    },
    #[error("hashing the executable of process {pid}: {source}")]
    Hash {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
}

/// Attests `workload.unix.*`. Cheap to share between connections.
#[derive(Debug, Default)]
pub struct UnixAttestor {
    config: UnixAttestorConfig,
    hashes: Mutex<HashMap<FileKey, String>>,
}

impl UnixAttestor {
    pub fn new(config: UnixAttestorConfig) -> Self {
        Self {
            config,
            hashes: Mutex::new(HashMap::new()),
        }
    }

    /// Adds `workload.unix.{pid,uid,gid,binary_path,binary_hash}`.
    ///
    /// Blocking (reads procfs and may hash the executable): call it from a
    /// blocking-capable context.
    pub fn attest(
        &self,
        peer: PeerCredentials,
        process: &ProcessHandle,
        attributes: &mut Attributes,
    ) -> Result<(), UnixError> {
        let identity = process.identity();
        if identity.effective_uid() != peer.uid || identity.effective_gid() != peer.gid {
            return Err(UnixError::CredentialMismatch {
                pid: peer.pid,
                proc_uid: identity.effective_uid(),
                proc_gid: identity.effective_gid(),
                peer_uid: peer.uid,
                peer_gid: peer.gid,
            });
        }
        attributes.set(Field::UnixPid, peer.pid.to_string());
        attributes.set(Field::UnixUid, peer.uid.to_string());
        attributes.set(Field::UnixGid, peer.gid.to_string());
        self.binary_attributes(process, attributes)
    }

    /// `binary_path` and `binary_hash` from the executable pinned when the
    /// caller connected. One that cannot be read is marked unavailable, not
    /// just left out: policy then withholds identities whose deny rules
    /// read it, where silently dropping it would let them never fire.
    fn binary_attributes(
        &self,
        process: &ProcessHandle,
        attributes: &mut Attributes,
    ) -> Result<(), UnixError> {
        let pid = process.pid();
        let exe = match process.pinned_exe() {
            Ok(exe) => exe,
            Err(ExeUnavailable::Gone) => return Err(ProcError::Gone { pid }.into()),
            Err(ExeUnavailable::Unreadable(why)) => {
                tracing::debug!(pid, reason = %why, "executable unavailable");
                attributes.mark_unavailable(Field::UnixBinaryPath, why.clone());
                attributes.mark_unavailable(Field::UnixBinaryHash, why.clone());
                return Ok(());
            }
        };
        // A deleted binary shows as "<path> (deleted)"; keep it so rules
        // cannot match a binary that was replaced underneath.
        attributes.set(
            Field::UnixBinaryPath,
            exe.path().to_string_lossy().into_owned(),
        );
        match self.binary_hash(pid, exe)? {
            Ok(hash) => attributes.set(Field::UnixBinaryHash, hash),
            Err(why) => attributes.mark_unavailable(Field::UnixBinaryHash, why),
        };
        Ok(())
    }

    /// The executable's SHA-256, or why it is not computed.
    fn binary_hash(&self, pid: u32, exe: &PinnedExe) -> Result<Result<String, String>, UnixError> {
        let limit = self.config.binary_hash_max_size_bytes;
        if limit == 0 {
            return Ok(Err(
                "binary hashing is disabled (binary_hash_max_size_bytes: 0)".to_owned(),
            ));
        }
        let metadata = exe
            .file()
            .metadata()
            .map_err(|source| UnixError::Hash { pid, source })?;
        if limit > 0 && metadata.len() > limit.unsigned_abs() {
            return Ok(Err(format!(
                "the executable is larger than binary_hash_max_size_bytes ({limit})"
            )));
        }
        let key = FileKey {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.len(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
            ctime: metadata.ctime(),
        };
        if let Some(hash) = self.cached_hash(&key) {
            return Ok(Ok(hash));
        }
        let hash = sha256_hex(exe.file()).map_err(|source| UnixError::Hash { pid, source })?;
        if let Ok(mut hashes) = self.hashes.lock() {
            if hashes.len() >= HASH_CACHE_CAPACITY {
                hashes.clear();
            }
            hashes.insert(key, hash.clone());
        }
        Ok(Ok(hash))
    }

    fn cached_hash(&self, key: &FileKey) -> Option<String> {
        self.hashes.lock().ok()?.get(key).cloned()
    }
}

/// Reads by offset, so the pinned descriptor can be hashed again (after a
/// cache eviction) without seeking it back.
fn sha256_hex(file: &std::fs::File) -> std::io::Result<String> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let read = match file.read_at(&mut buffer, offset) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
        offset += read as u64;
    }
    Ok(hex::encode(context.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::procfs::ProcRoot;

    fn me() -> PeerCredentials {
        PeerCredentials {
            pid: std::process::id(),
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    #[test]
    fn attests_own_process() {
        let attestor = UnixAttestor::new(UnixAttestorConfig::default());
        let handle = ProcRoot::default().open(std::process::id()).unwrap();
        let mut attributes = Attributes::default();
        attestor.attest(me(), &handle, &mut attributes).unwrap();
        assert_eq!(
            attributes.field(Field::UnixPid),
            Some(std::process::id().to_string().as_str())
        );
        assert_eq!(
            attributes.field(Field::UnixUid),
            Some(me().uid.to_string().as_str())
        );
        let exe = std::env::current_exe().unwrap();
        assert_eq!(attributes.field(Field::UnixBinaryPath), exe.to_str());
        let expected = sha256_hex(&std::fs::File::open(&exe).unwrap()).unwrap();
        assert_eq!(
            attributes.field(Field::UnixBinaryHash),
            Some(expected.as_str())
        );
        // Second time from the cache: same answer.
        let mut again = Attributes::default();
        attestor.attest(me(), &handle, &mut again).unwrap();
        assert_eq!(again.field(Field::UnixBinaryHash), Some(expected.as_str()));
    }

    #[test]
    fn hash_limit_omits_hash_of_large_binaries() {
        let attestor = UnixAttestor::new(UnixAttestorConfig {
            binary_hash_max_size_bytes: 16,
        });
        let handle = ProcRoot::default().open(std::process::id()).unwrap();
        let mut attributes = Attributes::default();
        attestor.attest(me(), &handle, &mut attributes).unwrap();
        assert!(attributes.field(Field::UnixBinaryHash).is_none());
        assert!(
            attributes
                .unavailable_reason(Field::UnixBinaryHash)
                .is_some_and(|why| why.contains("larger than binary_hash_max_size_bytes (16)")),
            "{attributes:?}"
        );
        assert!(attributes.field(Field::UnixBinaryPath).is_some());
        assert_eq!(attributes.unavailable_reason(Field::UnixBinaryPath), None);
    }

    #[test]
    fn disabled_hashing_marks_the_hash_unavailable() {
        let attestor = UnixAttestor::new(UnixAttestorConfig {
            binary_hash_max_size_bytes: 0,
        });
        let handle = ProcRoot::default().open(std::process::id()).unwrap();
        let mut attributes = Attributes::default();
        attestor.attest(me(), &handle, &mut attributes).unwrap();
        assert!(
            attributes
                .unavailable_reason(Field::UnixBinaryHash)
                .is_some_and(|why| why.contains("disabled")),
            "{attributes:?}"
        );
    }

    #[test]
    fn credentials_must_match_the_process() {
        let attestor = UnixAttestor::default();
        let handle = ProcRoot::default().open(std::process::id()).unwrap();
        let forged = PeerCredentials {
            uid: me().uid.wrapping_add(1),
            ..me()
        };
        let mut attributes = Attributes::default();
        assert!(matches!(
            attestor.attest(forged, &handle, &mut attributes),
            Err(UnixError::CredentialMismatch { .. })
        ));
    }
}
