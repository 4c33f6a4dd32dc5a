//! Binding to SVID-ready with many pods created at once, on the real
//! cluster (issue 17): a load binary (`make bench-cluster`, or `cargo bench
//! -p signet-e2e --bench pod_bind_ready` with `SIGNET_E2E_CLUSTER=1`,
//! `KUBECONFIG` and the images of `e2e/images/build-all.sh` on the node).
//!
//! It installs the chart (release `signet-bench`), gives the pods of one
//! namespace an identity, creates `SIGNET_BENCH_PODS` pods (default 100) in
//! one `kubectl apply`, each mounting the CSI volume (socket mode) and
//! fetching its X.509-SVID once, and reads:
//! - per pod, from its `IdentityIssued` Event, how long after the operator
//!   saw the pod bound its SVID was signed ahead (the operator's clock,
//!   both ends);
//! - the agent's `signet_agent_pod_bind_to_svid_ready_seconds` histogram
//!   (to the SVIDs being in the agent's cache);
//! - how many pods were served the SVID signed ahead (their Event says so)
//!   and how long until every pod had finished its fetch.
//!
//! `SIGNET_BENCH_KEEP=1` leaves the release and the pods for a look.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use signet_e2e::cluster::{
    csi_pod, helm, kubectl, kubectl_apply, kubectl_output, note, run_to_completion, skip_reason,
    wait_for_daemonset,
};
use signet_e2e::standalone::wait_until_every;

const RELEASE: &str = "signet-bench";
const NS: &str = "signet-bench-system";
const APPS: &str = "signet-bench-apps";

fn clean() {
    let _ = kubectl_output(
        &[
            "delete",
            "namespace",
            APPS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ],
        None,
    );
    let _ = helm(&["uninstall", RELEASE, "-n", NS, "--wait"]);
    let _ = kubectl_output(
        &[
            "delete",
            "namespace",
            NS,
            "--ignore-not-found",
            "--wait=true",
        ],
        None,
    );
    let _ = kubectl_output(
        &[
            "delete",
            "workloadidentities.signet.dev,roles.signet.dev",
            "-l",
            "suite=bench-bind",
            "--ignore-not-found",
        ],
        None,
    );
}

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: bench-bind, labels: {suite: bench-bind}}
spec:
  rules:
    allow:
      - conditions:
          - {attribute: workload.kubernetes.namespace, eq: signet-bench-apps}
  spiffe:
    id: "/ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}"
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: bench-bind, labels: {suite: bench-bind}}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [bench-bind]}}
"#;

