//! SPIFFE trust bundles: the X.509 and JWT authorities of one trust domain,
//! and a [`BundleSet`] of the own plus federated trust domains.
//!
//! Encodings:
//! - SPIFFE bundle JSON ([`TrustBundle::to_spiffe_json`]): an RFC 7517 JWK
//!   set with `spiffe_sequence` and `spiffe_refresh_hint`; X.509 authorities
//!   are `use: x509-svid` entries with one `x5c` certificate and no `kid`, JWT
//!   authorities are `use: jwt-svid` entries with a `kid`. This is what
//!   federation and the operator's bundle ConfigMap carry.
//! - Plain JWKS ([`TrustBundle::to_jwks_json`]): JWT authorities only, each
//!   with `kid`, `alg` and `use: sig`, no SPIFFE members. This is the Workload
//!   API's JWT bundle format (as SPIRE serves it, minus `use`, which SPIFFE
//!   clients accept) and also a valid OIDC discovery `jwks_uri` document.
//! - PEM and concatenated DER: X.509 authorities only; the latter is the
//!   Workload API's `bundle` field.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use crate::id::TrustDomain;
use crate::keys::{KeyError, PublicKey, PublicKeyAlgorithm};
use crate::x509::{self, CertificateDer, X509BundleSource, X509Error};

/// Why a bundle could not be parsed or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The document is not valid JSON or not a JSON object.
    #[error("bundle is not a JSON object: {0}")]
    Json(String),
    /// The `keys` member is missing or not an array.
    #[error("bundle has no \"keys\" array")]
    MissingKeys,
    /// A `spiffe_sequence` or `spiffe_refresh_hint` member is not a non-negative integer.
    #[error("bundle member {0:?} must be a non-negative integer")]
    InvalidMember(&'static str),
    /// An entry is malformed (details in the message).
    #[error("bundle key #{index}: {reason}")]
    InvalidKey {
        /// Position in the `keys` array.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two JWT authorities share a `kid`.
    #[error("duplicate JWT authority key ID {0:?}")]
    DuplicateKeyId(String),
    /// An X.509 authority is malformed or its key cannot be expressed as a JWK.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// A public key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A JWT signing authority: a public key named by its `kid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtAuthority {
    /// The `kid` tokens name in their header.
    pub key_id: String,
    /// The verification key.
    pub public_key: PublicKey,
    /// When the key stops being trusted, when known. JWKS documents do not
    /// carry it, so parsed authorities have `None`.
    pub not_after: Option<SystemTime>,
}

/// The trust material of one trust domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    /// Whose authorities these are.
    pub trust_domain: TrustDomain,
    /// X.509 CA certificates (DER) that SVIDs of the trust domain chain to.
    pub x509_authorities: Vec<CertificateDer<'static>>,
    /// Keys that sign the trust domain's JWT-SVIDs.
    pub jwt_authorities: Vec<JwtAuthority>,
    /// `spiffe_sequence`: increases on every change.
    pub sequence: u64,
    /// `spiffe_refresh_hint`: how often consumers should re-fetch.
    pub refresh_hint: Option<Duration>,
}

/// Looks up the bundle of a trust domain. Implemented by [`TrustBundle`]
/// (answers for its own trust domain only) and [`BundleSet`]; the agent can
/// implement it over its cache.
pub trait BundleSource {
    /// The bundle of `trust_domain`, if known.
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle>;
}

impl BundleSource for TrustBundle {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        (self.trust_domain == *trust_domain).then_some(self)
    }
}

impl<T: BundleSource + ?Sized> BundleSource for &T {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        (**self).bundle(trust_domain)
    }
}

impl<T: BundleSource + ?Sized> BundleSource for Arc<T> {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        (**self).bundle(trust_domain)
    }
}

// Any bundle source serves X.509 verification (the trait lives with the
// verifier, so x509 does not depend on bundles).
impl<T: BundleSource + ?Sized> X509BundleSource for T {
    fn x509_authorities(&self, trust_domain: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.bundle(trust_domain)
            .map(|b| b.x509_authorities.as_slice())
    }
}

impl TrustBundle {
    /// An empty bundle (which means "trust nothing from this domain").
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    /// The JWT authority with key ID `key_id`.
    pub fn jwt_authority(&self, key_id: &str) -> Option<&JwtAuthority> {
        self.jwt_authorities.iter().find(|a| a.key_id == key_id)
    }

