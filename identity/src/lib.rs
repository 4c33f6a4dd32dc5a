//! SPIFFE identities: IDs, X.509-SVID and JWT-SVID minting and verification,
//! trust bundles and the CA keyset. No I/O: time is always passed in as
//! `now: SystemTime` so callers and tests control the clock.

pub mod id;

pub use id::{IdError, MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, TrustDomain};
