//! Predicate-expression rules end to end: YAML in, compiled snapshot,
//! decisions and their explanations, reports for broken expressions.

// Helpers below are test code too, but live outside #[test] functions where
// clippy's allow-unwrap-in-tests does not reach.
#![allow(clippy::unwrap_used)]

use signet_identity::TrustDomain;
use signet_policy::attributes::{Field, LabelMap};
use signet_policy::{
    Attributes, DenialReason, PolicyDocument, PolicySnapshot, ValidationReason,
    parse_yaml_documents,
};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn load(yaml: &str) -> PolicyDocument {
    PolicyDocument::from_objects(parse_yaml_documents(yaml).into_iter().map(|r| r.unwrap()))
}

const POLICY: &str = r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: payments-api, labels: {team: payments}}
spec:
  rules:
    allow:
      - expression: >-
          workload.kubernetes.namespace == "payments"
          && (workload.kubernetes.labels["app.kubernetes.io/name"] in ["api", "worker"]
              || glob(workload.kubernetes.service_account, "batch-*"))
          && !(workload.unix.uid == "0")
    deny:
      - expression: 'workload.kubernetes.labels.canary == "true"'
  spiffe:
    id: /ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}
---
# The same rules written as conditions, as far as conditions can say it.
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: payments-conditions, labels: {team: payments}}
spec:
  rules:
    allow:
      - conditions:
          - {attribute: workload.kubernetes.namespace, eq: payments}
          - {attribute: workload.kubernetes.labels.app.kubernetes.io/name, in: [api, worker]}
          - {attribute: workload.unix.uid, not_eq: "0"}
  spiffe:
    id: /c/{{ workload.kubernetes.service_account }}
---
# Unpinned: any namespace, but only when the image is from our registry.
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: registry, labels: {team: payments}}
spec:
  rules:
    allow:
      - expression: 'glob(workload.kubernetes.container_image, "registry.example/*")'
    deny:
      # Refuse when the uid is unknown, not only when it is 0.
      - expression: '!has(workload.unix.uid) || workload.unix.uid == "0"'
  spiffe:
    id: /img/{{ workload.kubernetes.namespace }}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: all}
spec:
  subjects: [{kind: ServiceAccount, namespace: "*", name: "*"}]
  allow: {workloadIdentityLabels: {team: [payments]}}
"#;

fn compiled() -> PolicySnapshot {
    let (snap, reports) = load(POLICY).compile(1, &td());
    for r in &reports {
        assert!(r.result.is_ok(), "{} {}: {:?}", r.kind, r.name, r.result);
    }
    snap
}

fn pod() -> Attributes {
    let mut a = Attributes::new();
    a.set(Field::KubernetesNamespace, "payments")
        .set(Field::KubernetesServiceAccount, "api")
        .set(Field::KubernetesPodName, "api-1")
        .set(Field::KubernetesContainerImage, "registry.example/api:1")
        .set(Field::UnixUid, "1000");
    a.set_labels(
        LabelMap::KubernetesLabels,
        [("app.kubernetes.io/name", "api")],
    )
    .unwrap();
    a
}

fn issued(snap: &PolicySnapshot, a: &Attributes) -> Vec<String> {
    let got: Vec<String> = snap
        .evaluate(a)
        .into_iter()
        .map(|i| i.spiffe_id.to_string())
        .collect();
    // The indexed path and the exhaustive one agree.
    let explained: Vec<String> = snap
        .explain(a)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .map(|i| i.spiffe_id.to_string())
        .collect();
    assert_eq!(got, explained);
    got
}

