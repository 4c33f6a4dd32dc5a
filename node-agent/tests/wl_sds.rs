//! Envoy SDS on the Workload API socket, driven by a real tonic client the
//! way Envoy drives it: subscribe by name, ACK/NACK by nonce, receive pushes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod wl_support;

use std::time::Duration;

use prost::Message;
use signet_agent::testing::TestAgent;
use signet_identity::x509::certs_from_pem;
use signet_identity::{CaConfig, CaKeyset, PrivateKey, TrustBundle, TrustDomain};
use signet_proto::SDS_SECRET_TYPE_URL;
use signet_proto::envoy::config::core::v3::{DataSource, data_source};
use signet_proto::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use signet_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use signet_proto::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use wl_support::*;

fn own_id(path: &str) -> String {
    format!("spiffe://example.org/uid/{}/{path}", uid())
}

fn partner() -> TrustBundle {
    let now = signet_runtime::clock::Clock::new().now();
    CaKeyset::new(CaConfig::new(TrustDomain::new("partner.org").unwrap()), now)
        .unwrap()
        .bundle(now)
}

fn start() -> (TestAgent, TrustBundle) {
    let partner = partner();
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &["partner.org"]))
        .federated_bundle(partner.clone())
        .start();
    (agent, partner)
}

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.into(),
        node: None,
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SDS_SECRET_TYPE_URL.into(),
        response_nonce: nonce.into(),
        error_detail: None,
    }
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, SDS_SECRET_TYPE_URL);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SDS_SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn bytes(source: &Option<DataSource>) -> Vec<u8> {
    match source.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => b.clone(),
        Some(data_source::Specifier::InlineString(s)) => s.clone().into_bytes(),
        other => panic!("expected inline data, got {other:?}"),
    }
}

/// Checks a TLS certificate secret: PEM chain naming `id`, PEM key of its leaf.
fn assert_tls(secret: &Secret, name: &str, id: &str) {
    assert_eq!(secret.name, name);
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{name} is not a TLS certificate");
    };
    let chain = certs_from_pem(&String::from_utf8(bytes(&tls.certificate_chain)).unwrap()).unwrap();
    assert_eq!(
        signet_identity::x509::spiffe_id_from_cert(&chain[0])
            .unwrap()
            .as_str(),
        id
    );
    let key =
        PrivateKey::from_pkcs8_pem(&String::from_utf8(bytes(&tls.private_key)).unwrap()).unwrap();
    assert_eq!(*key.public_key(), leaf_key(&chain[0]));
}

fn trusted_ca(secret: &Secret) -> Vec<signet_identity::CertificateDer<'static>> {
    let Some(secret::Type::ValidationContext(context)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    certs_from_pem(&String::from_utf8(bytes(&context.trusted_ca)).unwrap()).unwrap()
}

struct Envoy {
    requests: mpsc::Sender<DiscoveryRequest>,
    responses: tonic::Streaming<DiscoveryResponse>,
}

impl Envoy {
    async fn connect(agent: &TestAgent) -> Self {
        let (requests, receiver) = mpsc::channel(8);
        let responses = sds_client(agent)
            .await
            .stream_secrets(ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn send(&self, request: DiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("no SDS response")
            .unwrap()
            .unwrap()
    }

    /// True when nothing arrives for a while.
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_millis(300), self.responses.message())
            .await
            .is_err()
    }
}

#[tokio::test]
async fn default_rootca_all_and_names_by_id() {
    let (agent, partner) = start();
    let mut envoy = Envoy::connect(&agent).await;

    envoy.send(request(&["default"], "", "")).await;
    let response = envoy.next().await;
    let found = secrets(&response);
    assert_eq!(found.len(), 1);
    assert_tls(&found[0], "default", &own_id("web"));

    envoy
        .send(request(
            &["ROOTCA"],
            &response.version_info,
            &response.nonce,
        ))
        .await;
    let response = envoy.next().await;
    let found = secrets(&response);
    assert_eq!(found[0].name, "ROOTCA");
    assert_eq!(
        trusted_ca(&found[0]),
        agent.issuer.bundle().x509_authorities
    );

    envoy
        .send(request(&["ALL"], &response.version_info, &response.nonce))
        .await;
    let response = envoy.next().await;
    let found = secrets(&response);
    let Some(secret::Type::ValidationContext(context)) = &found[0].r#type else {
        panic!("ALL is not a validation context");
    };
    let validator = context.custom_validator_config.as_ref().unwrap();
    assert_eq!(validator.name, "envoy.tls.cert_validator.spiffe");
    let typed = validator.typed_config.as_ref().unwrap();
    assert_eq!(
        typed.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let config = SpiffeCertValidatorConfig::decode(typed.value.as_slice()).unwrap();
    let tds: Vec<&str> = config
        .trust_domains
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(tds, vec!["example.org", "partner.org"]);
    let partner_pem = String::from_utf8(bytes(&config.trust_domains[1].trust_bundle)).unwrap();
    assert_eq!(
        certs_from_pem(&partner_pem).unwrap(),
        partner.x509_authorities
    );

    let db = own_id("db");
    envoy
        .send(request(
            &[db.as_str(), "spiffe://partner.org"],
            &response.version_info,
            &response.nonce,
        ))
        .await;
    let found = secrets(&envoy.next().await);
    assert_eq!(found.len(), 2);
    assert_tls(&found[0], &db, &db);
    assert_eq!(found[1].name, "spiffe://partner.org");
    assert_eq!(trusted_ca(&found[1]), partner.x509_authorities);
}

