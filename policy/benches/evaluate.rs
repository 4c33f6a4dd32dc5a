//! Policy evaluation and compilation with 1,000 WorkloadIdentities and 1,000
//! Roles shaped like a multi-tenant cluster: 100 namespaces, one identity
//! per app (rules pinned to the app's namespace and labels), a few identities
//! every workload is checked against, and Roles by service account, node pool
//! and agent name. The same identities with their rules written as
//! predicate expressions compare the two rule forms, alone and in a snapshot.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use signet_identity::TrustDomain;
use signet_policy::attributes::{Field, LabelMap};
use signet_policy::crd::{
    AttributeCondition, RoleGrant, RoleSpec, Rule, Rules, SpiffeGrant, SpiffeSpec, Subject,
    SubjectKind, WorkloadIdentitySpec, X509Spec,
};
use signet_policy::rules::{Rules as CompiledRules, RulesOutcome};
use signet_policy::{Attributes, PolicySnapshot, Role, WorkloadIdentity};

const NAMESPACES: usize = 100;
const IDENTITIES: usize = 1000;
const ROLES: usize = 1000;
/// Identities whose rules do not pin a namespace, so every workload is checked
/// against them.
const UNPINNED: usize = 50;

fn eq(attribute: &str, value: &str) -> AttributeCondition {
    AttributeCondition {
        attribute: attribute.to_owned(),
        eq: Some(value.to_owned()),
        ..AttributeCondition::default()
    }
}

fn in_(attribute: &str, values: &[&str]) -> AttributeCondition {
    AttributeCondition {
        attribute: attribute.to_owned(),
        in_: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        ..AttributeCondition::default()
    }
}

fn conditions(conditions: Vec<AttributeCondition>) -> Rule {
    Rule {
        conditions,
        expression: None,
    }
}

fn expression(text: String) -> Rule {
    Rule {
        conditions: vec![],
        expression: Some(text),
    }
}

/// How the benchmark identities write their rules.
#[derive(Clone, Copy)]
enum Form {
    Conditions,
    Expression,
}

/// An app identity's rules: namespace, app label (own or "shared") and a
/// non-root uid, unless the service account is "default".
fn app_rules(form: Form, ns: &str, app: &str) -> Rules {
    match form {
        Form::Conditions => Rules {
            allow: vec![conditions(vec![
                eq("workload.kubernetes.namespace", ns),
                in_("workload.kubernetes.labels.app", &[app, "shared"]),
                AttributeCondition {
                    attribute: "workload.unix.uid".to_owned(),
                    not_eq: Some("0".to_owned()),
                    ..AttributeCondition::default()
                },
            ])],
            deny: vec![conditions(vec![eq(
                "workload.kubernetes.service_account",
                "default",
            )])],
        },
        Form::Expression => Rules {
            allow: vec![expression(format!(
                r#"workload.kubernetes.namespace == "{ns}" && workload.kubernetes.labels.app in ["{app}", "shared"] && workload.unix.uid != "0""#
            ))],
            deny: vec![expression(
                r#"workload.kubernetes.service_account == "default""#.to_owned(),
            )],
        },
    }
}

