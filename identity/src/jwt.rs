//! JWT-SVIDs: minting and validation per the JWT-SVID specification,
//! written directly over ring (compact JWS only).
//!
//! Validation is deliberately narrow: the header may hold only `alg`, `kid`
//! and `typ`; `alg` must be one of the nine RS/ES/PS algorithms (never `none`
//! or HMAC); the key is looked up by `kid` in the bundle of the trust domain
//! named by `sub`, and must be of the type `alg` implies. Duplicate JSON
//! members are rejected so no two parsers can read one token differently.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::bundle::BundleSource;
use crate::id::{IdError, SpiffeId, TrustDomain};
use crate::keys::{KeyError, KeyType, PrivateKey, PublicKey, PublicKeyAlgorithm};

/// Tokens longer than this are rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Clock skew tolerated when checking `exp` and `nbf`.
pub const CLOCK_SKEW_LEEWAY: Duration = Duration::from_secs(10);

/// Claims minting sets itself; extra claims may not use these names.
pub const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Why a JWT-SVID could not be minted or validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Signing failed or the key cannot sign JWTs.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The TTL requested is zero.
    #[error("TTL must be greater than zero")]
    ZeroTtl,
    /// No audience, or an empty audience value, was given.
    #[error("at least one non-empty audience is required")]
    EmptyAudience,
    /// The key ID is empty.
    #[error("key ID must not be empty")]
    EmptyKeyId,
    /// An extra claim tries to set a registered claim.
    #[error("extra claim {0:?} would override a registered claim")]
    ReservedClaim(String),
    /// The token exceeds [`MAX_TOKEN_LEN`].
    #[error("token is {0} bytes long; at most {MAX_TOKEN_LEN} are accepted")]
    TooLong(usize),
    /// The token is not three base64url parts of JSON objects.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header has a member other than `alg`, `kid`, `typ`, or a bad value.
    #[error("invalid JOSE header: {0}")]
    InvalidHeader(String),
    /// `alg` is not one of the algorithms the spec allows.
    #[error("algorithm {0:?} is not allowed for JWT-SVIDs")]
    AlgorithmNotAllowed(String),
    /// `typ` is neither `JWT` nor `JOSE`.
    #[error("token type {0:?} is not JWT or JOSE")]
    InvalidType(String),
    /// The header has no `kid`, so no key can be chosen.
    #[error("token header has no key ID (kid)")]
    MissingKeyId,
    /// A required claim is absent.
    #[error("token has no {0:?} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or value.
    #[error("invalid {0:?} claim")]
    InvalidClaim(&'static str),
    /// `sub` is not a SPIFFE ID.
    #[error("subject is not a SPIFFE ID: {0}")]
    InvalidSubject(IdError),
    /// No bundle is known for the subject's trust domain.
    #[error("no JWT authorities for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The bundle has no key with the token's `kid`.
    #[error("no JWT authority with key ID {0:?}")]
    UnknownKeyId(String),
    /// The authority for `kid` is past its notAfter.
    #[error("JWT authority {0:?} has expired")]
    AuthorityExpired(String),
    /// The key's type does not match `alg`.
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyAlgorithmMismatch {
        /// The key ID.
        kid: String,
        /// The token's algorithm.
        alg: JwtAlgorithm,
    },
    /// The signature does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// The expected audience is not among the token's.
    #[error("token audience does not include {0:?}")]
    AudienceMismatch(String),
}

/// The JWS algorithms the JWT-SVID spec allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512 (verified with the `p521` crate).
    ES512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
}

impl JwtAlgorithm {
    /// The JOSE name, e.g. `ES256`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::ES512 => "ES512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
        }
    }

    /// The algorithm this crate signs with for a key type.
    pub fn for_key_type(key_type: KeyType) -> Self {
        match key_type {
            KeyType::EcP256 => JwtAlgorithm::ES256,
            KeyType::EcP384 => JwtAlgorithm::ES384,
            KeyType::Rsa2048 => JwtAlgorithm::RS256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = JwtError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "RS256" => JwtAlgorithm::RS256,
            "RS384" => JwtAlgorithm::RS384,
            "RS512" => JwtAlgorithm::RS512,
            "ES256" => JwtAlgorithm::ES256,
            "ES384" => JwtAlgorithm::ES384,
            "ES512" => JwtAlgorithm::ES512,
            "PS256" => JwtAlgorithm::PS256,
            "PS384" => JwtAlgorithm::PS384,
            "PS512" => JwtAlgorithm::PS512,
            other => return Err(JwtError::AlgorithmNotAllowed(other.to_owned())),
        })
    }
}

