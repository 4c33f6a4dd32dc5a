//! Key pairs for CAs, JWT authorities and workloads.
//!
//! EC keys are generated and used through ring. ring cannot generate RSA
//! keys, so RSA-2048 generation goes through the `rsa` crate and the result
//! is loaded into ring for signing; nothing else uses `rsa`.
//!
//! Private key bytes (PKCS#8) are held in [`Zeroizing`] buffers and wiped on
//! drop. ring's own parsed key state is not zeroized by ring; it is dropped
//! together with the key.

use std::fmt;
use std::str::FromStr;

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::der::{self, oid};

/// Why a key could not be generated, loaded, encoded or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A key type name other than `ec-p256`, `ec-p384` or `rsa-2048`.
    #[error("unknown key type {0:?}; expected ec-p256, ec-p384 or rsa-2048")]
    UnknownKeyType(String),
    /// The system random number generator or key generation failed.
    #[error("key generation failed: {0}")]
    Generation(String),
    /// The bytes are not an unencrypted PKCS#8 key of a supported type.
    #[error("not a supported PKCS#8 private key (EC P-256, EC P-384 or RSA-2048): {0}")]
    InvalidPkcs8(String),
    /// The PEM text has no `PRIVATE KEY` block or is malformed.
    #[error("invalid PKCS#8 PEM: {0}")]
    InvalidPem(String),
    /// The bytes are not a SubjectPublicKeyInfo of a supported key.
    #[error("invalid or unsupported public key: {0}")]
    InvalidPublicKey(String),
    /// Signing failed inside ring.
    #[error("signing failed")]
    Signing,
}

/// Which kind of key to generate for a CA, a JWT authority or a workload.
///
/// Serialized as `"ec-p256"` (the default), `"ec-p384"` or `"rsa-2048"`,
/// the names SPIRE uses for the same choices.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum KeyType {
    /// ECDSA on NIST P-256 (ES256 for JWTs). Fast to generate; the default.
    #[default]
    #[serde(rename = "ec-p256")]
    EcP256,
    /// ECDSA on NIST P-384 (ES384 for JWTs).
    #[serde(rename = "ec-p384")]
    EcP384,
    /// RSA with a 2048-bit modulus (RS256 for JWTs). Slow to generate.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
}

impl KeyType {
    /// The configuration name: `ec-p256`, `ec-p384` or `rsa-2048`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ec-p256" => Ok(KeyType::EcP256),
            "ec-p384" => Ok(KeyType::EcP384),
            "rsa-2048" => Ok(KeyType::Rsa2048),
            other => Err(KeyError::UnknownKeyType(other.to_owned())),
        }
    }
}

/// The algorithm of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PublicKeyAlgorithm {
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// ECDSA P-521 (accepted for ES512 JWT verification only).
    EcP521,
    /// RSA with the given modulus size in bits.
    Rsa {
        /// Modulus length in bits.
        modulus_bits: usize,
    },
}