fn pods(count: usize) -> String {
    (0..count)
        .map(|i| {
            csi_pod(
                APPS,
                &format!("bind-{i}"),
                "default",
                "localhost/signet/agent:dev",
                &["api", "fetch", "x509", "--timeout", "120s"],
                None,
                "Never",
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Milliseconds after binding, from an Event note "... N ms after it was
/// bound".
fn bound_ms(note: &str) -> Option<u64> {
    let before = note.strip_suffix(" ms after it was bound")?;
    before.rsplit(' ').next()?.parse().ok()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// The agent's metrics, through the API server's proxy to its pod.
fn agent_metrics() -> String {
    let pod = kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=agent",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let port = kubectl(&[
        "-n",
        NS,
        "get",
        "pod",
        &pod,
        "-o",
        "jsonpath={.spec.containers[0].ports[?(@.name==\"metrics\")].containerPort}",
    ]);
    let port = if port.is_empty() { "9464".into() } else { port };
    let output = kubectl_output(
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{NS}/pods/{pod}:{port}/proxy/metrics"),
        ],
        None,
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn main() {
    if let Some(reason) = skip_reason() {
        note(&format!("SKIPPED pod_bind_ready: {reason}"));
        return;
    }
    let count: usize = std::env::var("SIGNET_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    clean();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/signet");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        chart.join("crds").to_str().unwrap(),
    ]);
    let install = helm(&[
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NS,
        "--create-namespace",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "defaultPolicy.enabled=false",
        "--wait",
        "--timeout",
        "5m",
    ]);
    assert!(
        install.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&install.stderr)
    );
    kubectl_apply(POLICY);
    kubectl(&["create", "namespace", APPS]);
    wait_until_every(
        "the WorkloadIdentity Ready",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            kubectl(&[
                "get",
                "workloadidentities.signet.dev",
                "bench-bind",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]) == "True"
        },
    );
    // One pod first, so the policy is in force on the agent and images
    // are warm before the burst; it is not measured.
    wait_for_daemonset(
        NS,
        &format!("{RELEASE}-agent"),
        "app.kubernetes.io/component=agent",
        Duration::from_secs(180),
    );
    let mut warm = false;
    for _ in 0..5 {
        kubectl_apply(&pods(1).replace("bind-0", "warm-up"));
        let (phase, log) = run_to_completion(APPS, "warm-up", Duration::from_secs(180));
        kubectl(&["-n", APPS, "delete", "pod", "warm-up", "--wait=true"]);
        if phase == "Succeeded" {
            warm = true;
            break;
        }
        note(&format!("warm-up pod: {phase}: {log}; again"));
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(warm, "no warm-up pod got its SVID");
    kubectl(&["-n", APPS, "delete", "events", "--all"]);

    let created = signet_e2e::deadline::Stopwatch::start();
    kubectl_apply(&pods(count));
    let mut finished = 0;
    wait_until_every(
        "every pod's fetch to finish",
        Duration::from_secs(600),
        Duration::from_millis(500),
        || {
            let phases = kubectl(&[
                "-n",
                APPS,
                "get",
                "pods",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ]);
            finished = phases
                .split_whitespace()
                .filter(|phase| *phase == "Succeeded" || *phase == "Failed")
                .count();
            finished == count
        },
    );
    let all_done = created.elapsed();
    let failed = kubectl(&[
        "-n",
        APPS,
        "get",
        "pods",
        "--field-selector",
        "status.phase=Failed",
        "-o",
        "name",
    ]);

    let mut notes = Vec::new();
    wait_until_every(
        "an IdentityIssued Event per pod",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let events = kubectl(&[
                "-n",
                APPS,
                "get",
                "events",
                "--field-selector",
                "reason=IdentityIssued",
                "-o",
                "jsonpath={range .items[*]}{.involvedObject.name}|{.message}{\"\\n\"}{end}",
            ]);
            notes = events.lines().map(str::to_owned).collect();
            let mut pods: Vec<&str> = notes.iter().filter_map(|l| l.split('|').next()).collect();
            pods.sort_unstable();
            pods.dedup();
            pods.len() >= count
        },
    );
    let ahead: Vec<&String> = notes
        .iter()
        .filter(|line| line.contains("before the pod's containers started"))
        .collect();
    let mut bound: Vec<u64> = ahead.iter().filter_map(|line| bound_ms(line)).collect();
    bound.sort_unstable();
    let metrics = agent_metrics();
    let histogram: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("signet_agent_pod_bind_to_svid_ready_seconds"))
        .collect();

    println!("pod_bind_ready: {count} pods created at once on one node");
    println!(
        "  pods finished their fetch: {finished} ({} failed) within {:.1} s of the apply",
        failed.lines().count(),
        all_done.as_secs_f64()
    );
    println!(
        "  pods whose SVID was signed ahead: {} of {count}",
        ahead.len()
    );
    if !bound.is_empty() {
        println!(
            "  bound -> signed (operator, per pod): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            percentile(&bound, 0.5),
            percentile(&bound, 0.9),
            percentile(&bound, 0.99),
            bound[bound.len() - 1]
        );
    }
    println!("  agent histogram (bound -> SVIDs in cache):");
    for line in histogram {
        println!("    {line}");
    }
    if std::env::var_os("SIGNET_BENCH_KEEP").is_none() {
        clean();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_event_note() {
        assert_eq!(
            super::bound_ms(
                "x|WorkloadIdentity a issued spiffe://t/a before the pod's containers started, 84 ms after it was bound"
            ),
            Some(84)
        );
        assert_eq!(
            super::bound_ms("WorkloadIdentity a issued spiffe://t/a"),
            None
        );
    }
}