/// A minted JWT-SVID.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    /// The compact JWS. A bearer credential: do not log it.
    pub token: String,
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// The `aud` claim.
    pub audience: Vec<String>,
    /// The `exp` claim.
    pub expiry: SystemTime,
    /// The `iat` claim.
    pub issued_at: SystemTime,
    /// The `jti` claim: a random 128-bit identifier, for audit correlation.
    pub jti: String,
    /// The `kid` of the key that signed it.
    pub key_id: String,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("token", &"<redacted>")
            .field("spiffe_id", &self.spiffe_id)
            .field("audience", &self.audience)
            .field("expiry", &self.expiry)
            .field("issued_at", &self.issued_at)
            .field("jti", &self.jti)
            .finish()
    }
}

/// Mints a JWT-SVID for `sub`, signed by `key` and naming it `kid`.
///
/// The header is exactly `{"alg","kid","typ":"JWT"}` with ES256 for P-256,
/// ES384 for P-384 and RS256 for RSA keys. Claims are `sub`, `aud` (a string
/// for one audience, an array otherwise), `exp = now + ttl`, `iat = now`
/// (whole seconds), a random `jti`, plus `extra_claims`, which must not use a
/// registered claim name.
pub fn mint_jwt_svid(
    key: &PrivateKey,
    kid: &str,
    sub: &SpiffeId,
    audiences: &[String],
    ttl: Duration,
    extra_claims: &Map<String, Value>,
    now: SystemTime,
) -> Result<JwtSvid, JwtError> {
    mint_jwt_svid_with_issuer(key, kid, None, sub, audiences, ttl, extra_claims, now)
}

/// Like [`mint_jwt_svid`], adding an `iss` claim when `issuer` is given.
/// OIDC relying parties (cloud IAM federation, Vault) require `iss` to equal
/// the discovery document's issuer URL; only the operator's configuration
/// should decide it, which is why extra claims cannot set it.
#[allow(clippy::too_many_arguments)]
pub fn mint_jwt_svid_with_issuer(
    key: &PrivateKey,
    kid: &str,
    issuer: Option<&str>,
    sub: &SpiffeId,
    audiences: &[String],
    ttl: Duration,
    extra_claims: &Map<String, Value>,
    now: SystemTime,
) -> Result<JwtSvid, JwtError> {
    if ttl.is_zero() {
        return Err(JwtError::ZeroTtl);
    }
    if kid.is_empty() {
        return Err(JwtError::EmptyKeyId);
    }
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(JwtError::EmptyAudience);
    }
    if let Some(name) = extra_claims
        .keys()
        .find(|k| REGISTERED_CLAIMS.contains(&k.as_str()))
    {
        return Err(JwtError::ReservedClaim(name.clone()));
    }
    let iat = unix_secs(now);
    let exp = iat.saturating_add(ttl.as_secs().max(1));
    let mut jti_bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut jti_bytes)
        .map_err(|_| KeyError::Generation("random jti".to_owned()))?;
    let jti = URL_SAFE_NO_PAD.encode(jti_bytes);

    let alg = JwtAlgorithm::for_key_type(key.key_type());
    let header = format!(
        r#"{{"alg":"{}","kid":{},"typ":"JWT"}}"#,
        alg.as_str(),
        Value::from(kid)
    );
    let mut claims = extra_claims.clone();
    if let Some(iss) = issuer {
        claims.insert("iss".into(), Value::from(iss));
    }
    claims.insert("sub".into(), Value::from(sub.as_str()));
    claims.insert(
        "aud".into(),
        match audiences {
            [one] => Value::from(one.as_str()),
            many => Value::from(many.to_vec()),
        },
    );
    claims.insert("exp".into(), Value::from(exp));
    claims.insert("iat".into(), Value::from(iat));
    claims.insert("jti".into(), Value::from(jti.as_str()));
    let payload = serde_json::to_vec(&Value::Object(claims))
        .map_err(|e| JwtError::Malformed(e.to_string()))?;

    let mut token = URL_SAFE_NO_PAD.encode(header.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign_jws(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));

    Ok(JwtSvid {
        token,
        spiffe_id: sub.clone(),
        audience: audiences.to_vec(),
        expiry: UNIX_EPOCH + Duration::from_secs(exp),
        issued_at: UNIX_EPOCH + Duration::from_secs(iat),
        jti,
        key_id: kid.to_owned(),
    })
}

