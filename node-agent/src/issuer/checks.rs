//! Checks of everything the issuer returns, before the agent uses it: an
//! SVID must chain to the current bundle, name a member of the trust domain
//! and carry exactly the key it was requested for.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use signet_identity::{
    BundleSet, PrivateKey, PublicKey, SpiffeId, TrustBundle, TrustDomain, validate_jwt_svid,
    verify_x509_svid,
};
use signet_proto::issuer::v1 as pb;

use crate::cache::{JwtSignRequest, SignedJwt, SignedX509};

/// Checks an agent SVID: valid now against `bundle`, a member of the trust
/// domain, and certifying `key`. Returns (ID, notAfter, notBefore).
pub(crate) fn check_agent_svid(
    chain: &[CertificateDer<'static>],
    key: &PrivateKey,
    bundle: &TrustBundle,
    td: &TrustDomain,
    now: SystemTime,
) -> Result<(SpiffeId, SystemTime, SystemTime), String> {
    let verified = verify_x509_svid(chain, bundle, now).map_err(|e| e.to_string())?;
    if !verified.spiffe_id.is_member_of(td) {
        return Err(format!("{} is not in {td}", verified.spiffe_id));
    }
    let leaf = chain.first().ok_or("empty chain")?;
    if leaf_public_key(leaf)? != *key.public_key() {
        return Err("the certificate is not for the agent's key".into());
    }
    Ok((verified.spiffe_id, verified.not_after, verified.not_before))
}

pub(crate) fn leaf_public_key(leaf: &[u8]) -> Result<PublicKey, String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| format!("certificate: {e}"))?;
    PublicKey::from_spki_der(cert.public_key().raw).map_err(|e| e.to_string())
}

/// Verifies one returned X.509-SVID against its request.
pub fn check_issued_x509(
    svid: pb::X509Svid,
    requested_identity: &str,
    requested_key: &PublicKey,
    bundles: &BundleSet,
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<SignedX509, String> {
    if svid.workload_identity != requested_identity {
        return Err(format!(
            "answer for {:?} to a request for {requested_identity:?}",
            svid.workload_identity
        ));
    }
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let verified = verify_x509_svid(&chain, bundles, now).map_err(|e| e.to_string())?;
    if !verified.spiffe_id.is_member_of(trust_domain) {
        return Err(format!("{} is not in {trust_domain}", verified.spiffe_id));
    }
    if !svid.spiffe_id.is_empty() && svid.spiffe_id != verified.spiffe_id.as_str() {
        return Err(format!(
            "the answer names {} but the certificate {}",
            svid.spiffe_id, verified.spiffe_id
        ));
    }
    let leaf = chain.first().ok_or("empty chain")?;
    if leaf_public_key(leaf)? != *requested_key {
        return Err(format!(
            "the certificate for {} does not carry the requested key",
            verified.spiffe_id
        ));
    }
    let federates_with = svid
        .federates_with
        .iter()
        .filter_map(|name| match TrustDomain::new(name) {
            Ok(td) => Some(td),
            Err(error) => {
                tracing::warn!(name, %error, "ignoring an invalid federated trust domain");
                None
            }
        })
        .collect();
    Ok(SignedX509 {
        spiffe_id: verified.spiffe_id,
        cert_chain: chain.into_iter().map(|c| c.to_vec()).collect(),
        hint: Some(svid.hint).filter(|h| !h.is_empty()),
        not_before: verified.not_before,
        not_after: verified.not_after,
        federates_with,
    })
}

/// Verifies one returned JWT-SVID against its request.
pub fn check_issued_jwt(
    svid: pb::JwtSvid,
    request: &JwtSignRequest,
    bundles: &BundleSet,
    trust_domain: &TrustDomain,
    now: SystemTime,
) -> Result<SignedJwt, String> {
    if svid.workload_identity != request.workload_identity {
        return Err(format!(
            "answer for {:?} to a request for {:?}",
            svid.workload_identity, request.workload_identity
        ));
    }
    let audience = request.audiences.first().ok_or("no audience requested")?;
    let validated =
        validate_jwt_svid(&svid.token, audience, bundles, now).map_err(|e| e.to_string())?;
    if !validated.spiffe_id.is_member_of(trust_domain) {
        return Err(format!("{} is not in {trust_domain}", validated.spiffe_id));
    }
    if !svid.spiffe_id.is_empty() && svid.spiffe_id != validated.spiffe_id.as_str() {
        return Err(format!(
            "the answer names {} but the token {}",
            svid.spiffe_id, validated.spiffe_id
        ));
    }
    for wanted in &request.audiences {
        if !validated.audience.contains(wanted) {
            return Err(format!("the token is not for audience {wanted:?}"));
        }
    }
    let issued_at = validated
        .claims
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .map_or(now, |secs| UNIX_EPOCH + Duration::from_secs(secs));
    Ok(SignedJwt {
        workload_identity: svid.workload_identity,
        spiffe_id: validated.spiffe_id,
        token: svid.token,
        hint: Some(svid.hint).filter(|h| !h.is_empty()),
        issued_at,
        expires_at: validated.expiry,
    })
}
