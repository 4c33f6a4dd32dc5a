//! SPIFFE-authenticated TLS.
//!
//! Peers are authenticated by the SPIFFE ID in their X.509-SVID, verified
//! against trust bundles read at every handshake, so a CA rotation (new
//! authority added to the bundle) takes effect without rebuilding configs.
//! Hostnames are not checked: an SVID names a workload, not a host.
//!
//! Everything uses the ring provider explicitly (never the process default),
//! so a second provider compiled in elsewhere cannot make rustls panic.

mod grpc;
mod resolver;
mod verifier;

use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use signet_identity::BundleSet;

pub use grpc::{GrpcTlsError, TlsIncoming, connect_channel, peer_spiffe_id};
pub use resolver::{ResolverError, SvidResolver};
pub use verifier::{PeerPolicy, SpiffeClientVerifier, SpiffeServerVerifier};

/// The crypto provider every Signet TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider, for libraries (kube,
/// hyper clients) that build configs without one. Idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Trust bundles shared between verifiers and whoever keeps them current.
#[derive(Clone, Debug, Default)]
pub struct SharedBundles(Arc<RwLock<Arc<BundleSet>>>);

impl SharedBundles {
    pub fn new(bundles: BundleSet) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(bundles))))
    }

    /// The bundles in force right now.
    pub fn current(&self) -> Arc<BundleSet> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, bundles: BundleSet) {
        let bundles = Arc::new(bundles);
        match self.0.write() {
            Ok(mut guard) => *guard = bundles,
            Err(poisoned) => *poisoned.into_inner() = bundles,
        }
    }
}

/// A server config presenting `resolver`'s SVID and checking client
/// certificates with `verifier` (client SVIDs with a
/// [`SpiffeClientVerifier`]). ALPN offers HTTP/2 for gRPC.
pub fn server_config(
    resolver: Arc<SvidResolver>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A server config presenting `resolver`'s certificate to any client (no
/// client certificate asked for), e.g. to the API server calling a webhook.
pub fn server_config_without_client_auth(
    resolver: Arc<SvidResolver>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver))
}

/// A client config checking the server's SVID with `verifier` and, when
/// `resolver` is given, presenting its SVID (mTLS).
pub fn client_config(
    resolver: Option<Arc<SvidResolver>>,
    verifier: Arc<SpiffeServerVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match resolver {
        Some(resolver) => builder.with_client_cert_resolver(resolver),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests;
