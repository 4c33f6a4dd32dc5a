//! A real standalone Signet stack for tests: the `signet-operator` and
//! `signet-agent` binaries as separate processes in a temporary directory,
//! talking over real TLS and a real unix socket, exactly as `make demo`
//! runs them.
//!
//! The binaries come from the workspace's target directory; `make test`
//! builds them first (`cargo build --bins`).

use crate::cluster::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::deadline::Deadline;

/// How long a process gets to produce its first file or socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub const TRUST_DOMAIN: &str = "example.org";

/// Path of a workspace binary: next to the running test's (or bench's)
/// `deps` directory first, then in the `release` and `debug` siblings, so
/// `cargo bench` (target/release) finds binaries from `cargo build --bins`
/// (target/debug) and the other way round.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut candidates = vec![dir.join(name)];
    if let Some(target) = dir.parent() {
        for profile in ["release", "debug"] {
            let path = target.join(profile).join(name);
            if !candidates.contains(&path) {
                candidates.push(path);
            }
        }
    }
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => path.clone(),
        None => panic!(
            "{name} is missing (looked for {candidates:?}): run `cargo build --bins` \
             (make test does) before these tests"
        ),
    }
}

/// Waits for `ready` to hold, polling a process's side effect (a file, a
/// socket) that no event announces across process boundaries.
pub fn wait_until(what: &str, timeout: Duration, ready: impl FnMut() -> bool) {
    wait_until_every(what, timeout, Duration::from_millis(20), ready)
}

/// [`wait_until`] for checks too costly to run every 20 ms (kubectl).
pub fn wait_until_every(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Deadline::after(timeout);
    while !ready() {
        assert!(!deadline.passed(), "timed out waiting for {what}");
        std::thread::sleep(interval);
    }
}

/// A running process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its stderr appended to `log`.
    pub fn spawn(name: &'static str, mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        command.stdout(Stdio::null()).stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and with what).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: a crash, with no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after five seconds.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap_or(rustix::process::Pid::INIT),
                rustix::process::Signal::TERM,
            );
        }
        let deadline = Deadline::after(Duration::from_secs(5));
        while self.exited().is_none() && !deadline.passed() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    #[allow(clippy::print_stderr)] // a failing test's only way to show the log
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// `GET path` on 127.0.0.1:`port` over plain HTTP/1.1; the whole response.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    if stream.write_all(request.as_bytes()).is_ok() {
        let _ = stream.read_to_string(&mut response);
    }
    response
}

/// An operator and (optionally) an agent, with their directories.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub operator: Option<Process>,
    pub agent: Option<Process>,
    /// Extra lines appended to the agent's config file.
    agent_extra: String,
    /// The agent's `attestors:` value (flow YAML); unix only by default.
    attestors: String,
    /// The operator's `--config` file contents (none when empty); the
    /// flags `start_operator` passes still override it.
    operator_config: String,
    /// A command (and its arguments) the agent is started through, e.g.
    /// `setpriv --bounding-set=-sys_ptrace`; none when empty.
    agent_wrapper: Vec<String>,
    /// The trust domain of the operator and agent ([`TRUST_DOMAIN`] unless
    /// made with [`Stack::operator_only_in`]).
    pub trust_domain: String,
}

impl Stack {
    /// Starts an operator with `policy` (multi-document YAML) and an agent
    /// joined to it, and waits for the agent's socket.
    pub fn start(policy: &str) -> Self {
        let mut stack = Self::operator_only(policy);
        stack.start_agent();
        stack
    }

    /// Starts only the operator; a join token `agent` is configured.
    pub fn operator_only(policy: &str) -> Self {
        Self::operator_only_with_config(policy, |_| String::new())
    }

    /// Like [`Stack::operator_only`], with an operator configuration file
    /// (YAML) returned by `config`, which runs once the stack's directory
    /// and its `join-token` file exist (so it can generate more tokens with
    /// [`Stack::operator_cli`] and refer to files under [`Stack::path`]).
    /// Command-line flags (trust domain, policy and state dirs, listen
    /// address, audit log, the `agent` token) still override the file;
    /// keys they do not set, like `server_names` or reusable
    /// `join_tokens`, come from it. Restarts keep using it.
    pub fn operator_only_with_config(policy: &str, config: impl FnOnce(&Self) -> String) -> Self {
        Self::operator_only_in(TRUST_DOMAIN, policy, config)
    }

