//! Containers as users run them: a process inside a REAL Docker container
//! and one inside a REAL Podman container ask the real `signet-agent` (with
//! the Docker / Podman attestor enabled) for their SVIDs through the
//! Workload API socket mounted into the container, and the real
//! `signet-operator` signs what the policy chooses by the container's label
//! and image ID. A container without the label is refused.
//!
//! The workload's client is the agent binary's own `api fetch` (the host's
//! build, run in the container with the host's `/usr` mounted read-only;
//! the image itself holds only a static busybox). Images are made locally
//! with `docker import` / `podman import`; nothing is pulled.
//!
//! Needs root and the engines (`node-agent/tests/setup-docker.sh`,
//! `setup-podman.sh`, both run by `make test-setup`). Without them the tests
//! print SKIPPED and pass, unless `SIGNET_REQUIRE_DOCKER=1` /
//! `SIGNET_REQUIRE_PODMAN=1` is set (as in CI), which makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use signet_e2e::standalone::{Stack, binary};

/// Distinct from the attestor tests' image so both suites can run at once.
const IMAGE: &str = "localhost/signet-e2e-workload:dev";
/// Where the agent's socket appears inside the containers (the default of
/// `SPIFFE_ENDPOINT_SOCKET` for Signet's clients).
const SOCKET_IN_CONTAINER: &str = "/run/signet/agent.sock";

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Docker,
    Podman,
}

impl Engine {
    fn command(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    fn require_var(self) -> &'static str {
        match self {
            Self::Docker => "SIGNET_REQUIRE_DOCKER",
            Self::Podman => "SIGNET_REQUIRE_PODMAN",
        }
    }