#[test]
fn expression_rules_issue_and_refuse() {
    let snap = compiled();
    assert_eq!(
        issued(&snap, &pod()),
        [
            "spiffe://example.org/ns/payments/sa/api",
            "spiffe://example.org/c/api",
            "spiffe://example.org/img/payments",
        ]
    );

    // The glob branch of the ||: a batch service account without the label.
    let mut batch = pod();
    batch.set(Field::KubernetesServiceAccount, "batch-nightly");
    batch
        .set_labels(
            LabelMap::KubernetesLabels,
            [("app.kubernetes.io/name", "cron")],
        )
        .unwrap();
    assert_eq!(
        issued(&snap, &batch),
        [
            "spiffe://example.org/ns/payments/sa/batch-nightly",
            "spiffe://example.org/img/payments",
        ]
    );

    // Deny by expression.
    let mut canary = pod();
    canary
        .set_labels(LabelMap::KubernetesLabels, [("canary", "true")])
        .unwrap();
    let d = snap.decide(&canary, "payments-api").unwrap_err();
    assert_eq!(d.reason, DenialReason::DeniedByRule);
    assert_eq!(d.message, "deny rule 0 matches");

    // Another namespace: pinned identities are not even candidates, and
    // decide still says why.
    let mut web = pod();
    web.set(Field::KubernetesNamespace, "web");
    assert_eq!(issued(&snap, &web), ["spiffe://example.org/img/web"]);
    let d = snap.decide(&web, "payments-api").unwrap_err();
    assert_eq!(d.reason, DenialReason::NoMatchingRule);
    assert_eq!(
        d.message,
        r#"no allow rule matches (allow[0]: expression is false (workload.kubernetes.namespace is "web"))"#
    );
}

#[test]
fn absent_attributes_never_satisfy_an_expression() {
    let snap = compiled();
    let mut no_uid = pod();
    no_uid.remove_field(Field::UnixUid);
    // `!(uid == "0")` is unknown without a uid, exactly like the condition
    // `not_eq: "0"`; the registry identity's deny rule refuses by has().
    assert!(issued(&snap, &no_uid).is_empty());
    let d = snap.decide(&no_uid, "payments-api").unwrap_err();
    assert_eq!(d.reason, DenialReason::NoMatchingRule);
    assert_eq!(
        d.message,
        "no allow rule matches (allow[0]: expression is unknown (workload.unix.uid is absent))"
    );
    // The condition rule's message is unchanged.
    let d = snap.decide(&no_uid, "payments-conditions").unwrap_err();
    assert_eq!(
        d.message,
        "no allow rule matches (allow[0]: workload.unix.uid is absent)"
    );
    assert_eq!(
        snap.decide(&no_uid, "registry").unwrap_err().reason,
        DenialReason::DeniedByRule
    );

    let mut root = pod();
    root.set(Field::UnixUid, "0");
    let d = snap.decide(&root, "payments-api").unwrap_err();
    assert_eq!(
        d.message,
        r#"no allow rule matches (allow[0]: expression is false (workload.unix.uid is "0"))"#
    );
}

#[test]
fn agents_compiling_the_shipped_document_decide_the_same() {
    let snap = compiled();
    let json = serde_json::to_vec(snap.document()).unwrap();
    assert!(
        String::from_utf8_lossy(&json).contains(r#""expression":"workload.kubernetes.namespace"#),
        "expressions ship as written"
    );
    let agent_doc: PolicyDocument = serde_json::from_slice(&json).unwrap();
    let (agent, reports) = agent_doc.compile(1, &td());
    assert!(reports.iter().all(|r| r.result.is_ok()));
    for a in [pod(), Attributes::new()] {
        assert_eq!(agent.evaluate(&a), snap.evaluate(&a));
    }
}

fn report(rules_yaml: &str) -> (ValidationReason, String) {
    let yaml = format!(
        "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: x}}\nspec:\n  spiffe: {{id: /x}}\n  rules:\n{rules_yaml}"
    );
    let (_, reports) = load(&yaml).compile(1, &td());
    let e = reports[0].result.clone().unwrap_err();
    (e.reason, e.message)
}

#[test]
fn broken_expressions_are_reported_with_field_and_column() {
    let cases = [
        (
            "    allow: [{expression: 'workload.unix.uid == \"0\" && workload.unix.gid == foo'}]",
            ValidationReason::InvalidExpression,
            r#"spec.rules.allow[0].expression: column 50: expected a string after "==", found "foo""#,
        ),
        (
            "    deny:\n      - conditions: [{attribute: workload.unix.uid, eq: '0'}]\n      - expression: 'has(workload.unix.euid)'",
            ValidationReason::UnknownAttribute,
            r#"spec.rules.deny[1].expression: column 5: unknown attribute "workload.unix.euid""#,
        ),
        (
            "    allow:\n      - expression: |\n          has(workload.unix.uid) &&\n            (workload.unix.gid == \"0\"",
            ValidationReason::InvalidExpression,
            r#"spec.rules.allow[0].expression: line 2, column 28: expected ")" closing the "(" at line 2, column 3, found the end of the expression"#,
        ),
        (
            "    allow: [{expression: 'has(workload.unix.uid)', conditions: [{attribute: workload.unix.uid, eq: '0'}]}]",
            ValidationReason::InvalidCondition,
            "spec.rules.allow[0]: a rule has either conditions or an expression, not both",
        ),
        (
            "    allow: [{expression: ''}]",
            ValidationReason::InvalidExpression,
            "spec.rules.allow[0].expression: expression is empty",
        ),
    ];
    for (rules, reason, message) in cases {
        assert_eq!(report(rules), (reason, message.to_owned()), "{rules}");
    }
    // The Ready condition carries both.
    let yaml = "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {name: x}\nspec: {spiffe: {id: /x}, rules: {allow: [{expression: 'workload.unix.uid = \"0\"'}]}}";
    let (snap, reports) = load(yaml).compile(1, &td());
    let ready = reports[0].ready_condition(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ),
        None,
    );
    assert_eq!(
        (
            ready.status.as_str(),
            ready.reason.as_str(),
            ready.message.as_str()
        ),
        (
            "False",
            "InvalidExpression",
            r#"spec.rules.allow[0].expression: column 19: unexpected character '=' (did you mean "=="?)"#
        )
    );
    assert_eq!(
        snap.decide(&pod(), "x").unwrap_err().reason,
        DenialReason::InvalidIdentity
    );
}