fn identities(form: Form) -> Vec<WorkloadIdentity> {
    (0..IDENTITIES)
        .map(|i| {
            let ns = format!("ns-{}", i % NAMESPACES);
            let app = format!("app-{i}");
            let rules = if i < IDENTITIES - UNPINNED {
                app_rules(form, &ns, &app)
            } else {
                // Unpinned: e.g. a mesh-wide identity keyed on a pod label.
                let mesh = format!("m{i}");
                let allow = match form {
                    Form::Conditions => {
                        conditions(vec![eq("workload.kubernetes.labels.mesh", &mesh)])
                    }
                    Form::Expression => {
                        expression(format!(r#"workload.kubernetes.labels.mesh == "{mesh}""#))
                    }
                };
                Rules {
                    allow: vec![allow],
                    deny: vec![],
                }
            };
            let spec = WorkloadIdentitySpec {
                rules: Some(rules),
                spiffe: SpiffeSpec {
                    id: format!(
                        "/ns/{{{{ workload.kubernetes.namespace }}}}/sa/{{{{ workload.kubernetes.service_account }}}}/{app}"
                    ),
                    hint: Some(app.clone()),
                    x509: Some(X509Spec {
                        dns_sans: vec![format!(
                            "{{{{ workload.kubernetes.pod_name }}}}.{ns}.svc"
                        )],
                        ..X509Spec::default()
                    }),
                    jwt: None,
                },
                federates_with: vec![],
            };
            let mut wi = WorkloadIdentity::new(&format!("wi-{i:04}"), spec);
            wi.metadata.labels = Some(BTreeMap::from([(
                "team".to_owned(),
                format!("team-{}", i % NAMESPACES),
            )]));
            wi
        })
        .collect()
}

fn roles() -> Vec<Role> {
    (0..ROLES)
        .map(|i| {
            let team = format!("team-{}", i % NAMESPACES);
            let subject = match i % 20 {
                // 5% node-pool roles, 5% agent roles: unindexed.
                0 => Subject {
                    kind: SubjectKind::Node,
                    namespace: None,
                    name: None,
                    selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(
                            "pool".to_owned(),
                            format!("pool-{i}"),
                        )])),
                        match_expressions: None,
                    }),
                },
                1 => Subject {
                    kind: SubjectKind::Agent,
                    namespace: None,
                    name: Some(format!("vm-{i}-*")),
                    selector: None,
                },
                _ => Subject {
                    kind: SubjectKind::ServiceAccount,
                    namespace: Some(format!("ns-{}", i % NAMESPACES)),
                    name: Some("*".to_owned()),
                    selector: None,
                },
            };
            let spec = RoleSpec {
                subjects: vec![subject],
                allow: RoleGrant {
                    workload_identity_labels: BTreeMap::from([("team".to_owned(), vec![team])]),
                    spiffe: vec![SpiffeGrant {
                        path: format!("/ns/ns-{}/*", i % NAMESPACES),
                        dns_sans: vec![format!("*.ns-{}.svc", i % NAMESPACES)],
                        ip_sans: vec![],
                    }],
                },
                deny: RoleGrant {
                    workload_identity_labels: BTreeMap::new(),
                    spiffe: vec![SpiffeGrant {
                        path: "/ns/*/sa/admin/*".to_owned(),
                        ..SpiffeGrant::default()
                    }],
                },
            };
            Role::new(&format!("role-{i:04}"), spec)
        })
        .collect()
}

/// A pod of app-442 in ns-42: matches its own identity plus `shared`-labelled
/// ones in its namespace (the other ns-42 identities accept app "shared").
fn pod() -> Attributes {
    let mut a = Attributes::new();
    a.set(Field::KubernetesNamespace, "ns-42")
        .set(Field::KubernetesServiceAccount, "app-442")
        .set(Field::KubernetesPodName, "app-442-5d8f7c9b4-x2x7q")
        .set(
            Field::KubernetesPodUid,
            "5f0c3c2e-8e2f-4a57-9c51-0c8f2b9d7a11",
        )
        .set(Field::KubernetesNodeName, "node-7")
        .set(Field::KubernetesContainerName, "app")
        .set(
            Field::KubernetesContainerImage,
            "registry.example/app:1.2.3",
        )
        .set(Field::UnixPid, "31337")
        .set(Field::UnixUid, "1000")
        .set(Field::UnixGid, "1000")
        .set(Field::UnixBinaryPath, "/app/server")
        .set(Field::AgentName, "node-7")
        .set(Field::AgentNodeName, "node-7");
    let labels = [
        ("app", "app-442"),
        ("pod-template-hash", "5d8f7c9b4"),
        ("app.kubernetes.io/part-of", "shop"),
    ];
    if a.set_labels(LabelMap::KubernetesLabels, labels).is_err()
        || a.set_labels(
            LabelMap::NodeLabels,
            [("pool", "general"), ("kubernetes.io/os", "linux")],
        )
        .is_err()
    {
        panic!("benchmark attributes are valid");
    }
    a
}

fn trust_domain() -> TrustDomain {
    match TrustDomain::new("cluster.example") {
        Ok(td) => td,
        Err(e) => panic!("benchmark trust domain: {e}"),
    }
}