#[tokio::test]
async fn empty_names_return_everything_and_unknown_names_are_left_out() {
    let (agent, _) = start();
    let mut envoy = Envoy::connect(&agent).await;
    envoy.send(request(&[], "", "")).await;
    let names: Vec<String> = secrets(&envoy.next().await)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        vec![
            "default".to_owned(),
            own_id("web"),
            own_id("db"),
            "ROOTCA".into(),
            "ALL".into(),
            "spiffe://example.org".into(),
            "spiffe://partner.org".into(),
        ]
    );

    let mut other = Envoy::connect(&agent).await;
    other
        .send(request(
            &["default", "spiffe://example.org/not-mine", "bogus"],
            "",
            "",
        ))
        .await;
    let names: Vec<String> = secrets(&other.next().await)
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["default"]);
}

#[tokio::test(start_paused = true)]
async fn acks_are_quiet_nacks_are_not_retried_and_renewals_are_pushed() {
    let (agent, _) = start();
    let mut envoy = Envoy::connect(&agent).await;
    envoy.send(request(&["default"], "", "")).await;
    let first = envoy.next().await;
    assert!(!first.version_info.is_empty());
    assert!(!first.nonce.is_empty());

    // NACK: logged, not answered with the same content again.
    let mut nack = request(&["default"], "", &first.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "bad certificate".into(),
        details: vec![],
    });
    envoy.send(nack).await;
    // ACK of the current version: nothing to send either. (Paused time
    // would jump straight to the renewal, so check quietness just after.)
    envoy
        .send(request(&["default"], &first.version_info, &first.nonce))
        .await;
    tokio::task::yield_now().await;

    // The renewal (half of the 1h lifetime) produces a new version.
    let started = tokio::time::Instant::now();
    // No timeout here: paused time would fire it before the renewal.
    let renewed = envoy.responses.message().await.unwrap().unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(20 * 60),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(renewed.version_info, first.version_info);
    assert_ne!(renewed.nonce, first.nonce);
    let old = secrets(&first);
    let new = secrets(&renewed);
    assert_tls(&new[0], "default", &own_id("web"));
    assert_ne!(old[0], new[0]);
}

#[tokio::test]
async fn policy_changes_are_pushed_and_revocation_ends_the_stream() {
    let (agent, _) = start();
    let mut envoy = Envoy::connect(&agent).await;
    let db = own_id("db");
    envoy.send(request(&["default", db.as_str()], "", "")).await;
    let first = envoy.next().await;
    assert_eq!(secrets(&first).len(), 2);
    envoy
        .send(request(
            &["default", db.as_str()],
            &first.version_info,
            &first.nonce,
        ))
        .await;
    assert!(envoy.quiet().await, "an ACK must not be answered");

    agent.set_policy(&web_only_policy());
    let second = envoy.next().await;
    let names: Vec<String> = secrets(&second).into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["default"]);

    agent.set_policy(&nobody_policy());
    let end = tokio::time::timeout(Duration::from_secs(10), envoy.responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn fetch_secrets_answers_once() {
    let (agent, _) = start();
    let response = sds_client(&agent)
        .await
        .fetch_secrets(request(&["default", "ROOTCA"], "", ""))
        .await
        .unwrap()
        .into_inner();
    let found = secrets(&response);
    assert_tls(&found[0], "default", &own_id("web"));
    assert_eq!(found[1].name, "ROOTCA");
    assert!(!response.version_info.is_empty());

    let nobody = TestAgent::builder().policy_yaml(nobody_policy()).start();
    let denied = sds_client(&nobody)
        .await
        .fetch_secrets(request(&["default"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}