    fn run(self, args: &[&str]) -> Result<String, String> {
        let output = Command::new(self.command())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", self.command()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            Err(format!(
                "{} {}: {}",
                self.command(),
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Why this engine cannot be used, if it cannot; builds the image once.
    fn unavailable(self) -> Option<String> {
        static DOCKER: OnceLock<Option<String>> = OnceLock::new();
        static PODMAN: OnceLock<Option<String>> = OnceLock::new();
        let cell = match self {
            Self::Docker => &DOCKER,
            Self::Podman => &PODMAN,
        };
        cell.get_or_init(|| {
            if self == Self::Docker && !Path::new("/var/run/docker.sock").exists() {
                return Some("no Docker engine socket at /var/run/docker.sock".into());
            }
            let version = match self {
                Self::Docker => "{{.Server.Version}}",
                Self::Podman => "{{.Client.Version}}",
            };
            if let Err(e) = self.run(&["version", "--format", version]) {
                return Some(format!("{} does not answer: {e}", self.command()));
            }
            self.build_image().err()
        })
        .clone()
    }

    /// `IMAGE`: a static busybox, and `/lib`, `/lib64` pointing into `/usr`
    /// (merged-usr, as on the host) so the host's dynamically linked client
    /// runs once the host's `/usr` is mounted.
    fn build_image(self) -> Result<(), String> {
        if self.run(&["image", "inspect", IMAGE]).is_ok() {
            return Ok(());
        }
        let busybox = Path::new("/bin/busybox");
        if !busybox.exists() {
            return Err("/bin/busybox is missing (apt-get install busybox-static)".into());
        }
        let rootfs = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = rootfs.path();
        for dir in ["bin", "usr", "run/signet", "out"] {
            std::fs::create_dir_all(root.join(dir)).map_err(|e| e.to_string())?;
        }
        std::fs::copy(busybox, root.join("bin/busybox")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).map_err(|e| e.to_string())?;
        let script = format!(
            "tar -C {} -c . | {} import -c 'ENTRYPOINT [\"/bin/busybox\"]' - {IMAGE}",
            root.display(),
            self.command()
        );
        let status = Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("building {IMAGE} with {} failed", self.command()))
        }
    }

    /// True when the test may run; otherwise reports the skip on the real
    /// stderr, or fails when the engine is required.
    fn available_or_skip(self, test: &str) -> bool {
        let Some(reason) = self.unavailable() else {
            return true;
        };
        let var = self.require_var();
        if std::env::var(var).as_deref() == Ok("1") {
            panic!(
                "{test}: {} is required ({var}=1) but {reason}",
                self.command()
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {reason}; run make test-setup as root, and set {var}=1 to fail instead of skipping"
        );
        false
    }

    /// The image's ID as the attestors report it, `sha256:<hex>` (Docker's
    /// inspect prints that form, Podman's the bare hex).
    fn image_id(self) -> String {
        let id = self
            .run(&["image", "inspect", "-f", "{{.Id}}", IMAGE])
            .unwrap();
        if id.starts_with("sha256:") {
            id
        } else {
            format!("sha256:{id}")
        }
    }

    /// Runs `args` (a shell command line) as the container's only process,
    /// with the agent's socket mounted; `labels` are `key=value`.
    /// `run` arguments up to and including the image: the container
    /// `name`, `labels` (`key=value`), the agent's socket, the client and
    /// the host's `/usr` mounted.
    fn workload_args(self, mode: &str, name: &str, labels: &[&str], socket: &Path) -> Vec<String> {
        let _ = self.run(&["rm", "-f", name]);
        let socket_mount = format!("{}:{SOCKET_IN_CONTAINER}", socket.display());
        let client_mount = format!("{}:/signet-agent:ro", binary("signet-agent").display());
        let mut args: Vec<String> = ["run", mode, "--network", "none", "--name", name]
            .map(String::from)
            .to_vec();
        if self == Self::Podman {
            // Below this sandbox's hard limits (Podman copies the host's
            // otherwise, which runc may not set).
            args.extend(
                [
                    "--ulimit",
                    "nofile=1024:1024",
                    "--ulimit",
                    "nproc=4096:4096",
                ]
                .map(String::from),
            );
        }
        for label in labels {
            args.extend(["--label".to_owned(), (*label).to_owned()]);
        }
        args.extend(
            [
                "-v",
                "/usr:/usr:ro",
                "-v",
                &socket_mount,
                "-v",
                &client_mount,
                "-e",
                &format!("SPIFFE_ENDPOINT_SOCKET=unix://{SOCKET_IN_CONTAINER}"),
                IMAGE,
            ]
            .map(String::from),
        );
        args
    }

    /// Runs `script` (a shell command line) as the container's only
    /// process and waits for it.
    fn run_workload(self, name: &str, labels: &[&str], socket: &Path, script: &str) -> Output {
        let name = format!("signet-e2e-{}-{name}", std::process::id());
        let mut args = self.workload_args("--rm", &name, labels, socket);
        args.extend(["sh", "-c", script].map(String::from));
        self.output(&args)
    }

    /// Starts a container that idles; returns its ID.
    fn start_workload(self, name: &str, labels: &[&str], socket: &Path) -> String {
        let name = format!("signet-e2e-{}-{name}", std::process::id());
        let mut args = self.workload_args("-d", &name, labels, socket);
        args.extend(["sleep", "300"].map(String::from));
        let output = self.output(&args);
        assert!(output.status.success(), "{}", stderr(&output));
        stdout(&output).trim().to_owned()
    }

    /// Runs `script` in the running container `id` (`exec`).
    fn exec_workload(self, id: &str, script: &str) -> Output {
        self.output(&["exec", id, "/bin/busybox", "sh", "-c", script].map(String::from))
    }

    fn output(self, args: &[String]) -> Output {
        Command::new(self.command())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.command()))
    }
}

/// A `podman system service` on a socket of its own (socket activation, as
/// systemd would start it), stopped on drop: the Podman attestor's API.
struct PodmanService {
    dir: tempfile::TempDir,
    child: Child,
}

