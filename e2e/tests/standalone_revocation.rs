//! Revoked agents, attacked on the real operator and agent: an agent's SVID
//! and key copied off its machine (a stolen credential) renew until the
//! administrator runs `signet-operator agent revoke`; after it, renewals,
//! joins under the revoked name (even with a reusable token) and signing
//! are refused, the real agent's policy stream is closed within seconds,
//! and nothing more is issued for it. A join name removed from the
//! configuration stops renewing too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use signet_agent::issuer::{IssuerClient, IssuerClientConfig, IssuerError};
use signet_e2e::standalone::{Stack, TRUST_DOMAIN, current_uid, uid_policy, wait_until};
use signet_identity::TrustDomain;
use signet_runtime::clock::Clock;

/// An issuer client of its own on `state_dir` (what an attacker holding
/// the files, or a second machine with the token, would run).
fn client(stack: &Stack, state_dir: &Path, join_token: Option<String>) -> IssuerClient {
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bootstrap =
        IssuerClient::read_bootstrap_bundle(&stack.bundle_pem_path(), &trust_domain).unwrap();
    IssuerClient::new(
        IssuerClientConfig {
            address: format!("127.0.0.1:{}", stack.port),
            trust_domain,
            state_dir: state_dir.to_owned(),
            join_token,
            service_account_token_path: None,
            node_name: None,
        },
        bootstrap,
        Clock::new(),
        Arc::new(signet_agent::metrics::Metrics::default()),
    )
    .unwrap()
}

fn refused(result: Result<(), IssuerError>, code: tonic::Code, containing: &str) {
    match result {
        Err(IssuerError::Call {
            code: got, message, ..
        }) => {
            assert_eq!(got, code, "{message}");
            assert!(message.contains(containing), "{message:?}");
        }
        other => panic!("expected {code:?} ({containing}), got {other:?}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn operator_agent_cli(stack: &Stack, args: &[&str]) -> String {
    let mut all = vec!["agent"];
    all.extend_from_slice(args);
    all.push("--state-dir");
    let out = stack.operator_cli(&all, &[stack.path("operator")]);
    assert!(
        out.status.success(),
        "signet-operator agent {args:?}: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agent_is_refused_everything_and_its_stream_is_closed() {
    let fleet_config = |stack: &Stack| stack.reusable_token_config("fleet");
    let mut stack =
        Stack::operator_only_with_config(&uid_policy("web", current_uid()), fleet_config);
    stack.start_agent();
    let fetched = stack.agent_api(&["fetch", "jwt", "--audience", "before"]);
    assert!(fetched.status.success(), "fetch before: {fetched:?}");

    // The attacker's copy of the agent's credential renews today.
    let stolen_dir = stack.path("stolen");
    copy_dir(&stack.path("agent"), &stolen_dir);
    let stolen = client(&stack, &stolen_dir, None);
    stolen.ensure_identity().await.unwrap();
    stolen.renew().await.expect("a valid agent SVID renews");

    let said = operator_agent_cli(&stack, &["revoke", "agent", "--reason", "disk stolen"]);
    assert!(said.contains("revoked"), "{said}");
    let listed: serde_json::Value =
        serde_json::from_str(&operator_agent_cli(&stack, &["revoked"])).unwrap();
    assert_eq!(listed["revoked"]["agent"]["reason"], "disk stolen");

    // The real agent's policy stream is closed: it logs the refusal.
    let agent_log = stack.path("agent.log");
    wait_until(
        "the agent's stream to be closed",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&agent_log)
                .unwrap_or_default()
                .contains("is revoked: disk stolen")
        },
    );
    // Renewals of the stolen credential are refused.
    refused(
        stolen.renew().await,
        tonic::Code::PermissionDenied,
        "is revoked",
    );
    // And the issuer signs nothing more for it: a JWT for a new audience
    // needs the issuer and is not issued.
    let fetched = stack.agent_api(&["fetch", "jwt", "--audience", "after", "--timeout", "5s"]);
    assert!(
        !fetched.status.success(),
        "fetch after revocation: {fetched:?}"
    );
    let events = stack.audit_events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "svid.issued" && e["audiences"][0] == "after"),
        "a JWT-SVID was issued to a revoked agent: {events:?}"
    );
    assert!(
        events.iter().any(|e| e["agent"] == "agent"
            && e["event"] == "agent.refused"
            && e["reason"] == "agent_revoked"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("is revoked"))),
        "the refusal is audited: {events:?}"
    );

    // A revoked name cannot come back through a reusable token.
    let fleet_token = std::fs::read_to_string(stack.path("fleet-token")).unwrap();
    let fleet_dir = stack.path("fleet");
    let fleet = client(&stack, &fleet_dir, Some(fleet_token.trim().to_owned()));
    fleet.join().await.expect("the reusable token joins");
    operator_agent_cli(&stack, &["revoke", "fleet"]);
    let second = client(
        &stack,
        &stack.path("fleet-2"),
        Some(fleet_token.trim().to_owned()),
    );
    // The operator re-reads the list within a second.
    let mut joined = second.join().await;
    let deadline = signet_e2e::deadline::Deadline::after(Duration::from_secs(10));
    while joined.is_ok() && !deadline.passed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        joined = second.join().await;
    }
    refused(joined, tonic::Code::PermissionDenied, "is revoked");
    refused(
        fleet.renew().await,
        tonic::Code::PermissionDenied,
        "is revoked",
    );
    // Unrevoked, it joins and renews again.
    operator_agent_cli(&stack, &["unrevoke", "fleet"]);
    let mut renewed = fleet.renew().await;
    while renewed.is_err() && !deadline.passed() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        renewed = fleet.renew().await;
    }
    renewed.expect("an unrevoked agent renews");

    // The revocation survives a restart, and a join name taken out of the
    // configuration no longer renews.
    stack.set_operator_config("");
    stack.stop_operator();
    stack.start_operator();
    refused(
        stolen.renew().await,
        tonic::Code::PermissionDenied,
        "is revoked",
    );
    refused(
        fleet.renew().await,
        tonic::Code::PermissionDenied,
        "no longer configured",
    );
}
