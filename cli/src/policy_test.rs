//! `signet policy test`: fixture workloads with the identities they must
//! get, checked against the policy exactly as the issuer would decide, so a
//! change that adds, removes or alters an identity fails CI with a diff.
//!
//! ```yaml
//! apiVersion: signet.dev/v1alpha1
//! kind: PolicyTest
//! metadata: {name: payments}
//! spec:
//!   trustDomain: example.org            # optional
//!   cases:
//!     - name: the API pod gets its service-account identity
//!       attributes:                     # dotted names, as in the README
//!         workload.kubernetes.namespace: payments
//!         workload.kubernetes.service_account: api
//!         agent.name: node-1
//!       expect:                         # every identity, default first
//!         - identity: payments
//!           spiffeId: spiffe://example.org/ns/payments/sa/api
//!           dnsSans: [api.payments.svc] # optional, checked when given
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use signet_identity::TrustDomain;
use signet_policy::{IssuableIdentity, PolicySnapshot};

use crate::attributes::{AttributesError, from_map};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTest {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: TestMetadata,
    pub spec: TestSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TestMetadata {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestSpec {
    #[serde(default)]
    pub trust_domain: Option<String>,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub attributes: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub expect: Vec<Expected>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expected {
    pub identity: String,
    pub spiffe_id: String,
    #[serde(default)]
    pub dns_sans: Option<Vec<String>>,
    #[serde(default)]
    pub hint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{test}: apiVersion must be signet.dev/v1alpha1, not {found:?}")]
    ApiVersion { test: String, found: String },
    #[error("{test}: trust domain {name:?}: {message}")]
    TrustDomain {
        test: String,
        name: String,
        message: String,
    },
    #[error("{test} / {case}: {source}")]
    Attributes {
        test: String,
        case: String,
        #[source]
        source: AttributesError,
    },
}

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseResult {
    pub test: String,
    pub case: String,
    pub file: PathBuf,
    /// Empty when the case passed.
    pub differences: Vec<String>,
}

/// Runs one test's cases against `snapshot` (compiled for the test's trust
/// domain by the caller).
pub fn run(
    file: &Path,
    test: &PolicyTest,
    snapshot_for: &mut dyn FnMut(&TrustDomain) -> PolicySnapshot,
    default_trust_domain: &TrustDomain,
) -> Result<Vec<CaseResult>, TestError> {
    let name = if test.metadata.name.is_empty() {
        file.display().to_string()
    } else {
        test.metadata.name.clone()
    };
    if test.api_version != signet_policy::crd::API_VERSION {
        return Err(TestError::ApiVersion {
            test: name,
            found: test.api_version.clone(),
        });
    }
    let trust_domain = match &test.spec.trust_domain {
        Some(td) => TrustDomain::new(td).map_err(|e| TestError::TrustDomain {
            test: name.clone(),
            name: td.clone(),
            message: e.to_string(),
        })?,
        None => default_trust_domain.clone(),
    };
    let snapshot = snapshot_for(&trust_domain);
    let mut results = Vec::new();
    for case in &test.spec.cases {
        let attributes = from_map(&case.name, case.attributes.clone()).map_err(|source| {
            TestError::Attributes {
                test: name.clone(),
                case: case.name.clone(),
                source,
            }
        })?;
        let issued = snapshot.evaluate(&attributes);
        let mut differences = compare(&case.expect, &issued);
        // Say why each missing identity was not issued: the issuer's reason.
        for expected in &case.expect {
            if !issued
                .iter()
                .any(|i| i.workload_identity == expected.identity)
                && let Err(denial) = snapshot.decide(&attributes, &expected.identity)
            {
                differences.push(format!(
                    "    {}: {} ({})",
                    expected.identity,
                    denial.message,
                    denial.reason.as_str()
                ));
            }
        }
        results.push(CaseResult {
            test: name.clone(),
            case: case.name.clone(),
            file: file.to_path_buf(),
            differences,
        });
    }
    Ok(results)
}

/// `- ` expected but not issued, `+ ` issued but not expected, `~ ` issued
/// differently, `^ ` in another order (the first is the default identity).
fn compare(expected: &[Expected], issued: &[IssuableIdentity]) -> Vec<String> {
    let mut out = Vec::new();
    for want in expected {
        match issued.iter().find(|i| i.workload_identity == want.identity) {
            None => out.push(format!("- {} {}", want.identity, want.spiffe_id)),
            Some(got) => {
                let mut line = String::new();
                if got.spiffe_id.as_str() != want.spiffe_id {
                    let _ = write!(
                        line,
                        " spiffeId: want {}, got {};",
                        want.spiffe_id, got.spiffe_id
                    );
                }
                if let Some(sans) = &want.dns_sans
                    && *sans != got.x509.dns_sans
                {
                    let _ = write!(
                        line,
                        " dnsSans: want {sans:?}, got {:?};",
                        got.x509.dns_sans
                    );
                }
                if want.hint.is_some() && want.hint != got.hint {
                    let _ = write!(line, " hint: want {:?}, got {:?};", want.hint, got.hint);
                }
                if !line.is_empty() {
                    out.push(format!(
                        "~ {}:{}",
                        want.identity,
                        line.trim_end_matches(';')
                    ));
                }
            }
        }
    }
    for got in issued {
        if !expected.iter().any(|w| w.identity == got.workload_identity) {
            out.push(format!("+ {} {}", got.workload_identity, got.spiffe_id));
        }
    }
    if out.is_empty() {
        let want: Vec<&str> = expected.iter().map(|w| w.identity.as_str()).collect();
        let got: Vec<&str> = issued
            .iter()
            .map(|i| i.workload_identity.as_str())
            .collect();
        if want != got {
            out.push(format!(
                "^ order: want {want:?}, got {got:?} (the first is the default)"
            ));
        }
    }
    out
}