/// Every file `make demo` loads, compiled together as the operator does.
fn standalone_examples() -> PolicySnapshot {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/standalone/policy");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    let text: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let (snap, reports) = load(&text.join("\n---\n")).compile(1, &td());
    for r in &reports {
        assert!(r.result.is_ok(), "{} {}: {:?}", r.kind, r.name, r.result);
    }
    snap
}

#[test]
fn the_container_example_leaves_the_demo_unchanged() {
    let snap = standalone_examples();
    assert!(snap.identity_names().any(|n| n == "demo-containers"));
    let process = |uid: &str| {
        let mut a = Attributes::new();
        a.set(Field::AgentName, "demo")
            .set(Field::UnixPid, "4242")
            .set(Field::UnixUid, uid)
            .set(Field::UnixGid, uid)
            .set(Field::UnixBinaryPath, "/usr/local/bin/signet-agent");
        a
    };
    // What the demo's processes get: exactly the identities of demo.yaml.
    let unknown = "no allow rule matches (allow[0]: expression is unknown (workload.docker.image is absent; workload.docker.labels.com.example.team is absent))";
    for (uid, want, why) in [
        ("1000", "spiffe://example.org/demo/demo/uid/1000", unknown),
        ("65534", "spiffe://example.org/demo/demo/uid/65534", unknown),
        (
            "0",
            "spiffe://example.org/demo/demo/admin",
            // One false operand makes the whole && false.
            r#"no allow rule matches (allow[0]: expression is false (workload.unix.uid is "0"))"#,
        ),
    ] {
        assert_eq!(issued(&snap, &process(uid)), [want], "uid {uid}");
        let d = snap.decide(&process(uid), "demo-containers").unwrap_err();
        assert_eq!(
            (d.reason, d.message.as_str()),
            (DenialReason::NoMatchingRule, why)
        );
    }
    // A container from the registry, attested by the docker attestor.
    let mut container = process("1000");
    container
        .set(Field::DockerImage, "registry.example/demo/api:1")
        .set(Field::DockerContainerName, "api-1");
    container
        .set_labels(LabelMap::DockerLabels, [("com.example.team", "payments")])
        .unwrap();
    assert_eq!(
        issued(&snap, &container),
        [
            "spiffe://example.org/demo/demo/container/api-1",
            "spiffe://example.org/demo/demo/uid/1000",
        ]
    );
    container
        .set_labels(LabelMap::DockerLabels, [("com.example.debug", "1")])
        .unwrap();
    assert_eq!(
        snap.decide(&container, "demo-containers")
            .unwrap_err()
            .reason,
        DenialReason::DeniedByRule
    );
}
