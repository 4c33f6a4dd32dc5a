//! Helpers of the cluster tests: kubectl (from `$SIGNET_E2E_BIN_DIR`, else
//! `PATH`) and the gate that skips them without a cluster.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::deadline::Deadline;

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

/// `helm` from the e2e tools (`SIGNET_E2E_BIN_DIR`), else from `PATH`.
pub fn helm_path() -> PathBuf {
    std::env::var_os("SIGNET_E2E_BIN_DIR")
        .map(|dir| PathBuf::from(dir).join("helm"))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("helm"))
}

/// Runs `helm` with `args`.
pub fn helm(args: &[&str]) -> Output {
    Command::new(helm_path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running helm: {e}"))
}

/// A pod in `namespace` with the Signet CSI volume (socket mode) running
/// `args` from `image`, with `SPIFFE_ENDPOINT_SOCKET` set; `out` (a host
/// directory) is mounted at /out when given.
pub fn csi_pod(
    namespace: &str,
    name: &str,
    sa: &str,
    image: &str,
    args: &[&str],
    out: Option<&std::path::Path>,
    restart: &str,
) -> String {
    let args = args
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let (out_mount, out_volume) = match out {
        Some(dir) => (
            "\n        - {name: out, mountPath: /out}".to_owned(),
            format!(
                "\n    - name: out\n      hostPath: {{path: \"{}\", type: Directory}}",
                dir.display()
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  serviceAccountName: {sa}
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 1
  containers:
    - name: main
      image: "{image}"
      imagePullPolicy: Never
      args: [{args}]
      env:
        - {{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///spiffe-workload-api/agent.sock"}}
      volumeMounts:
        - {{name: spiffe, mountPath: /spiffe-workload-api, readOnly: true}}{out_mount}
  volumes:
    - name: spiffe
      csi: {{driver: csi.signet.dev, readOnly: true}}{out_volume}
"#
    )
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

/// `kubectl signet ARGS`: kubectl itself, finding the `kubectl-signet`
/// plugin this build made on `PATH`, as a user's kubectl would.
pub fn kubectl_signet(args: &[&str]) -> String {
    let plugin = crate::standalone::binary("kubectl-signet");
    let plugin_dir = plugin.parent().map(PathBuf::from).unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![plugin_dir];
    dirs.extend(std::env::split_paths(&path));
    let output = Command::new(kubectl_path())
        .arg("signet")
        .args(args)
        .env("PATH", std::env::join_paths(dirs).unwrap_or(path))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running kubectl signet {args:?}: {e}"));
    assert!(
        output.status.success(),
        "kubectl signet {args:?} failed: {}{}",
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

/// Waits for a `restartPolicy: Never` pod to finish; returns its phase and
/// its log.
pub fn run_to_completion(namespace: &str, name: &str, timeout: Duration) -> (String, String) {
    let deadline = Deadline::after(timeout);
    let phase = loop {
        let phase = pod_field(namespace, name, ".status.phase");
        if phase == "Succeeded" || phase == "Failed" {
            break phase;
        }
        if deadline.passed() {
            let describe = kubectl_output(&["-n", namespace, "describe", "pod", name], None);
            panic!(
                "pod {namespace}/{name} still {phase:?} after {timeout:?}:\n{}",
                String::from_utf8_lossy(&describe.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let logs = kubectl_output(
        &["-n", namespace, "logs", name, "--all-containers=true"],
        None,
    );
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    (phase, log)
}

/// Waits until a DaemonSet has pods scheduled and all of them Ready (the
/// agent is Ready once its first policy is in force). `kubectl rollout
/// status` can return before the controller has scheduled anything.
pub fn wait_for_daemonset(namespace: &str, name: &str, selector: &str, timeout: Duration) {
    let deadline = Deadline::after(timeout);
    loop {
        let status = kubectl(&[
            "-n",
            namespace,
            "get",
            "daemonset",
            name,
            "-o",
            "jsonpath={.status.desiredNumberScheduled} {.status.numberReady}",
        ]);
        let mut counts = status.split_whitespace().map(str::parse::<u32>);
        if let (Some(Ok(desired)), Some(Ok(ready))) = (counts.next(), counts.next())
            && desired > 0
            && ready == desired
        {
            return;
        }
        if deadline.passed() {
            let pods = kubectl_output(&["-n", namespace, "describe", "pods", "-l", selector], None);
            panic!(
                "daemonset {namespace}/{name} not ready after {timeout:?} (desired, ready: {status:?}):\n{}",
                String::from_utf8_lossy(&pods.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Files on the node the test pods run on: this machine for the local
/// cluster, or the kind node container named by `SIGNET_E2E_KIND_NODE`
/// (reached with `docker exec`), so hostPath volumes work in both.
pub struct NodeFiles {
    kind_node: Option<String>,
}

impl NodeFiles {
    pub fn from_env() -> Self {
        Self {
            kind_node: std::env::var("SIGNET_E2E_KIND_NODE")
                .ok()
                .filter(|n| !n.is_empty()),
        }
    }

    /// Whether the node is this machine.
    pub fn is_local(&self) -> bool {
        self.kind_node.is_none()
    }

    /// Creates `path` (mode 0777, for pods running as any user).
    pub fn create_dir(&self, path: &std::path::Path) {
        match &self.kind_node {
            None => {
                std::fs::create_dir_all(path)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
                    .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            }
            Some(node) => {
                let path = path.display().to_string();
                let status = Command::new("docker")
                    .args(["exec", node, "sh", "-c"])
                    .arg(format!("mkdir -p '{path}' && chmod 0777 '{path}'"))
                    .status()
                    .unwrap_or_else(|e| panic!("docker exec: {e}"));
                assert!(status.success(), "creating {path} on {node}");
            }
        }
    }

    pub fn read(&self, path: &std::path::Path) -> String {
        match &self.kind_node {
            None => std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
            Some(node) => {
                let output = Command::new("docker")
                    .args(["exec", node, "cat"])
                    .arg(path)
                    .output()
                    .unwrap_or_else(|e| panic!("docker exec: {e}"));
                assert!(
                    output.status.success(),
                    "reading {} on {node}",
                    path.display()
                );
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
        }
    }
}

/// A TCP forwarder to the API server that can be frozen: while frozen it
/// keeps every connection open and accepts new ones but passes no bytes,
/// so each call through it hangs as if the server stopped answering (what
/// a partitioned or overloaded control plane looks like to a client).
pub struct FreezableProxy {
    pub port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    /// Forwards `127.0.0.1:<port>` to `upstream` (`host:port`).
    pub fn start(upstream: String) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("binding the proxy: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("proxy address: {e}"))
            .port();
        let frozen = Arc::new(AtomicBool::new(false));
        let flag = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let flag = flag.clone();
                    std::thread::spawn(move || forward(from, to, &flag));
                }
            }
        });
        Self { port, frozen }
    }

    pub fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

fn forward(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    frozen: &std::sync::atomic::AtomicBool,
) {
    use std::io::Read;
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