    /// Encodes the SPIFFE bundle JSON document.
    pub fn to_spiffe_json(&self) -> Result<String, BundleError> {
        let mut keys = Vec::with_capacity(self.x509_authorities.len() + self.jwt_authorities.len());
        for cert in &self.x509_authorities {
            let key = cert_public_key(cert)?;
            let mut jwk = jwk_key_members(&key);
            jwk.insert("use".into(), json!("x509-svid"));
            jwk.insert("x5c".into(), json!([STANDARD.encode(cert)]));
            keys.push(Value::Object(jwk));
        }
        for authority in &self.jwt_authorities {
            let mut jwk = jwk_key_members(&authority.public_key);
            jwk.insert("use".into(), json!("jwt-svid"));
            jwk.insert("kid".into(), json!(authority.key_id));
            keys.push(Value::Object(jwk));
        }
        let mut doc = Map::new();
        doc.insert("keys".into(), Value::Array(keys));
        doc.insert("spiffe_sequence".into(), json!(self.sequence));
        if let Some(hint) = self.refresh_hint {
            doc.insert("spiffe_refresh_hint".into(), json!(hint.as_secs()));
        }
        serde_json::to_string(&Value::Object(doc)).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Parses a SPIFFE bundle JSON document for `trust_domain`.
    ///
    /// Per the spec, entries with an unknown `use` or `kty` are ignored, an
    /// `x509-svid` entry without certificates is ignored and only the first
    /// `x5c` certificate counts; `jwt-svid` entries must have a `kid`.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let doc = doc
            .as_object()
            .ok_or_else(|| BundleError::Json("top level is not an object".to_owned()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(BundleError::MissingKeys)?;
        let sequence = match doc.get("spiffe_sequence") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or(BundleError::InvalidMember("spiffe_sequence"))?,
        };
        let refresh_hint = match doc.get("spiffe_refresh_hint") {
            None => None,
            Some(v) => Some(Duration::from_secs(
                v.as_u64()
                    .ok_or(BundleError::InvalidMember("spiffe_refresh_hint"))?,
            )),
        };
        let mut bundle = Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence,
            refresh_hint,
        };
        for (index, key) in keys.iter().enumerate() {
            let invalid = |reason: &str| BundleError::InvalidKey {
                index,
                reason: reason.to_owned(),
            };
            let key = key
                .as_object()
                .ok_or_else(|| invalid("not a JSON object"))?;
            match key.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {
                    let Some(first) = key
                        .get("x5c")
                        .and_then(Value::as_array)
                        .and_then(|certs| certs.first())
                    else {
                        continue;
                    };
                    let b64 = first
                        .as_str()
                        .ok_or_else(|| invalid("x5c value is not a string"))?;
                    let der = STANDARD
                        .decode(b64)
                        .map_err(|_| invalid("x5c value is not base64"))?;
                    x509::certs_from_der_concat(&der)?;
                    bundle.x509_authorities.push(CertificateDer::from(der));
                }
                Some("jwt-svid") => {
                    let kid = key
                        .get("kid")
                        .and_then(Value::as_str)
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| invalid("jwt-svid entry without a kid"))?;
                    let Some(public_key) = public_key_from_jwk(key).map_err(|r| invalid(&r))?
                    else {
                        continue;
                    };
                    bundle.add_jwt_authority(JwtAuthority {
                        key_id: kid.to_owned(),
                        public_key,
                        not_after: None,
                    })?;
                }
                _ => continue,
            }
        }
        Ok(bundle)
    }

    /// Encodes the JWT authorities as a plain JWKS (see the module docs).
    pub fn to_jwks_json(&self) -> Result<String, BundleError> {
        let keys: Vec<Value> = self
            .jwt_authorities
            .iter()
            .map(|authority| {
                let mut jwk = jwk_key_members(&authority.public_key);
                jwk.insert("kid".into(), json!(authority.key_id));
                jwk.insert("use".into(), json!("sig"));
                if let Some(alg) = signing_alg_name(&authority.public_key) {
                    jwk.insert("alg".into(), json!(alg));
                }
                Value::Object(jwk)
            })
            .collect();
        serde_json::to_string(&json!({ "keys": keys }))
            .map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Parses a plain JWKS of JWT authorities (e.g. a Workload API JWT bundle).
    /// Keys without `kid`, of an unknown type, or whose `use` is neither
    /// `sig` nor `jwt-svid` are ignored.
    pub fn from_jwks_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleError> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(BundleError::MissingKeys)?;
        let mut bundle = Self::new(trust_domain);
        for (index, key) in keys.iter().enumerate() {
            let key = key.as_object().ok_or_else(|| BundleError::InvalidKey {
                index,
                reason: "not a JSON object".to_owned(),
            })?;
            let usable = matches!(
                key.get("use").and_then(Value::as_str),
                None | Some("sig") | Some("jwt-svid")
            );
            let Some(kid) = key
                .get("kid")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
            else {
                continue;
            };
            if !usable {
                continue;
            }
            let parsed = public_key_from_jwk(key)
                .map_err(|reason| BundleError::InvalidKey { index, reason })?;
            if let Some(public_key) = parsed {
                bundle.add_jwt_authority(JwtAuthority {
                    key_id: kid.to_owned(),
                    public_key,
                    not_after: None,
                })?;
            }
        }
        Ok(bundle)
    }

    /// The X.509 authorities as PEM `CERTIFICATE` blocks.
    pub fn to_x509_pem(&self) -> String {
        x509::certs_to_pem(&self.x509_authorities)
    }

    /// A bundle holding the X.509 authorities found in PEM text.
    pub fn from_x509_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, BundleError> {
        let certs = x509::certs_from_pem(pem)?;
        for cert in &certs {
            x509::certs_from_der_concat(cert)?;
        }
        let mut bundle = Self::new(trust_domain);
        bundle.x509_authorities = certs;
        Ok(bundle)
    }

    /// The X.509 authorities as concatenated DER (the Workload API format).
    pub fn to_x509_der(&self) -> Vec<u8> {
        x509::certs_to_der_concat(&self.x509_authorities)
    }

    /// A bundle holding the X.509 authorities in concatenated DER.
    pub fn from_x509_der(trust_domain: TrustDomain, der: &[u8]) -> Result<Self, BundleError> {
        let mut bundle = Self::new(trust_domain);
        bundle.x509_authorities = x509::certs_from_der_concat(der)?;
        Ok(bundle)
    }

    /// Adds a JWT authority, refusing a duplicate `kid`.
    pub fn add_jwt_authority(&mut self, authority: JwtAuthority) -> Result<(), BundleError> {
        if self.jwt_authority(&authority.key_id).is_some() {
            return Err(BundleError::DuplicateKeyId(authority.key_id));
        }
        self.jwt_authorities.push(authority);
        Ok(())
    }
}

