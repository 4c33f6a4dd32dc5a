//! Helpers shared by the Workload API and SDS tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use signet_agent::cli::{WorkloadClient, connect, unix_channel};
use signet_agent::testing::TestAgent;
use signet_identity::x509::certs_from_der_concat;
use signet_identity::{CertificateDer, PrivateKey, PublicKey};
use signet_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tonic::transport::Channel;

pub fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// A client that sends the security header.
pub async fn client(agent: &TestAgent) -> WorkloadClient {
    connect(&agent.endpoint()).await.unwrap()
}

/// A client that does not send the security header.
pub async fn raw_client(agent: &TestAgent) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(unix_channel(&agent.endpoint()).await.unwrap())
}

pub async fn sds_client(agent: &TestAgent) -> SecretDiscoveryServiceClient<Channel> {
    SecretDiscoveryServiceClient::new(unix_channel(&agent.endpoint()).await.unwrap())
}

pub fn certs(der: &[u8]) -> Vec<CertificateDer<'static>> {
    certs_from_der_concat(der).unwrap()
}

pub fn leaf_key(leaf: &[u8]) -> PublicKey {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    PublicKey::from_spki_der(cert.public_key().raw).unwrap()
}

pub fn leaf_serial(leaf: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    cert.raw_serial_as_string()
}

/// Asserts that `key` (PKCS#8 DER) is the private key of `leaf`.
pub fn assert_key_matches(key: &[u8], leaf: &[u8]) {
    let key = PrivateKey::from_pkcs8_der(key).unwrap();
    assert_eq!(*key.public_key(), leaf_key(leaf));
}

/// Two identities for the current user (`a-web` then `b-db`), with
/// configurable hints and federation.
pub fn policy(web_hint: &str, db_hint: &str, federates_with: &[&str]) -> String {
    let uid = uid();
    let federates = format!("[{}]", federates_with.join(", "));
    let identity = |name: &str, path: &str, hint: &str| {
        format!(
            r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: {name}}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "{uid}"}}]
  spiffe:
    id: /uid/{{{{ workload.unix.uid }}}}/{path}
    hint: "{hint}"
    x509: {{ttl: 1h}}
  federatesWith: {federates}
---"#
        )
    };
    format!(
        "{}{}{}",
        identity("a-web", "web", web_hint),
        identity("b-db", "db", db_hint),
        ROLE
    )
}

/// Only the `a-web` identity.
pub fn web_only_policy() -> String {
    let uid = uid();
    format!(
        r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: a-web}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "{uid}"}}]
  spiffe:
    id: /uid/{{{{ workload.unix.uid }}}}/web
    hint: web
    x509: {{ttl: 1h}}
---{ROLE}"#
    )
}

/// Identities for someone else only.
pub fn nobody_policy() -> String {
    format!(
        r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: other}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "4294967294"}}]
  spiffe:
    id: /other
---{ROLE}"#
    )
}

pub const ROLE: &str = r#"
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: local}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow:
    workloadIdentityLabels: {"*": ["*"]}
    spiffe: [{path: "/*"}]
"#;