/// A JWT-SVID that passed [`validate_jwt_svid`].
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// The `aud` claim as a list.
    pub audience: Vec<String>,
    /// The `exp` claim.
    pub expiry: SystemTime,
    /// All claims, registered and private (what ValidateJWTSVID returns).
    pub claims: Map<String, Value>,
    /// The `kid` that verified it.
    pub key_id: String,
    /// The algorithm that verified it.
    pub algorithm: JwtAlgorithm,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

/// Validates a JWT-SVID at `now` for `expected_audience`, with the key named
/// by its `kid` in the bundle (from `bundles`) of its `sub`'s trust domain.
pub fn validate_jwt_svid(
    token: &str,
    expected_audience: &str,
    bundles: &impl BundleSource,
    now: SystemTime,
) -> Result<ValidatedJwt, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::TooLong(token.len()));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".to_owned(),
        ));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
    };

    let header: Header = serde_json::from_slice(&decode(header_b64, "header")?)
        .map_err(|e| JwtError::InvalidHeader(e.to_string()))?;
    let alg: JwtAlgorithm = header.alg.parse()?;
    if let Some(typ) = &header.typ
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(JwtError::InvalidType(typ.clone()));
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(JwtError::MissingKeyId)?;

    let claims = parse_object_strict(&decode(payload_b64, "payload")?)?;
    let sub = claims
        .get("sub")
        .ok_or(JwtError::MissingClaim("sub"))?
        .as_str()
        .ok_or(JwtError::InvalidClaim("sub"))?;
    let spiffe_id = SpiffeId::parse(sub).map_err(JwtError::InvalidSubject)?;

    let td = spiffe_id.trust_domain();
    let bundle = bundles
        .bundle(td)
        .ok_or_else(|| JwtError::NoBundle(td.clone()))?;
    let authority = bundle
        .jwt_authority(&kid)
        .ok_or_else(|| JwtError::UnknownKeyId(kid.clone()))?;
    if authority.not_after.is_some_and(|t| now >= t) {
        return Err(JwtError::AuthorityExpired(kid));
    }
    let signature = decode(sig_b64, "signature")?;
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    verify_signature(
        alg,
        &authority.public_key,
        &kid,
        signed.as_bytes(),
        &signature,
    )?;

    let now_secs = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let leeway = CLOCK_SKEW_LEEWAY.as_secs_f64();
    let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if now_secs >= exp + leeway {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")?
        && now_secs + leeway < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    numeric_date(&claims, "iat")?;

    let audience = match claims.get("aud").ok_or(JwtError::MissingClaim("aud"))? {
        Value::String(one) => vec![one.clone()],
        Value::Array(many) => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or(JwtError::InvalidClaim("aud"))?,
        _ => return Err(JwtError::InvalidClaim("aud")),
    };
    if audience.is_empty() {
        return Err(JwtError::MissingClaim("aud"));
    }
    if expected_audience.is_empty() || !audience.iter().any(|a| a == expected_audience) {
        return Err(JwtError::AudienceMismatch(expected_audience.to_owned()));
    }

    Ok(ValidatedJwt {
        spiffe_id,
        audience,
        // exp is finite and non-negative here (numeric_date checked it).
        expiry: UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e15)),
        claims,
        key_id: kid,
        algorithm: alg,
    })
}

