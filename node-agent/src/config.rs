//! The agent's configuration file, shaped like tbot's `workload-identity-api`
//! service (snake_case keys, unknown keys rejected):
//!
//! ```yaml
//! trust_domain: example.org
//! issuer:
//!   address: 127.0.0.1:8443
//!   trust_bundle_path: /var/lib/signet/operator/bundle.pem
//!   join_token: ...            # or join_token_path: /etc/signet/join-token,
//!                              # or service_account_token_path (in a cluster)
//! state_dir: /var/lib/signet/agent
//! node_name: ""                # default: $SIGNET_NODE_NAME
//! listen: unix:///run/signet/agent.sock
//! socket_mode: 0666
//! admin_listen: unix:///run/signet-admin/admin.sock
//! selector: {name: web}        # or {labels: {team: [payments]}}
//! attestors: {unix: {}, kubernetes: {enabled: true}}
//! svid_key_type: ec-p256
//! metrics_listen: 127.0.0.1:9464
//! log: {format: text, level: info}
//! audit_log: /var/lib/signet/agent/audit.log   # or "-" for stdout
//! audit_summary_window: 60s
//! limits: {connections_per_uid: 1024, connections: 4096,
//!          streams_per_connection: 128, handshake_timeout: 10s}
//! taint_reissue_window: 30s
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signet_identity::{KeyType, TrustDomain};
use signet_policy::IdentitySelector;
use signet_runtime::endpoint::Endpoint;
pub use signet_runtime::logging::LogConfig;
#[cfg(test)]
use signet_runtime::logging::LogFormat;

use crate::api::limits::ConnectionLimits;
use crate::attest::AttestorsConfig;

/// Environment variable naming the node (set from the downward API).
pub const NODE_NAME_ENV: &str = "SIGNET_NODE_NAME";

pub const DEFAULT_STATE_DIR: &str = "/var/lib/signet/agent";
pub const DEFAULT_LISTEN: &str = "unix:///run/signet/agent.sock";
pub const DEFAULT_ADMIN_LISTEN: &str = "unix:///run/signet-admin/admin.sock";
/// Any local process may connect; attestation decides what it gets.
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole agent configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The trust domain the issuer serves (required).
    pub trust_domain: TrustDomain,
    /// How to reach the issuer (required).
    pub issuer: IssuerConfig,
    /// Where the agent keeps its own SVID and key (default
    /// `/var/lib/signet/agent`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The node's name, added to workloads as `agent.node_name` (default:
    /// `$SIGNET_NODE_NAME`, else empty, in which case the attribute is absent).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Workload API and SDS socket (default `unix:///run/signet/agent.sock`).
    #[serde(default = "default_listen")]
    pub listen: Endpoint,
    /// Permission bits of the socket (default 0666).
    #[serde(default = "default_socket_mode", deserialize_with = "socket_mode")]
    pub socket_mode: u32,
    /// Delegated API socket for signet-csi files mode (default
    /// `unix:///run/signet-admin/admin.sock`): root only, in a directory of
    /// its own. Unset, a failure to bind the default is logged and the agent
    /// runs without the delegated API (unprivileged test runs); set, it is
    /// an error.
    #[serde(default)]
    pub admin_listen: Option<Endpoint>,
    /// Serve only the WorkloadIdentities this selects (default: all).
    #[serde(default)]
    pub selector: Option<IdentitySelector>,
    /// Workload attestors (default: unix only).
    #[serde(default)]
    pub attestors: AttestorsConfig,
    /// Key type of workload SVID keys (default `ec-p256`).
    #[serde(default = "default_key_type")]
    pub svid_key_type: KeyType,
    /// Admin HTTP endpoint with /healthz, /readyz and /metrics (default: off).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub log: LogConfig,
    /// How long a first FetchX509SVID/FetchSecrets waits for SVIDs before
    /// answering Unavailable (default 10s).
    #[serde(
        default = "default_first_svid_timeout",
        with = "signet_runtime::duration"
    )]
    pub first_svid_timeout: Duration,
    /// How long a caller's attested attributes are reused for further
    /// calls on the same connection, after checking that the process is
    /// the one that connected and has not changed (start time, uids, gids,
    /// executable). Bounds how late a change of what attestation reads
    /// (e.g. pod labels) is seen by a caller that keeps its connection
    /// (default 5s; 0: attest every call; at most 60s).
    #[serde(
        default = "default_reattest_interval",
        with = "signet_runtime::duration"
    )]
    pub reattest_interval: Duration,
    /// In a cluster: sign the SVIDs of each pod bound to this node before
    /// its containers start, from what the operator says of the pod
    /// (default true).
    #[serde(default = "default_sign_ahead")]
    pub sign_ahead: bool,
    /// Where callers the agent refuses on its own are audited, one JSON
    /// event per line in the issuer's schema (default
    /// `<state_dir>/audit.log`; `-` for standard output).
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Repeated refusals (same reason, same caller uid) within this window
    /// are counted and written as one summary when it ends (default 60s).
    #[serde(
        default = "default_audit_summary_window",
        with = "signet_runtime::duration"
    )]
    pub audit_summary_window: Duration,
    /// Bounds on Workload API and SDS connections per caller.
    #[serde(default)]
    pub limits: ConnectionLimits,
    /// SVIDs (workload and agent) signed by an authority the operator
    /// tainted are re-issued at a random point within this window, so the
    /// issuer is not asked for them all at once (default 30s; `0s`: at
    /// once).
    #[serde(
        default = "default_taint_reissue_window",
        with = "signet_runtime::duration"
    )]
    pub taint_reissue_window: Duration,
}