/// Bundles keyed by trust domain: the own trust domain plus federated ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl BundleSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the bundle of its trust domain; returns the old one.
    pub fn insert(&mut self, bundle: TrustBundle) -> Option<TrustBundle> {
        self.bundles.insert(bundle.trust_domain.clone(), bundle)
    }

    /// Removes a trust domain's bundle.
    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.bundles.remove(trust_domain)
    }

    /// The bundle of `trust_domain`.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    /// All bundles, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> {
        self.bundles.values()
    }

    /// Number of trust domains.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// True when no bundle is held.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}

impl FromIterator<TrustBundle> for BundleSet {
    fn from_iter<I: IntoIterator<Item = TrustBundle>>(iter: I) -> Self {
        let mut set = Self::new();
        for bundle in iter {
            set.insert(bundle);
        }
        set
    }
}

impl BundleSource for BundleSet {
    fn bundle(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }
}

fn cert_public_key(cert: &CertificateDer<'_>) -> Result<PublicKey, BundleError> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert)
        .map_err(|e| X509Error::Malformed(e.to_string()))?;
    Ok(PublicKey::from_spki_der(parsed.public_key().raw)?)
}

/// The JWT algorithm this crate signs with for a key, used as JWK `alg`.
fn signing_alg_name(key: &PublicKey) -> Option<&'static str> {
    match key.algorithm() {
        PublicKeyAlgorithm::EcP256 => Some("ES256"),
        PublicKeyAlgorithm::EcP384 => Some("ES384"),
        PublicKeyAlgorithm::EcP521 => Some("ES512"),
        PublicKeyAlgorithm::Rsa { .. } => Some("RS256"),
    }
}