impl PodmanService {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("podman.sock")).unwrap();
        // The listening socket becomes fd 3 of the service.
        let child = Command::new("sh")
            .args([
                "-c",
                "exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec podman system service --time=0",
            ])
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { dir, child }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One identity for containers labelled `app=web` made from `image_id`,
/// `spiffe://example.org/<engine>/<app label>`, granted to every agent.
/// Docker's rule is a condition list; Podman's the `expression:` form.
fn container_policy(engine: Engine, image_id: &str) -> String {
    let rule = match engine {
        Engine::Docker => format!(
            "- conditions:\n\
             \x20         - {{attribute: workload.docker.labels.app, eq: web}}\n\
             \x20         - {{attribute: workload.docker.image_id, eq: \"{image_id}\"}}"
        ),
        Engine::Podman => format!(
            "- expression: 'workload.podman.labels.app == \"web\" && workload.podman.image_id == \"{image_id}\" && has(workload.podman.container_id)'"
        ),
    };
    let engine = engine.command();
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: {engine}-web, labels: {{suite: e2e}}}}
spec:
  rules:
    allow:
      {rule}
  spiffe:
    id: "/{engine}/{{{{ workload.{engine}.labels.app }}}}"
    hint: {engine}-web
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {{name: e2e-agents}}
spec:
  subjects: [{{kind: Agent, name: "*"}}]
  allow: {{workloadIdentityLabels: {{suite: [e2e]}}}}
"#
    )
}

/// The container's script: the X.509 context as JSON; the JWT-SVID for
/// `payments`; and that token validated through the Workload API by the
/// same workload (validation, like fetching, is for attested workloads).
const FETCH_BOTH: &str = "set -e
/signet-agent api fetch x509 --output json
echo ---
token=$(/signet-agent api fetch jwt --audience payments | sed -n 2p | tr -d '[:space:]')
echo \"$token\"
echo ---
/signet-agent api validate jwt --audience payments --svid \"$token\" --output json";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn a_labelled_container_gets_its_svids(engine: Engine, test: &str) {
    if !engine.available_or_skip(test) {
        return;
    }
    let image_id = engine.image_id();
    let mut stack = Stack::operator_only(&container_policy(engine, &image_id));
    let _service;
    match engine {
        Engine::Docker => stack.set_attestors("{unix: {}, docker: {enabled: true}}"),
        Engine::Podman => {
            let service = PodmanService::start();
            stack.set_attestors(&format!(
                "{{unix: {{}}, podman: {{enabled: true, addr: \"unix://{}\"}}}}",
                service.socket().display()
            ));
            _service = service;
        }
    }
    stack.start_agent();
    let socket = stack.socket_path();
    let name = engine.command();
    let expected_id = format!("spiffe://example.org/{name}/web");

    let fetched = engine.run_workload("web", &["app=web"], &socket, FETCH_BOTH);
    assert!(
        fetched.status.success(),
        "the labelled {name} container got no SVIDs:\nstdout: {}\nstderr: {}\nagent log:\n{}",
        stdout(&fetched),
        stderr(&fetched),
        stack.agent.as_ref().unwrap().log()
    );
    let out = stdout(&fetched);
    let parts: Vec<&str> = out.split("\n---\n").map(str::trim).collect();
    let [x509, token, validated] = parts[..] else {
        panic!("three answers expected: {out}");
    };
    let x509: serde_json::Value = serde_json::from_str(x509).unwrap();
    let svids = x509["svids"].as_array().unwrap();
    assert_eq!(svids.len(), 1, "{x509}");
    assert_eq!(svids[0]["spiffe_id"], expected_id.as_str());
    assert_eq!(svids[0]["hint"], format!("{name}-web").as_str());
    assert!(svids[0]["bundle_certificates"].as_u64().unwrap() >= 1);

    // A compact JWS whose validation names the same ID and audience.
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let validated: serde_json::Value = serde_json::from_str(validated).unwrap();
    assert_eq!(validated["spiffe_id"], expected_id.as_str());
    assert_eq!(validated["claims"]["sub"], expected_id.as_str());
    assert_eq!(validated["claims"]["aud"], "payments");

    // The audit trail names the container's attributes that chose it.
    let events = stack.audit_events();
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "svid.issued" && e["spiffe_id"] == expected_id.as_str())
        .collect();
    assert!(
        issued.iter().any(|e| e["credential"] == "x509_svid"),
        "no X.509 issuance audited: {events:?}"
    );
    assert!(
        issued.iter().any(|e| e["credential"] == "jwt_svid"),
        "no JWT issuance audited: {events:?}"
    );
    let workload = &issued[0]["workload"];
    assert_eq!(workload[format!("workload.{name}.labels.app")], "web");
    assert_eq!(
        workload[format!("workload.{name}.image_id")],
        image_id.as_str()
    );
    assert!(
        workload[format!("workload.{name}.container_id")]
            .as_str()
            .is_some_and(|id| id.len() == 64),
        "{workload}"
    );

    // The same image without the label: no identity, and no issuance.
    let before = stack.audit_events().len();
    let refused = engine.run_workload("unlabelled", &[], &socket, FETCH_BOTH);
    assert!(
        !refused.status.success(),
        "an unlabelled {name} container got an SVID: {}",
        stdout(&refused)
    );
    assert!(
        stderr(&refused).contains("PermissionDenied") || stderr(&refused).contains("no identity"),
        "{}",
        stderr(&refused)
    );
    // A wrong label value is no better.
    let wrong = engine.run_workload("api", &["app=api"], &socket, FETCH_BOTH);
    assert!(
        !wrong.status.success(),
        "app=api got an SVID: {}",
        stdout(&wrong)
    );
    let after: Vec<_> = stack.audit_events().into_iter().skip(before).collect();
    assert!(
        after.iter().all(|e| e["event"] != "svid.issued"),
        "refused containers were issued SVIDs: {after:?}"
    );
}