impl AgentConfig {
    /// The audit log's destination, `<state_dir>/audit.log` unless set.
    pub fn audit_log_path(&self) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.log"))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// `host:port` of the operator's issuer API.
    pub address: String,
    /// PEM X.509 authorities that the issuer's certificate must chain to
    /// before the agent has received a bundle from it.
    pub trust_bundle_path: PathBuf,
    /// Single-use join token (standalone mode).
    #[serde(default)]
    pub join_token: Option<String>,
    /// File holding the join token (read at start; trailing whitespace ignored).
    #[serde(default)]
    pub join_token_path: Option<PathBuf>,
    /// In a cluster: the projected service-account token (audience bound
    /// to the issuer) the agent joins with, re-read at every join.
    #[serde(default)]
    pub service_account_token_path: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

fn default_listen() -> Endpoint {
    Endpoint::Unix(PathBuf::from("/run/signet/agent.sock"))
}

fn default_socket_mode() -> u32 {
    DEFAULT_SOCKET_MODE
}

fn default_key_type() -> KeyType {
    KeyType::EcP256
}

fn default_audit_summary_window() -> Duration {
    Duration::from_secs(60)
}

fn default_sign_ahead() -> bool {
    true
}

fn default_reattest_interval() -> Duration {
    crate::api::state::DEFAULT_REATTEST_INTERVAL
}

fn default_first_svid_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_taint_reissue_window() -> Duration {
    Duration::from_secs(30)
}

/// Durations written like `10s` or `1m30s`.
/// A file mode. YAML 1.2 reads `0666` as the decimal number 666, so an
/// integer is taken digit by digit as octal (what people mean when they
/// write a mode); strings (`"0666"`, `"0o600"`) are parsed as octal too.
fn socket_mode<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let digits = match Raw::deserialize(deserializer)? {
        Raw::Number(number) => number.to_string(),
        Raw::Text(text) => {
            let text = text.trim();
            text.strip_prefix("0o").unwrap_or(text).to_owned()
        }
    };
    let mode = u32::from_str_radix(&digits, 8).map_err(|_| {
        serde::de::Error::custom(format!("socket_mode {digits:?} is not an octal mode"))
    })?;
    if mode > 0o777 {
        return Err(serde::de::Error::custom(format!(
            "socket_mode {digits} is not a permission mode (at most 0777)"
        )));
    }
    Ok(mode)
}

