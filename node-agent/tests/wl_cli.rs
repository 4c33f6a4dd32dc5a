//! `signet-agent api ...` against an in-process agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod wl_support;

use std::os::unix::fs::PermissionsExt;

use clap::Parser;
use signet_agent::cli::{Cli, Command, run_api};
use signet_agent::testing::TestAgent;
use signet_identity::PrivateKey;
use signet_identity::x509::{certs_from_pem, spiffe_id_from_cert};
use wl_support::*;

/// `signet-agent api <args>` as parsed.
fn api_command(args: &[&str]) -> signet_agent::cli::ApiCommand {
    let cli = Cli::try_parse_from(["signet-agent", "api"].iter().chain(args)).unwrap();
    let Command::Api(command) = cli.command else {
        panic!("not an api command");
    };
    command
}

async fn api(args: &[&str]) -> String {
    let mut out = Vec::new();
    run_api(api_command(args), &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn fetch_x509_prints_and_writes_pem_files() {
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &[]))
        .start();
    let endpoint = agent.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("svids");
    let text = api(&[
        "fetch",
        "x509",
        "--socket-path",
        &endpoint,
        "--write",
        out_dir.to_str().unwrap(),
    ])
    .await;
    let web = format!("spiffe://example.org/uid/{}/web", uid());
    assert!(text.contains("Received 2 svid(s)"), "{text}");
    assert!(text.contains(&format!("SPIFFE ID:\t\t{web}")), "{text}");
    assert!(text.contains("SVID Valid Until:"), "{text}");

    let chain =
        certs_from_pem(&std::fs::read_to_string(out_dir.join("svid.pem")).unwrap()).unwrap();
    assert_eq!(spiffe_id_from_cert(&chain[0]).unwrap().as_str(), web);
    let key_path = out_dir.join("svid_key.pem");
    let key = PrivateKey::from_pkcs8_pem(&std::fs::read_to_string(&key_path).unwrap()).unwrap();
    assert_eq!(*key.public_key(), leaf_key(&chain[0]));
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bundle =
        certs_from_pem(&std::fs::read_to_string(out_dir.join("bundle.pem")).unwrap()).unwrap();
    assert_eq!(bundle, agent.issuer.bundle().x509_authorities);
    // The second SVID gets numbered files.
    assert!(out_dir.join("svid.1.pem").exists());
    assert!(out_dir.join("svid_key.1.pem").exists());

    let json: serde_json::Value = serde_json::from_str(
        &api(&[
            "fetch",
            "x509",
            "--socket-path",
            &endpoint,
            "--output",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(json["svids"][0]["spiffe_id"], web);
    assert_eq!(json["svids"][1]["hint"], "db");
}

#[tokio::test]
async fn jwt_fetch_and_validate_and_bundles() {
    let agent = TestAgent::builder().policy_yaml(web_only_policy()).start();
    let endpoint = agent.endpoint();
    let fetched: serde_json::Value = serde_json::from_str(
        &api(&[
            "fetch",
            "jwt",
            "--audience",
            "db",
            "--socket-path",
            &endpoint,
            "--output",
            "json",
        ])
        .await,
    )
    .unwrap();
    let token = fetched["svids"][0]["svid"].as_str().unwrap().to_owned();
    let validated = api(&[
        "validate",
        "jwt",
        "--audience",
        "db",
        "--svid",
        &token,
        "--socket-path",
        &endpoint,
    ])
    .await;
    assert!(validated.starts_with("SVID is valid."), "{validated}");
    assert!(
        validated.contains(&format!("uid/{}/web", uid())),
        "{validated}"
    );

    let bundles = api(&["fetch", "bundle", "--socket-path", &endpoint]).await;
    assert!(
        bundles.contains("bundle(spiffe://example.org):"),
        "{bundles}"
    );
    assert!(bundles.contains("-----BEGIN CERTIFICATE-----"), "{bundles}");
}

#[tokio::test]
async fn errors_name_the_rpc_and_code() {
    let agent = TestAgent::builder().policy_yaml(nobody_policy()).start();
    let command = api_command(&["fetch", "x509", "--socket-path", &agent.endpoint()]);
    let error = run_api(command, &mut Vec::new()).await.unwrap_err();
    let message = error.to_string();
    // A refusal is an answer: given at once, not retried.
    assert!(message.starts_with("FetchX509SVID failed"), "{message}");
    assert!(message.contains("FetchX509SVID"), "{message}");
    assert!(message.contains("PermissionDenied"), "{message}");
}

/// A pod's init container may run before the node's agent serves: fetch
/// keeps trying the socket until it appears (within `--timeout`).
#[tokio::test]
async fn fetch_waits_for_an_agent_that_is_not_serving_yet() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let endpoint = format!("unix://{}", socket.display());
    let finished = std::cell::Cell::new(false);
    let fetching = async {
        let command = api_command(&[
            "fetch",
            "x509",
            "--socket-path",
            &endpoint,
            "--timeout",
            "30s",
        ]);
        let mut out = Vec::new();
        let result = run_api(command, &mut out).await;
        finished.set(true);
        result.map(|()| String::from_utf8(out).unwrap())
    };
    let serving = async {
        // A window in which the socket is missing: attempts fail and are retried.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!finished.get(), "fetch gave up on a missing socket");
        let agent = TestAgent::builder()
            .policy_yaml(policy("web", "db", &[]))
            .start();
        std::os::unix::fs::symlink(agent.socket_path(), &socket).unwrap();
        agent
    };
    let (fetched, _agent) = tokio::join!(fetching, serving);
    let text = fetched.expect("fetch once the agent serves");
    assert!(text.contains("Received 2 svid(s)"), "{text}");
}
