//! The trust domain's authorities under an administrator's control, with
//! the real binaries, under live mTLS traffic: 100 workloads (each its own
//! uid, so its own SVID) keep opening go-spiffe mTLS connections to a
//! server while `signet-operator authority` prepares and activates a new
//! X.509 CA and taints the old one. Every SVID moves to the new CA (the
//! ledger's count of the tainted CA falls to zero) without one failed
//! handshake; revoking removes the old CA from the bundle, after which an
//! SVID it signed no longer verifies. The refusals are tried too (taint
//! the active CA, revoke while SVIDs depend on it, revoke untainted), and
//! a JWT key goes the same way.
//!
//! Needs root (workloads run as other uids) and the go-spiffe workload
//! from `e2e/tools/install-interop.sh`; CI has both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use signet_e2e::interop::{GoMtlsServer, tool};
use signet_e2e::standalone::{
    Stack, any_uid_policy, binary, have_root, http_get, wait_until_every,
};
use signet_identity::x509::{certs_from_pem, verify_x509_svid};
use signet_identity::{TrustBundle, TrustDomain};

const WORKLOADS: u32 = 100;
const FIRST_UID: u32 = 20_000;

fn id_of(uid: u32) -> String {
    format!("spiffe://example.org/svc/uid/{uid}")
}

/// `signet-operator authority ARGS --state-dir <stack's> --json`:
/// (succeeded, the JSON answer).
fn authority(stack: &Stack, args: &[&str]) -> (bool, serde_json::Value) {
    let output = Command::new(binary("signet-operator"))
        .arg("authority")
        .args(args)
        .arg("--state-dir")
        .arg(stack.path("operator"))
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "authority {args:?} printed no JSON ({e}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), answer)
}

fn must(stack: &Stack, args: &[&str]) -> serde_json::Value {
    let (ok, answer) = authority(stack, args);
    assert!(ok, "authority {args:?} refused: {answer:#}");
    answer
}

/// The authorities of `kind` (`x509`/`jwt`) in an answer, oldest first.
fn of_kind<'a>(answer: &'a serde_json::Value, kind: &str) -> Vec<&'a serde_json::Value> {
    answer["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .collect()
}

fn with_state<'a>(answer: &'a serde_json::Value, kind: &str, state: &str) -> &'a serde_json::Value {
    of_kind(answer, kind)
        .into_iter()
        .find(|a| a["state"] == state)
        .unwrap_or_else(|| panic!("no {state} {kind} authority: {answer:#}"))
}

