//! The certificate a TLS endpoint presents, swappable when the SVID rotates.

use std::sync::{Arc, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("the private key cannot be used for TLS: {0}")]
    Key(rustls::Error),
    #[error("the certificate chain is empty")]
    EmptyChain,
}

/// Holds the current SVID; every new handshake uses whatever is current.
#[derive(Debug, Default)]
pub struct SvidResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl SvidResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a chain (leaf first) and its PKCS#8 private key.
    pub fn set(
        &self,
        chain: Vec<CertificateDer<'static>>,
        pkcs8_key: &[u8],
    ) -> Result<(), ResolverError> {
        if chain.is_empty() {
            return Err(ResolverError::EmptyChain);
        }
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_key.to_vec()));
        let signing_key = crate::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(ResolverError::Key)?;
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
        match self.current.write() {
            Ok(mut guard) => *guard = Some(certified),
            Err(poisoned) => *poisoned.into_inner() = Some(certified),
        }
        Ok(())
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}
