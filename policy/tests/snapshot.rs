//! End-to-end behaviour of PolicySnapshot: loading YAML, compiling, reporting
//! and deciding, using the DESIGN.md examples and hand-written edge cases.

// Helpers below are test code too, but live outside #[test] functions where
// clippy's allow-unwrap-in-tests does not reach.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use signet_identity::TrustDomain;
use signet_policy::attributes::{Field, LabelMap};
use signet_policy::{
    Attributes, DenialReason, IdentitySelector, ObjectKind, PolicyDocument, PolicyObject,
    PolicySnapshot, Role, ValidationReason, WorkloadIdentity, parse_yaml_documents,
};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn load(yaml: &str) -> PolicyDocument {
    PolicyDocument::from_objects(parse_yaml_documents(yaml).into_iter().map(|r| r.unwrap()))
}

fn compile(yaml: &str) -> PolicySnapshot {
    let (snap, reports) = load(yaml).compile(1, &td());
    for r in &reports {
        assert!(r.result.is_ok(), "{} {}: {:?}", r.kind, r.name, r.result);
    }
    snap
}

fn design() -> PolicySnapshot {
    compile(include_str!("fixtures/design-examples.yaml"))
}

/// A pod in the payments namespace, as the kubernetes and unix attestors see it.
fn payments_pod() -> Attributes {
    let mut a = Attributes::new();
    a.set(Field::KubernetesNamespace, "payments")
        .set(Field::KubernetesServiceAccount, "processor")
        .set(Field::KubernetesPodName, "processor-7f9c")
        .set(
            Field::KubernetesPodUid,
            "0b9e2c4e-1111-2222-3333-444455556666",
        )
        .set(Field::KubernetesNodeName, "node-1")
        .set(Field::UnixUid, "1000")
        .set(Field::UnixGid, "1000")
        .set(Field::UnixPid, "4242");
    a.set_labels(LabelMap::KubernetesLabels, [("app", "processor")])
        .unwrap();
    a
}

#[test]
fn design_example_issues_the_expected_identity() {
    let snap = design();
    let got = snap.evaluate(&payments_pod());
    assert_eq!(got.len(), 1);
    let id = &got[0];
    assert_eq!(id.workload_identity, "payments-processor");
    assert_eq!(
        id.spiffe_id.as_str(),
        "spiffe://example.org/ns/payments/sa/processor"
    );
    assert_eq!(id.hint.as_deref(), Some("payments"));
    assert_eq!(id.labels.get("team").map(String::as_str), Some("payments"));
    assert_eq!(id.x509.ttl, Duration::from_secs(3600));
    assert_eq!(id.x509.dns_sans, ["processor-7f9c.payments.svc"]);
    // Empty commonName falls back to the first DNS SAN.
    assert_eq!(
        id.x509.subject.common_name.as_deref(),
        Some("processor-7f9c.payments.svc")
    );
    assert!(id.x509.subject.organization.is_empty());
    assert_eq!(id.jwt.ttl, Duration::from_secs(300));
    assert_eq!(
        serde_json::Value::Object(id.jwt.extra_claims.clone()),
        serde_json::json!({"team": "payments"})
    );
    assert!(id.federates_with.is_empty());
    assert_eq!(
        snap.decide(&payments_pod(), "payments-processor").unwrap(),
        *id
    );
}

fn denial(snap: &PolicySnapshot, attrs: &Attributes, name: &str) -> DenialReason {
    snap.decide(attrs, name).unwrap_err().reason
}

#[test]
fn design_example_denials_have_reasons() {
    let snap = design();
    let name = "payments-processor";

    let mut a = payments_pod();
    a.set(Field::KubernetesServiceAccount, "default");
    assert_eq!(denial(&snap, &a, name), DenialReason::DeniedByRule);

    let mut a = payments_pod();
    a.set(Field::UnixUid, "0");
    assert_eq!(denial(&snap, &a, name), DenialReason::NoMatchingRule);

    // not_eq on an attribute the workload lacks does not hold.
    let mut a = payments_pod();
    a.remove(&Field::UnixUid.into());
    let d = snap.decide(&a, name).unwrap_err();
    assert_eq!(d.reason, DenialReason::NoMatchingRule);
    assert!(
        d.message.contains("workload.unix.uid is absent"),
        "{}",
        d.message
    );

    let mut a = payments_pod();
    a.set_labels(LabelMap::KubernetesLabels, [("app", "web")])
        .unwrap();
    assert_eq!(denial(&snap, &a, name), DenialReason::NoMatchingRule);

    // The DNS SAN template needs the pod name.
    let mut a = payments_pod();
    a.remove(&Field::KubernetesPodName.into());
    let d = snap.decide(&a, name).unwrap_err();
    assert_eq!(d.reason, DenialReason::MissingAttribute);
    assert!(
        d.message.starts_with("spec.spiffe.x509.dnsSans[0]:"),
        "{}",
        d.message
    );

    assert_eq!(denial(&snap, &a, "nope"), DenialReason::UnknownIdentity);
    assert!(snap.evaluate(&Attributes::new()).is_empty());
}

