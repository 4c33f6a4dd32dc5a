//! Helpers of the cluster tests: kubectl (from `$SIGNET_E2E_BIN_DIR`, else
//! `PATH`) and the gate that skips them without a cluster.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Why the cluster test cannot run, if it cannot.
pub fn skip_reason() -> Option<&'static str> {
    if std::env::var("SIGNET_E2E_CLUSTER").as_deref() != Ok("1") {
        return Some("set SIGNET_E2E_CLUSTER=1 (and KUBECONFIG) to run against a cluster");
    }
    if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) {
        return Some("KUBECONFIG is not set (e2e/cluster/up.sh writes /var/lib/signet-e2e/env)");
    }
    None
}

pub fn kubectl_path() -> PathBuf {
    std::env::var_os("SIGNET_E2E_BIN_DIR")
        .map(|dir| PathBuf::from(dir).join("kubectl"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("kubectl"))
}

pub fn kubectl_output(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(kubectl_path());
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("running kubectl {args:?}: {e}"));
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to kubectl {args:?}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for kubectl {args:?}: {e}"))
}

/// Runs kubectl and returns its stdout; panics with its stderr on failure.
pub fn kubectl(args: &[&str]) -> String {
    let output = kubectl_output(args, None);
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn kubectl_apply(yaml: &str) {
    let output = kubectl_output(&["apply", "-f", "-"], Some(yaml));
    assert!(
        output.status.success(),
        "kubectl apply failed: {}\n--- manifest ---\n{yaml}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

pub fn pod_field(namespace: &str, name: &str, path: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "get",
        "pod",
        name,
        "-o",
        &format!("jsonpath={{{path}}}"),
    ])
}
