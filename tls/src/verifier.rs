//! rustls verifiers that authenticate peers by X.509-SVID.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use signet_identity::{SpiffeId, TrustDomain, X509Error, verify_x509_svid};

use crate::SharedBundles;

/// Which SPIFFE IDs a verifier accepts once the SVID itself is valid.
#[derive(Clone)]
pub enum PeerPolicy {
    /// Any member of the trust domain.
    MemberOf(TrustDomain),
    /// Exactly one of these IDs.
    OneOf(Vec<SpiffeId>),
    /// IDs in `trust_domain` whose path starts with `prefix`.
    PathPrefix {
        trust_domain: TrustDomain,
        prefix: String,
    },
    /// Any ID for which the predicate holds.
    Custom(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

impl fmt::Debug for PeerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MemberOf(td) => write!(f, "MemberOf({td})"),
            Self::OneOf(ids) => write!(f, "OneOf({ids:?})"),
            Self::PathPrefix {
                trust_domain,
                prefix,
            } => write!(f, "PathPrefix(spiffe://{trust_domain}{prefix})"),
            Self::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl PeerPolicy {
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::MemberOf(td) => id.is_member_of(td),
            Self::OneOf(ids) => ids.contains(id),
            Self::PathPrefix {
                trust_domain,
                prefix,
            } => id.is_member_of(trust_domain) && path_has_prefix(id.path(), prefix),
            Self::Custom(predicate) => predicate(id),
        }
    }
}

/// `/a/b` has prefix `/a` and `/a/`, but `/ab` does not have prefix `/a`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[derive(Debug)]
struct PeerRejected(String);

impl fmt::Display for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerRejected {}

fn system_time(now: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn verify_peer(
    bundles: &SharedBundles,
    policy: &PeerPolicy,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone().into_owned());
    chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
    let current = bundles.current();
    let verified = verify_x509_svid(&chain, &*current, system_time(now)).map_err(|error| {
        Error::InvalidCertificate(match error {
            X509Error::Expired => CertificateError::Expired,
            X509Error::NotYetValid => CertificateError::NotValidYet,
            X509Error::UntrustedIssuer | X509Error::NoBundle(_) => CertificateError::UnknownIssuer,
            other => CertificateError::Other(OtherError(Arc::new(PeerRejected(other.to_string())))),
        })
    })?;
    if !policy.allows(&verified.spiffe_id) {
        return Err(Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(PeerRejected(format!(
                "peer {} is not authorized ({policy:?})",
                verified.spiffe_id
            )))),
        )));
    }
    Ok(verified.spiffe_id)
}

/// Client side: authenticates the server by its SVID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: SharedBundles,
    policy: PeerPolicy,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(bundles: SharedBundles, policy: PeerPolicy) -> Self {
        Self {
            bundles,
            policy,
            provider: crate::provider(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        verify_peer(&self.bundles, &self.policy, end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: authenticates clients by their SVID. With `optional`, a
/// client may connect without a certificate (the application then decides
/// per request, e.g. the issuer's Join call).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: SharedBundles,
    policy: PeerPolicy,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    pub fn required(bundles: SharedBundles, policy: PeerPolicy) -> Self {
        Self {
            bundles,
            policy,
            mandatory: true,
            provider: crate::provider(),
        }
    }

    pub fn optional(bundles: SharedBundles, policy: PeerPolicy) -> Self {
        Self {
            mandatory: false,
            ..Self::required(bundles, policy)
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_peer(&self.bundles, &self.policy, end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_respects_segments() {
        assert!(path_has_prefix("/signet/agent/x", "/signet/agent"));
        assert!(path_has_prefix("/signet/agent", "/signet/agent"));
        assert!(path_has_prefix("/signet/agent/x", "/signet/agent/"));
        assert!(!path_has_prefix("/signet/agents/x", "/signet/agent"));
        assert!(!path_has_prefix("/other", "/signet/agent"));
    }
}