#[test]
fn a_labelled_docker_container_gets_svids_and_an_unlabelled_one_is_refused() {
    a_labelled_container_gets_its_svids(
        Engine::Docker,
        "a_labelled_docker_container_gets_svids_and_an_unlabelled_one_is_refused",
    );
}

#[test]
fn a_labelled_podman_container_gets_svids_and_an_unlabelled_one_is_refused() {
    a_labelled_container_gets_its_svids(
        Engine::Podman,
        "a_labelled_podman_container_gets_svids_and_an_unlabelled_one_is_refused",
    );
}

/// A v1 hierarchy this machine has; the forger needs only one line of its
/// `/proc/<pid>/cgroup` to name the victim.
const FORGE_HIERARCHY: &str = "/sys/fs/cgroup/pids";

/// A cgroup made by the test to look like the victim's Docker container
/// (`<base>/docker/<victim id>`), removed on drop.
struct ForgedCgroup {
    base: PathBuf,
    leaf: PathBuf,
}

impl ForgedCgroup {
    /// `delegated_to`: chown the subtree to this uid, as `systemd-run
    /// --user` or a writable cgroupfs would hand it to an unprivileged user.
    fn new(victim_id: &str, delegated_to: Option<u32>) -> Self {
        let base = Path::new(FORGE_HIERARCHY).join(format!("signet-forge-{}", std::process::id()));
        let leaf = base.join("docker").join(victim_id);
        std::fs::create_dir_all(&leaf).unwrap_or_else(|e| {
            panic!(
                "creating {} (needs root and cgroup v1 pids): {e}",
                leaf.display()
            )
        });
        if let Some(uid) = delegated_to {
            for dir in [&base, &base.join("docker"), &leaf] {
                std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
                std::os::unix::fs::chown(dir.join("cgroup.procs"), Some(uid), Some(uid)).unwrap();
            }
        }
        Self { base, leaf }
    }

