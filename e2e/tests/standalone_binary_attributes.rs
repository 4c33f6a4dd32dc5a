//! Deny rules on binary attributes hold even where the agent cannot read
//! the caller's executable.
//!
//! Attack: the agent runs without `CAP_SYS_PTRACE` (as the chart's agent
//! does unless binary attributes are enabled), so the kernel hides the
//! executable of another user's process from it. A WorkloadIdentity that
//! denies one binary must then not be issued to that binary just because
//! the agent could not see it: the identity is withheld, with a reason that
//! names the attribute, while identities that do not depend on it are still
//! issued. The real operator and agent binaries, a real client process run
//! as another user (`setpriv`), so this needs root (fails without it when
//! `SIGNET_REQUIRE_ROOT=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;

use signet_e2e::standalone::{Stack, binary, have_root, proc_status_field};

/// Every process of uid 65534 gets `plain`; `guarded` and `guarded-only`
/// are for every binary except the client used here (the deny rule names
/// its path), the latter for uid 65533 only.
fn policy(client: &Path) -> String {
    let client = client.display();
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: plain, labels: {{suite: e2e}}}}
spec:
  rules:
    allow: [{{conditions: [{{attribute: workload.unix.uid, eq: "65534"}}]}}]
  spiffe: {{id: /plain}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: guarded, labels: {{suite: e2e}}}}
spec:
  rules:
    allow: [{{conditions: [{{attribute: workload.unix.uid, eq: "65534"}}]}}]
    deny: [{{conditions: [{{attribute: workload.unix.binary_path, eq: "{client}"}}]}}]
  spiffe: {{id: /guarded}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: guarded-only, labels: {{suite: e2e}}}}
spec:
  rules:
    allow: [{{conditions: [{{attribute: workload.unix.uid, eq: "65533"}}]}}]
    deny: [{{expression: 'workload.unix.binary_path == "{client}"'}}]
  spiffe: {{id: /guarded-only}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {{name: e2e-agents}}
spec:
  subjects: [{{kind: Agent, name: "*"}}]
  allow: {{workloadIdentityLabels: {{suite: [e2e]}}}}
"#
    )
}

fn issued_ids(output: &Output) -> Vec<String> {
    assert!(output.status.success(), "fetch failed: {output:?}");
    let response: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut ids: Vec<String> = response["svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|svid| svid["spiffe_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The effective capabilities of a running process.
fn effective_caps(pid: u32) -> u64 {
    u64::from_str_radix(&proc_status_field(pid, "CapEff"), 16).unwrap()
}

const CAP_SYS_PTRACE: u32 = 19;

#[test]
fn a_deny_rule_on_an_unreadable_executable_withholds_the_identity() {
    if !have_root("a_deny_rule_on_an_unreadable_executable_withholds_the_identity") {
        return;
    }
    let client = std::fs::canonicalize(binary("signet-agent")).unwrap();
    let mut stack = Stack::start(&policy(&client));

    // Control: an agent that can read every executable applies the deny rule.
    assert_eq!(
        issued_ids(&stack.fetch_x509_as(65534)),
        ["spiffe://example.org/plain"]
    );
    let refused = stack.fetch_x509_as(65533);
    assert!(!refused.status.success(), "{refused:?}");

    // The same agent without CAP_SYS_PTRACE.
    stack.stop_agent();
    stack.set_agent_wrapper(&["setpriv", "--bounding-set=-sys_ptrace", "--"]);
    stack.start_agent();
    let agent_pid = stack.agent.as_ref().unwrap().pid();
    assert_eq!(
        effective_caps(agent_pid) & (1 << CAP_SYS_PTRACE),
        0,
        "the agent still has CAP_SYS_PTRACE"
    );

    // The rule cannot be evaluated, so `guarded` is withheld (before the
    // fix it was issued: the absent path never matched the deny rule);
    // `plain` does not depend on the executable and is still issued.
    assert_eq!(
        issued_ids(&stack.fetch_x509_as(65534)),
        ["spiffe://example.org/plain"]
    );
    let withheld = stack.fetch_x509_as(65533);
    assert!(
        !withheld.status.success(),
        "guarded-only was issued past its deny rule: {}",
        String::from_utf8_lossy(&withheld.stdout)
    );
    let message = String::from_utf8_lossy(&withheld.stderr);
    assert!(
        message.contains("PermissionDenied")
            && message.contains("guarded-only")
            && message.contains("workload.unix.binary_path")
            && message.contains("CAP_SYS_PTRACE"),
        "the refusal should say which attribute could not be read and why: {message}"
    );
    // Nothing was signed for it.
    assert!(
        !stack
            .audit_events()
            .iter()
            .any(|e| e["event"] == "svid.issued"
                && e["spiffe_id"] == "spiffe://example.org/guarded-only"),
        "an SVID was issued for guarded-only"
    );
}