    /// Like [`Stack::operator_only_with_config`], in `trust_domain`.
    pub fn operator_only_in(
        trust_domain: &str,
        policy: &str,
        config: impl FnOnce(&Self) -> String,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("signet-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        // Other uids (tests run clients as nobody) must reach the socket.
        set_mode(dir.path(), 0o755);
        std::fs::create_dir_all(dir.path().join("policy"))
            .unwrap_or_else(|e| panic!("policy dir: {e}"));
        let mut stack = Self {
            dir,
            port: free_port(),
            operator: None,
            agent: None,
            agent_extra: String::new(),
            attestors: "{unix: {}}".to_owned(),
            operator_config: String::new(),
            agent_wrapper: Vec::new(),
            trust_domain: trust_domain.to_owned(),
        };
        stack.write_policy("policy.yaml", policy);
        let token = stack.operator_cli(
            &["token", "generate", "--name", "agent", "--out"],
            &[stack.path("join-token")],
        );
        assert!(token.status.success(), "token generate: {token:?}");
        stack.operator_config = config(&stack);
        stack.start_operator();
        stack
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// `unix:///...` for SPIFFE_ENDPOINT_SOCKET.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    pub fn bundle_pem_path(&self) -> PathBuf {
        self.path("operator/bundle.pem")
    }

    /// Writes (or replaces, atomically) a policy file.
    pub fn write_policy(&self, file: &str, yaml: &str) {
        let staging = self.path(&format!(".{file}.tmp"));
        std::fs::write(&staging, yaml).unwrap_or_else(|e| panic!("writing policy: {e}"));
        std::fs::rename(&staging, self.path("policy").join(file))
            .unwrap_or_else(|e| panic!("moving policy in place: {e}"));
    }

    pub fn start_operator(&mut self) {
        let mut command = Command::new(binary("signet-operator"));
        command
            .arg("standalone")
            .args(["--trust-domain", &self.trust_domain])
            .arg("--policy-dir")
            .arg(self.path("policy"))
            .arg("--state-dir")
            .arg(self.path("operator"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--audit-log")
            .arg(self.path("audit.log"))
            .arg("--join-token-file")
            .arg(format!("agent={}", self.path("join-token").display()))
            .env("RUST_LOG", "info");
        if !self.operator_config.is_empty() {
            let path = self.path("operator.yaml");
            std::fs::write(&path, &self.operator_config)
                .unwrap_or_else(|e| panic!("operator config: {e}"));
            command.arg("--config").arg(path);
        }
        let log = self.path("operator.log");
        let mut process = Process::spawn("signet-operator", command, log);
        let port = self.port;
        let bundle = self.bundle_pem_path();
        // The listener is bound before the CA is loaded; the bundle file is
        // written once it is, and agents need it to start.
        wait_until("the operator to listen", START_TIMEOUT, || {
            if let Some(status) = process.exited() {
                panic!("signet-operator exited with {status}:\n{}", process.log());
            }
            bundle.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        self.operator = Some(process);
    }

    /// Replaces the operator's configuration file for its next start.
    pub fn set_operator_config(&mut self, yaml: &str) {
        self.operator_config = yaml.to_owned();
    }

    pub fn stop_operator(&mut self) {
        if let Some(mut process) = self.operator.take() {
            process.stop();
        }
    }

    /// Extra agent configuration (YAML lines), for the next agent start.
    pub fn set_agent_extra(&mut self, yaml: &str) {
        self.agent_extra = yaml.to_owned();
    }

    /// The agent's `attestors:` configuration (one-line flow YAML, e.g.
    /// `{unix: {}, docker: {enabled: true}}`), for the next agent start.
    pub fn set_attestors(&mut self, flow_yaml: &str) {
        self.attestors = flow_yaml.to_owned();
    }

    /// Starts the agent through `wrapper` (a command that execs its
    /// arguments, like `setpriv ...`) from the next start; empty for none.
    pub fn set_agent_wrapper(&mut self, wrapper: &[&str]) {
        self.agent_wrapper = wrapper.iter().map(|arg| (*arg).to_owned()).collect();
    }

    pub fn agent_config(&self) -> String {
        // The delegated API socket stays in the stack's directory (the
        // default, /run/signet-admin, is shared by every agent on the host)
        // unless the extra configuration places it.
        let admin = if self.agent_extra.contains("admin_listen:") {
            String::new()
        } else {
            format!(
                "admin_listen: unix://{}\n",
                self.path("admin/admin.sock").display()
            )
        };
        format!(
            "trust_domain: {trust_domain}\n\
             issuer:\n  address: 127.0.0.1:{port}\n  trust_bundle_path: {bundle}\n  join_token_path: {token}\n\
             state_dir: {state}\n\
             listen: unix://{socket}\n\
             socket_mode: 0666\n\
             attestors: {attestors}\n\
             first_svid_timeout: 20s\n\
             {admin}{extra}",
            trust_domain = self.trust_domain,
            port = self.port,
            bundle = self.bundle_pem_path().display(),
            token = self.path("join-token").display(),
            state = self.path("agent").display(),
            socket = self.socket_path().display(),
            attestors = self.attestors,
            extra = self.agent_extra,
        )
    }

    /// Starts the agent and waits for its Workload API socket.
    pub fn start_agent(&mut self) {
        let config = self.path("agent.yaml");
        std::fs::write(&config, self.agent_config())
            .unwrap_or_else(|e| panic!("agent config: {e}"));
        let mut command = match self.agent_wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("signet-agent"));
                command
            }
            None => Command::new(binary("signet-agent")),
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info");
        let mut process = Process::spawn("signet-agent", command, self.path("agent.log"));
        let socket = self.socket_path();
        wait_until("the agent's socket", START_TIMEOUT, || {
            if let Some(status) = process.exited() {
                panic!("signet-agent exited with {status}:\n{}", process.log());
            }
            socket.exists()
        });
        self.agent = Some(process);
    }

    pub fn stop_agent(&mut self) {
        if let Some(mut process) = self.agent.take() {
            process.stop();
        }
    }

    /// Runs `signet-operator ARGS PATHS`.
    pub fn operator_cli(&self, args: &[&str], paths: &[PathBuf]) -> Output {
        Command::new(binary("signet-operator"))
            .args(args)
            .args(paths)
            .output()
            .unwrap_or_else(|e| panic!("running signet-operator: {e}"))
    }

    /// Runs `signet-agent api ARGS` against this stack's socket.
    pub fn agent_api(&self, args: &[&str]) -> Output {
        Command::new(binary("signet-agent"))
            .arg("api")
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .output()
            .unwrap_or_else(|e| panic!("running signet-agent api: {e}"))
    }

    /// `signet-agent api fetch x509 --output json` run as `uid` (and its
    /// gid) through `setpriv`, so the agent attests another user (root).
    pub fn fetch_x509_as(&self, uid: u32) -> Output {
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(binary("signet-agent"))
            .args([
                "api",
                "fetch",
                "x509",
                "--output",
                "json",
                "--timeout",
                "10s",
            ])
            .env("SPIFFE_ENDPOINT_SOCKET", self.endpoint())
            .output()
            .unwrap_or_else(|e| panic!("running setpriv signet-agent api: {e}"))
    }

    /// Generates a reusable join token `name` (in the file `<name>-token`)
    /// and returns the operator configuration that accepts it, for
    /// [`Stack::operator_only_with_config`].
    pub fn reusable_token_config(&self, name: &str) -> String {
        let file = self.path(&format!("{name}-token"));
        let token = self.operator_cli(
            &["token", "generate", "--name", name, "--reusable", "--out"],
            std::slice::from_ref(&file),
        );
        assert!(token.status.success(), "token generate: {token:?}");
        format!(
            "join_tokens:\n  - {{name: {name}, token_file: {}, reusable: true}}\n",
            file.display()
        )
    }

    /// The agent's own audit log (refusals it made without the issuer).
    pub fn agent_audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("agent/audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The audit log's events, parsed.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// A policy giving every process of `uid` the identity
/// `spiffe://example.org/<name>/uid/<uid>` (hint `name`), granted to every
/// agent.
pub fn uid_policy(name: &str, uid: u32) -> String {
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: {name}, labels: {{suite: e2e}}}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "{uid}"}}]
  spiffe:
    id: "/{name}/uid/{{{{ workload.unix.uid }}}}"
    hint: {name}
    x509:
      dnsSans: ["{name}.e2e.internal"]
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

/// A policy giving every uid `/svc/uid/<uid>` (identity `svc`), federating
/// with `federates_with`, for any agent.
pub fn any_uid_policy(federates_with: &[&str]) -> String {
    let federation = if federates_with.is_empty() {
        String::new()
    } else {
        format!("\n  federatesWith: [{}]", federates_with.join(", "))
    };
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: svc, labels: {{suite: e2e}}}}
spec:
  spiffe: {{id: "/svc/uid/{{{{ workload.unix.uid }}}}"}}{federation}
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

/// The value of one field (`VmRSS`, `CapEff`, ...) of `/proc/<pid>/status`.
pub fn proc_status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// CPU time (user + system) process `pid` has spent so far; `None` for
/// this process.
pub fn proc_cpu_time(pid: Option<u32>) -> std::time::Duration {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    // utime and stime are fields 14 and 15, in USER_HZ ticks (100 per
    // second in Linux's user ABI); the command name before them may hold
    // spaces, so count from the closing parenthesis.
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    std::time::Duration::from_millis(ticks * 10)
}

/// The current process's uid.
pub fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Whether the test can run as root. Without root it fails when
/// `SIGNET_REQUIRE_ROOT=1` (CI) and otherwise says so and lets the test
/// return.
#[allow(clippy::print_stderr)]
pub fn have_root(test: &str) -> bool {
    if current_uid() == 0 {
        return true;
    }
    assert!(
        std::env::var("SIGNET_REQUIRE_ROOT").as_deref() != Ok("1"),
        "{test} needs root (SIGNET_REQUIRE_ROOT=1)"
    );
    eprintln!("skipped {test}: needs root");
    false
}