    /// Runs the client from inside the forged cgroup, as `uid`.
    fn run_client(&self, uid: u32, socket: &Path) -> Output {
        let script = format!(
            "echo $$ > {procs} && exec setpriv --reuid={uid} --regid={uid} --clear-groups {client} api fetch x509 --output json",
            procs = self.leaf.join("cgroup.procs").display(),
            client = binary("signet-agent").display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .env(
                "SPIFFE_ENDPOINT_SOCKET",
                format!("unix://{}", socket.display()),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for ForgedCgroup {
    fn drop(&mut self) {
        // The client has exited, so the cgroups are empty and removable.
        let _ = std::fs::remove_dir(&self.leaf);
        let _ = std::fs::remove_dir(self.base.join("docker"));
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Attack: a host process places itself in a self-made cgroup whose path
/// names a running, labelled Docker container, and asks for that
/// container's SVID. Both the root-owned variant (refused because the
/// caller does not share the container's PID and mount namespaces) and the
/// delegated, user-owned variant (refused for the cgroup's owner too) get
/// PermissionDenied, and nothing is issued; the real container still gets
/// its SVID afterwards.
#[test]
fn a_process_in_a_forged_cgroup_does_not_get_the_containers_svid() {
    let test = "a_process_in_a_forged_cgroup_does_not_get_the_containers_svid";
    let engine = Engine::Docker;
    if !engine.available_or_skip(test) {
        return;
    }
    let image_id = engine.image_id();
    let mut stack = Stack::operator_only(&container_policy(engine, &image_id));
    stack.set_attestors("{unix: {}, docker: {enabled: true}}");
    stack.start_agent();
    let socket = stack.socket_path();

    // The victim: a labelled container that keeps running.
    let victim = engine.start_workload("victim", &["app=web"], &socket);
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = Engine::Docker.run(&["rm", "-f", "-t", "0", &self.0]);
        }
    }
    let _victim = Remove(victim.clone());

    for (variant, owner, why) in [
        (
            "root-owned",
            None,
            "is not in the PID namespace of container",
        ),
        (
            "delegated to nobody",
            Some(65534),
            "is owned by uid 65534, not root",
        ),
    ] {
        let forged = ForgedCgroup::new(&victim, owner);
        let uid = owner.unwrap_or(0);
        let before = stack.audit_events().len();
        let attempt = forged.run_client(uid, &socket);
        assert!(
            !attempt.status.success(),
            "{variant}: the forger got the container's SVID: {}",
            stdout(&attempt)
        );
        assert!(
            stderr(&attempt).contains("PermissionDenied"),
            "{variant}: {}",
            stderr(&attempt)
        );
        let after: Vec<_> = stack.audit_events().into_iter().skip(before).collect();
        assert!(
            after.iter().all(|e| e["event"] != "svid.issued"),
            "{variant}: issued to the forger: {after:?}"
        );
        let log = stack.agent.as_ref().unwrap().log();
        assert!(
            log.contains(why),
            "{variant}: the agent's log does not say why ({why}): {log}"
        );
        // The agent refused on its own, so its audit log says why.
        let audited = stack.agent_audit_events().into_iter().any(|e| {
            e["event"] == "svid.denied"
                && e["reason"] == "evidence_mismatch"
                && e["workload"]["workload.unix.uid"].as_str() == Some(uid.to_string().as_str())
                && e["message"].as_str().is_some_and(|m| m.contains(why))
        });
        assert!(
            audited,
            "{variant}: no evidence_mismatch event in the agent's audit log: {:?}",
            stack.agent_audit_events()
        );
    }

    // The real container is still served, to a process `exec`ed into it
    // (it shares the first process's namespaces, as it should).
    let real = engine.exec_workload(&victim, FETCH_BOTH);
    assert!(real.status.success(), "{}", stderr(&real));
    assert!(
        stdout(&real).contains("spiffe://example.org/docker/web"),
        "{}",
        stdout(&real)
    );
}
