//! A real SPIRE deployment for tests and benchmarks: `spire-server` and
//! `spire-agent` (v1.13.3, built from SPIRE's Go module by
//! `e2e/tools/install-interop.sh` into the tools directory, see
//! [`crate::interop::tools_dir`]) as separate processes in a temporary
//! directory.
//!
//! The server keeps its data in SQLite and its keys in memory and attests
//! agents with join tokens; the agent attests workloads with SPIRE's `unix`
//! workload attestor (`unix:uid:<uid>` selectors). Federation (a bundle
//! endpoint of its own, and one peer trust domain fetched over
//! `https_spiffe`) is optional: see [`SpireConfig::federating_with`].
//!
//! ```no_run
//! use signet_e2e::spire::{Spire, SpireConfig};
//! let Some((server, agent)) = Spire::installed() else { return };
//! let mut spire = Spire::start(server, agent, SpireConfig::new("spire.example"));
//! spire.create_entry("/web", 1000, &[]);
//! spire.start_agent();
//! spire.wait_for_agent();
//! // a workload of uid 1000 on spire.agent_endpoint() gets spiffe://spire.example/web
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::cluster::free_port;
use crate::interop::tool;
use crate::standalone::{Process, wait_until_every};

/// The trust domain the federation test gives SPIRE.
pub const DEFAULT_TRUST_DOMAIN: &str = "spire.example";

/// A peer trust domain whose bundle the SPIRE server fetches from a bundle
/// endpoint (profile `https_spiffe`); the server then also serves its own
/// bundle endpoint on 127.0.0.1 ([`Spire::bundle_port`]).
#[derive(Clone, Debug)]
pub struct SpireFederation {
    /// The peer's trust domain name, e.g. `signet.example`.
    pub trust_domain: String,
    /// The peer's bundle endpoint, e.g. `https://127.0.0.1:8443/`.
    pub bundle_endpoint_url: String,
    /// The SPIFFE ID the peer's endpoint presents.
    pub endpoint_spiffe_id: String,
}

/// How to run a [`Spire`] deployment.
#[derive(Clone, Debug)]
pub struct SpireConfig {
    /// SPIRE's own trust domain.
    pub trust_domain: String,
    /// `log_level` of the server and the agent (`DEBUG` by default, which
    /// is what a failing test wants in the logs; benchmarks use `INFO`).
    pub log_level: String,
    /// Federation with one peer, if any.
    pub federation: Option<SpireFederation>,
}

impl SpireConfig {
    /// A deployment of `trust_domain`, without federation, logging at DEBUG.
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            log_level: "DEBUG".to_owned(),
            federation: None,
        }
    }

    /// Federates with `peer` (and serves a bundle endpoint of its own).
    pub fn federating_with(mut self, peer: SpireFederation) -> Self {
        self.federation = Some(peer);
        self
    }

    /// The server's and agent's `log_level`.
    pub fn log_level(mut self, level: &str) -> Self {
        level.clone_into(&mut self.log_level);
        self
    }
}

