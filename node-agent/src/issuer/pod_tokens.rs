//! Service-account tokens of pods, by pod UID, for the issuer requests made
//! on their behalf.
//!
//! signet-csi passes the token the kubelet minted for a pod (the CSIDriver's
//! `tokenRequests`) with every delegated call. The SVID cache signs and
//! renews in the background, long after that call, so the token cannot
//! travel with the request: it is kept here and the issuer client attaches
//! the current one to every request whose workload carries the pod's UID.
//! The issuer checks it with a TokenReview.
//!
//! Only the newest token is kept (by its `exp` claim), and a token about to
//! expire is not sent at all: the issuer would refuse it for good, and a
//! request without a token is still checked against the issuer's own pod
//! watch. The kubelet re-publishes with a fresh token before the old one
//! expires when the CSIDriver sets `requiresRepublish: true`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use zeroize::Zeroizing;

/// A token this close to its expiry is no longer sent.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// The claims of a JWT, read without verifying it: only for choosing which
/// of two tokens is newer and for reporting `jti`; the issuer verifies.
pub fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(claims) => Some(claims),
        _ => None,
    }
}

fn expiry_of(token: &str) -> Option<SystemTime> {
    let exp = unverified_claims(token)?.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

struct StoredToken {
    token: Zeroizing<String>,
    expires_at: Option<SystemTime>,
}

/// Cheap-to-clone registry shared by the delegated API (which fills it)
/// and the issuer client (which reads it).
#[derive(Clone, Default)]
pub struct PodTokens {
    tokens: Arc<RwLock<HashMap<String, StoredToken>>>,
}

impl std::fmt::Debug for PodTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves: they are bearer credentials.
        f.debug_struct("PodTokens")
            .field("pods", &self.read().len())
            .finish()
    }
}

/// Pod UIDs compare case-insensitively (the kubelet and the API server may
/// differ in case for static pods' hashes).
fn key(pod_uid: &str) -> String {
    pod_uid.to_ascii_lowercase()
}

impl PodTokens {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, StoredToken>> {
        match self.tokens.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, StoredToken>> {
        match self.tokens.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Records `token` for the pod unless the one held expires later.
    /// Returns whether it was taken.
    pub fn offer(&self, pod_uid: &str, token: &str) -> bool {
        if token.is_empty() {
            return false;
        }
        let expires_at = expiry_of(token);
        let mut tokens = self.write();
        let newer = match tokens.get(&key(pod_uid)) {
            // Tokens without a readable expiry: the latest one offered wins.
            Some(held) => match (held.expires_at, expires_at) {
                (Some(held), Some(offered)) => offered >= held,
                _ => true,
            },
            None => true,
        };
        if newer {
            tokens.insert(
                key(pod_uid),
                StoredToken {
                    token: Zeroizing::new(token.to_owned()),
                    expires_at,
                },
            );
        }
        newer
    }

    /// The token to send for the pod at `now`, if one is held and is not
    /// about to expire.
    pub fn get(&self, pod_uid: &str, now: SystemTime) -> Option<String> {
        let tokens = self.read();
        let held = tokens.get(&key(pod_uid))?;
        if held
            .expires_at
            .is_some_and(|expires| expires <= now + EXPIRY_MARGIN)
        {
            return None;
        }
        Some(held.token.as_str().to_owned())
    }

    /// Forgets the pod's token (its last delegated stream closed).
    pub fn remove(&self, pod_uid: &str) {
        self.write().remove(&key(pod_uid));
    }

    /// Pods with a token held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(exp: u64, marker: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(br#"{"alg":"RS256"}"#);
        let payload = engine.encode(format!(r#"{{"exp":{exp},"jti":"{marker}"}}"#));
        format!("{header}.{payload}.sig")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn newest_token_wins_and_expiring_ones_are_withheld() {
        let tokens = PodTokens::new();
        assert!(tokens.offer("UID-1", &token(2_000, "a")));
        assert_eq!(
            tokens.get("uid-1", at(1_000)),
            Some(token(2_000, "a")),
            "pod UIDs compare case-insensitively"
        );
        // An older token (a delayed call) does not replace a newer one.
        assert!(!tokens.offer("uid-1", &token(1_500, "old")));
        assert_eq!(tokens.get("uid-1", at(1_000)), Some(token(2_000, "a")));
        assert!(tokens.offer("uid-1", &token(3_000, "b")));
        assert_eq!(tokens.get("uid-1", at(1_000)), Some(token(3_000, "b")));
        // Within the margin of its expiry it is no longer sent.
        assert_eq!(tokens.get("uid-1", at(2_980)), None);
        assert_eq!(tokens.get("uid-2", at(1_000)), None);
        assert!(!tokens.offer("uid-2", ""));
        tokens.remove("UID-1");
        assert!(tokens.is_empty());
    }

    #[test]
    fn opaque_tokens_are_kept_latest_first() {
        let tokens = PodTokens::new();
        assert!(tokens.offer("u", "opaque-1"));
        assert!(tokens.offer("u", "opaque-2"));
        assert_eq!(tokens.get("u", at(0)).as_deref(), Some("opaque-2"));
        assert!(!format!("{tokens:?}").contains("opaque"));
    }

    #[test]
    fn claims_are_read_from_the_payload() {
        let claims = unverified_claims(&token(42, "id-1")).unwrap();
        assert_eq!(claims["exp"], 42);
        assert_eq!(claims["jti"], "id-1");
        assert!(unverified_claims("not-a-jwt").is_none());
        assert!(unverified_claims("a.!!!.c").is_none());
    }
}