#[test]
fn role_subjects_from_the_design_example() {
    // payments-processor's rules pin the payments namespace, so a
    // rule-less identity with the same labels isolates the Role's subjects.
    let snap2 = compile(&format!(
        "{}\n---\n{}",
        include_str!("fixtures/design-examples.yaml"),
        r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: any, labels: {team: payments}}
spec: {spiffe: {id: "/ns/payments/any"}}
"#
    ));
    let mut on_pci_node = Attributes::new();
    on_pci_node
        .set(Field::KubernetesNamespace, "batch")
        .set(Field::KubernetesServiceAccount, "job")
        .set(Field::KubernetesNodeName, "pci-1")
        .set(Field::NodeName, "pci-1");
    on_pci_node
        .set_labels(LabelMap::NodeLabels, [("pool", "pci")])
        .unwrap();
    let names: Vec<_> = snap2
        .evaluate(&on_pci_node)
        .into_iter()
        .map(|i| i.workload_identity)
        .collect();
    assert_eq!(names, ["any"]);

    let mut other_node = on_pci_node.clone();
    other_node
        .set_labels(LabelMap::NodeLabels, [("pool", "general")])
        .unwrap();
    assert_eq!(
        denial(&snap2, &other_node, "any"),
        DenialReason::NoRoleAllows
    );

    let mut vm = Attributes::new();
    vm.set(Field::AgentName, "vm-3");
    assert_eq!(snap2.evaluate(&vm).len(), 1);
    vm.set(Field::AgentName, "laptop");
    assert!(snap2.evaluate(&vm).is_empty());
}

#[test]
fn role_spiffe_grants_limit_ids_and_sans() {
    let base = include_str!("fixtures/design-examples.yaml");
    let extra = r#"
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: outside-path, labels: {team: payments}}
spec: {spiffe: {id: /ns/ledger/x}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: outside-san, labels: {team: payments}}
spec: {spiffe: {id: /ns/payments/x, x509: {dnsSans: [api.payments.svc, api.example.com]}}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: outside-ip, labels: {team: payments}}
spec: {spiffe: {id: /ns/payments/y, x509: {ipSans: ["192.168.1.1"]}}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: inside, labels: {team: payments}}
spec: {spiffe: {id: /ns/payments/z, x509: {dnsSans: ["*.payments.svc"], ipSans: ["10.1.2.3"]}}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: unlabelled}
spec: {spiffe: {id: /ns/payments/u}}
"#;
    let snap = compile(&format!("{base}{extra}"));
    let pod = payments_pod();
    assert_eq!(
        denial(&snap, &pod, "outside-path"),
        DenialReason::NoRoleAllows
    );
    assert_eq!(
        denial(&snap, &pod, "outside-san"),
        DenialReason::NoRoleAllows
    );
    assert_eq!(
        denial(&snap, &pod, "outside-ip"),
        DenialReason::NoRoleAllows
    );
    assert_eq!(
        denial(&snap, &pod, "unlabelled"),
        DenialReason::NoRoleAllows
    );
    let inside = snap.decide(&pod, "inside").unwrap();
    assert_eq!(inside.x509.dns_sans, ["*.payments.svc"]);
    assert_eq!(
        inside.x509.ip_sans,
        ["10.1.2.3".parse::<std::net::IpAddr>().unwrap()]
    );
    let names: Vec<_> = snap
        .evaluate(&pod)
        .into_iter()
        .map(|i| i.workload_identity)
        .collect();
    assert_eq!(names, ["inside", "payments-processor"]);
}

#[test]
fn deny_in_any_applying_role_wins() {
    let yaml = format!(
        "{}{}",
        include_str!("fixtures/design-examples.yaml"),
        r#"
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: no-admin-sa}
spec:
  subjects: [{kind: ServiceAccount, namespace: "*", name: "*"}]
  deny:
    spiffe: [{path: "/ns/*/sa/admin"}]
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: no-payments-on-dev-nodes}
spec:
  subjects: [{kind: Node, selector: {matchLabels: {env: dev}}}]
  deny:
    workloadIdentityLabels: {team: ["*"]}
