//! The CA keyset in a file of the state directory (standalone mode),
//! written atomically with mode 0600: it holds every CA and JWT private key.

use std::path::PathBuf;

use futures::future::BoxFuture;
use zeroize::Zeroizing;

use crate::ca::{KeysetStore, StoreError};

/// The keyset in a file of the state directory (standalone mode).
#[derive(Debug)]
pub struct FileKeysetStore {
    path: PathBuf,
}

impl FileKeysetStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl KeysetStore for FileKeysetStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Zeroizing<String>>, StoreError>> {
        Box::pin(async move {
            let bytes = signet_runtime::files::read_optional(&self.path)
                .map_err(|e| StoreError::Read(e.to_string()))?;
            bytes
                .map(|bytes| {
                    String::from_utf8(bytes).map(Zeroizing::new).map_err(|_| {
                        StoreError::Read(format!("{} is not UTF-8", self.path.display()))
                    })
                })
                .transpose()
        })
    }

    fn save(&self, state: Zeroizing<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            signet_runtime::files::write_atomic(&self.path, state.as_bytes(), 0o600)
                .map_err(|e| StoreError::Write(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use signet_identity::{CaConfig, TrustDomain};
    use signet_runtime::clock::Clock;

    use super::*;
    use crate::ca::{Authority, IssuerNames};

    fn config() -> CaConfig {
        let mut config = CaConfig::new(TrustDomain::new("example.org").unwrap());
        config.x509_ttl = Duration::from_secs(6 * 3600);
        config.jwt_ttl = Duration::from_secs(6 * 3600);
        config
    }

    #[tokio::test]
    async fn created_once_then_loaded_from_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.json");
        let now = Clock::new().now();
        let store: Arc<dyn KeysetStore> = Arc::new(FileKeysetStore::new(path.clone()));
        let first = Authority::load_or_create(config(), store.clone(), IssuerNames::default(), now)
            .await
            .unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let second = Authority::load_or_create(config(), store, IssuerNames::default(), now)
            .await
            .unwrap();
        assert_eq!(
            first.current_bundle().bundle.x509_authorities,
            second.current_bundle().bundle.x509_authorities,
            "a restart keeps the CA"
        );
        assert!(second.issuer_resolver().current().is_some());
    }
}
