//! Which authority signed an SVID: the X.509 leaf's AuthorityKeyIdentifier
//! and the JWS header's `kid`, the names tainted authorities go by.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

/// The key identifier (lowercase hex) of the CA that signed the DER
/// certificate `leaf`, if it names one.
pub(crate) fn x509_authority(leaf: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .map(|key_id| hex::encode(key_id.0))
}

/// The `kid` of a JWS compact token's protected header, if it has one.
pub(crate) fn jwt_key_id(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    header.get("kid")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use signet_identity::{KeyType, PrivateKey, SpiffeId, TrustDomain, X509Ca, X509SvidParams};

    use super::*;

    #[test]
    fn reads_the_signing_ca_of_a_leaf() {
        let td = TrustDomain::new("example.org").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = X509Ca::self_signed(
            &td,
            PrivateKey::generate(KeyType::EcP256).unwrap(),
            Duration::from_secs(3600),
            now,
        )
        .unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let svid = ca
            .mint_svid(
                &X509SvidParams::new(
                    SpiffeId::parse("spiffe://example.org/w").unwrap(),
                    Duration::from_secs(60),
                ),
                key.public_key(),
                now,
            )
            .unwrap();
        assert_eq!(
            x509_authority(&svid.cert_chain[0]),
            Some(ca.key_id_hex()),
            "lowercase hex, as the operator names authorities"
        );
        assert_eq!(x509_authority(b"not a certificate"), None);
    }

    #[test]
    fn reads_the_kid_of_a_jws_header() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k-1","typ":"JWT"}"#);
        assert_eq!(
            jwt_key_id(&format!("{header}.e30.c2ln")).as_deref(),
            Some("k-1")
        );
        let no_kid = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
        assert_eq!(jwt_key_id(&format!("{no_kid}.e30.c2ln")), None);
        assert_eq!(jwt_key_id("garbage"), None);
    }
}
