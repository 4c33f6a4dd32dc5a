//! The edge of the issuer: each signing request is checked and parsed once,
//! here, into typed values (the CSR into the public key to certify) before
//! anything is decided or signed.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use signet_identity::PublicKey;
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer_protocol::{MAX_AUDIENCE_LEN, MAX_AUDIENCES};

/// A refused request and the attributes it was decided on (for the audit).
pub type Refusal = (pb::Denial, BTreeMap<String, String>);

pub fn denial(reason: &str, message: impl Into<String>, retryable: bool) -> pb::Denial {
    pb::Denial {
        reason: reason.to_owned(),
        message: message.into(),
        retryable,
    }
}

/// The attributes as the agent reported them, unverified: for the audit
/// of a refusal only.
pub fn reported(workload: &pb::Workload) -> BTreeMap<String, String> {
    let mut reported: BTreeMap<String, String> = workload
        .attributes
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // The pod a cluster request is about travels beside the attributes;
    // a refusal names it too (audit, and the pod's Events).
    if !workload.pod_uid.is_empty() {
        reported
            .entry(signet_policy::Field::KubernetesPodUid.as_str().to_owned())
            .or_insert_with(|| workload.pod_uid.clone());
    }
    reported
}

/// What every workload request names.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadRequest<'a> {
    /// Never empty.
    pub workload_identity: &'a str,
    pub workload: &'a pb::Workload,
}

/// A checked `X509SvidRequest`.
#[derive(Debug)]
pub struct X509Request<'a> {
    pub workload: WorkloadRequest<'a>,
    /// From the CSR, whose self-signature was verified.
    pub subject_key: PublicKey,
}

/// A checked `JwtSvidRequest`.
#[derive(Clone, Copy, Debug)]
pub struct JwtRequest<'a> {
    pub workload: WorkloadRequest<'a>,
    /// 1 to `MAX_AUDIENCES`, each 1 to `MAX_AUDIENCE_LEN` bytes.
    pub audiences: &'a [String],
}

/// A request without a workload describes an empty one.
static NO_WORKLOAD: LazyLock<pb::Workload> = LazyLock::new(pb::Workload::default);

fn workload_request<'a>(
    workload_identity: &'a str,
    workload: Option<&'a pb::Workload>,
) -> Result<WorkloadRequest<'a>, Refusal> {
    let workload = workload.unwrap_or(&*NO_WORKLOAD);
    if workload_identity.is_empty() {
        return Err((
            denial("invalid_request", "workload_identity is required", false),
            reported(workload),
        ));
    }
    Ok(WorkloadRequest {
        workload_identity,
        workload,
    })
}

/// The public key a DER CSR asks to be certified, after checking the CSR's
/// self-signature.
pub fn subject_key(csr: &[u8]) -> Result<PublicKey, String> {
    if csr.is_empty() {
        return Err("csr is required".to_owned());
    }
    signet_identity::x509::public_key_from_csr(csr).map_err(|e| format!("csr: {e}"))
}

impl<'a> X509Request<'a> {
    pub fn parse(item: &'a pb::X509SvidRequest) -> Result<Self, Refusal> {
        let workload = workload_request(&item.workload_identity, item.workload.as_ref())?;
        let subject_key = subject_key(&item.csr).map_err(|message| {
            (
                denial("invalid_csr", message, false),
                reported(workload.workload),
            )
        })?;
        Ok(Self {
            workload,
            subject_key,
        })
    }
}

impl<'a> JwtRequest<'a> {
    pub fn parse(item: &'a pb::JwtSvidRequest) -> Result<Self, Refusal> {
        // Before anything else: an oversized audience is never signed.
        let audiences_ok = !item.audience.is_empty()
            && item.audience.len() <= MAX_AUDIENCES
            && item
                .audience
                .iter()
                .all(|a| !a.is_empty() && a.len() <= MAX_AUDIENCE_LEN);
        if !audiences_ok {
            return Err((
                denial(
                    "invalid_request",
                    format!(
                        "1 to {MAX_AUDIENCES} audiences of 1 to {MAX_AUDIENCE_LEN} bytes are required"
                    ),
                    false,
                ),
                BTreeMap::new(),
            ));
        }
        Ok(Self {
            workload: workload_request(&item.workload_identity, item.workload.as_ref())?,
            audiences: &item.audience,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::{KeyType, PrivateKey};

    #[test]
    fn csrs_and_audiences_are_checked_once_here() {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let csr = signet_identity::x509::create_csr(&key).unwrap();
        let item = pb::X509SvidRequest {
            workload: None,
            workload_identity: "web".into(),
            csr,
        };
        let parsed = X509Request::parse(&item).unwrap();
        assert_eq!(&parsed.subject_key, key.public_key());
        let bad = pb::X509SvidRequest {
            csr: b"not a CSR".to_vec(),
            ..item.clone()
        };
        assert_eq!(
            X509Request::parse(&bad).unwrap_err().0.reason,
            "invalid_csr"
        );
        let unnamed = pb::X509SvidRequest {
            workload_identity: String::new(),
            ..item
        };
        assert_eq!(
            X509Request::parse(&unnamed).unwrap_err().0.reason,
            "invalid_request"
        );

        let jwt = |audience: Vec<String>| pb::JwtSvidRequest {
            workload: None,
            workload_identity: "web".into(),
            audience,
        };
        assert!(JwtRequest::parse(&jwt(vec!["vault".into()])).is_ok());
        for audience in [
            vec![],
            vec![String::new()],
            vec!["a".repeat(MAX_AUDIENCE_LEN + 1)],
            vec!["a".into(); MAX_AUDIENCES + 1],
        ] {
            let (denial, _) = JwtRequest::parse(&jwt(audience)).unwrap_err();
            assert_eq!(
                (denial.reason.as_str(), denial.retryable),
                ("invalid_request", false)
            );
        }
    }
}