/// `kty` and the key parameters of a JWK (RFC 7518 section 6).
fn jwk_key_members(key: &PublicKey) -> Map<String, Value> {
    let mut jwk = Map::new();
    if let Some((x, y)) = key.ec_coordinates() {
        let crv = match key.algorithm() {
            PublicKeyAlgorithm::EcP384 => "P-384",
            PublicKeyAlgorithm::EcP521 => "P-521",
            _ => "P-256",
        };
        jwk.insert("kty".into(), json!("EC"));
        jwk.insert("crv".into(), json!(crv));
        jwk.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(x)));
        jwk.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(y)));
    } else if let Some((n, e)) = key.rsa_components() {
        jwk.insert("kty".into(), json!("RSA"));
        jwk.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(n)));
        jwk.insert("e".into(), json!(URL_SAFE_NO_PAD.encode(e)));
    }
    jwk
}

/// The public key of a JWK; `Ok(None)` for a key type or curve this crate
/// does not know (which bundles must ignore), `Err` for a malformed key.
fn public_key_from_jwk(jwk: &Map<String, Value>) -> Result<Option<PublicKey>, String> {
    let member = |name: &str| -> Result<Vec<u8>, String> {
        let text = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("missing {name:?}"))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("{name:?} is not base64url"))
    };
    match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => {
            let (algorithm, width) = match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => (PublicKeyAlgorithm::EcP256, 32),
                Some("P-384") => (PublicKeyAlgorithm::EcP384, 48),
                Some("P-521") => (PublicKeyAlgorithm::EcP521, 66),
                _ => return Ok(None),
            };
            let (x, y) = (member("x")?, member("y")?);
            if x.len() != width || y.len() != width {
                return Err("EC coordinates have the wrong length".to_owned());
            }
            let point = [&[4u8][..], &x, &y].concat();
            PublicKey::from_ec_point(algorithm, &point)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        Some("RSA") => {
            let (n, e) = (member("n")?, member("e")?);
            PublicKey::from_rsa_components(&n, &e)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyType, PrivateKey};
    use crate::x509::X509Ca;
    use std::time::UNIX_EPOCH;

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn ca_cert(key_type: KeyType) -> CertificateDer<'static> {
        let key = PrivateKey::generate(key_type).unwrap();
        X509Ca::self_signed(&td("example.org"), key, Duration::from_secs(3600), now())
            .unwrap()
            .certificate()
            .clone()
    }

    fn jwt_authority(kid: &str, key_type: KeyType) -> JwtAuthority {
        JwtAuthority {
            key_id: kid.to_owned(),
            public_key: PrivateKey::generate(key_type).unwrap().public_key().clone(),
            not_after: None,
        }
    }

    #[test]
    fn bundle_sets_serve_x509_verification_per_trust_domain() {
        use crate::id::SpiffeId;
        use crate::x509::{X509Error, X509SvidParams, verify_x509_svid};
        let ours = X509Ca::self_signed(
            &td("example.org"),
            PrivateKey::generate(KeyType::EcP256).unwrap(),
            Duration::from_secs(3600),
            now(),
        )
        .unwrap();
        let leaf = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params = X509SvidParams::new(
            SpiffeId::parse("spiffe://example.org/w").unwrap(),
            Duration::from_secs(600),
        );
        let svid = ours.mint_svid(&params, leaf.public_key(), now()).unwrap();
        let mut own = TrustBundle::new(td("example.org"));
        own.x509_authorities.push(ours.certificate().clone());
        let set: BundleSet = [own, TrustBundle::new(td("other.org"))]
            .into_iter()
            .collect();
        let verified = verify_x509_svid(&svid.cert_chain, &set, now()).unwrap();
        assert_eq!(verified.spiffe_id.path(), "/w");
        let foreign: BundleSet = [TrustBundle::new(td("other.org"))].into_iter().collect();
        assert_eq!(
            verify_x509_svid(&svid.cert_chain, &foreign, now()),
            Err(X509Error::NoBundle(td("example.org")))
        );
    }

    fn full_bundle() -> TrustBundle {
        TrustBundle {
            trust_domain: td("example.org"),
            x509_authorities: vec![ca_cert(KeyType::EcP256), ca_cert(KeyType::Rsa2048)],
            jwt_authorities: vec![
                jwt_authority("a", KeyType::EcP256),
                jwt_authority("b", KeyType::EcP384),
                jwt_authority("c", KeyType::Rsa2048),
            ],
            sequence: 7,
            refresh_hint: Some(Duration::from_secs(300)),
        }
    }

    #[test]
    fn spiffe_json_round_trips_and_follows_the_spec() {
        let bundle = full_bundle();
        let json = bundle.to_spiffe_json().unwrap();
        let parsed = TrustBundle::from_spiffe_json(td("example.org"), json.as_bytes()).unwrap();
        assert_eq!(parsed, bundle);

        let doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["spiffe_sequence"], json!(7));
        assert_eq!(doc["spiffe_refresh_hint"], json!(300));
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 5);
        for key in &keys[..2] {
            assert_eq!(key["use"], json!("x509-svid"));
            assert_eq!(key["x5c"].as_array().unwrap().len(), 1);
            assert!(key.get("kid").is_none());
        }
        assert_eq!(keys[0]["kty"], json!("EC"));
        assert_eq!(keys[0]["crv"], json!("P-256"));
        assert_eq!(keys[1]["kty"], json!("RSA"));
        assert_eq!(keys[1]["e"], json!("AQAB"));
        for (key, kid) in keys[2..].iter().zip(["a", "b", "c"]) {
            assert_eq!(key["use"], json!("jwt-svid"));
            assert_eq!(key["kid"], json!(kid));
        }
        assert_eq!(keys[3]["crv"], json!("P-384"));
    }

    #[test]
    fn parsing_ignores_what_the_spec_says_to_ignore() {
        let cert = ca_cert(KeyType::EcP256);
        let other = ca_cert(KeyType::EcP256);
        let jwt = jwt_authority("k", KeyType::EcP256);
        let (x, y) = jwt.public_key.ec_coordinates().unwrap();
        let doc = json!({
            "spiffe_sequence": 3,
            "keys": [
                {"use": "x509-svid", "kty": "EC", "x5c": [STANDARD.encode(&cert), STANDARD.encode(&other)]},
                {"use": "x509-svid", "kty": "EC"},
                {"use": "x509-svid", "kty": "EC", "x5c": []},
                {"use": "wit-svid", "kty": "EC", "kid": "w", "crv": "P-256", "x": "AA", "y": "AA"},
                {"kty": "EC", "kid": "nouse", "crv": "P-256", "x": "AA", "y": "AA"},
                {"use": "jwt-svid", "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "AA"},
                {"use": "jwt-svid", "kty": "EC", "kid": "p192", "crv": "P-192", "x": "AA", "y": "AA"},
                {"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256",
                 "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}
            ]
        });
        let b =
            TrustBundle::from_spiffe_json(td("example.org"), doc.to_string().as_bytes()).unwrap();
        assert_eq!(
            b.x509_authorities,
            vec![cert],
            "only the first x5c certificate counts"
        );
        assert_eq!(b.jwt_authorities, vec![jwt]);
        assert_eq!(b.sequence, 3);
        assert_eq!(b.refresh_hint, None);
    }

    #[test]
    fn empty_keys_is_a_valid_distrusting_bundle() {
        let b = TrustBundle::from_spiffe_json(td("example.org"), br#"{"keys":[]}"#).unwrap();
        assert_eq!(b, TrustBundle::new(td("example.org")));
        let json = b.to_spiffe_json().unwrap();
        assert_eq!(json, r#"{"keys":[],"spiffe_sequence":0}"#);
    }

    #[test]
    fn parsing_rejects_malformed_documents() {
        let parse = |s: &str| TrustBundle::from_spiffe_json(td("example.org"), s.as_bytes());
        assert!(matches!(parse("not json"), Err(BundleError::Json(_))));
        assert!(matches!(parse("[]"), Err(BundleError::Json(_))));
        assert_eq!(parse("{}"), Err(BundleError::MissingKeys));
        assert_eq!(parse(r#"{"keys":{}}"#), Err(BundleError::MissingKeys));
        assert_eq!(
            parse(r#"{"keys":[],"spiffe_sequence":-1}"#),
            Err(BundleError::InvalidMember("spiffe_sequence"))
        );
        assert_eq!(
            parse(r#"{"keys":[],"spiffe_refresh_hint":"5m"}"#),
            Err(BundleError::InvalidMember("spiffe_refresh_hint"))
        );
        assert!(matches!(
            parse(r#"{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#),
            Err(BundleError::InvalidKey { index: 0, .. })
        ));
        assert!(matches!(
            parse(
                r#"{"keys":[{"use":"jwt-svid","kid":"k","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#
            ),
            Err(BundleError::InvalidKey { index: 0, .. })
        ));
        assert!(matches!(
            parse(r#"{"keys":[{"use":"x509-svid","x5c":["!!"]}]}"#),
            Err(BundleError::InvalidKey { index: 0, .. })
        ));
        assert!(matches!(
            parse(r#"{"keys":[{"use":"x509-svid","x5c":["MAA="]}]}"#),
            Err(BundleError::X509(_))
        ));
        assert!(matches!(
            parse(r#"{"keys":[1]}"#),
            Err(BundleError::InvalidKey { index: 0, .. })
        ));

        let mut b = full_bundle();
        b.jwt_authorities.push(jwt_authority("a", KeyType::EcP256));
        let json = b.to_spiffe_json().unwrap();
        assert_eq!(parse(&json), Err(BundleError::DuplicateKeyId("a".into())));
    }

    #[test]
    fn pem_and_der_forms_round_trip() {
        let bundle = full_bundle();
        let pem = bundle.to_x509_pem();
        let from_pem = TrustBundle::from_x509_pem(td("example.org"), &pem).unwrap();
        assert_eq!(from_pem.x509_authorities, bundle.x509_authorities);
        assert!(from_pem.jwt_authorities.is_empty());
        let der = bundle.to_x509_der();
        let from_der = TrustBundle::from_x509_der(td("example.org"), &der).unwrap();
        assert_eq!(from_der.x509_authorities, bundle.x509_authorities);
        assert!(TrustBundle::from_x509_der(td("example.org"), &der[1..]).is_err());
        assert!(
            TrustBundle::from_x509_pem(
                td("example.org"),
                "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"
            )
            .is_err()
        );
    }

    #[test]
    fn plain_jwks_round_trips() {
        let bundle = full_bundle();
        let jwks = bundle.to_jwks_json().unwrap();
        let doc: Value = serde_json::from_str(&jwks).unwrap();
        assert!(doc.get("spiffe_sequence").is_none());
        let keys = doc["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 3, "JWT authorities only");
        let algs: Vec<&str> = keys.iter().map(|k| k["alg"].as_str().unwrap()).collect();
        assert_eq!(algs, ["ES256", "ES384", "RS256"]);
        assert!(keys.iter().all(|k| k["use"] == json!("sig")));

        let parsed = TrustBundle::from_jwks_json(td("example.org"), jwks.as_bytes()).unwrap();
        assert_eq!(parsed.jwt_authorities, bundle.jwt_authorities);

        // Encryption keys and keys without kid are skipped.
        let mut doc = doc;
        doc["keys"][0]["use"] = json!("enc");
        doc["keys"][1].as_object_mut().unwrap().remove("kid");
        let parsed =
            TrustBundle::from_jwks_json(td("example.org"), doc.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.jwt_authorities, bundle.jwt_authorities[2..].to_vec());
    }

    #[test]
    fn bundle_sets_and_sources() {
        let a = full_bundle();
        let mut b = TrustBundle::new(td("other.org"));
        b.sequence = 1;
        let mut set: BundleSet = [a.clone(), b.clone()].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(set.bundle(&td("example.org")), Some(&a));
        assert_eq!(set.get(&td("other.org")), Some(&b));
        assert_eq!(set.bundle(&td("third.org")), None);
        assert_eq!(a.bundle(&td("example.org")), Some(&a));
        assert_eq!(a.bundle(&td("other.org")), None);
        assert_eq!(
            set.x509_authorities(&td("example.org")).map(<[_]>::len),
            Some(2)
        );
        let mut b2 = b.clone();
        b2.sequence = 2;
        assert_eq!(set.insert(b2.clone()), Some(b));
        assert_eq!(set.remove(&td("other.org")), Some(b2));
        assert!(!set.is_empty());
        let shared = Arc::new(set);
        assert!(shared.bundle(&td("example.org")).is_some());
        let names: Vec<&str> = shared.iter().map(|b| b.trust_domain.as_str()).collect();
        assert_eq!(names, ["example.org"]);
    }
}
