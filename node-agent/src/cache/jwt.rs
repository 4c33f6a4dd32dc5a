//! JWT-SVIDs, fetched on demand and kept per workload, identity and
//! audience set until half their lifetime has passed, or until the key that
//! signed them is tainted.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::error::CacheError;
use super::key::WorkloadKey;
use super::seams::{DesiredIdentity, JwtSignRequest, SignOutcome, SignedJwt, Signer};
use super::taint::jwt_key_id;

type JwtKey = (WorkloadKey, String, Vec<String>);

/// A cached token with the `kid` that signed it, read once on insertion.
struct CachedJwt {
    jwt: Arc<SignedJwt>,
    kid: Option<String>,
}

impl CachedJwt {
    fn new(jwt: Arc<SignedJwt>) -> Self {
        let kid = jwt_key_id(&jwt.token);
        Self { jwt, kid }
    }

    fn tainted(&self, tainted: &BTreeSet<String>) -> bool {
        self.kid.as_ref().is_some_and(|kid| tainted.contains(kid))
    }
}

/// Tokens across workloads, at most `capacity` of them.
pub(crate) struct JwtCache {
    entries: Mutex<HashMap<JwtKey, CachedJwt>>,
    capacity: usize,
}

impl JwtCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// One token per `desired` identity (in their order, default first),
    /// reusing cached ones; when the issuer cannot be reached, a cached
    /// token that has not expired is served instead of an error. Tokens
    /// signed by a key in `tainted` (`kid`s) are never served again.
    pub(crate) async fn fetch(
        &self,
        signer: &dyn Signer,
        key: &WorkloadKey,
        desired: &[DesiredIdentity],
        audiences: &[String],
        tainted: &BTreeSet<String>,
        now: SystemTime,
    ) -> Result<Vec<Arc<SignedJwt>>, CacheError> {
        let mut audiences = audiences.to_vec();
        audiences.sort();
        audiences.dedup();

        let mut fresh = Vec::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.entries.lock().map_err(|_| CacheError::Stopped)?;
            for identity in desired {
                let cache_key = (key.clone(), identity.name.clone(), audiences.clone());
                match cache.get(&cache_key) {
                    Some(cached) if cached.tainted(tainted) => {
                        // Dropped, so not even an unreachable issuer brings
                        // it back.
                        cache.remove(&cache_key);
                        missing.push(identity.name.clone());
                    }
                    Some(CachedJwt { jwt, .. })
                        if jwt.spiffe_id == identity.spiffe_id && half_life_ahead(jwt, now) =>
                    {
                        fresh.push((identity.name.clone(), jwt.clone()));
                    }
                    _ => missing.push(identity.name.clone()),
                }
            }
        }

        let mut denials = Vec::new();
        if !missing.is_empty() {
            let requests = missing
                .iter()
                .map(|name| JwtSignRequest {
                    workload: key.0.clone(),
                    workload_identity: name.clone(),
                    audiences: audiences.clone(),
                })
                .collect();
            match signer.sign_jwt(requests).await {
                Ok(outcomes) => {
                    let mut cache = self.entries.lock().map_err(|_| CacheError::Stopped)?;
                    for (name, outcome) in missing.iter().zip(outcomes) {
                        let cache_key = (key.clone(), name.clone(), audiences.clone());
                        match outcome {
                            SignOutcome::Issued(jwt) => {
                                let jwt = Arc::new(jwt);
                                cache.insert(cache_key, CachedJwt::new(jwt.clone()));
                                fresh.push((name.clone(), jwt));
                            }
                            SignOutcome::Denied(denial) => {
                                cache.remove(&cache_key);
                                denials.push(denial);
                            }
                        }
                    }
                    prune_jwts(&mut cache, now, tainted, self.capacity);
                }
                Err(error) => {
                    // Serve what is still valid rather than fail the caller.
                    let cache = self.entries.lock().map_err(|_| CacheError::Stopped)?;
                    for name in &missing {
                        let cache_key = (key.clone(), name.clone(), audiences.clone());
                        if let Some(cached) = cache.get(&cache_key)
                            && cached.jwt.expires_at > now
                            && !cached.tainted(tainted)
                        {
                            fresh.push((name.clone(), cached.jwt.clone()));
                        }
                    }
                    if fresh.is_empty() {
                        return Err(error.into());
                    }
                }
            }
        }
        if fresh.is_empty() {
            let reason = denials
                .first()
                .map(|d| d.message.clone())
                .unwrap_or_else(|| "the issuer refused every identity".into());
            return Err(CacheError::NoIdentity(reason));
        }
        // Keep the policy's order: the first is the default identity.
        let order: HashMap<&str, usize> = desired
            .iter()
            .enumerate()
            .map(|(i, d)| (d.name.as_str(), i))
            .collect();
        fresh.sort_by_key(|(name, _)| order.get(name.as_str()).copied().unwrap_or(usize::MAX));
        Ok(fresh.into_iter().map(|(_, jwt)| jwt).collect())
    }
}

fn half_life_ahead(jwt: &SignedJwt, now: SystemTime) -> bool {
    let lifetime = jwt
        .expires_at
        .duration_since(jwt.issued_at)
        .unwrap_or(Duration::ZERO);
    now < jwt.issued_at + lifetime / 2
}

fn prune_jwts(
    cache: &mut HashMap<JwtKey, CachedJwt>,
    now: SystemTime,
    tainted: &BTreeSet<String>,
    capacity: usize,
) {
    cache.retain(|_, cached| cached.jwt.expires_at > now && !cached.tainted(tainted));
    if cache.len() > capacity {
        let mut by_expiry: Vec<_> = cache
            .iter()
            .map(|(key, cached)| (cached.jwt.expires_at, key.clone()))
            .collect();
        by_expiry.sort_by_key(|(expiry, _)| *expiry);
        for (_, key) in by_expiry.into_iter().take(cache.len() - capacity) {
            cache.remove(&key);
        }
    }
}
