//! The driver's memory of published files-mode volumes, so that a restarted
//! driver resumes renewing them. One JSON file per volume (0600) in a 0700
//! directory; it holds what is needed to ask the agent again (the pod, the
//! target, the audiences), never keys or tokens.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pod_info::{Audience, MountGroup, PodInfo};

const RECORD_VERSION: u32 = 1;
const VOLUMES_DIR: &str = "volumes";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Files {
        path: PathBuf,
        #[source]
        source: signet_runtime::files::FileError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Record { path: PathBuf, reason: String },
}

/// One published files-mode volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub version: u32,
    pub volume_id: String,
    /// The validated target path (parent canonicalized).
    pub target_path: PathBuf,
    pub pod: PodInfo,
    pub jwt_audiences: Vec<Audience>,
    pub mount_group: Option<MountGroup>,
}

impl VolumeRecord {
    pub fn new(
        volume_id: String,
        target_path: PathBuf,
        pod: PodInfo,
        jwt_audiences: Vec<Audience>,
        mount_group: Option<MountGroup>,
    ) -> Self {
        Self {
            version: RECORD_VERSION,
            volume_id,
            target_path,
            pod,
            jwt_audiences,
            mount_group,
        }
    }
}

/// FNV-1a: a stable, dependency-free name for a volume ID of any bytes
/// (the ID itself is inside the record, so collisions are detected).
fn file_stem(volume_id: &str) -> String {
    let hash = volume_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

/// The records under `<state-dir>/volumes/`.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(VOLUMES_DIR),
        }
    }

    fn path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(volume_id)))
    }

    /// Writes (or replaces) the record, creating the directories 0700.
    pub fn save(&self, record: &VolumeRecord) -> Result<(), StateError> {
        let files = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Files { path, source }
        };
        if let Some(parent) = self.dir.parent() {
            signet_runtime::files::ensure_private_dir(parent, 0o700).map_err(files(parent))?;
        }
        signet_runtime::files::ensure_private_dir(&self.dir, 0o700).map_err(files(&self.dir))?;
        let path = self.path(&record.volume_id);
        if let Some(existing) = self.read(&path)?
            && existing.volume_id != record.volume_id
        {
            return Err(StateError::Record {
                path,
                reason: format!(
                    "already holds volume {:?}; not overwriting it with {:?}",
                    existing.volume_id, record.volume_id
                ),
            });
        }
        let json = serde_json::to_vec_pretty(record).map_err(|e| StateError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        signet_runtime::files::write_atomic(&path, &json, 0o600).map_err(files(&path))
    }

    fn read(&self, path: &Path) -> Result<Option<VolumeRecord>, StateError> {
        let Some(bytes) =
            signet_runtime::files::read_optional(path).map_err(|source| StateError::Files {
                path: path.to_owned(),
                source,
            })?
        else {
            return Ok(None);
        };
        let record: VolumeRecord =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Record {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(StateError::Record {
                path: path.to_owned(),
                reason: format!("unknown record version {}", record.version),
            });
        }
        Ok(Some(record))
    }

    /// Forgets the volume; a missing record is fine.
    pub fn remove(&self, volume_id: &str) -> Result<(), StateError> {
        let path = self.path(volume_id);
        match self.read(&path) {
            // Another volume's record under a colliding name stays.
            Ok(Some(existing)) if existing.volume_id != volume_id => return Ok(()),
            _ => {}
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    /// Every record, each with its own outcome (a bad file must not hide
    /// the others). A missing directory holds none.
    pub fn load_all(&self) -> Vec<(PathBuf, Result<VolumeRecord, StateError>)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(source) => {
                return vec![(
                    self.dir.clone(),
                    Err(StateError::Io {
                        path: self.dir.clone(),
                        source,
                    }),
                )];
            }
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let record = self.read(&path).and_then(|record| {
                record.ok_or_else(|| StateError::Record {
                    path: path.clone(),
                    reason: "vanished".into(),
                })
            });
            records.push((path, record));
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records
    }

    /// Removes a record file that cannot be used.
    pub fn discard(&self, path: &Path) {
        if path.starts_with(&self.dir) {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record(id: &str) -> VolumeRecord {
        VolumeRecord::new(
            id.to_owned(),
            PathBuf::from("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/svid/mount"),
            PodInfo {
                uid: "u".into(),
                namespace: "payments".into(),
                name: "web-0".into(),
                service_account: "api".into(),
            },
            vec![Audience::new("vault").unwrap()],
            None,
        )
    }

    #[test]
    fn records_round_trip_privately() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("signet-csi"));
        assert!(state.load_all().is_empty(), "no directory yet: no records");
        state.save(&record("csi-1")).unwrap();
        state.save(&record("csi-2/with odd bytes")).unwrap();
        let loaded: Vec<VolumeRecord> = state
            .load_all()
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains(&record("csi-2/with odd bytes")));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("signet-csi")), 0o700);
        assert_eq!(mode(&dir.path().join("signet-csi/volumes")), 0o700);
        for (path, _) in state.load_all() {
            assert_eq!(mode(&path), 0o600);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.contains("token\""), "no tokens persisted: {text}");
        }
        state.remove("csi-1").unwrap();
        state.remove("csi-1").unwrap();
        assert_eq!(state.load_all().len(), 1);
    }

    #[test]
    fn a_bad_record_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.save(&record("csi-1")).unwrap();
        std::fs::write(dir.path().join("volumes/garbage.json"), b"{").unwrap();
        let loaded = state.load_all();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.iter().filter(|(_, r)| r.is_ok()).count(), 1);
        let (bad, _) = loaded.iter().find(|(_, r)| r.is_err()).unwrap();
        state.discard(bad);
        assert_eq!(state.load_all().len(), 1);
    }
}
