//! Attributes the agent could not read: a deny rule that reads one cannot be
//! evaluated, so the identity is withheld instead of issued past the rule
//! (an absent value never satisfies a rule, so the deny would never fire).

#![allow(clippy::unwrap_used)]

use signet_identity::TrustDomain;
use signet_policy::attributes::Field;
use signet_policy::{Attributes, DenialReason, PolicyDocument, parse_yaml_documents};

const POLICY: &str = r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: guarded, labels: {suite: t}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, eq: "1000"}]
    deny:
      - conditions: [{attribute: workload.unix.uid, eq: "0"}]
      - expression: '!(workload.unix.binary_hash in ["aa", "bb"])'
  spiffe: {id: /guarded}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: plain, labels: {suite: t}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, eq: "1000"}]
  spiffe: {id: /plain}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: by-path, labels: {suite: t}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.binary_path, eq: /usr/bin/app}]
  spiffe: {id: /by-path}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: all}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [t]}}
"#;

fn snapshot() -> signet_policy::PolicySnapshot {
    let doc =
        PolicyDocument::from_objects(parse_yaml_documents(POLICY).into_iter().map(|r| r.unwrap()));
    let (snap, reports) = doc.compile(1, &TrustDomain::new("example.org").unwrap());
    assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");
    snap
}

fn caller() -> Attributes {
    let mut a = Attributes::new();
    a.set(Field::UnixUid, "1000")
        .set(Field::AgentName, "agent")
        .set(Field::UnixBinaryPath, "/usr/bin/app");
    a
}

fn issued(snap: &signet_policy::PolicySnapshot, a: &Attributes) -> Vec<String> {
    let mut names: Vec<String> = snap
        .evaluate(a)
        .into_iter()
        .map(|i| i.workload_identity)
        .collect();
    names.sort();
    names
}

#[test]
fn a_deny_rule_on_an_unreadable_attribute_withholds_the_identity() {
    let snap = snapshot();

    let mut readable = caller();
    readable.set(Field::UnixBinaryHash, "cc");
    // Readable and not on the list: the deny rule fires.
    assert_eq!(issued(&snap, &readable), ["by-path", "plain"]);
    readable.set(Field::UnixBinaryHash, "aa");
    assert_eq!(issued(&snap, &readable), ["by-path", "guarded", "plain"]);

    let mut unreadable = caller();
    unreadable.mark_unavailable(Field::UnixBinaryHash, "permission denied");
    // Without the mark, an absent hash would let `guarded` through.
    assert_eq!(issued(&snap, &unreadable), ["by-path", "plain"]);
    let denial = snap.decide(&unreadable, "guarded").unwrap_err();
    assert_eq!(denial.reason, DenialReason::AttributeUnavailable);
    assert!(
        denial
            .message
            .contains("deny rule 1 reads workload.unix.binary_hash")
            && denial.message.contains("permission denied"),
        "{denial}"
    );
    // The exhaustive explanation agrees with the indexed path.
    let explained: Vec<_> = snap
        .explain(&unreadable)
        .into_iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(explained, ["by-path", "plain"]);
}

#[test]
fn an_allow_rule_on_an_unreadable_attribute_simply_does_not_hold() {
    let snap = snapshot();
    let mut a = caller();
    // As the agent marks an executable it may not open: both attributes.
    a.mark_unavailable(Field::UnixBinaryPath, "permission denied");
    a.mark_unavailable(Field::UnixBinaryHash, "permission denied");
    assert_eq!(
        a.field(Field::UnixBinaryPath),
        None,
        "marking removes the value"
    );
    let denial = snap.decide(&a, "by-path").unwrap_err();
    assert_eq!(denial.reason, DenialReason::NoMatchingRule);
    assert_eq!(issued(&snap, &a), ["plain"]);
}

#[test]
fn unavailability_is_not_testimony() {
    let mut a = caller();
    a.mark_unavailable(Field::UnixBinaryHash, "too large");
    assert_eq!(a.testimony().unavailable().count(), 0);
    let json = serde_json::to_string(&a).unwrap();
    assert!(!json.contains("too large"), "{json}");
}

#[test]
fn an_identity_whose_allow_rules_fail_is_not_reported_as_withheld() {
    let snap = snapshot();
    let mut other = caller();
    other.set(Field::UnixUid, "2000");
    other.mark_unavailable(Field::UnixBinaryHash, "permission denied");
    // `guarded` never applied to uid 2000, so the missing hash is not why
    // it has no SVID: the caller is told no rule matched.
    let denial = snap.decide(&other, "guarded").unwrap_err();
    assert_eq!(denial.reason, DenialReason::NoMatchingRule, "{denial}");
}
