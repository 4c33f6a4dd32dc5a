//! What one policy change costs the operator with many WorkloadIdentities
//! (issue 17): the CPU between a change and the new version being ready to
//! ship to agents, which is what bounds how fast a change fans out.
//!
//! - `standalone reload`: `DirectorySource::reload` over a policy
//!   directory of N identities (100 files of N/100 each, as a team per
//!   file) after one identity file is added or removed, exactly as the
//!   directory watcher calls it.
//! - `cluster compile`: what the reconciler does with its watch caches
//!   after one object changed: the policy document from the objects, the
//!   compile and the delta from the version before.
//!
//! `cargo bench -p signet-operator --bench policy_recompile`
//! (`SIGNET_BENCH_IDENTITIES`, default 10000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use signet_identity::TrustDomain;
use signet_operator::policy_state::PolicyState;
use signet_operator::standalone::policy_dir::DirectorySource;
use signet_policy::{PolicyDocument, PolicyObject};

const FILES: usize = 100;

fn identities() -> usize {
    std::env::var("SIGNET_BENCH_IDENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn identity(index: usize) -> String {
    format!(
        "---\napiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: app-{index}, labels: {{suite: fleet, team: team-{team}}}}}\nspec:\n  rules:\n    allow:\n      - conditions:\n          - {{attribute: workload.kubernetes.namespace, eq: app-{index}}}\n          - {{attribute: workload.kubernetes.service_account, eq: app-{index}}}\n  spiffe:\n    id: \"/ns/app-{index}/sa/{{{{ workload.kubernetes.service_account }}}}\"\n    x509: {{ttl: 1h}}\n",
        team = index % 50
    )
}

const ROLE: &str = "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {name: fleet}\nspec:\n  subjects: [{kind: Agent, name: \"*\"}]\n  allow: {workloadIdentityLabels: {suite: [fleet]}}\n";

fn trust_domain() -> TrustDomain {
    TrustDomain::new("bench.example").unwrap()
}

fn standalone_reload(c: &mut Criterion) {
    let count = identities();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("role.yaml"), ROLE).unwrap();
    let per_file = count.div_ceil(FILES);
    for file in 0..FILES {
        let text: String = (file * per_file..((file + 1) * per_file).min(count))
            .map(identity)
            .collect();
        std::fs::write(dir.path().join(format!("team-{file:03}.yaml")), text).unwrap();
    }
    let (mut source, policy) = DirectorySource::load(dir.path().into(), trust_domain(), 1);
    assert_eq!(policy.borrow().snapshot.identity_names().count(), count);
    let extra = dir.path().join("extra.yaml");
    let mut group = c.benchmark_group(format!("policy_recompile/{count}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("standalone reload after one file changed", |b| {
        b.iter(|| {
            if extra.exists() {
                std::fs::remove_file(&extra).unwrap();
            } else {
                std::fs::write(&extra, identity(count)).unwrap();
            }
            assert!(source.reload(), "the change made a new version");
        })
    });

    let mut objects: Vec<PolicyObject> = (0..count)
        .map(|i| signet_policy::parse_yaml_documents(&identity(i)))
        .flat_map(|results| results.into_iter().map(Result::unwrap))
        .collect();
    objects.extend(
        signet_policy::parse_yaml_documents(ROLE)
            .into_iter()
            .map(Result::unwrap),
    );
    let td = trust_domain();
    let mut previous = PolicyState::compile(1, &td, &PolicyDocument::from_objects(objects.clone()));
    let mut version = 1;
    let mut extra = signet_policy::parse_yaml_documents(&identity(count))
        .into_iter()
        .map(Result::unwrap);
    let extra = extra.next().unwrap();
    group.bench_function("cluster compile after one object changed", |b| {
        b.iter(|| {
            version += 1;
            let mut now = objects.clone();
            if version % 2 == 0 {
                now.push(extra.clone());
            }
            let document = PolicyDocument::from_objects(now);
            let state = PolicyState::compile_after(version, &td, &document, &previous);
            let delta = state.delta.as_ref().unwrap();
            assert_eq!(
                delta.workload_identities.len() + delta.removed_workload_identities.len(),
                1
            );
            previous = state;
        })
    });
    group.finish();
}

criterion_group!(benches, standalone_reload);
criterion_main!(benches);