/// A public key, held as its DER SubjectPublicKeyInfo.
///
/// Accepts EC P-256/P-384/P-521 and RSA keys of 2048 to 8192 bits, the range
/// ring can verify.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    spki: Vec<u8>,
    /// The subjectPublicKey BIT STRING content: an uncompressed EC point or a
    /// PKCS#1 RSAPublicKey, the form ring verifies with.
    raw: Vec<u8>,
    algorithm: PublicKeyAlgorithm,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(spki: &[u8]) -> Result<Self, KeyError> {
        use x509_parser::prelude::FromDer;
        use x509_parser::public_key::PublicKey as Parsed;
        use x509_parser::x509::SubjectPublicKeyInfo;

        let invalid = |m: &str| KeyError::InvalidPublicKey(m.to_owned());
        let (rest, info) = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))?;
        if !rest.is_empty() {
            return Err(invalid("trailing bytes after SubjectPublicKeyInfo"));
        }
        let raw = info.subject_public_key.data.to_vec();
        let algorithm = match info
            .parsed()
            .map_err(|e| KeyError::InvalidPublicKey(e.to_string()))?
        {
            Parsed::EC(point) => {
                let curve = info
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .ok_or_else(|| invalid("EC key without a named curve"))?;
                let arcs: Vec<u64> = curve
                    .iter()
                    .ok_or_else(|| invalid("bad curve OID"))?
                    .collect();
                let (alg, len) = match arcs.as_slice() {
                    a if a == oid::P256 => (PublicKeyAlgorithm::EcP256, 65),
                    a if a == oid::P384 => (PublicKeyAlgorithm::EcP384, 97),
                    a if a == oid::P521 => (PublicKeyAlgorithm::EcP521, 133),
                    _ => return Err(invalid("unsupported EC curve")),
                };
                if point.data().len() != len || point.data().first() != Some(&4) {
                    return Err(invalid(
                        "EC point must be uncompressed and of the curve's size",
                    ));
                }
                alg
            }
            Parsed::RSA(rsa) => {
                let modulus = strip_zeros(rsa.modulus);
                let modulus_bits =
                    modulus.len() * 8 - modulus.first().map_or(0, |b| b.leading_zeros() as usize);
                if !(2048..=8192).contains(&modulus_bits) {
                    return Err(invalid("RSA modulus must be 2048 to 8192 bits"));
                }
                PublicKeyAlgorithm::Rsa { modulus_bits }
            }
            _ => return Err(invalid("only EC and RSA keys are supported")),
        };
        Ok(Self {
            spki: spki.to_vec(),
            raw,
            algorithm,
        })
    }

    /// Builds an EC public key from an uncompressed point (`04 || x || y`).
    pub(crate) fn from_ec_point(
        algorithm: PublicKeyAlgorithm,
        point: &[u8],
    ) -> Result<Self, KeyError> {
        let curve = match algorithm {
            PublicKeyAlgorithm::EcP256 => oid::P256,
            PublicKeyAlgorithm::EcP384 => oid::P384,
            PublicKeyAlgorithm::EcP521 => oid::P521,
            PublicKeyAlgorithm::Rsa { .. } => {
                return Err(KeyError::InvalidPublicKey("not an EC algorithm".to_owned()));
            }
        };
        let alg_id = der::sequence(&[&der::oid(oid::EC_PUBLIC_KEY), &der::oid(curve)]);
        Self::from_spki_der(&der::sequence(&[&alg_id, &der::bit_string(point)]))
    }

    /// Builds an RSA public key from big-endian modulus and exponent.
    pub(crate) fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let pkcs1 = der::sequence(&[&der::unsigned_integer(n), &der::unsigned_integer(e)]);
        let alg_id = der::algorithm_null_params(oid::RSA_ENCRYPTION);
        Self::from_spki_der(&der::sequence(&[&alg_id, &der::bit_string(&pkcs1)]))
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> PublicKeyAlgorithm {
        self.algorithm
    }

    /// The subjectPublicKey bits: EC point or PKCS#1 RSAPublicKey.
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// For EC keys, the affine coordinates (x, y), each of the curve's size.
    pub(crate) fn ec_coordinates(&self) -> Option<(&[u8], &[u8])> {
        match self.algorithm {
            PublicKeyAlgorithm::Rsa { .. } => None,
            _ => {
                let coords = self.raw.get(1..)?;
                Some(coords.split_at(coords.len() / 2))
            }
        }
    }

    /// For RSA keys, the minimal big-endian modulus and exponent.
    pub(crate) fn rsa_components(&self) -> Option<(&[u8], &[u8])> {
        if !matches!(self.algorithm, PublicKeyAlgorithm::Rsa { .. }) {
            return None;
        }
        let (tag, seq, _) = der::read_tlv(&self.raw)?;
        if tag != der::TAG_SEQUENCE {
            return None;
        }
        let (_, n, rest) = der::read_tlv(seq)?;
        let (_, e, _) = der::read_tlv(rest)?;
        Some((strip_zeros(n), strip_zeros(e)))
    }

    /// Key identifier for SKI/AKI: the leftmost 160 bits of the SHA-256 of
    /// the subjectPublicKey bits (RFC 7093 method 1).
    pub(crate) fn key_id(&self) -> Vec<u8> {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.raw);
        digest.as_ref()[..20].to_vec()
    }

    /// Verifies `signature` over `message` with a ring algorithm.
    pub(crate) fn verify_with(
        &self,
        alg: &'static dyn signature::VerificationAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> bool {
        signature::UnparsedPublicKey::new(alg, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &hex(&self.key_id()))
            .finish()
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    &bytes[skip..]
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum Signer {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A private key with its public half. Generated where it is used.
///
/// The PKCS#8 bytes are zeroized on drop and `Debug` never prints them. Not
/// `Clone`, so a key is not copied around by accident; re-load it from
/// [`PrivateKey::to_pkcs8_der`] when a second handle is really needed.
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    signer: Signer,
    public: PublicKey,
}

impl PrivateKey {
    /// Generates a fresh key of the given type from the OS random source.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        match key_type {
            KeyType::EcP256 | KeyType::EcP384 => {
                let alg = ecdsa_signing_alg(key_type);
                let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng)
                    .map_err(|_| KeyError::Generation("ECDSA key generation failed".to_owned()))?;
                Self::from_pkcs8_der(doc.as_ref())
            }
            KeyType::Rsa2048 => {
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                    .map_err(|e| KeyError::Generation(e.to_string()))?;
                let doc = key
                    .to_pkcs8_der()
                    .map_err(|e| KeyError::Generation(e.to_string()))?;
                Self::from_pkcs8_der(doc.as_bytes())
            }
        }
    }

    /// Loads an unencrypted PKCS#8 DER key (EC P-256, EC P-384 or RSA-2048).
    pub fn from_pkcs8_der(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        for key_type in [KeyType::EcP256, KeyType::EcP384] {
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(ecdsa_signing_alg(key_type), pkcs8, &rng) {
                let algorithm = if key_type == KeyType::EcP256 {
                    PublicKeyAlgorithm::EcP256
                } else {
                    PublicKeyAlgorithm::EcP384
                };
                let public = PublicKey::from_ec_point(algorithm, pair.public_key().as_ref())?;
                return Ok(Self {
                    key_type,
                    pkcs8: Zeroizing::new(pkcs8.to_vec()),
                    signer: Signer::Ecdsa(pair),
                    public,
                });
            }
        }
        let pair =
            RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::InvalidPkcs8(e.to_string()))?;
        if pair.public().modulus_len() != 256 {
            return Err(KeyError::InvalidPkcs8(
                "RSA keys must be 2048 bits".to_owned(),
            ));
        }
        let alg_id = der::algorithm_null_params(oid::RSA_ENCRYPTION);
        let spki = der::sequence(&[&alg_id, &der::bit_string(pair.public_key().as_ref())]);
        let public = PublicKey::from_spki_der(&spki)?;
        Ok(Self {
            key_type: KeyType::Rsa2048,
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            signer: Signer::Rsa(pair),
            public,
        })
    }

    /// Loads a PEM `PRIVATE KEY` (PKCS#8) block.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| KeyError::InvalidPem(e.to_string()))?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// The unencrypted PKCS#8 DER encoding. Secret: never log it.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The PEM `PRIVATE KEY` encoding. Secret: never log it.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem_encode("PRIVATE KEY", &self.pkcs8))
    }

    /// The type this key was generated as.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` as X.509 and TLS expect: ECDSA with the curve's hash
    /// (DER-encoded signature) or RSASSA-PKCS1-v1_5 with SHA-256.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ecdsa(pair) => pair
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Signing),
            Signer::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|_| KeyError::Signing)?;
                Ok(sig)
            }
        }
    }

    /// Signs for a JWS: like [`PrivateKey::sign`] but ECDSA signatures are
    /// the fixed-width `r || s` form RFC 7518 requires.
    pub(crate) fn sign_jws(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let sig = self.sign(message)?;
        match self.key_type {
            KeyType::EcP256 => ecdsa_der_to_fixed(&sig, 32),
            KeyType::EcP384 => ecdsa_der_to_fixed(&sig, 48),
            KeyType::Rsa2048 => Ok(sig),
        }
    }

    /// The X.509 `AlgorithmIdentifier` of [`PrivateKey::sign`] signatures.
    pub(crate) fn x509_signature_algorithm(&self) -> Vec<u8> {
        match self.key_type {
            KeyType::EcP256 => der::algorithm(oid::ECDSA_WITH_SHA256),
            KeyType::EcP384 => der::algorithm(oid::ECDSA_WITH_SHA384),
            KeyType::Rsa2048 => der::algorithm_null_params(oid::SHA256_WITH_RSA),
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .field("public_key", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

fn ecdsa_signing_alg(key_type: KeyType) -> &'static signature::EcdsaSigningAlgorithm {
    if key_type == KeyType::EcP384 {
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING
    }
}

/// Converts a DER `ECDSA-Sig-Value` into fixed-width `r || s`.
fn ecdsa_der_to_fixed(sig: &[u8], width: usize) -> Result<Vec<u8>, KeyError> {
    let (tag, seq, rest) = der::read_tlv(sig).ok_or(KeyError::Signing)?;
    if tag != der::TAG_SEQUENCE || !rest.is_empty() {
        return Err(KeyError::Signing);
    }
    let (_, r, rest) = der::read_tlv(seq).ok_or(KeyError::Signing)?;
    let (_, s, _) = der::read_tlv(rest).ok_or(KeyError::Signing)?;
    let mut out = vec![0u8; width * 2];
    let (r_slot, s_slot) = out.split_at_mut(width);
    for (value, slot) in [(r, r_slot), (s, s_slot)] {
        let value = strip_zeros(value);
        if value.len() > width {
            return Err(KeyError::Signing);
        }
        slot[width - value.len()..].copy_from_slice(value);
    }
    Ok(out)
}

/// PEM-encodes one block with 64-column base64 lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names() {
        for (t, name) in [
            (KeyType::EcP256, "ec-p256"),
            (KeyType::EcP384, "ec-p384"),
            (KeyType::Rsa2048, "rsa-2048"),
        ] {
            assert_eq!(t.to_string(), name);
            assert_eq!(name.parse::<KeyType>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<KeyType>(&format!("\"{name}\"")).unwrap(),
                t
            );
        }
        assert_eq!(KeyType::default(), KeyType::EcP256);
        assert_eq!(
            "rsa-4096".parse::<KeyType>(),
            Err(KeyError::UnknownKeyType("rsa-4096".to_owned()))
        );
        assert!(serde_json::from_str::<KeyType>("\"EcP256\"").is_err());
    }

    fn check_key(key_type: KeyType, alg: &'static dyn signature::VerificationAlgorithm) {
        let key = PrivateKey::generate(key_type).unwrap();
        assert_eq!(key.key_type(), key_type);
        let sig = key.sign(b"hello").unwrap();
        assert!(key.public_key().verify_with(alg, b"hello", &sig));
        assert!(!key.public_key().verify_with(alg, b"hellO", &sig));

        // DER and PEM round trips keep the same key.
        let der = key.to_pkcs8_der();
        let again = PrivateKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(again.key_type(), key_type);
        let pem = key.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = PrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());

        // The SPKI parses back to the same key.
        let spki = PublicKey::from_spki_der(key.public_key().spki_der()).unwrap();
        assert_eq!(&spki, key.public_key());
    }

    #[test]
    fn ec_p256_keys() {
        check_key(KeyType::EcP256, &signature::ECDSA_P256_SHA256_ASN1);
    }

    #[test]
    fn ec_p384_keys() {
        check_key(KeyType::EcP384, &signature::ECDSA_P384_SHA384_ASN1);
    }

    #[test]
    fn rsa_2048_keys() {
        check_key(KeyType::Rsa2048, &signature::RSA_PKCS1_2048_8192_SHA256);
        let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
        assert_eq!(
            key.public_key().algorithm(),
            PublicKeyAlgorithm::Rsa { modulus_bits: 2048 }
        );
        let (n, e) = key.public_key().rsa_components().unwrap();
        assert_eq!(n.len(), 256);
        assert_eq!(e, &[1, 0, 1]);
        let rebuilt = PublicKey::from_rsa_components(n, e).unwrap();
        assert_eq!(rebuilt.raw(), key.public_key().raw());
    }

    #[test]
    fn jws_signatures_are_fixed_width() {
        for (t, alg, width) in [
            (KeyType::EcP256, &signature::ECDSA_P256_SHA256_FIXED, 64),
            (KeyType::EcP384, &signature::ECDSA_P384_SHA384_FIXED, 96),
        ] {
            let key = PrivateKey::generate(t).unwrap();
            // Several signatures so short r/s values (leading zeros) get exercised now and then.
            for i in 0..8u8 {
                let sig = key.sign_jws(&[i]).unwrap();
                assert_eq!(sig.len(), width);
                assert!(key.public_key().verify_with(alg, &[i], &sig));
            }
        }
    }

    #[test]
    fn ec_coordinates_rebuild_the_key() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let (x, y) = key.public_key().ec_coordinates().unwrap();
        assert_eq!((x.len(), y.len()), (32, 32));
        let point = [&[4u8][..], x, y].concat();
        let rebuilt = PublicKey::from_ec_point(PublicKeyAlgorithm::EcP256, &point).unwrap();
        assert_eq!(rebuilt.spki_der(), key.public_key().spki_der());
    }

    #[test]
    fn debug_redacts_private_material() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"));
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&*key.to_pkcs8_der());
        assert!(!debug.contains(&b64[..16]));
        assert!(!debug.contains(&hex(&key.to_pkcs8_der())[..16]));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            PrivateKey::from_pkcs8_der(b"not a key"),
            Err(KeyError::InvalidPkcs8(_))
        ));
        assert!(matches!(
            PrivateKey::from_pkcs8_pem(
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ),
            Err(KeyError::InvalidPem(_))
        ));
        assert!(matches!(
            PublicKey::from_spki_der(b"\x30\x00"),
            Err(KeyError::InvalidPublicKey(_))
        ));
        // A compressed P-256 point is refused: ring verifies uncompressed points only.
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let (x, _) = key.public_key().ec_coordinates().unwrap();
        let compressed = [&[2u8][..], x].concat();
        assert!(PublicKey::from_ec_point(PublicKeyAlgorithm::EcP256, &compressed).is_err());
        // Small RSA moduli are refused.
        assert!(PublicKey::from_rsa_components(&[0xc1; 128], &[1, 0, 1]).is_err());
    }
}
