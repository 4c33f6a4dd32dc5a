//! signet-csi registers itself with a real kubelet, with no
//! node-driver-registrar: the kubelet's plugin watcher finds the socket in
//! `plugins_registry`, and the node's CSINode object lists the driver; when
//! the driver stops, the kubelet drops it again.
//!
//! Needs the e2e cluster (`make cluster-up`, then `. /var/lib/signet-e2e/env`)
//! and `SIGNET_E2E_CLUSTER=1`; otherwise it says why and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use signet_e2e::deadline::Deadline;

fn csinode_drivers(node: &str) -> String {
    let output = Command::new("kubectl")
        .args([
            "get",
            "csinode",
            node,
            "-o",
            "jsonpath={.spec.drivers[*].name}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kills the driver if the test fails half-way.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    // The kubelet's plugin watcher reacts to inotify events; the CSINode
    // update goes through the API server. Polled: nothing here can await it.
    let deadline = Deadline::after(Duration::from_secs(90));
    while !ready() {
        assert!(!deadline.passed(), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[allow(clippy::print_stderr)]
fn the_kubelet_registers_and_drops_the_driver() {
    if std::env::var("SIGNET_E2E_CLUSTER").as_deref() != Ok("1")
        || std::env::var_os("KUBECONFIG").is_none()
    {
        eprintln!("SKIPPED: needs the e2e cluster (KUBECONFIG) and SIGNET_E2E_CLUSTER=1");
        return;
    }
    // A fresh name per run: the kubelet backs off per socket path.
    let driver_name = format!("reg{}.csi.signet.dev", std::process::id());
    let driver_name = driver_name.as_str();
    let node = std::env::var("SIGNET_E2E_NODE_NAME").unwrap_or_else(|_| "vm".into());
    let kubelet_dir = PathBuf::from(
        std::env::var("SIGNET_E2E_KUBELET_DIR").unwrap_or_else(|_| "/var/lib/kubelet".into()),
    );
    let socket_dir = tempfile::tempdir().unwrap();
    let endpoint = kubelet_dir
        .join("plugins")
        .join(driver_name)
        .join("csi.sock");
    std::fs::create_dir_all(endpoint.parent().unwrap()).unwrap();

    let mut driver = Running(
        Command::new(env!("CARGO_BIN_EXE_signet-csi"))
            .arg("--endpoint")
            .arg(format!("unix://{}", endpoint.display()))
            .args(["--node-id", &node, "--driver-name", driver_name])
            .arg("--kubelet-dir")
            .arg(&kubelet_dir)
            .arg("--socket-dir")
            .arg(socket_dir.path())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    wait_for("the CSINode to list the driver", || {
        csinode_drivers(&node).contains(driver_name)
    });

    // SIGTERM: the driver removes its sockets and the kubelet deregisters it.
    let pid = rustix::process::Pid::from_raw(driver.0.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(driver.0.wait().unwrap().success());
    let registration = kubelet_dir
        .join("plugins_registry")
        .join(format!("{driver_name}-reg.sock"));
    assert!(!registration.exists());
    wait_for("the CSINode to drop the driver", || {
        !csinode_drivers(&node).contains(driver_name)
    });
    let _ = std::fs::remove_dir_all(endpoint.parent().unwrap());
}