impl AgentConfig {
    /// Reads and validates a YAML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|error| match error {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates YAML text, filling `node_name` from the
    /// environment when it is not set.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut config: Self = serde_yaml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        if config.node_name.is_none() {
            config.node_name = std::env::var(NODE_NAME_ENV).ok();
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.issuer.address.trim().is_empty() {
            return invalid("issuer.address is empty".into());
        }
        let credentials = [
            self.issuer.join_token.is_some(),
            self.issuer.join_token_path.is_some(),
            self.issuer.service_account_token_path.is_some(),
        ];
        if credentials.iter().filter(|set| **set).count() > 1 {
            return invalid(
                "set at most one of issuer.join_token, issuer.join_token_path and issuer.service_account_token_path".into(),
            );
        }
        if self.listen.unix_path().is_none() {
            // Attestation reads the caller's credentials from the socket;
            // over TCP every caller would be anonymous.
            return invalid(format!(
                "listen {} must be a unix socket (unix:///path): workloads are attested by their socket credentials",
                self.listen
            ));
        }
        let admin = self.admin_listen();
        let Some(admin_path) = admin.unix_path() else {
            return invalid(format!("admin_listen {admin} must be a unix socket"));
        };
        if admin == self.listen {
            return invalid("admin_listen and listen must differ".into());
        }
        // signet-csi bind-mounts the Workload API socket's directory into
        // pods: the root-only admin socket must not be in it.
        if admin_path.parent() == self.listen.unix_path().and_then(Path::parent) {
            return invalid(format!(
                "admin_listen {admin} must not be in the directory of listen {}: \
                 that directory is mounted into pods",
                self.listen
            ));
        }
        if self.first_svid_timeout.is_zero() {
            return invalid("first_svid_timeout must be positive".into());
        }
        if self.audit_summary_window.is_zero() {
            return invalid("audit_summary_window must be positive".into());
        }
        if self.reattest_interval > Duration::from_secs(60) {
            return invalid("reattest_interval must be at most 60s".into());
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The delegated API socket, configured or default.
    pub fn admin_listen(&self) -> Endpoint {
        self.admin_listen
            .clone()
            .unwrap_or_else(|| Endpoint::Unix(PathBuf::from("/run/signet-admin/admin.sock")))
    }

    /// The node name, `None` when unset or empty.
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref().filter(|name| !name.is_empty())
    }

    /// The join token from `join_token` or `join_token_path`, if any.
    pub fn join_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(token) = &self.issuer.join_token {
            return Ok(Some(token.trim().to_owned()).filter(|t| !t.is_empty()));
        }
        match &self.issuer.join_token_path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
trust_domain: example.org
issuer:
  address: 127.0.0.1:8443
  trust_bundle_path: /var/lib/signet/operator/bundle.pem
  join_token: abc
state_dir: /tmp/agent
node_name: node-1
listen: unix:///run/signet/agent.sock
socket_mode: 0660
admin_listen: unix:///run/signet-admin/admin.sock
selector: {labels: {team: [payments]}}
attestors:
  unix: {binary_hash_max_size_bytes: 1024}
  docker: {enabled: false}
svid_key_type: ec-p384
metrics_listen: 127.0.0.1:9464
log: {format: json, level: debug}
first_svid_timeout: 3s
taint_reissue_window: 2m
"#;