/// The output's stdout, after asserting that the command succeeded (the
/// failure message shows both streams).
pub fn stdout_of(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A SPIRE server and (once [`Spire::start_agent`] ran) one agent attested
/// with a join token. Both processes are stopped when it is dropped.
pub struct Spire {
    dir: tempfile::TempDir,
    server_bin: PathBuf,
    agent_bin: PathBuf,
    config: SpireConfig,
    server_port: u16,
    bundle_port: Option<u16>,
    /// The agent's join token, generated on first need.
    token: Option<String>,
    server: Process,
    agent: Option<Process>,
}

impl Spire {
    /// The installed `spire-server` and `spire-agent`, or `None` (the
    /// caller skips; with `SIGNET_REQUIRE_INTEROP=1` a missing tool fails
    /// instead, see [`tool`]).
    pub fn installed() -> Option<(PathBuf, PathBuf)> {
        Some((tool("bin/spire-server")?, tool("bin/spire-agent")?))
    }

    /// Starts the server and waits until it is healthy.
    pub fn start(server_bin: PathBuf, agent_bin: PathBuf, config: SpireConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("spire-e2e-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        // Workloads of other uids (benchmarks) must reach the agent's
        // socket, which SPIRE itself makes world-writable.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        }
        let server_port = free_port();
        let bundle_port = config.federation.as_ref().map(|_| free_port());
        let federation = match (&config.federation, bundle_port) {
            (Some(peer), Some(port)) => format!(
                r#"
  federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {port}
    }}
    federates_with "{td}" {{
      bundle_endpoint_url = "{url}"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "{id}"
      }}
    }}
  }}"#,
                td = peer.trust_domain,
                url = peer.bundle_endpoint_url,
                id = peer.endpoint_spiffe_id,
            ),
            _ => String::new(),
        };
        let server_config = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{server_port}"
  socket_path = "{dir}/server.sock"
  trust_domain = "{td}"
  data_dir = "{dir}/server-data"
  log_level = "{level}"{federation}
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{dir}/server-data/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
"#,
            dir = dir.path().display(),
            td = config.trust_domain,
            level = config.log_level,
        );
        std::fs::write(dir.path().join("server.conf"), server_config)
            .unwrap_or_else(|e| panic!("writing server.conf: {e}"));
        let mut command = Command::new(&server_bin);
        command
            .args(["run", "-config"])
            .arg(dir.path().join("server.conf"));
        let server = Process::spawn("spire-server", command, dir.path().join("server.log"));
        let spire = Self {
            dir,
            server_bin,
            agent_bin,
            config,
            server_port,
            bundle_port,
            token: None,
            server,
            agent: None,
        };
        wait_until_every(
            "spire-server to be healthy",
            Duration::from_secs(90),
            Duration::from_millis(500),
            || spire.server(&["healthcheck"]).status.success(),
        );
        spire
    }

    /// SPIRE's trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// The port of the server's own bundle endpoint (with federation only).
    pub fn bundle_port(&self) -> Option<u16> {
        self.bundle_port
    }

    /// A file in the deployment's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `spire-server SUBCOMMAND... -socketPath <server socket>`.
    pub fn server(&self, words: &[&str]) -> Output {
        self.server_with(words, &[])
    }

    /// `spire-server SUBCOMMAND... -socketPath <server socket> ARGS`.
    pub fn server_with(&self, words: &[&str], args: &[&str]) -> Output {
        Command::new(&self.server_bin)
            .args(words)
            .arg("-socketPath")
            .arg(self.path("server.sock"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running spire-server: {e}"))
    }

    /// The agent's Workload API socket.
    pub fn agent_socket_path(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// `unix:///...` for the agent's Workload API.
    pub fn agent_endpoint(&self) -> String {
        format!("unix://{}", self.agent_socket_path().display())
    }

    /// The running server's process ID.
    pub fn server_pid(&self) -> u32 {
        self.server.pid()
    }

    /// The running agent's process ID.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Process::pid)
    }

    /// The agent's join token (generated by the server on first use).
    fn token(&mut self) -> String {
        if let Some(token) = &self.token {
            return token.clone();
        }
        let output = stdout_of(
            "spire-server token generate",
            &self.server(&["token", "generate"]),
        );
        let token = output
            .lines()
            .find_map(|line| line.strip_prefix("Token: "))
            .unwrap_or_else(|| panic!("token generate printed {output:?}"))
            .to_owned();
        self.token = Some(token.clone());
        token
    }

    /// The SPIFFE ID the agent attests as (join token attestation), the
    /// parent of the workload entries.
    pub fn agent_id(&mut self) -> String {
        let token = self.token();
        format!(
            "spiffe://{}/spire/agent/join_token/{token}",
            self.config.trust_domain
        )
    }

    /// The full SPIFFE ID of `path` in SPIRE's trust domain.
    pub fn spiffe_id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.config.trust_domain)
    }

    /// Registers the workloads of `uid` on the agent as `path` (e.g.
    /// `/web`), federating with the trust domains `federates_with`
    /// (`spire-server entry create`).
    pub fn create_entry(&mut self, path: &str, uid: u32, federates_with: &[&str]) {
        let parent = self.agent_id();
        let spiffe_id = self.spiffe_id(path);
        let selector = format!("unix:uid:{uid}");
        let mut args = vec![
            "-parentID",
            &parent,
            "-spiffeID",
            &spiffe_id,
            "-selector",
            &selector,
        ];
        let federates_with: Vec<String> = federates_with
            .iter()
            .map(|td| format!("spiffe://{td}"))
            .collect();
        for td in &federates_with {
            args.extend(["-federatesWith", td]);
        }
        stdout_of(
            "spire-server entry create",
            &self.server_with(&["entry", "create"], &args),
        );
    }

    /// Registers many workloads at once (`spire-server entry create -data`):
    /// each `(path, uid)` on the agent, selector `unix:uid:<uid>`.
    pub fn create_entries(&mut self, entries: &[(String, u32)]) {
        let parent = self.agent_id();
        let entries: Vec<serde_json::Value> = entries
            .iter()
            .map(|(path, uid)| {
                serde_json::json!({
                    "parent_id": parent,
                    "spiffe_id": self.spiffe_id(path),
                    "selectors": [{"type": "unix", "value": format!("uid:{uid}")}],
                })
            })
            .collect();
        let file = self.path("entries.json");
        std::fs::write(&file, serde_json::json!({ "entries": entries }).to_string())
            .unwrap_or_else(|e| panic!("writing entries.json: {e}"));
        let output = stdout_of(
            "spire-server entry create -data",
            &self.server_with(
                &["entry", "create"],
                &[
                    "-data",
                    file.to_str()
                        .unwrap_or_else(|| panic!("non-UTF-8 temp path")),
                ],
            ),
        );
        // The batch reports per-entry failures on stdout and still exits 0.
        assert!(
            !output.contains("Failed to create"),
            "spire-server entry create -data: {output}"
        );
    }

    /// Starts the agent (join token attestation, the `unix` workload
    /// attestor, in-memory keys), bootstrapped from the server's current
    /// bundle. Returns at once; see [`Spire::wait_for_agent`].
    pub fn start_agent(&mut self) {
        let token = self.token();
        let bootstrap = stdout_of(
            "spire-server bundle show",
            &self.server_with(&["bundle", "show"], &["-format", "pem"]),
        );
        std::fs::write(self.path("bootstrap.pem"), bootstrap)
            .unwrap_or_else(|e| panic!("writing bootstrap.pem: {e}"));
        let config = format!(
            r#"agent {{
  data_dir = "{dir}/agent-data"
  log_level = "{level}"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{dir}/agent.sock"
  trust_bundle_path = "{dir}/bootstrap.pem"
  trust_domain = "{td}"
  join_token = "{token}"
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
            dir = self.dir.path().display(),
            level = self.config.log_level,
            port = self.server_port,
            td = self.config.trust_domain,
        );
        std::fs::write(self.path("agent.conf"), config)
            .unwrap_or_else(|e| panic!("writing agent.conf: {e}"));
        let mut command = Command::new(&self.agent_bin);
        command
            .args(["run", "-config"])
            .arg(self.path("agent.conf"));
        self.agent = Some(Process::spawn(
            "spire-agent",
            command,
            self.path("agent.log"),
        ));
    }

    /// Waits until the agent has attested and serves its Workload API
    /// (`spire-agent healthcheck`).
    pub fn wait_for_agent(&self) {
        let socket = self.agent_socket_path();
        wait_until_every(
            "spire-agent to be healthy",
            Duration::from_secs(90),
            Duration::from_millis(200),
            || {
                socket.exists()
                    && Command::new(&self.agent_bin)
                        .arg("healthcheck")
                        .arg("-socketPath")
                        .arg(&socket)
                        .output()
                        .is_ok_and(|output| output.status.success())
            },
        );
    }

    /// The agent binary (its `api` subcommands are go-spiffe clients).
    pub fn agent_bin(&self) -> &Path {
        &self.agent_bin
    }
}