fn live(answer: &serde_json::Value, id: &str) -> u64 {
    answer["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .map_or(0, |a| a["live_svids"].as_u64().unwrap())
}

fn bundle_ders(stack: &Stack) -> BTreeSet<Vec<u8>> {
    certs_from_pem(&std::fs::read_to_string(stack.bundle_pem_path()).unwrap())
        .unwrap()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Kills the children when dropped.
struct Workloads(Vec<Child>);

impl Drop for Workloads {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn prepare_activate_taint_revoke_under_live_mtls_traffic() {
    if !have_root("prepare_activate_taint_revoke_under_live_mtls_traffic") {
        return;
    }
    let Some(go_mtls) = tool("bin/go-spiffe-mtls") else {
        return;
    };
    let metrics = signet_e2e::cluster::free_port();
    let mut stack = Stack::operator_only_with_config(&any_uid_policy(&[]), |_| {
        format!("metrics_listen: 127.0.0.1:{metrics}\n")
    });
    stack.set_agent_extra("taint_reissue_window: 10s\n");
    let bundle = stack.bundle_pem_path();
    wait_until_every(
        "the operator's bundle",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || bundle.is_file(),
    );
    stack.start_agent();

    // The workloads run as other users: the tool must be reachable by them.
    let workload_bin = stack.path("go-spiffe-mtls");
    std::fs::copy(&go_mtls, &workload_bin).unwrap();
    std::fs::set_permissions(&workload_bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let uids: Vec<u32> = (FIRST_UID..FIRST_UID + WORKLOADS).collect();
    let client_ids: Vec<String> = uids.iter().map(|uid| id_of(*uid)).collect();
    let allowed: Vec<&str> = client_ids.iter().map(String::as_str).collect();
    let server = GoMtlsServer::start(&stack.endpoint(), &allowed).unwrap();
    let server_id = id_of(signet_e2e::standalone::current_uid());

    let first = must(&stack, &["show"]);
    let old_ca = with_state(&first, "x509", "active")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_bundle = bundle_ders(&stack);

    // Refusals while the old CA is active.
    let (ok, answer) = authority(&stack, &["taint", "x509", &old_ca]);
    assert!(!ok);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("activate its successor first"),
        "{answer:#}"
    );
    let (ok, answer) = authority(&stack, &["revoke", "x509", &old_ca]);
    assert!(!ok, "revoked an active, untainted CA: {answer:#}");

    // Writable by the first workload's user.
    let kept_dir = stack.path("kept");
    std::fs::create_dir_all(&kept_dir).unwrap();
    std::fs::set_permissions(&kept_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let kept = kept_dir.join("svid.pem");

    // 100 workloads connect once a second until their own SVID has come
    // from two CAs (the old, then the new after the taint).
    let mut workloads = Workloads(
        uids.iter()
            .map(|uid| {
                Command::new("setpriv")
                    .args([
                        &format!("--reuid={uid}"),
                        &format!("--regid={uid}"),
                        "--clear-groups",
                    ])
                    .arg(&workload_bin)
                    .args(["client", "-socket", &stack.endpoint()])
                    .args(["-connect", &format!("127.0.0.1:{}", server.port)])
                    .args(["-server-id", &server_id])
                    .args([
                        "-until-own-issuers",
                        "2",
                        "-every",
                        "1s",
                        "-timeout",
                        "240s",
                    ])
                    // The first workload keeps its first SVID (of the old
                    // CA) to check revocation with at the end.
                    .args(if *uid == FIRST_UID {
                        vec!["-save-first-svid".to_owned(), kept.display().to_string()]
                    } else {
                        Vec::new()
                    })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    // All of them (and the server and the agent) hold SVIDs of the old CA.
    wait_until_every(
        "every workload's SVID from the first CA",
        Duration::from_secs(120),
        Duration::from_secs(1),
        || live(&must(&stack, &["show"]), &old_ca) > u64::from(WORKLOADS),
    );

    // Prepare: published, not signing. Workloads get the bundle at once.
    let prepared = must(&stack, &["prepare", "x509"]);
    let new_ca = with_state(&prepared, "x509", "prepared")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_until_every(
        "the prepared CA in bundle.pem",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || bundle_ders(&stack).len() == old_bundle.len() + 1,
    );
    // Workloads' streams carry it within a moment; give peers that margin
    // before the new CA signs (as the schedule gives them half a life).
    std::thread::sleep(Duration::from_secs(3));
    let activated = must(&stack, &["activate", "x509"]);
    assert_eq!(
        with_state(&activated, "x509", "active")["id"],
        new_ca.as_str()
    );
    assert_eq!(
        with_state(&activated, "x509", "retired")["id"],
        old_ca.as_str()
    );

    // Taint the old CA: agents re-issue everything it signed within the
    // window; revoking before that is refused.
    let tainted = must(&stack, &["taint", "x509", &old_ca]);
    assert!(
        of_kind(&tainted, "x509")
            .iter()
            .any(|a| a["id"] == old_ca.as_str() && a["tainted"] == true)
    );
    let (ok, answer) = authority(&stack, &["revoke", "x509", &old_ca]);
    assert!(!ok, "revoked while SVIDs depend on it: {answer:#}");
    assert!(
        answer["error"].as_str().unwrap().contains("still in use"),
        "{answer:#}"
    );
    wait_until_every(
        "no live SVID on the tainted CA",
        Duration::from_secs(90),
        Duration::from_secs(1),
        || live(&must(&stack, &["show"]), &old_ca) == 0,
    );
    wait_until_every(
        "signet_operator_svids_on_tainted_authorities 0",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            http_get(metrics, "/metrics")
                .lines()
                .any(|l| l.trim() == "signet_operator_svids_on_tainted_authorities 0")
        },
    );

    // Every workload saw its SVID move to the new CA, with no failure.
    let mut connections = 0;
    for (uid, child) in uids.iter().zip(std::mem::take(&mut workloads.0)) {
        let output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "workload {uid}: no summary ({e}): {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        assert_eq!(summary["failed"], 0, "workload {uid}: {summary}");
        assert_eq!(
            summary["client_issuers"].as_array().unwrap().len(),
            2,
            "workload {uid} never moved to the new CA: {summary}"
        );
        connections += summary["connections"].as_u64().unwrap();
    }
    signet_e2e::cluster::note(&format!(
        "{WORKLOADS} workloads, {connections} mTLS connections across prepare/activate/taint, none failed"
    ));

    // Revoke: the old CA leaves the bundle; an SVID it signed fails.
    let revoked = must(&stack, &["revoke", "x509", &old_ca]);
    assert!(
        of_kind(&revoked, "x509")
            .iter()
            .all(|a| a["id"] != old_ca.as_str())
    );
    wait_until_every(
        "the revoked CA out of bundle.pem",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || bundle_ders(&stack).len() == old_bundle.len(),
    );
    let now = signet_runtime::clock::Clock::new().now();
    let chain = certs_from_pem(&std::fs::read_to_string(&kept).unwrap()).unwrap();
    let mut current = TrustBundle::new(TrustDomain::new("example.org").unwrap());
    current.x509_authorities =
        certs_from_pem(&std::fs::read_to_string(stack.bundle_pem_path()).unwrap()).unwrap();
    assert!(
        verify_x509_svid(&chain, &current, now).is_err(),
        "an SVID of the revoked CA still verifies"
    );
    let mut before = TrustBundle::new(TrustDomain::new("example.org").unwrap());
    before.x509_authorities = old_bundle.iter().map(|d| d.clone().into()).collect();
    assert!(
        verify_x509_svid(&chain, &before, now).is_ok(),
        "the kept SVID was valid before"
    );
    drop(server);
}

#[test]
fn a_tainted_jwt_key_stops_being_handed_out_and_leaves_the_jwks_when_revoked() {
    let mut stack = Stack::operator_only(&any_uid_policy(&[]));
    stack.set_agent_extra("taint_reissue_window: 0s\n");
    let bundle = stack.bundle_pem_path();
    wait_until_every(
        "the operator's bundle",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || bundle.is_file(),
    );
    stack.start_agent();
    let kid_of = |stack: &Stack| {
        let out = stack.agent_api(&["fetch", "jwt", "--audience", "a", "--output", "json"]);
        assert!(out.status.success(), "{out:?}");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let token = answer["svids"][0]["svid"]
            .as_str()
            .unwrap_or_else(|| panic!("no token in {answer:#}"))
            .to_owned();
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    let first = must(&stack, &["show"]);
    let old_key = with_state(&first, "jwt", "active")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(kid_of(&stack), old_key);

    must(&stack, &["prepare", "jwt"]);
    let activated = must(&stack, &["activate", "jwt"]);
    let new_key = with_state(&activated, "jwt", "active")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The cached token of the old key is still handed out until the taint.
    assert_eq!(kid_of(&stack), old_key);
    must(&stack, &["taint", "jwt", &old_key]);
    wait_until_every(
        "a token of the new key after the taint",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || kid_of(&stack) == new_key,
    );
    wait_until_every(
        "no live JWT-SVID on the tainted key",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || live(&must(&stack, &["show"]), &old_key) == 0,
    );
    must(&stack, &["revoke", "jwt", &old_key]);
    let jwks_path = stack.path("operator/jwks.json");
    wait_until_every(
        "the revoked key out of jwks.json",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            !std::fs::read_to_string(&jwks_path)
                .unwrap()
                .contains(&old_key)
        },
    );
    let jwks = std::fs::read_to_string(&jwks_path).unwrap();
    assert!(jwks.contains(&new_key), "{jwks}");
}
