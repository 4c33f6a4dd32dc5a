//! The upstream CA (`ca.upstream`): the organisation's CA certificate, key
//! and roots, from files (a mounted Kubernetes Secret is files too, and
//! cert-manager's CA Secrets have exactly this shape: `tls.crt`, `tls.key`,
//! `ca.crt`). Each new X.509 CA of the trust domain is signed by it; the
//! files are re-read on every rotation check, so a renewed upstream
//! certificate (a Secret the kubelet updated) signs the next CA without a
//! restart. A change that does not load is logged and the last good
//! upstream stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use signet_identity::x509::{UpstreamCa, X509Error};
use zeroize::Zeroizing;

/// Why the upstream CA could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream CA from {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: X509Error,
    },
}

/// `ca.upstream` in the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFiles {
    /// PEM: the upstream CA certificate first, then its chain.
    pub cert_file: PathBuf,
    /// PEM PKCS#8 private key of that certificate.
    pub key_file: PathBuf,
    /// PEM roots the bundle publishes (default: the self-signed
    /// certificates of `cert_file`).
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
}

impl UpstreamFiles {
    /// Reads and checks the three files as of `now`.
    pub fn load(&self, now: SystemTime) -> Result<Loaded, UpstreamError> {
        let contents = self.read()?;
        let upstream = contents.parse(self, now)?;
        Ok(Loaded {
            digest: contents.digest,
            upstream,
        })
    }

    fn read(&self) -> Result<Contents, UpstreamError> {
        let cert = read(&self.cert_file)?;
        let key = read(&self.key_file)?;
        let bundle = self.bundle_file.as_deref().map(read).transpose()?;
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [Some(&cert), Some(&key), bundle.as_ref()]
            .into_iter()
            .flatten()
        {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        Ok(Contents {
            digest: context.finish().as_ref().to_vec(),
            cert,
            key,
            bundle,
        })
    }
}

/// The files' text (the key wiped on drop) and a digest of it.
struct Contents {
    digest: Vec<u8>,
    cert: Zeroizing<String>,
    key: Zeroizing<String>,
    bundle: Option<Zeroizing<String>>,
}

impl Contents {
    fn parse(
        &self,
        files: &UpstreamFiles,
        now: SystemTime,
    ) -> Result<Arc<UpstreamCa>, UpstreamError> {
        UpstreamCa::from_pem(
            &self.cert,
            &self.key,
            self.bundle.as_deref().map(String::as_str),
            now,
        )
        .map(Arc::new)
        .map_err(|source| UpstreamError::Invalid {
            path: files.cert_file.clone(),
            source,
        })
    }
}

/// One reading of the files.
pub struct Loaded {
    /// SHA-256 over the files' contents: whether they changed since.
    pub digest: Vec<u8>,
    pub upstream: Arc<UpstreamCa>,
}

fn read(path: &Path) -> Result<Zeroizing<String>, UpstreamError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|source| UpstreamError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Follows the files: remembers what was loaded last, so a reading that
/// did not change anything costs no parsing.
pub struct UpstreamFollower {
    files: UpstreamFiles,
    last_digest: std::sync::Mutex<Vec<u8>>,
}

impl UpstreamFollower {
    /// Starts from what the configuration loaded at start-up.
    pub fn new(files: UpstreamFiles, loaded_digest: Vec<u8>) -> Self {
        Self {
            files,
            last_digest: std::sync::Mutex::new(loaded_digest),
        }
    }

    /// Follows `files` from their contents now (which the configuration
    /// has just loaded), so only later changes are reported.
    pub fn from_now(files: UpstreamFiles) -> Self {
        let digest = files.read().map(|c| c.digest.clone()).unwrap_or_default();
        Self::new(files, digest)
    }

    /// The upstream CA if the files changed since the last call; `Ok(None)`
    /// when unchanged. A change that does not load is reported once, not at
    /// every call, and the caller keeps the upstream it has.
    pub fn changed(&self, now: SystemTime) -> Result<Option<Arc<UpstreamCa>>, UpstreamError> {
        let contents = self.files.read()?;
        {
            let mut last = self
                .last_digest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if contents.digest == *last {
                return Ok(None);
            }
            *last = contents.digest.clone();
        }
        contents.parse(&self.files, now).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use signet_identity::x509::{X509Ca, certs_to_pem};
    use signet_identity::{KeyType, PrivateKey, TrustDomain};
    use signet_runtime::clock::Clock;

    use super::*;

    fn root(now: SystemTime) -> X509Ca {
        X509Ca::self_signed(
            &TrustDomain::new("corp.example").unwrap(),
            PrivateKey::generate(KeyType::EcP256).unwrap(),
            Duration::from_secs(30 * 24 * 3600),
            now,
        )
        .unwrap()
    }

    fn write(dir: &Path, ca: &X509Ca) -> UpstreamFiles {
        let files = UpstreamFiles {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            bundle_file: None,
        };
        std::fs::write(
            &files.cert_file,
            certs_to_pem(std::slice::from_ref(ca.certificate())),
        )
        .unwrap();
        std::fs::write(&files.key_file, ca.key().to_pkcs8_pem().as_bytes()).unwrap();
        files
    }

    #[test]
    fn the_follower_reports_each_change_once_and_keeps_quiet_otherwise() {
        let now = Clock::new().now();
        let dir = tempfile::tempdir().unwrap();
        let first = root(now);
        let files = write(dir.path(), &first);
        let follower = UpstreamFollower::new(files.clone(), files.load(now).unwrap().digest);
        assert!(follower.changed(now).unwrap().is_none(), "unchanged files");

        // A renewed upstream (the kubelet updated the Secret).
        let second = root(now);
        write(dir.path(), &second);
        let next = follower.changed(now).unwrap().expect("the new upstream");
        assert_eq!(next.roots(), std::slice::from_ref(second.certificate()));
        assert!(follower.changed(now).unwrap().is_none());

        // A half-written update (key of another certificate) is reported
        // once; the caller keeps what it has.
        std::fs::write(&files.key_file, first.key().to_pkcs8_pem().as_bytes()).unwrap();
        let error = follower.changed(now).unwrap_err().to_string();
        assert!(error.contains("does not match"), "{error}");
        assert!(follower.changed(now).unwrap().is_none(), "reported once");

        // A missing file is an error every time (the mount is gone).
        std::fs::remove_file(&files.cert_file).unwrap();
        assert!(matches!(
            follower.changed(now),
            Err(UpstreamError::Read { .. })
        ));
        assert!(matches!(
            follower.changed(now),
            Err(UpstreamError::Read { .. })
        ));
    }
}