    #[test]
    fn full_config_parses() {
        let config = AgentConfig::parse(FULL).unwrap();
        assert_eq!(config.trust_domain.as_str(), "example.org");
        assert_eq!(config.issuer.address, "127.0.0.1:8443");
        assert_eq!(config.join_token().unwrap().as_deref(), Some("abc"));
        assert_eq!(config.socket_mode, 0o660);
        assert_eq!(config.node_name(), Some("node-1"));
        assert_eq!(config.svid_key_type, KeyType::EcP384);
        assert!(matches!(config.selector, Some(IdentitySelector::Labels(_))));
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.first_svid_timeout, Duration::from_secs(3));
        assert_eq!(config.taint_reissue_window, Duration::from_secs(120));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = AgentConfig::parse(
            "trust_domain: example.org\nissuer: {address: 'issuer:8443', trust_bundle_path: /b.pem}\n",
        )
        .unwrap();
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.admin_listen().to_string(), DEFAULT_ADMIN_LISTEN);
        assert!(config.admin_listen.is_none());
        assert_eq!(config.socket_mode, 0o666);
        assert_eq!(config.svid_key_type, KeyType::EcP256);
        assert!(config.selector.is_none());
        assert!(config.metrics_listen.is_none());
        assert_eq!(config.log.level, "info");
        assert_eq!(config.first_svid_timeout, Duration::from_secs(10));
        assert_eq!(config.taint_reissue_window, Duration::from_secs(30));
        assert_eq!(config.join_token().unwrap(), None);
        // Zero is allowed: re-issue at once.
        let at_once = AgentConfig::parse(
            "trust_domain: example.org\nissuer: {address: 'i:1', trust_bundle_path: /b}\ntaint_reissue_window: 0s\n",
        )
        .unwrap();
        assert_eq!(at_once.taint_reissue_window, Duration::ZERO);
    }

    #[test]
    fn socket_mode_spellings() {
        let base = "trust_domain: example.org\nissuer: {address: 'i:1', trust_bundle_path: /b}\n";
        for (spelling, mode) in [("0666", 0o666), ("600", 0o600), ("'0o640'", 0o640)] {
            let config = AgentConfig::parse(&format!("{base}socket_mode: {spelling}\n")).unwrap();
            assert_eq!(config.socket_mode, mode, "{spelling}");
        }
        for bad in ["0968", "7777", "'rw'"] {
            assert!(
                AgentConfig::parse(&format!("{base}socket_mode: {bad}\n")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn mistakes_are_rejected() {
        let base = "trust_domain: example.org\nissuer: {address: 'i:1', trust_bundle_path: /b}\n";
        for extra in [
            "listn: unix:///x.sock\n",
            "listen: tcp://127.0.0.1:1\n",
            "selector: {name: a, labels: {x: [y]}}\n",
            "selector: {}\n",
            "svid_key_type: dsa\n",
            "log: {format: xml}\n",
            "admin_listen: tcp://127.0.0.1:1\n",
            "admin_listen: unix:///run/signet/agent.sock\n",
            "admin_listen: unix:///run/signet/admin.sock\n",
            "taint_reissue_window: 30\n",
        ] {
            assert!(
                AgentConfig::parse(&format!("{base}{extra}")).is_err(),
                "{extra}"
            );
        }
        assert!(
            AgentConfig::parse(
                "trust_domain: Bad_TD!\nissuer: {address: 'i:1', trust_bundle_path: /b}\n"
            )
            .is_err()
        );
        let both = "trust_domain: example.org\nissuer: {address: 'i:1', trust_bundle_path: /b, join_token: a, join_token_path: /t}\n";
        assert!(AgentConfig::parse(both).is_err());
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agent");
        for name in ["standalone.yaml", "kubernetes.yaml"] {
            let config =
                AgentConfig::load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.trust_domain.as_str(), "example.org");
        }
    }

    #[test]
    fn join_token_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret-token\n").unwrap();
        let config = AgentConfig::parse(&format!(
            "trust_domain: example.org\nissuer: {{address: 'i:1', trust_bundle_path: /b, join_token_path: {}}}\n",
            path.display()
        ))
        .unwrap();
        assert_eq!(
            config.join_token().unwrap().as_deref(),
            Some("secret-token")
        );
    }
}
