//! Operator memory with many pods in its watch, against the real API
//! server of the e2e cluster (issues 5 and 17): a load binary (`make
//! bench-cluster`, or `cargo bench -p signet-e2e --bench operator_memory`
//! with `SIGNET_E2E_CLUSTER=1` and `KUBECONFIG`; `SIGNET_BENCH_PODS`,
//! default 10000).
//!
//! It starts `signet-operator kubernetes` (release build if present, else
//! debug), reads its RSS once ready, creates the pods, shaped like real
//! ones (labels, an annotation, two containers) that no scheduler picks up
//! (`schedulerName: none`, so no kubelet is involved and deletion is
//! immediate), waits until the operator's `signet_operator_pods_cached`
//! reports them, and reads the RSS and its peak again.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use signet_e2e::cluster::{free_port, kubectl, kubectl_output, note, skip_reason};
use signet_e2e::standalone::{Process, TRUST_DOMAIN, http_get, wait_until_every};

const OPERATOR_NS: &str = "signet-bench-operator";
const PODS_NS: &str = "signet-bench-pods";
const BATCH: usize = 500;

fn pod_count() -> usize {
    std::env::var("SIGNET_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn operator_binary() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("signet-operator"))
        .find(|path| path.is_file())
        .expect("build signet-operator first (cargo build --release --bins)")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn metric(port: u16, name: &str) -> Option<f64> {
    http_get(port, "/metrics")
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
}

fn pod_batch(start: usize) -> String {
    let items: Vec<String> = (start..start + BATCH)
        .map(|i| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"load-{i}","namespace":"{PODS_NS}","labels":{{"app":"load-{}","tier":"backend","team":"team-{}","version":"v{}"}},"annotations":{{"example.org/owner":"someone@example.org"}}}},"spec":{{"schedulerName":"none","serviceAccountName":"default","containers":[{{"name":"app","image":"registry.example.org/app:1.{}","env":[{{"name":"A","value":"1"}},{{"name":"B","value":"2"}}]}},{{"name":"sidecar","image":"registry.example.org/sidecar:2"}}]}}}}"#,
                i % 100,
                i % 20,
                i % 5,
                i % 7
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
        items.join(",")
    )
}

fn cleanup() {
    let _ = kubectl_output(
        &[
            "delete",
            "namespace",
            OPERATOR_NS,
            PODS_NS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=300s",
        ],
        None,
    );
}

fn main() {
    if let Some(reason) = skip_reason() {
        note(&format!("SKIPPED: {reason}"));
        return;
    }
    cleanup();
    let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
    kubectl(&["create", "namespace", OPERATOR_NS]);
    kubectl(&["create", "namespace", PODS_NS]);

    let pods = pod_count();
    let dir = tempfile::tempdir().unwrap();
    let (mut operator, admin_port) = start_operator(dir.path(), "operator.log");
    std::thread::sleep(Duration::from_secs(6));
    let baseline_pods = metric(admin_port, "signet_operator_pods_cached").unwrap_or(0.0);
    let baseline = status_kib(operator.pid(), "VmRSS:");

    let started = signet_e2e::deadline::Stopwatch::start();
    for start in (0..pods).step_by(BATCH) {
        let output = kubectl_output(
            &["create", "-f", "-", "-o", "name"],
            Some(&pod_batch(start)),
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let created = started.elapsed();
    wait_until_every(
        "the operator to see every pod",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            metric(admin_port, "signet_operator_pods_cached").unwrap_or(0.0)
                >= baseline_pods + pods as f64
        },
    );
    let seen = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let loaded = status_kib(operator.pid(), "VmRSS:");
    let peak = status_kib(operator.pid(), "VmHWM:");

    println!(
        "operator RSS with {baseline_pods} pods: {:.1} MiB",
        baseline as f64 / 1024.0
    );
    println!(
        "operator RSS with {} pods: {:.1} MiB (peak {:.1} MiB); {:.0} bytes per added pod",
        baseline_pods as usize + pods,
        loaded as f64 / 1024.0,
        peak as f64 / 1024.0,
        (loaded.saturating_sub(baseline) * 1024) as f64 / pods as f64
    );
    println!(
        "{pods} pods created in {:.1} s, all in the operator's cache after {:.1} s",
        created.as_secs_f64(),
        seen.as_secs_f64()
    );
    operator.stop();

    // An operator (re)started against all those pods: its first list.
    let restarted = signet_e2e::deadline::Stopwatch::start();
    let (mut operator, admin_port) = start_operator(dir.path(), "restarted.log");
    wait_until_every(
        "the restarted operator to list every pod",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            metric(admin_port, "signet_operator_pods_cached").unwrap_or(0.0)
                >= baseline_pods + pods as f64
        },
    );
    let listed = restarted.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "operator started with {} pods: all cached after {:.1} s; RSS {:.1} MiB (peak {:.1} MiB)",
        baseline_pods as usize + pods,
        listed.as_secs_f64(),
        status_kib(operator.pid(), "VmRSS:") as f64 / 1024.0,
        status_kib(operator.pid(), "VmHWM:") as f64 / 1024.0,
    );
    operator.stop();
    cleanup();
}

/// `signet-operator kubernetes` against the cluster, ready; and its
/// metrics port.
fn start_operator(dir: &std::path::Path, log: &str) -> (Process, u16) {
    let admin_port = free_port();
    let mut command = Command::new(operator_binary());
    command
        .args([
            "kubernetes",
            "--trust-domain",
            TRUST_DOMAIN,
            "--namespace",
            OPERATOR_NS,
        ])
        .args([
            "--identity",
            "bench",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin_port}")]);
    let operator = Process::spawn("signet-operator", command, dir.join(log));
    wait_until_every(
        "the operator to be ready",
        Duration::from_secs(300),
        Duration::from_millis(200),
        || http_get(admin_port, "/readyz").starts_with("HTTP/1.1 200"),
    );
    (operator, admin_port)
}