"#
    );
    let snap = compile(&yaml);
    let mut admin = payments_pod();
    admin.set(Field::KubernetesServiceAccount, "admin");
    let d = snap.decide(&admin, "payments-processor").unwrap_err();
    assert_eq!(d.reason, DenialReason::RoleDenied);
    assert!(d.message.contains("no-admin-sa"), "{}", d.message);

    let mut on_dev = payments_pod();
    on_dev.set(Field::NodeName, "node-1");
    on_dev
        .set_labels(LabelMap::NodeLabels, [("env", "dev")])
        .unwrap();
    assert_eq!(
        denial(&snap, &on_dev, "payments-processor"),
        DenialReason::RoleDenied
    );
    assert_eq!(snap.evaluate(&payments_pod()).len(), 1);
}

#[test]
fn standalone_fixture_renders_every_template_field() {
    let snap = compile(include_str!("fixtures/standalone-vms.yaml"));
    let mut a = Attributes::new();
    a.set(Field::AgentName, "vm-7")
        .set(Field::AgentNodeName, "host7.dc1")
        .set(Field::UnixUid, "1001")
        .set(Field::UnixBinaryPath, "/usr/local/bin/api");
    let got = snap.evaluate(&a);
    assert_eq!(got.len(), 1, "{:?}", snap.explain(&a));
    let id = &got[0];
    assert_eq!(
        id.spiffe_id.as_str(),
        "spiffe://example.org/vm/vm-7/uid/1001"
    );
    assert_eq!(id.hint.as_deref(), Some("vm-7"));
    assert_eq!(id.x509.ttl, Duration::from_secs(1800));
    assert_eq!(id.x509.dns_sans, ["vm-7.vms.internal"]);
    assert_eq!(
        id.x509.subject.common_name.as_deref(),
        Some("vm-7.vms.internal")
    );
    assert_eq!(id.x509.subject.organization, ["Example Corp"]);
    assert_eq!(id.x509.subject.organizational_unit, ["uid-1001"]);
    assert_eq!(id.jwt.ttl, Duration::from_secs(120));
    assert_eq!(
        serde_json::Value::Object(id.jwt.extra_claims.clone()),
        serde_json::json!({"host": "host7.dc1", "tags": ["vm", "vm-7"]})
    );
    assert_eq!(
        id.federates_with,
        [TrustDomain::new("partner.example").unwrap()]
    );

    // root matches vm-admin's rules, but the Role denies that label.
    a.set(Field::UnixUid, "0");
    let explained = snap.explain(&a);
    let reasons: Vec<_> = explained
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_ref().err().map(|d| d.reason)))
        .collect();
    assert_eq!(
        reasons,
        [
            ("vm-admin", Some(DenialReason::RoleDenied)),
            ("vm-service", Some(DenialReason::NoMatchingRule)),
        ]
    );
}

fn wi(yaml_spec: &str, name: &str) -> WorkloadIdentity {
    let mut w: WorkloadIdentity = serde_yaml::from_str(&format!(
        "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: {name}, labels: {{team: t}}}}\nspec: {yaml_spec}"
    ))
    .unwrap();
    w.metadata.generation = Some(3);
    w
}

fn grant_all() -> Role {
    serde_yaml::from_str(
        r#"
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: all}
spec:
  subjects:
    - {kind: ServiceAccount, namespace: "*", name: "*"}
    - {kind: Agent, name: "*"}
  allow: {workloadIdentityLabels: {"*": ["*"]}}
"#,
    )
    .unwrap()
}

fn report_of(spec: &str) -> (ValidationReason, String) {
    let (_, reports) = PolicySnapshot::compile(1, &td(), &[wi(spec, "x")], &[]);
    let e = reports[0].result.clone().unwrap_err();
    (e.reason, e.message)
}