fn verify_signature(
    alg: JwtAlgorithm,
    key: &PublicKey,
    kid: &str,
    message: &[u8],
    sig: &[u8],
) -> Result<(), JwtError> {
    let mismatch = || JwtError::KeyAlgorithmMismatch {
        kid: kid.to_owned(),
        alg,
    };
    let ring_alg: &'static dyn signature::VerificationAlgorithm = match (alg, key.algorithm()) {
        (JwtAlgorithm::ES256, PublicKeyAlgorithm::EcP256) => &signature::ECDSA_P256_SHA256_FIXED,
        (JwtAlgorithm::ES384, PublicKeyAlgorithm::EcP384) => &signature::ECDSA_P384_SHA384_FIXED,
        (JwtAlgorithm::ES512, PublicKeyAlgorithm::EcP521) => {
            return verify_es512(key, message, sig);
        }
        (JwtAlgorithm::RS256, PublicKeyAlgorithm::Rsa { .. }) => {
            &signature::RSA_PKCS1_2048_8192_SHA256
        }
        (JwtAlgorithm::RS384, PublicKeyAlgorithm::Rsa { .. }) => {
            &signature::RSA_PKCS1_2048_8192_SHA384
        }
        (JwtAlgorithm::RS512, PublicKeyAlgorithm::Rsa { .. }) => {
            &signature::RSA_PKCS1_2048_8192_SHA512
        }
        (JwtAlgorithm::PS256, PublicKeyAlgorithm::Rsa { .. }) => {
            &signature::RSA_PSS_2048_8192_SHA256
        }
        (JwtAlgorithm::PS384, PublicKeyAlgorithm::Rsa { .. }) => {
            &signature::RSA_PSS_2048_8192_SHA384
        }
        (JwtAlgorithm::PS512, PublicKeyAlgorithm::Rsa { .. }) => {
            &signature::RSA_PSS_2048_8192_SHA512
        }
        _ => return Err(mismatch()),
    };
    if key.verify_with(ring_alg, message, sig) {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

/// ES512 through the `p521` crate, since ring has no P-521.
fn verify_es512(key: &PublicKey, message: &[u8], sig: &[u8]) -> Result<(), JwtError> {
    use p521::ecdsa::signature::Verifier as _;
    let vk = p521::ecdsa::VerifyingKey::from_sec1_bytes(key.raw())
        .map_err(|_| JwtError::BadSignature)?;
    let sig = p521::ecdsa::Signature::from_slice(sig).map_err(|_| JwtError::BadSignature)?;
    vk.verify(message, &sig).map_err(|_| JwtError::BadSignature)
}

/// A NumericDate claim as seconds; `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(secs) if secs.is_finite() && secs >= 0.0 => Ok(Some(secs)),
            _ => Err(JwtError::InvalidClaim(name)),
        },
    }
}