fn compile(td: &TrustDomain, ids: &[WorkloadIdentity], roles: &[Role]) -> PolicySnapshot {
    let (snap, reports) = PolicySnapshot::compile(1, td, ids, roles);
    assert!(
        reports.iter().all(|r| r.result.is_ok()),
        "fixture must compile"
    );
    snap
}

fn compiled_rules(form: Form) -> CompiledRules {
    match CompiledRules::compile(Some(&app_rules(form, "ns-42", "app-442"))) {
        Ok(r) => r,
        Err(e) => panic!("benchmark rules compile: {e:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let td = trust_domain();
    let ids = identities(Form::Conditions);
    let expression_ids = identities(Form::Expression);
    let roles = roles();
    let snap = compile(&td, &ids, &roles);
    let expression_snap = compile(&td, &expression_ids, &roles);

    let matching = pod();
    assert_eq!(
        snap.evaluate(&matching).len(),
        1,
        "the benchmark pod should receive exactly its app's identity"
    );
    let mut shared = pod();
    if shared
        .set_labels(LabelMap::KubernetesLabels, [("app", "shared")])
        .is_err()
    {
        panic!("valid label");
    }
    // Every pinned ns-42 identity (ten of them) accepts app=shared.
    let shared_count = snap.evaluate(&shared).len();
    assert!(shared_count > 1, "{shared_count}");
    let mut outsider = pod();
    outsider.set(Field::KubernetesNamespace, "unknown-ns");
    for a in [&matching, &shared, &outsider] {
        assert_eq!(
            expression_snap.evaluate(a),
            snap.evaluate(a),
            "both rule forms decide alike"
        );
    }
    // Right namespace, wrong app: the second test of the rule fails.
    let mut other_app = pod();
    if other_app
        .set_labels(LabelMap::KubernetesLabels, [("app", "app-443")])
        .is_err()
    {
        panic!("valid label");
    }

    // One rule in each form, evaluated alone (deny then allow).
    let mut group = c.benchmark_group("rule");
    for (name, form) in [
        ("conditions", Form::Conditions),
        ("expression", Form::Expression),
    ] {
        let rules = compiled_rules(form);
        assert_eq!(rules.evaluate(&matching), RulesOutcome::Allowed);
        assert_eq!(rules.evaluate(&other_app), RulesOutcome::NoMatchingRule);
        group.bench_function(format!("{name}/match"), |b| {
            b.iter(|| rules.evaluate(black_box(&matching)))
        });
        group.bench_function(format!("{name}/miss"), |b| {
            b.iter(|| rules.evaluate(black_box(&other_app)))
        });
        let source = app_rules(form, "ns-42", "app-442");
        group.bench_function(format!("{name}/compile"), |b| {
            b.iter(|| CompiledRules::compile(Some(black_box(&source))))
        });
    }
    group.finish();

    c.bench_function("evaluate/pod-1-match", |b| {
        b.iter(|| snap.evaluate(black_box(&matching)))
    });
    c.bench_function("evaluate/pod-many-matches", |b| {
        b.iter(|| snap.evaluate(black_box(&shared)))
    });
    c.bench_function("evaluate/pod-no-match", |b| {
        b.iter(|| snap.evaluate(black_box(&outsider)))
    });
    c.bench_function("evaluate/pod-1-match-expressions", |b| {
        b.iter(|| expression_snap.evaluate(black_box(&matching)))
    });
    c.bench_function("evaluate/pod-no-match-expressions", |b| {
        b.iter(|| expression_snap.evaluate(black_box(&outsider)))
    });
    c.bench_function("explain/pod-1-match", |b| {
        b.iter(|| snap.explain(black_box(&matching)))
    });
    c.bench_function("explain/pod-1-match-expressions", |b| {
        b.iter(|| expression_snap.explain(black_box(&matching)))
    });
    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    group.bench_function("1000-identities-1000-roles", |b| {
        b.iter(|| PolicySnapshot::compile(1, &td, black_box(&ids), black_box(&roles)))
    });
    group.bench_function("1000-identities-1000-roles-expressions", |b| {
        b.iter(|| PolicySnapshot::compile(1, &td, black_box(&expression_ids), black_box(&roles)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