#[test]
fn validation_reports_name_the_field_and_reason() {
    let cases: &[(&str, ValidationReason, &str)] = &[
        (
            r#"{rules: {allow: [{conditions: [{attribute: workload.unix.uid, eq: "1"}, {attribute: workload.kubernets.namespace, eq: x}]}]}, spiffe: {id: /a}}"#,
            ValidationReason::UnknownAttribute,
            "spec.rules.allow[0].conditions[1].attribute: unknown attribute \"workload.kubernets.namespace\"",
        ),
        (
            r#"{rules: {allow: [{conditions: [{attribute: workload.unix.uid, eq: "1", in: ["2"]}]}]}, spiffe: {id: /a}}"#,
            ValidationReason::InvalidCondition,
            "spec.rules.allow[0].conditions[0]: exactly one of eq, not_eq, in, not_in must be set, found eq, in",
        ),
        (
            r#"{spiffe: {id: /a, x509: {dnsSans: ["abc.de {{ workload.unix.uid"]}}}"#,
            ValidationReason::InvalidTemplate,
            "spec.spiffe.x509.dnsSans[0]: unterminated \"{{\" at offset 7",
        ),
        (
            r#"{spiffe: {id: "/x/{{ workload.kubernetes.nmespace }}"}}"#,
            ValidationReason::UnknownAttribute,
            "spec.spiffe.id: unknown attribute \"workload.kubernetes.nmespace\" at offset 6",
        ),
        (
            r#"{spiffe: {id: "spiffe://other.org/x"}}"#,
            ValidationReason::SpiffeIdOutsideTrustDomain,
            "spec.spiffe.id: trust domain \"other.org\" is not the configured trust domain \"example.org\"",
        ),
        (
            r#"{spiffe: {id: "ns/{{ agent.name }}"}}"#,
            ValidationReason::InvalidSpiffeId,
            "spec.spiffe.id: SPIFFE ID path must be empty or start with '/'",
        ),
        (
            r#"{spiffe: {id: "/a//{{ agent.name }}"}}"#,
            ValidationReason::InvalidSpiffeId,
            "spec.spiffe.id: SPIFFE ID path must not contain empty segments (\"//\")",
        ),
        (
            r#"{spiffe: {id: ""}}"#,
            ValidationReason::InvalidSpiffeId,
            "spec.spiffe.id: the path must not be empty (SVIDs need a path below the trust domain)",
        ),
        (
            r#"{spiffe: {id: /a, x509: {ttl: 48h}}}"#,
            ValidationReason::InvalidTtl,
            "spec.spiffe.x509.ttl: duration \"48h\" is outside the allowed range 1m to 24h",
        ),
        (
            r#"{spiffe: {id: /a, jwt: {ttl: 5 minutes}}}"#,
            ValidationReason::InvalidTtl,
            "spec.spiffe.jwt.ttl: invalid duration \"5 minutes\": expected digits followed by h, m or s, e.g. \"1h\", \"5m\", \"90s\"",
        ),
        (
            r#"{spiffe: {id: /a, x509: {dnsSans: ["{{ agent.name }}_x.svc"]}}}"#,
            ValidationReason::InvalidDnsSan,
            "spec.spiffe.x509.dnsSans[0]: DNS name \"x_x.svc\" must consist of letters, digits and '-' (not at either end of a label)",
        ),
        (
            r#"{spiffe: {id: /a, x509: {ipSans: ["10.0.0.300"]}}}"#,
            ValidationReason::InvalidIpSan,
            "spec.spiffe.x509.ipSans[0]: \"10.0.0.300\" is not an IP address",
        ),
        (
            r#"{spiffe: {id: /a, jwt: {extraClaims: {sub: x}}}}"#,
            ValidationReason::InvalidClaims,
            "spec.spiffe.jwt.extraClaims.sub: \"sub\" is a registered claim set by the issuer",
        ),
        (
            r#"{spiffe: {id: /a, jwt: {extraClaims: {a: {b: ["{{ nope }}"]}}}}}"#,
            ValidationReason::UnknownAttribute,
            "spec.spiffe.jwt.extraClaims.a.b[0]: unknown attribute \"nope\" at offset 3",
        ),
        (
            r#"{spiffe: {id: /a}, federatesWith: [Partner.Example]}"#,
            ValidationReason::InvalidTrustDomain,
            "spec.federatesWith[0]: trust domain name must be lowercase, found 'P'",
        ),
        (
            r#"{spiffe: {id: /a}, federatesWith: [example.org]}"#,
            ValidationReason::InvalidTrustDomain,
            "spec.federatesWith[0]: a trust domain cannot federate with itself",
        ),
    ];
    for (spec, reason, message) in cases {
        let (r, m) = report_of(spec);
        assert_eq!((r, m.as_str()), (*reason, *message), "spec: {spec}");
    }
}

#[test]
fn claims_nesting_is_limited() {
    let mut deep = serde_json::json!("leaf");
    for _ in 0..10 {
        deep = serde_json::json!({ "n": deep });
    }
    let spec = format!("{{spiffe: {{id: /a, jwt: {{extraClaims: {{top: {deep}}}}}}}}}");
    let (reason, message) = report_of(&spec);
    assert_eq!(reason, ValidationReason::InvalidClaims);
    assert!(message.contains("at most 10 levels"), "{message}");
    // Nine levels below the top-level claim are fine.
    let mut ok = serde_json::json!("leaf");
    for _ in 0..8 {
        ok = serde_json::json!({ "n": ok });
    }
    let spec = format!("{{spiffe: {{id: /a, jwt: {{extraClaims: {{top: {ok}}}}}}}}}");
    let (_, reports) = PolicySnapshot::compile(1, &td(), &[wi(&spec, "x")], &[]);
    assert!(reports[0].result.is_ok(), "{:?}", reports[0]);
}