/// Parses a JSON object, rejecting duplicate member names at the top level
/// (serde_json would silently keep the last one).
fn parse_object_strict(bytes: &[u8]) -> Result<Map<String, Value>, JwtError> {
    struct Strict(Map<String, Value>);

    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Strict;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut access: A,
                ) -> Result<Strict, A::Error> {
                    let mut map = Map::new();
                    while let Some((k, v)) = access.next_entry::<String, Value>()? {
                        if map.contains_key(&k) {
                            return Err(serde::de::Error::custom(format!("duplicate claim {k:?}")));
                        }
                        map.insert(k, v);
                    }
                    Ok(Strict(map))
                }
            }
            d.deserialize_map(V)
        }
    }

    serde_json::from_slice::<Strict>(bytes)
        .map(|s| s.0)
        .map_err(|e| JwtError::Malformed(format!("claims: {e}")))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{BundleSet, JwtAuthority, TrustBundle};
    use proptest::prelude::*;
    use serde_json::json;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn sub() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/ns/web").unwrap()
    }

    fn bundle_with(kid: &str, key: &PublicKey) -> TrustBundle {
        let mut b = TrustBundle::new(TrustDomain::new("example.org").unwrap());
        b.jwt_authorities.push(JwtAuthority {
            key_id: kid.to_owned(),
            public_key: key.clone(),
            not_after: None,
        });
        b
    }

    fn aud(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Builds a token from raw header and claims JSON, signed by `key`.
    fn raw_token(key: &PrivateKey, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
        );
        let sig = key.sign_jws(signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn good_claims() -> Value {
        json!({"sub": sub().as_str(), "aud": "svc", "exp": unix_secs(now()) + 300, "iat": unix_secs(now())})
    }

    #[test]
    fn mints_and_validates_with_each_key_type() {
        for (key_type, alg) in [
            (KeyType::EcP256, JwtAlgorithm::ES256),
            (KeyType::EcP384, JwtAlgorithm::ES384),
            (KeyType::Rsa2048, JwtAlgorithm::RS256),
        ] {
            let key = PrivateKey::generate(key_type).unwrap();
            let mut extra = Map::new();
            extra.insert("team".into(), json!("payments"));
            let svid = mint_jwt_svid(
                &key,
                "k1",
                &sub(),
                &aud(&["svc"]),
                Duration::from_secs(300),
                &extra,
                now(),
            )
            .unwrap();
            assert_eq!(svid.expiry, now() + Duration::from_secs(300));
            assert_eq!(svid.issued_at, now());
            assert_eq!(svid.token.split('.').count(), 3);

            let header: Value = serde_json::from_slice(
                &URL_SAFE_NO_PAD
                    .decode(svid.token.split('.').next().unwrap())
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(
                header,
                json!({"alg": alg.as_str(), "kid": "k1", "typ": "JWT"})
            );

            let v = validate_jwt_svid(
                &svid.token,
                "svc",
                &bundle_with("k1", key.public_key()),
                now(),
            )
            .unwrap();
            assert_eq!(v.spiffe_id, sub());
            assert_eq!(v.algorithm, alg);
            assert_eq!(v.key_id, "k1");
            assert_eq!(v.audience, aud(&["svc"]));
            assert_eq!(v.expiry, svid.expiry);
            assert_eq!(
                v.claims["aud"],
                json!("svc"),
                "a single audience is a string"
            );
            assert_eq!(v.claims["team"], json!("payments"));
            assert_eq!(v.claims["jti"], json!(svid.jti));
            assert_eq!(v.claims["iat"], json!(unix_secs(now())));
            assert!(!format!("{svid:?}").contains(&svid.token));
        }
    }

    #[test]
    fn several_audiences_are_an_array() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let svid = mint_jwt_svid(
            &key,
            "k",
            &sub(),
            &aud(&["a", "b"]),
            Duration::from_secs(60),
            &Map::new(),
            now(),
        )
        .unwrap();
        let b = bundle_with("k", key.public_key());
        let v = validate_jwt_svid(&svid.token, "b", &b, now()).unwrap();
        assert_eq!(v.claims["aud"], json!(["a", "b"]));
        assert_eq!(v.audience, aud(&["a", "b"]));
        assert_eq!(
            validate_jwt_svid(&svid.token, "c", &b, now()),
            Err(JwtError::AudienceMismatch("c".into()))
        );
        assert_eq!(
            validate_jwt_svid(&svid.token, "", &b, now()),
            Err(JwtError::AudienceMismatch(String::new()))
        );
    }

    #[test]
    fn issuer_is_set_only_when_configured() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let b = bundle_with("k", key.public_key());
        let with = mint_jwt_svid_with_issuer(
            &key,
            "k",
            Some("https://oidc.example.org"),
            &sub(),
            &aud(&["a"]),
            Duration::from_secs(60),
            &Map::new(),
            now(),
        )
        .unwrap();
        let v = validate_jwt_svid(&with.token, "a", &b, now()).unwrap();
        assert_eq!(v.claims["iss"], json!("https://oidc.example.org"));
        let without = mint_jwt_svid(
            &key,
            "k",
            &sub(),
            &aud(&["a"]),
            Duration::from_secs(60),
            &Map::new(),
            now(),
        )
        .unwrap();
        let v = validate_jwt_svid(&without.token, "a", &b, now()).unwrap();
        assert!(!v.claims.contains_key("iss"));
    }

    #[test]
    fn minting_rejects_bad_input() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let m = |kid: &str, a: &[&str], ttl: u64, extra: &Map<String, Value>| {
            mint_jwt_svid(
                &key,
                kid,
                &sub(),
                &aud(a),
                Duration::from_secs(ttl),
                extra,
                now(),
            )
        };
        let none = Map::new();
        assert_eq!(m("k", &["a"], 0, &none), Err(JwtError::ZeroTtl));
        assert_eq!(m("k", &[], 60, &none), Err(JwtError::EmptyAudience));
        assert_eq!(m("k", &["a", ""], 60, &none), Err(JwtError::EmptyAudience));
        assert_eq!(m("", &["a"], 60, &none), Err(JwtError::EmptyKeyId));
        for name in REGISTERED_CLAIMS {
            let mut extra = Map::new();
            extra.insert(name.into(), json!("x"));
            assert_eq!(
                m("k", &["a"], 60, &extra),
                Err(JwtError::ReservedClaim(name.into()))
            );
        }
    }

    #[test]
    fn expiry_and_not_before_use_the_leeway() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let b = bundle_with("k", key.public_key());
        let svid = mint_jwt_svid(
            &key,
            "k",
            &sub(),
            &aud(&["a"]),
            Duration::from_secs(60),
            &Map::new(),
            now(),
        )
        .unwrap();
        let last_ok = svid.expiry + CLOCK_SKEW_LEEWAY - Duration::from_secs(1);
        assert!(validate_jwt_svid(&svid.token, "a", &b, last_ok).is_ok());
        assert_eq!(
            validate_jwt_svid(&svid.token, "a", &b, svid.expiry + CLOCK_SKEW_LEEWAY),
            Err(JwtError::Expired)
        );

        let mut claims = good_claims();
        claims["nbf"] = json!(unix_secs(now()) + 60);
        let token = raw_token(&key, &json!({"alg": "ES256", "kid": "k"}), &claims);
        assert_eq!(
            validate_jwt_svid(&token, "svc", &b, now()),
            Err(JwtError::NotYetValid)
        );
        assert!(validate_jwt_svid(&token, "svc", &b, now() + Duration::from_secs(55)).is_ok());
    }

    #[test]
    fn rejects_each_header_rule() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let b = bundle_with("k", key.public_key());
        let claims = good_claims();
        let check = |header: Value, want: JwtError| {
            let token = raw_token(&key, &header, &claims);
            assert_eq!(
                validate_jwt_svid(&token, "svc", &b, now()),
                Err(want),
                "{header}"
            );
        };
        // Baseline passes, with and without typ, and with typ JOSE.
        for h in [
            json!({"alg": "ES256", "kid": "k", "typ": "JWT"}),
            json!({"alg": "ES256", "kid": "k"}),
            json!({"alg": "ES256", "kid": "k", "typ": "JOSE"}),
        ] {
            let token = raw_token(&key, &h, &claims);
            assert!(validate_jwt_svid(&token, "svc", &b, now()).is_ok(), "{h}");
        }
        check(
            json!({"alg": "none", "kid": "k"}),
            JwtError::AlgorithmNotAllowed("none".into()),
        );
        check(
            json!({"alg": "HS256", "kid": "k"}),
            JwtError::AlgorithmNotAllowed("HS256".into()),
        );
        check(
            json!({"alg": "EdDSA", "kid": "k"}),
            JwtError::AlgorithmNotAllowed("EdDSA".into()),
        );
        check(
            json!({"alg": "es256", "kid": "k"}),
            JwtError::AlgorithmNotAllowed("es256".into()),
        );
        check(
            json!({"alg": "ES256", "kid": "k", "typ": "at+jwt"}),
            JwtError::InvalidType("at+jwt".into()),
        );
        check(json!({"alg": "ES256"}), JwtError::MissingKeyId);
        check(json!({"alg": "ES256", "kid": ""}), JwtError::MissingKeyId);
        check(
            json!({"alg": "ES256", "kid": "nope"}),
            JwtError::UnknownKeyId("nope".into()),
        );
        check(
            json!({"alg": "RS256", "kid": "k"}),
            JwtError::KeyAlgorithmMismatch {
                kid: "k".into(),
                alg: JwtAlgorithm::RS256,
            },
        );
        check(
            json!({"alg": "ES384", "kid": "k"}),
            JwtError::KeyAlgorithmMismatch {
                kid: "k".into(),
                alg: JwtAlgorithm::ES384,
            },
        );
        for extra in [
            json!({"alg": "ES256", "kid": "k", "jku": "https://x"}),
            json!({"alg": "ES256", "kid": "k", "crit": ["b64"]}),
        ] {
            let token = raw_token(&key, &extra, &claims);
            assert!(
                matches!(
                    validate_jwt_svid(&token, "svc", &b, now()),
                    Err(JwtError::InvalidHeader(_))
                ),
                "{extra}"
            );
        }
        let no_alg = raw_token(&key, &json!({"kid": "k"}), &claims);
        assert!(
            matches!(validate_jwt_svid(&no_alg, "svc", &b, now()), Err(JwtError::InvalidHeader(m)) if m.contains("alg"))
        );

        // Duplicate header members are refused rather than resolved.
        let dup = format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","alg":"none","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        assert!(matches!(
            validate_jwt_svid(&dup, "svc", &b, now()),
            Err(JwtError::InvalidHeader(_))
        ));
    }

    #[test]
    fn rejects_each_claim_rule() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let b = bundle_with("k", key.public_key());
        let header = json!({"alg": "ES256", "kid": "k", "typ": "JWT"});
        let check = |mutate: &dyn Fn(&mut Map<String, Value>), want: JwtError| {
            let mut claims = good_claims();
            mutate(claims.as_object_mut().unwrap());
            let token = raw_token(&key, &header, &claims);
            assert_eq!(validate_jwt_svid(&token, "svc", &b, now()), Err(want));
        };
        check(&|c| drop(c.remove("sub")), JwtError::MissingClaim("sub"));
        check(
            &|c| drop(c.insert("sub".into(), json!(42))),
            JwtError::InvalidClaim("sub"),
        );
        check(
            &|c| drop(c.insert("sub".into(), json!("https://example.org/x"))),
            JwtError::InvalidSubject(IdError::WrongScheme),
        );
        check(
            &|c| drop(c.insert("sub".into(), json!("spiffe://other.org/x"))),
            JwtError::NoBundle(TrustDomain::new("other.org").unwrap()),
        );
        check(&|c| drop(c.remove("exp")), JwtError::MissingClaim("exp"));
        check(
            &|c| drop(c.insert("exp".into(), json!("soon"))),
            JwtError::InvalidClaim("exp"),
        );
        check(
            &|c| drop(c.insert("exp".into(), json!(-5))),
            JwtError::InvalidClaim("exp"),
        );
        check(
            &|c| drop(c.insert("exp".into(), json!(unix_secs(now()) - 60))),
            JwtError::Expired,
        );
        check(
            &|c| drop(c.insert("iat".into(), json!("yesterday"))),
            JwtError::InvalidClaim("iat"),
        );
        check(&|c| drop(c.remove("aud")), JwtError::MissingClaim("aud"));
        check(
            &|c| drop(c.insert("aud".into(), json!([]))),
            JwtError::MissingClaim("aud"),
        );
        check(
            &|c| drop(c.insert("aud".into(), json!(["svc", 1]))),
            JwtError::InvalidClaim("aud"),
        );
        check(
            &|c| drop(c.insert("aud".into(), json!({"svc": true}))),
            JwtError::InvalidClaim("aud"),
        );
        check(
            &|c| drop(c.insert("aud".into(), json!("other"))),
            JwtError::AudienceMismatch("svc".into()),
        );
        // Fractional NumericDates are allowed.
        let mut claims = good_claims();
        claims["exp"] = json!(unix_secs(now()) as f64 + 30.5);
        assert!(validate_jwt_svid(&raw_token(&key, &header, &claims), "svc", &b, now()).is_ok());
    }

    #[test]
    fn rejects_bad_signatures_and_structure() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let other = PrivateKey::generate(KeyType::EcP256).unwrap();
        let b = bundle_with("k", key.public_key());
        let svid = mint_jwt_svid(
            &key,
            "k",
            &sub(),
            &aud(&["svc"]),
            Duration::from_secs(60),
            &Map::new(),
            now(),
        )
        .unwrap();

        // Same kid, different key.
        let forged = mint_jwt_svid(
            &other,
            "k",
            &sub(),
            &aud(&["svc"]),
            Duration::from_secs(60),
            &Map::new(),
            now(),
        )
        .unwrap();
        assert_eq!(
            validate_jwt_svid(&forged.token, "svc", &b, now()),
            Err(JwtError::BadSignature)
        );

        // Claims swapped under a valid signature.
        let parts: Vec<&str> = svid.token.split('.').collect();
        let mut claims = good_claims();
        claims["sub"] = json!("spiffe://example.org/admin");
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            validate_jwt_svid(&swapped, "svc", &b, now()),
            Err(JwtError::BadSignature)
        );

        // Duplicate claims are refused even when signed.
        let header_b64 = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k"}"#);
        let payload = format!(
            r#"{{"sub":"{}","sub":"spiffe://example.org/admin","aud":"svc","exp":{}}}"#,
            sub(),
            unix_secs(now()) + 60
        );
        let input = format!("{header_b64}.{}", URL_SAFE_NO_PAD.encode(payload));
        let sig = key.sign_jws(input.as_bytes()).unwrap();
        let dup = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert!(matches!(
            validate_jwt_svid(&dup, "svc", &b, now()),
            Err(JwtError::Malformed(_))
        ));

        let malformed = |t: &str| {
            matches!(
                validate_jwt_svid(t, "svc", &b, now()),
                Err(JwtError::Malformed(_))
            )
        };
        assert!(malformed(""));
        assert!(malformed("a.b"));
        assert!(malformed(&format!("{}.x", svid.token)));
        assert!(malformed(&format!(
            "{}=.{}.{}",
            parts[0], parts[1], parts[2]
        )));
        assert!(malformed(&format!(
            "{}.{}.{}=",
            parts[0], parts[1], parts[2]
        )));
        assert!(malformed(&format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("[1]"),
            parts[2]
        )));

        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(
            validate_jwt_svid(&long, "svc", &b, now()),
            Err(JwtError::TooLong(MAX_TOKEN_LEN + 1))
        );

        // An expired authority no longer vouches for tokens.
        let mut expiring = b.clone();
        expiring.jwt_authorities[0].not_after = Some(now());
        assert_eq!(
            validate_jwt_svid(&svid.token, "svc", &expiring, now()),
            Err(JwtError::AuthorityExpired("k".into()))
        );
        // A bundle set finds the right domain.
        let set: BundleSet = [b.clone()].into_iter().collect();
        assert!(validate_jwt_svid(&svid.token, "svc", &set, now()).is_ok());
    }

    #[test]
    fn verifies_every_rsa_algorithm() {
        let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
        let ring_key = ring::signature::RsaKeyPair::from_pkcs8(&key.to_pkcs8_der()).unwrap();
        let b = bundle_with("r", key.public_key());
        let rng = SystemRandom::new();
        let paddings: [(&str, &'static dyn ring::signature::RsaEncoding); 6] = [
            ("RS256", &ring::signature::RSA_PKCS1_SHA256),
            ("RS384", &ring::signature::RSA_PKCS1_SHA384),
            ("RS512", &ring::signature::RSA_PKCS1_SHA512),
            ("PS256", &ring::signature::RSA_PSS_SHA256),
            ("PS384", &ring::signature::RSA_PSS_SHA384),
            ("PS512", &ring::signature::RSA_PSS_SHA512),
        ];
        for (alg, padding) in paddings {
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&json!({"alg": alg, "kid": "r"})).unwrap()),
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good_claims()).unwrap())
            );
            let mut sig = vec![0u8; ring_key.public().modulus_len()];
            ring_key
                .sign(padding, &rng, input.as_bytes(), &mut sig)
                .unwrap();
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            let v = validate_jwt_svid(&token, "svc", &b, now()).unwrap();
            assert_eq!(v.algorithm.as_str(), alg);
        }
        // A PKCS#1 signature presented as PSS fails.
        let token = raw_token(&key, &json!({"alg": "PS256", "kid": "r"}), &good_claims());
        assert_eq!(
            validate_jwt_svid(&token, "svc", &b, now()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn verifies_es512() {
        use p521::ecdsa::signature::RandomizedSigner as _;
        let secret = [7u8; 66];
        let sk = p521::ecdsa::SigningKey::from_slice(&secret[1..]).unwrap();
        let vk = p521::ecdsa::VerifyingKey::from(&sk);
        let point = vk.to_encoded_point(false);
        let public =
            PublicKey::from_ec_point(PublicKeyAlgorithm::EcP521, point.as_bytes()).unwrap();
        let b = bundle_with("p", &public);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES512","kid":"p","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&good_claims()).unwrap())
        );
        let sig: p521::ecdsa::Signature =
            sk.sign_with_rng(&mut rsa::rand_core::OsRng, input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        let v = validate_jwt_svid(&token, "svc", &b, now()).unwrap();
        assert_eq!(v.algorithm, JwtAlgorithm::ES512);
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 3;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(
            validate_jwt_svid(&bad, "svc", &b, now()),
            Err(JwtError::BadSignature)
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_-]{1,10}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_tokens_never_panic(token in any::<String>(), audience in any::<String>()) {
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            let b = bundle_with("k", key.public_key());
            prop_assert!(validate_jwt_svid(&token, &audience, &b, now()).is_err());
        }

        #[test]
        fn token_shaped_garbage_never_panics(
            header in proptest::collection::vec(any::<u8>(), 0..64),
            payload in "\\{[ -~]{0,80}\\}",
            sig in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            let b = bundle_with("k", key.public_key());
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(sig)
            );
            prop_assert!(validate_jwt_svid(&token, "svc", &b, now()).is_err());
        }

        #[test]
        fn valid_tokens_round_trip(
            path in proptest::collection::vec(segment(), 1..4),
            audiences in proptest::collection::vec("[ -~]{1,20}", 1..4),
            extra in proptest::collection::btree_map("x_[a-z]{1,8}", "[ -~]{0,20}", 0..4),
            ttl in 1u64..100_000,
        ) {
            let key = PrivateKey::generate(KeyType::EcP256).unwrap();
            let td = TrustDomain::new("example.org").unwrap();
            let id = SpiffeId::from_path(&td, &format!("/{}", path.join("/"))).unwrap();
            let extra: Map<String, Value> = extra.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
            let svid = mint_jwt_svid(&key, "kid-1", &id, &audiences, Duration::from_secs(ttl), &extra, now()).unwrap();
            let b = bundle_with("kid-1", key.public_key());
            for a in &audiences {
                let v = validate_jwt_svid(&svid.token, a, &b, now()).unwrap();
                prop_assert_eq!(&v.spiffe_id, &id);
                prop_assert_eq!(&v.audience, &audiences);
                prop_assert_eq!(v.expiry, svid.expiry);
                for (k, val) in &extra {
                    prop_assert_eq!(&v.claims[k], val);
                }
            }
        }
    }
}
