//! Failures users meet with the standalone stack, on real processes: the
//! issuer going away and coming back, the agent restarting, the operator
//! restarting on its persisted CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::StreamExt;
use signet_e2e::standalone::{Stack, current_uid, uid_policy, wait_until};
use spiffe::WorkloadApiClient;

fn expected_id() -> String {
    format!("spiffe://example.org/web/uid/{}", current_uid())
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_svids_are_served_while_the_issuer_is_down_and_it_resumes_on_the_same_ca() {
    let mut stack = Stack::start(&uid_policy("web", current_uid()));
    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let before = client.fetch_x509_svid().await.unwrap();
    let token_before = client.fetch_jwt_token(["cached"], None).await.unwrap();
    let bundle_before = std::fs::read_to_string(stack.bundle_pem_path()).unwrap();

    stack.stop_operator();

    // No workload-visible error: new connections get the cached SVIDs.
    let during = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let svid = during.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), expected_id());
    assert_eq!(
        svid.cert_chain()[0],
        before.cert_chain()[0],
        "the cached SVID, not a new one"
    );
    let token = during.fetch_jwt_token(["cached"], None).await.unwrap();
    assert_eq!(
        token, token_before,
        "the cached JWT-SVID for a known audience"
    );
    // ValidateJWTSVID needs only the bundle the agent holds.
    let validated = during.validate_jwt_token("cached", &token).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), expected_id());

    // Back on the same port and state directory: the CA was persisted, so
    // the bundle is unchanged and the agent resumes without a new join
    // (its single-use token is already spent).
    stack.start_operator();
    let bundle_after = std::fs::read_to_string(stack.bundle_pem_path()).unwrap();
    assert_eq!(bundle_before, bundle_after);

    // A JWT for a new audience needs the issuer: it works again once the
    // agent has reconnected (it retries with backoff).
    let after = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let mut fresh = None;
    for _ in 0..60 {
        match after.fetch_jwt_token(["fresh-audience"], None).await {
            Ok(token) => {
                fresh = Some(token);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let fresh = fresh.expect("a JWT-SVID for a new audience after the issuer came back");
    let validated = after
        .validate_jwt_token("fresh-audience", &fresh)
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), expected_id());
    let joins = stack
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "agent.joined")
        .count();
    assert_eq!(joins, 1, "the agent did not join again");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_agent_restart_clients_reconnect_without_a_new_join() {
    let mut stack = Stack::start(&uid_policy("web", current_uid()));
    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_contexts().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        first.default_svid().unwrap().spiffe_id().to_string(),
        expected_id()
    );

    stack.stop_agent();
    // The open stream ends (with an error or end-of-stream), never with a
    // context that lacks the identity.
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the stream ends when the agent stops");
    assert!(ended.is_none() || ended.unwrap().is_err());

    // The agent restarts from its state directory: the join token is spent,
    // yet it comes back with its persisted agent SVID.
    stack.start_agent();
    let again = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let svid = again.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), expected_id());
    let joins = stack
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "agent.joined")
        .count();
    assert_eq!(joins, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_no_identity_matches_gets_permission_denied() {
    // The policy names a uid nobody here runs as.
    let stack = Stack::start(&uid_policy("web", 4_000_000_000));
    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    let error = client.fetch_x509_svid().await.unwrap_err();
    // The spiffe crate reports the spec's PermissionDenied "no identity
    // issued" as its own variant.
    assert!(
        matches!(
            error,
            spiffe::WorkloadApiError::NoIdentityIssued
                | spiffe::WorkloadApiError::PermissionDenied(_)
        ),
        "expected PermissionDenied, got {error:?}"
    );
}

#[test]
fn the_operator_refuses_a_corrupt_keyset_instead_of_replacing_it() {
    let mut stack = Stack::operator_only(&uid_policy("web", current_uid()));
    stack.stop_operator();
    let keyset = stack.path("operator/ca-keyset.json");
    let original = std::fs::read(&keyset).unwrap();
    std::fs::write(&keyset, b"{ not json").unwrap();

    let output = std::process::Command::new(signet_e2e::standalone::binary("signet-operator"))
        .arg("standalone")
        .args(["--trust-domain", "example.org"])
        .arg("--policy-dir")
        .arg(stack.path("policy"))
        .arg("--state-dir")
        .arg(stack.path("operator"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--audit-log")
        .arg(stack.path("audit.log"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("keyset") || stderr.contains("certificate authority"),
        "{stderr}"
    );
    // Nothing was overwritten: an operator must never mint a new CA over
    // one it cannot read.
    assert_eq!(std::fs::read(&keyset).unwrap(), b"{ not json");

    std::fs::write(&keyset, original).unwrap();
    stack.start_operator();
    wait_until("the bundle file", Duration::from_secs(10), || {
        stack.bundle_pem_path().exists()
    });
}
