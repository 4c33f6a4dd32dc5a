//! Why the cache could not answer.

use super::seams::SignError;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CacheError {
    #[error("the SVID cache has stopped")]
    Stopped,
    #[error("no identity issued: {0}")]
    NoIdentity(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("waiting for the policy from the issuer")]
    NoPolicy,
}
