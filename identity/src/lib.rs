//! SPIFFE identities: IDs, X.509-SVID and JWT-SVID minting and verification,
//! trust bundles and the CA keyset. No I/O: time is always passed in as
//! `now: SystemTime` so callers and tests control the clock.
//!
//! - [`id`]: [`TrustDomain`] and [`SpiffeId`], validated per the SPIFFE-ID spec.
//! - [`keys`]: [`PrivateKey`] generation (EC P-256 by default), PKCS#8, signing.
//! - [`x509`]: [`X509Ca`] minting X.509-SVIDs for public keys (taken from CSRs
//!   with [`x509::public_key_from_csr`]), and
//!   [`verify_x509_svid`].
//! - [`jwt`]: [`mint_jwt_svid`] and [`validate_jwt_svid`].
//! - [`bundle`]: [`TrustBundle`] (SPIFFE JSON, JWKS, PEM, DER) and [`BundleSet`].
//! - [`authority`]: [`CaKeyset`], the operator's rotating CA and JWT keys.
//!
//! The operator owns a [`CaKeyset`]; the agent generates workload keys, sends
//! CSRs (or public keys), and hands the resulting chain, key and bundle to
//! workloads:
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use signet_identity::{
//!     CaConfig, CaKeyset, KeyType, PrivateKey, SpiffeId, TrustDomain, X509SvidParams,
//!     verify_x509_svid, x509,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let now = SystemTime::now();
//! // Operator side.
//! let mut keyset = CaKeyset::new(CaConfig::new(TrustDomain::new("example.org")?), now)?;
//! keyset.rotate(now)?; // periodically; publish keyset.bundle(now) when it reports events
//!
//! // Agent side: the workload key never leaves the node, only a CSR does.
//! let key = PrivateKey::generate(KeyType::EcP256)?;
//! let csr = x509::create_csr(&key)?;
//!
//! // Operator side again, after policy decided the identity.
//! let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web")?;
//! let svid = keyset.mint_x509_svid_from_csr(&X509SvidParams::new(id, Duration::from_secs(3600)), &csr, now)?;
//!
//! // Any peer holding the bundle can verify it.
//! let bundle = keyset.bundle(now);
//! let verified = verify_x509_svid(&svid.cert_chain, &bundle, now)?;
//! assert_eq!(verified.spiffe_id.path(), "/ns/default/sa/web");
//! # Ok(())
//! # }
//! ```

pub mod authority;
pub mod bundle;
mod der;
pub mod id;
pub mod jwt;
pub mod keys;
pub mod x509;

pub use authority::{
    AuthorityError, AuthorityKind, AuthorityState, AuthorityStatus, CaConfig, CaKeyset, JwtKey,
    RotationEvent,
};
pub use bundle::{BundleError, BundleSet, BundleSource, JwtAuthority, TrustBundle};
pub use id::{
    IdError, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, RESERVED_PATH, SpiffeId, TrustDomain,
    is_reserved_path,
};
pub use jwt::{
    JwtAlgorithm, JwtError, JwtSvid, ValidatedJwt, mint_jwt_svid, mint_jwt_svid_with_issuer,
    validate_jwt_svid,
};
pub use keys::{KeyError, KeyType, PrivateKey, PublicKey, PublicKeyAlgorithm};
pub use x509::{
    CertificateDer, SubjectTemplate, VerifiedX509Svid, X509Ca, X509Error, X509Svid, X509SvidParams,
    verify_x509_svid,
};
