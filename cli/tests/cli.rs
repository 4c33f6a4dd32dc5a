//! The `signet` binary on the repository's own examples (what CI checks
//! with `signet policy test`), and its failure modes.

// Helpers outside #[test] functions unwrap too: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn signet(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_signet"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn the_examples_pass_their_policy_tests() {
    for (policy, tests) in [
        (
            "examples/standalone/policy",
            "examples/tests/standalone.yaml",
        ),
        (
            "examples/kubernetes/policy.yaml",
            "examples/tests/kubernetes.yaml",
        ),
        (
            "examples/kubernetes/people.yaml",
            "examples/tests/people.yaml",
        ),
    ] {
        let (code, out) = signet(&["policy", "test", policy, tests]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(" 0 failed"), "{out}");
    }
}

#[test]
fn a_changed_identity_fails_with_a_diff() {
    let dir = tempfile::tempdir().unwrap();
    let tests = std::fs::read_to_string(repo().join("examples/tests/standalone.yaml"))
        .unwrap()
        .replace("demo/vm-1/admin", "demo/vm-1/superuser")
        .replace(
            "expect: []",
            "expect: [{identity: local-user, spiffeId: spiffe://example.org/x}]",
        );
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, tests).unwrap();
    let (code, out) = signet(&[
        "policy",
        "test",
        "examples/standalone/policy",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("~ root-admin: spiffeId: want spiffe://example.org/demo/vm-1/superuser, got spiffe://example.org/demo/vm-1/admin"),
        "{out}"
    );
    // A missing identity names the issuer's reason.
    assert!(out.contains("- local-user spiffe://example.org/x"), "{out}");
    assert!(out.contains("no_matching_rule"), "{out}");
    assert!(out.contains("2 failed"), "{out}");
}

#[test]
fn a_policy_object_that_does_not_compile_fails_the_test_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {name: broken}\n\
         spec: {rules: {allow: [{conditions: [{attribute: workload.unix.uidd, eq: '1'}]}]}, spiffe: {id: /x}}\n---\n\
         apiVersion: signet.dev/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\n\
         spec: {cases: [{name: c, attributes: {workload.unix.uid: '1'}, expect: []}]}\n",
    )
    .unwrap();
    let (code, out) = signet(&["policy", "test", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("POLICY ERROR WorkloadIdentity broken"),
        "{out}"
    );
    assert!(out.contains("workload.unix.uidd"), "{out}");
}

#[test]
fn explain_names_the_deciding_rule_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let attributes = dir.path().join("a.yaml");
    std::fs::write(&attributes, "workload.unix.uid: 0\nagent.name: vm-1\n").unwrap();
    let (code, out) = signet(&[
        "explain",
        "--attributes",
        attributes.to_str().unwrap(),
        "--policy",
        "examples/standalone/policy",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("demo-agents              applies: Agent *"),
        "{out}"
    );
    assert!(
        out.contains("ISSUED   root-admin -> spiffe://example.org/demo/vm-1/admin"),
        "{out}"
    );
    assert!(out.contains("REFUSED  local-user"), "{out}");
    assert!(out.contains("workload.unix.uid is \"0\""), "{out}");

    let (code, out) = signet(&[
        "explain",
        "--attributes",
        attributes.to_str().unwrap(),
        "--policy",
        "examples/standalone/policy",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let issued: Vec<&str> = json["identities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["issued"] == true)
        .map(|i| i["workload_identity"].as_str().unwrap())
        .collect();
    assert_eq!(issued, ["root-admin"]);

    // A misspelt attribute is an error, not a silent non-match.
    std::fs::write(&attributes, "workload.unix.uidd: 0\n").unwrap();
    let (code, out) = signet(&[
        "explain",
        "--attributes",
        attributes.to_str().unwrap(),
        "--policy",
        "examples/standalone/policy",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("unknown attribute \"workload.unix.uidd\""),
        "{out}"
    );
}
