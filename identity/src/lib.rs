//! SPIFFE identities: IDs, X.509-SVID and JWT-SVID minting and verification,
//! trust bundles and the CA keyset. No I/O: time is always passed in as
//! `now: SystemTime` so callers and tests control the clock.

pub mod authority;
pub mod bundle;
mod der;
pub mod id;
pub mod jwt;
pub mod keys;
pub mod x509;

pub use authority::{
    AuthorityError, AuthorityKind, AuthorityState, CaConfig, CaKeyset, JwtKey, RotationEvent,
};
pub use bundle::{BundleError, BundleSet, BundleSource, JwtAuthority, TrustBundle};
pub use id::{IdError, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, TrustDomain};
pub use jwt::{JwtAlgorithm, JwtError, JwtSvid, ValidatedJwt, mint_jwt_svid, validate_jwt_svid};
pub use keys::{KeyError, KeyType, PrivateKey, PublicKey, PublicKeyAlgorithm};
pub use x509::{
    CertificateDer, SubjectTemplate, VerifiedX509Svid, X509Ca, X509Error, X509Svid, X509SvidParams,
    verify_x509_svid,
};
