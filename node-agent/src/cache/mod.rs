//! The SVID cache: keys generated on the node, SVIDs signed in batches by
//! the issuer and renewed at half-life, one complete [`WorkloadView`] per
//! workload for every stream to follow.
//!
//! SVIDs signed by an authority the operator tainted are replaced early:
//! X.509-SVIDs are re-issued within a jittered window, JWT-SVIDs are no
//! longer served from the cache.
//!
//! `worker.rs` holds the cache and its worker; `seams.rs` what it needs from
//! the policy, the issuer and key generation; `view.rs` what it publishes;
//! `jwt.rs` the JWT-SVID cache; `keys.rs` the key generator; `taint.rs`
//! reads which authority signed an SVID.

mod error;
mod jwt;
mod key;
pub mod keys;
pub mod seams;
mod taint;
pub mod view;
pub mod worker;

pub use error::CacheError;
pub use keys::SvidKeyFactory;
pub use seams::{
    Denial, DesiredIdentity, JwtSignRequest, KeyFactory, KeyMaterial, PolicyView, SharedPolicy,
    SignError, SignOutcome, SignedJwt, SignedX509, Signer, TaintedAuthorities, WorkloadBundles,
    X509SignRequest,
};
pub(crate) use taint::x509_authority;
pub use view::{IssuedX509, ViewStatus, WorkloadView};
pub use worker::{CacheConfig, PodReady, PodReadyHook, Subscription, SvidCache};

#[cfg(test)]
mod tests;