#[test]
fn all_problems_of_an_object_are_listed() {
    let (reason, message) =
        report_of(r#"{spiffe: {id: /a, x509: {ttl: 0s, dnsSans: ["{{ x }}"]}, jwt: {ttl: 2h}}}"#);
    assert_eq!(reason, ValidationReason::InvalidTtl);
    assert_eq!(
        message,
        "spec.spiffe.x509.ttl: duration \"0s\" is outside the allowed range 1m to 24h; \
         spec.spiffe.x509.dnsSans[0]: unknown attribute \"x\" at offset 3; \
         spec.spiffe.jwt.ttl: duration \"2h\" is outside the allowed range 1m to 1h"
    );
}

#[test]
fn bad_objects_are_skipped_and_good_ones_still_evaluate() {
    let good = wi(
        r#"{spiffe: {id: "/sa/{{ workload.kubernetes.service_account }}"}}"#,
        "good",
    );
    let bad = wi(r#"{spiffe: {id: "/x/{{ oops"}}"#, "bad");
    let mut nameless = wi(r#"{spiffe: {id: /n}}"#, "n");
    nameless.metadata.name = None;
    let dup = wi(r#"{spiffe: {id: /other}}"#, "good");
    let mut bad_role = grant_all();
    bad_role.metadata.name = Some("bad-role".into());
    bad_role.spec.subjects[0].namespace = None;
    let (snap, reports) = PolicySnapshot::compile(
        7,
        &td(),
        &[bad.clone(), good, nameless, dup],
        &[bad_role, grant_all()],
    );
    let summary: Vec<_> = reports
        .iter()
        .map(|r| {
            (
                r.kind,
                r.name.as_str(),
                r.result.as_ref().err().map(|e| e.reason),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                ObjectKind::WorkloadIdentity,
                "bad",
                Some(ValidationReason::InvalidTemplate)
            ),
            (ObjectKind::WorkloadIdentity, "good", None),
            (
                ObjectKind::WorkloadIdentity,
                "",
                Some(ValidationReason::MissingName)
            ),
            (
                ObjectKind::WorkloadIdentity,
                "good",
                Some(ValidationReason::DuplicateName)
            ),
            (
                ObjectKind::Role,
                "bad-role",
                Some(ValidationReason::InvalidSubject)
            ),
            (ObjectKind::Role, "all", None),
        ]
    );
    assert_eq!(reports[0].generation, Some(3));
    assert_eq!(snap.version(), 7);
    assert_eq!(snap.identity_names().collect::<Vec<_>>(), ["good"]);
    assert_eq!(snap.role_names().collect::<Vec<_>>(), ["all"]);

    let mut a = payments_pod();
    a.set(Field::KubernetesServiceAccount, "web");
    let got = snap.evaluate(&a);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].spiffe_id.as_str(), "spiffe://example.org/sa/web");
    assert_eq!(denial(&snap, &a, "bad"), DenialReason::InvalidIdentity);

    // The shipped document holds exactly the objects in force, and an agent
    // compiling it decides the same.
    let doc = snap.document();
    assert_eq!(doc.workload_identities.len(), 1);
    assert_eq!(doc.roles.len(), 1);
    let json = serde_json::to_vec(doc).unwrap();
    let agent_doc: PolicyDocument = serde_json::from_slice(&json).unwrap();
    let (agent_snap, agent_reports) = agent_doc.compile(7, &td());
    assert!(agent_reports.iter().all(|r| r.result.is_ok()));
    assert_eq!(agent_snap.evaluate(&a), got);
}

#[test]
fn rendered_values_cannot_add_path_segments() {
    let id = wi(
        r#"{spiffe: {id: "/app/{{ workload.docker.labels.app }}"}}"#,
        "docker",
    );
    let (snap, _) = PolicySnapshot::compile(1, &td(), &[id], &[grant_all()]);
    let mut a = Attributes::new();
    a.set(Field::AgentName, "host");
    a.set_labels(LabelMap::DockerLabels, [("app", "web/../admin")])
        .unwrap();
    let d = snap.decide(&a, "docker").unwrap_err();
    assert_eq!(d.reason, DenialReason::InvalidRenderedId);
    assert!(
        d.message
            .contains("not allowed in a SPIFFE ID path segment"),
        "{}",
        d.message
    );

    // A value that is a dot segment passes the character check but not the
    // SPIFFE ID rules.
    a.set_labels(LabelMap::DockerLabels, [("app", "..")])
        .unwrap();
    assert_eq!(denial(&snap, &a, "docker"), DenialReason::InvalidRenderedId);
    a.set_labels(LabelMap::DockerLabels, [("app", "")]).unwrap();
    assert_eq!(denial(&snap, &a, "docker"), DenialReason::MissingAttribute);
    a.set_labels(LabelMap::DockerLabels, [("app", "Web.v2")])
        .unwrap();
    assert_eq!(
        snap.decide(&a, "docker").unwrap().spiffe_id.as_str(),
        "spiffe://example.org/app/Web.v2"
    );
}

#[test]
fn rendered_dns_sans_are_validated_and_lowercased() {
    let id = wi(
        r#"{spiffe: {id: /dns, x509: {dnsSans: ["{{ workload.docker.labels.host }}.example.com", "{{ workload.docker.labels.host }}.EXAMPLE.com"]}}}"#,
        "dns",
    );
    let (snap, _) = PolicySnapshot::compile(1, &td(), &[id], &[grant_all()]);
    let mut a = Attributes::new();
    a.set(Field::AgentName, "host");
    a.set_labels(LabelMap::DockerLabels, [("host", "Web")])
        .unwrap();
    // Both render to the same name once lowercased; it appears once.
    assert_eq!(
        snap.decide(&a, "dns").unwrap().x509.dns_sans,
        ["web.example.com"]
    );
    a.set_labels(LabelMap::DockerLabels, [("host", "we b")])
        .unwrap();
    assert_eq!(denial(&snap, &a, "dns"), DenialReason::InvalidRenderedSan);
    a.set_labels(LabelMap::DockerLabels, [("host", "*.x")])
        .unwrap();
    assert_eq!(denial(&snap, &a, "dns"), DenialReason::InvalidRenderedSan);
}

#[test]
fn output_is_sorted_by_name_and_matches_explain() {
    let ids: Vec<_> = ["charlie", "alpha", "bravo"]
        .iter()
        .map(|n| wi(&format!("{{spiffe: {{id: /{n}}}}}"), n))
        .collect();
    let (snap, _) = PolicySnapshot::compile(1, &td(), &ids, &[grant_all()]);
    let got: Vec<_> = snap
        .evaluate(&payments_pod())
        .into_iter()
        .map(|i| i.workload_identity)
        .collect();
    assert_eq!(got, ["alpha", "bravo", "charlie"]);
    let explained: Vec<_> = snap
        .explain(&payments_pod())
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .map(|i| i.workload_identity)
        .collect();
    assert_eq!(explained, got);

    let sel = IdentitySelector::name("bravo").unwrap();
    let picked: Vec<_> = snap
        .evaluate_selected(&payments_pod(), &sel)
        .into_iter()
        .map(|i| i.workload_identity)
        .collect();
    assert_eq!(picked, ["bravo"]);
    let sel = IdentitySelector::labels(BTreeMap::from([(
        "team".to_owned(),
        vec!["other".to_owned()],
    )]))
    .unwrap();
    assert!(snap.evaluate_selected(&payments_pod(), &sel).is_empty());
}

#[test]
fn namespace_index_does_not_change_answers() {
    // Identities pinned to a namespace, unpinned ones, and a mix in one object.
    let ids = vec![
        wi(
            r#"{rules: {allow: [{conditions: [{attribute: workload.kubernetes.namespace, eq: payments}]}]}, spiffe: {id: /p}}"#,
            "pinned-payments",
        ),
        wi(
            r#"{rules: {allow: [{conditions: [{attribute: workload.kubernetes.namespace, in: [web, batch]}]}]}, spiffe: {id: /w}}"#,
            "pinned-web",
        ),
        wi(
            r#"{rules: {allow: [{conditions: [{attribute: workload.kubernetes.namespace, eq: web}]}, {conditions: [{attribute: workload.unix.uid, eq: "1000"}]}]}, spiffe: {id: /m}}"#,
            "mixed",
        ),
        wi(r#"{spiffe: {id: /free}}"#, "free"),
    ];
    let roles: Vec<Role> = vec![
        serde_yaml::from_str(
            "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {name: pinned}\nspec: {subjects: [{kind: ServiceAccount, namespace: payments, name: '*'}], allow: {workloadIdentityLabels: {team: [t]}}}",
        )
        .unwrap(),
        serde_yaml::from_str(
            "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {name: web}\nspec: {subjects: [{kind: ServiceAccount, namespace: 'we*', name: '*'}], allow: {workloadIdentityLabels: {team: [t]}}}",
        )
        .unwrap(),
    ];
    let (snap, _) = PolicySnapshot::compile(1, &td(), &ids, &roles);
    for (ns, uid, want) in [
        ("payments", "1", vec!["free", "pinned-payments"]),
        ("payments", "1000", vec!["free", "mixed", "pinned-payments"]),
        ("web", "1", vec!["free", "mixed", "pinned-web"]),
        ("batch", "1000", vec![]),
    ] {
        let mut a = payments_pod();
        a.set(Field::KubernetesNamespace, ns)
            .set(Field::UnixUid, uid);
        let got: Vec<_> = snap
            .evaluate(&a)
            .into_iter()
            .map(|i| i.workload_identity)
            .collect();
        let explained: Vec<_> = snap
            .explain(&a)
            .into_iter()
            .filter_map(|(_, r)| r.ok())
            .map(|i| i.workload_identity)
            .collect();
        assert_eq!(got, want, "{ns} {uid}");
        assert_eq!(explained, want, "{ns} {uid}");
    }
}

#[test]
fn ready_condition_keeps_transition_time_while_status_holds() {
    let (_, reports) = PolicySnapshot::compile(
        1,
        &td(),
        &[
            wi(r#"{spiffe: {id: /a}}"#, "ok"),
            wi(r#"{spiffe: {id: a}}"#, "bad"),
        ],
        &[],
    );
    let t0 = Time("2026-01-01T00:00:00Z".parse().unwrap());
    let t1 = Time("2026-01-02T00:00:00Z".parse().unwrap());
    let first = reports[0].ready_condition(t0.clone(), None);
    assert_eq!(
        (
            first.type_.as_str(),
            first.status.as_str(),
            first.reason.as_str()
        ),
        ("Ready", "True", "Compiled")
    );
    assert_eq!(first.observed_generation, Some(3));
    let again = reports[0].ready_condition(t1.clone(), Some(&first));
    assert_eq!(again.last_transition_time, t0);
    let failed = reports[1].ready_condition(t1.clone(), Some(&first));
    assert_eq!(
        (failed.status.as_str(), failed.reason.as_str()),
        ("False", "InvalidSpiffeId")
    );
    assert_eq!(failed.last_transition_time, t1);
}

#[test]
fn design_fixture_keeps_teleport_style_operator_keys() {
    let objs: Vec<PolicyObject> =
        parse_yaml_documents(include_str!("fixtures/design-examples.yaml"))
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let summary: Vec<_> = objs.iter().map(|o| (o.kind(), o.name().unwrap())).collect();
    assert_eq!(
        summary,
        [
            (ObjectKind::WorkloadIdentity, "payments-processor"),
            (ObjectKind::Role, "payments")
        ]
    );
    let PolicyObject::WorkloadIdentity(w) = &objs[0] else {
        panic!("first object is the WorkloadIdentity")
    };
    let conditions = &w.spec.rules.as_ref().unwrap().allow[0].conditions;
    assert_eq!(conditions[0].eq.as_deref(), Some("payments"));
    assert_eq!(
        conditions[1].in_.as_deref(),
        Some(&["processor".to_owned(), "ledger".to_owned()][..])
    );
    assert_eq!(conditions[2].not_eq.as_deref(), Some("0"));
    let json = serde_json::to_value(&conditions[2]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"attribute": "workload.unix.uid", "not_eq": "0"})
    );
    let PolicyObject::Role(r) = &objs[1] else {
        panic!("second object is the Role")
    };
    assert_eq!(r.spec.subjects.len(), 3);
    assert_eq!(r.spec.allow.spiffe[0].ip_sans, ["10.0.0.0/8"]);
}

#[test]
fn ids_under_signet_are_refused_when_the_text_already_says_so() {
    for id in [
        "/signet",
        "/signet/agent/x",
        "/signet/{{ agent.name }}",
        "/signet/agent/{{ workload.kubernetes.namespace }}/x",
        "spiffe://example.org/signet/issuer",
    ] {
        let (reason, message) = report_of(&format!("{{spiffe: {{id: {id:?}}}}}"));
        assert_eq!(reason, ValidationReason::ReservedId, "{id}");
        assert_eq!(
            message,
            format!(
                "spec.spiffe.id: {id:?} is reserved: /signet/** belongs to Signet's agents and issuer; no workload may hold such an ID"
            )
        );
    }
    // Near misses are ordinary IDs: only the `/signet` segment is reserved.
    for id in [
        "/signets/x",
        "/signet-x/y",
        "/ns/signet",
        "/signet{{ agent.name }}",
        "/{{ agent.name }}/signet",
    ] {
        let (_, reports) = PolicySnapshot::compile(
            1,
            &td(),
            &[wi(&format!("{{spiffe: {{id: {id:?}}}}}"), "x")],
            &[],
        );
        assert!(reports[0].result.is_ok(), "{id}: {:?}", reports[0].result);
    }
}

#[test]
fn a_namespace_named_signet_cannot_render_a_reserved_id() {
    let ids = [
        wi(
            r#"{spiffe: {id: "/{{ workload.kubernetes.namespace }}/{{ workload.kubernetes.service_account }}"}}"#,
            "by-namespace",
        ),
        wi(
            r#"{spiffe: {id: "/{{ workload.kubernetes.namespace }}"}}"#,
            "namespace-only",
        ),
        wi(
            r#"{spiffe: {id: "/signet{{ workload.kubernetes.namespace }}"}}"#,
            "glued",
        ),
    ];
    let (snap, reports) = PolicySnapshot::compile(1, &td(), &ids, &[grant_all()]);
    assert!(reports.iter().all(|r| r.result.is_ok()), "{reports:?}");

    let mut attack = payments_pod();
    attack
        .set(Field::KubernetesNamespace, "signet")
        .set(Field::KubernetesServiceAccount, "agent");
    for name in ["by-namespace", "namespace-only"] {
        let d = snap.decide(&attack, name).unwrap_err();
        assert_eq!(d.reason, DenialReason::ReservedId, "{name}");
        assert_eq!(d.reason.as_str(), "reserved_id");
        assert!(
            d.message.contains("belongs to Signet's agents and issuer"),
            "{}",
            d.message
        );
    }
    let d = snap.decide(&attack, "by-namespace").unwrap_err();
    assert_eq!(
        d.message,
        "spec.spiffe.id: rendered ID spiffe://example.org/signet/agent is reserved: /signet/** belongs to Signet's agents and issuer; no workload may hold such an ID"
    );
    // Nothing reserved is ever in the issuable list; the glued one is not reserved.
    let issued: Vec<_> = snap
        .evaluate(&attack)
        .into_iter()
        .map(|i| i.spiffe_id.to_string())
        .collect();
    assert_eq!(issued, ["spiffe://example.org/signetsignet"]);
    let explained: Vec<_> = snap
        .explain(&attack)
        .into_iter()
        .map(|(n, r)| (n, r.err().map(|d| d.reason)))
        .collect();
    assert_eq!(
        explained,
        [
            ("by-namespace".to_owned(), Some(DenialReason::ReservedId)),
            ("glued".to_owned(), None),
            ("namespace-only".to_owned(), Some(DenialReason::ReservedId)),
        ]
    );

    // The same identities work for any other namespace.
    let ok: Vec<_> = snap
        .evaluate(&payments_pod())
        .into_iter()
        .map(|i| i.spiffe_id.to_string())
        .collect();
    assert_eq!(
        ok,
        [
            "spiffe://example.org/payments/processor",
            "spiffe://example.org/signetpayments",
            "spiffe://example.org/payments",
        ]
    );
}

#[test]
fn explanations_agree_with_decisions_and_say_why() {
    let yaml = format!(
        "{}{}",
        include_str!("fixtures/design-examples.yaml"),
        r#"
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: no-admin-sa}
spec:
  subjects: [{kind: ServiceAccount, namespace: "*", name: "*"}]
  deny:
    spiffe: [{path: "/ns/*/sa/admin"}]
"#
    );
    let snap = compile(&yaml);
    let check = |attrs: &Attributes| {
        let explanation = snap.explain_workload(attrs);
        for identity in &explanation.identities {
            let decided = snap.decide(attrs, &identity.workload_identity);
            assert_eq!(
                identity
                    .outcome
                    .as_ref()
                    .map(|i| i.spiffe_id.clone())
                    .map_err(|d| d.reason),
                decided.map(|i| i.spiffe_id).map_err(|d| d.reason),
                "{}",
                identity.workload_identity
            );
        }
        explanation
    };

    let allowed = check(&payments_pod());
    let processor = allowed
        .identities
        .iter()
        .find(|i| i.workload_identity == "payments-processor")
        .unwrap();
    assert!(processor.outcome.is_ok());
    assert_eq!(processor.rules, "allow[0] holds");
    assert!(
        processor
            .roles
            .iter()
            .any(|r| r.allows_labels && r.allows_names == Some(true))
    );
    let applying: Vec<_> = allowed
        .roles
        .iter()
        .filter_map(|r| r.matched_subject.as_deref())
        .collect();
    assert!(
        applying.contains(&"ServiceAccount payments/*"),
        "{applying:?}"
    );

    let mut admin = payments_pod();
    admin.set(Field::KubernetesServiceAccount, "admin");
    let denied = check(&admin);
    let processor = denied
        .identities
        .iter()
        .find(|i| i.workload_identity == "payments-processor")
        .unwrap();
    assert_eq!(
        processor.outcome.as_ref().unwrap_err().reason,
        DenialReason::RoleDenied
    );
    assert!(
        processor
            .roles
            .iter()
            .any(|r| r.role == "no-admin-sa" && r.denies_names == Some(true))
    );

    let mut root = payments_pod();
    root.set(Field::UnixUid, "0");
    let unmatched = check(&root);
    let processor = unmatched
        .identities
        .iter()
        .find(|i| i.workload_identity == "payments-processor")
        .unwrap();
    assert!(
        processor.rules.starts_with("no allow rule holds"),
        "{}",
        processor.rules
    );
    assert!(
        processor.rules.contains("workload.unix.uid"),
        "{}",
        processor.rules
    );
}
