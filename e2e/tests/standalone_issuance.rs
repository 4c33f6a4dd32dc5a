//! The standalone stack as users run it: real `signet-operator` and
//! `signet-agent` processes, with the Rust `spiffe` crate as the workload's
//! client. Policy edits, revocation and the audit trail are observed from
//! the outside only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use signet_e2e::standalone::{Stack, current_uid, http_get, uid_policy};
use spiffe::WorkloadApiClient;

fn td() -> spiffe::TrustDomain {
    spiffe::TrustDomain::new("example.org").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_gets_the_identity_its_policy_renders() {
    let uid = current_uid();
    let stack = Stack::start(&uid_policy("web", uid));
    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();

    let context = client.fetch_x509_context().await.unwrap();
    let svid = context.default_svid().unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        format!("spiffe://example.org/web/uid/{uid}")
    );
    assert_eq!(svid.hint(), Some("web"));
    // The bundle the agent serves is the one the operator published.
    let published = std::fs::read_to_string(stack.bundle_pem_path()).unwrap();
    let served = context.bundle_set().get(&td()).unwrap();
    assert!(!served.authorities().is_empty());
    assert_eq!(
        served.authorities().len(),
        published.matches("BEGIN CERTIFICATE").count()
    );

    let token = client.fetch_jwt_token(["payments"], None).await.unwrap();
    let validated = client.validate_jwt_token("payments", &token).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        format!("spiffe://example.org/web/uid/{uid}")
    );

    // Every issuance is audited with the rendered ID and the workload's attributes.
    let events = stack.audit_events();
    let x509 = events
        .iter()
        .find(|e| e["event"] == "svid.issued" && e["credential"] == "x509_svid")
        .expect("an X.509 issuance event");
    assert_eq!(x509["workload_identity"], "web");
    assert_eq!(x509["agent"], "agent");
    assert_eq!(x509["workload"]["workload.unix.uid"], uid.to_string());
    assert_eq!(x509["dns_sans"][0], "web.e2e.internal");
    assert!(x509["serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(
        events
            .iter()
            .any(|e| e["credential"] == "jwt_svid" && e["audiences"][0] == "payments")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_edits_reach_open_streams_and_revocation_drops_the_svid() {
    let uid = current_uid();
    let stack = Stack::start(&uid_policy("web", uid));
    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let mut updates = client.stream_x509_contexts().await.unwrap();

    let first = updates.next().await.unwrap().unwrap();
    let ids = |c: &spiffe::X509Context| {
        let mut ids: Vec<String> = c
            .svids()
            .iter()
            .map(|s| s.spiffe_id().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&first), [format!("spiffe://example.org/web/uid/{uid}")]);

    // A second identity appears on the open stream.
    stack.write_policy(
        "more.yaml",
        &uid_policy("api", uid).replace("e2e-agents", "e2e-agents-2"),
    );
    let second = tokio::time::timeout(Duration::from_secs(30), updates.next())
        .await
        .expect("an update after the policy grew")
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&second),
        [
            format!("spiffe://example.org/api/uid/{uid}"),
            format!("spiffe://example.org/web/uid/{uid}"),
        ]
    );

    // Removing it revokes it: the next message no longer carries it.
    std::fs::remove_file(stack.path("policy/more.yaml")).unwrap();
    let third = tokio::time::timeout(Duration::from_secs(30), updates.next())
        .await
        .expect("an update after the identity was removed")
        .unwrap()
        .unwrap();
    assert_eq!(ids(&third), [format!("spiffe://example.org/web/uid/{uid}")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_policy_edit_keeps_the_last_good_version() {
    let uid = current_uid();
    let stack = Stack::start(&uid_policy("web", uid));
    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let before = client.fetch_x509_svid().await.unwrap();

    // A template naming an attribute that does not exist.
    stack.write_policy(
        "policy.yaml",
        &uid_policy("web", uid).replace("workload.unix.uid }}", "workload.unix.nope }}"),
    );
    let operator_log = || stack.operator.as_ref().unwrap().log();
    signet_e2e::standalone::wait_until(
        "the operator to report the bad object",
        Duration::from_secs(30),
        || operator_log().contains("last valid version stays in force"),
    );
    assert!(operator_log().contains("web"), "{}", operator_log());

    // A new client still gets the identity.
    let again = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let after = again.fetch_x509_svid().await.unwrap();
    assert_eq!(after.spiffe_id(), before.spiffe_id());
}

#[test]
fn a_bad_join_token_is_refused_and_the_agent_says_why() {
    let mut stack = Stack::operator_only(&uid_policy("web", current_uid()));
    std::fs::write(stack.path("join-token"), "not-the-token\n").unwrap();
    let config = stack.path("agent.yaml");
    std::fs::write(&config, stack.agent_config()).unwrap();
    let output = std::process::Command::new(signet_e2e::standalone::binary("signet-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("join"), "{stderr}");
    assert!(
        stack
            .audit_events()
            .iter()
            .any(|e| e["event"] == "agent.join_denied" || e["outcome"] == "denied"),
        "the refusal is audited: {:?}",
        stack.audit_events()
    );
    stack.stop_operator();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_reports_health_and_counts_issuances_and_denials() {
    let uid = current_uid();
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut stack = Stack::operator_only_with_config(&uid_policy("web", uid), |_| {
        format!("metrics_listen: 127.0.0.1:{metrics_port}\n")
    });
    stack.start_agent();
    assert!(http_get(metrics_port, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(metrics_port, "/readyz").starts_with("HTTP/1.1 200"));

    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    client.fetch_x509_svid().await.unwrap();
    client.fetch_jwt_token(["metrics"], None).await.unwrap();

    let metrics = http_get(metrics_port, "/metrics");
    for expected in [
        r#"signet_operator_svids_issued_total{kind="x509",workload_identity="web"} 1"#,
        r#"signet_operator_svids_issued_total{kind="jwt",workload_identity="web"} 1"#,
        "signet_operator_agents_watching 1",
        "signet_operator_bundle_sequence ",
        "signet_operator_policy_version ",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
}

/// JWT-SVID consumers that discover keys through OIDC (cloud IAM, Vault)
/// find the issuer named in the tokens, and the key that signed them.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_discovery_serves_the_keys_of_the_jwt_svids_it_names() {
    use base64::Engine;
    let uid = current_uid();
    let port = signet_e2e::cluster::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let mut stack = Stack::operator_only_with_config(&uid_policy("web", uid), |_| {
        format!("oidc: {{listen: 127.0.0.1:{port}, issuer_url: '{issuer}/'}}\n")
    });
    stack.start_agent();

    let body = |response: &str| response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    let discovery: serde_json::Value =
        serde_json::from_str(&body(&http_get(port, "/.well-known/openid-configuration"))).unwrap();
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/keys"));
    let keys: serde_json::Value = serde_json::from_str(&body(&http_get(port, "/keys"))).unwrap();

    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let token = client.fetch_jwt_token(["vault"], None).await.unwrap();
    let part = |index: usize| -> serde_json::Value {
        let segment = token.split('.').nth(index).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    assert_eq!(
        part(1)["iss"],
        issuer.as_str(),
        "tokens name the discovery issuer"
    );
    let kid = part(0)["kid"].clone();
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid),
        "the signing key {kid} is published: {keys}"
    );
}
