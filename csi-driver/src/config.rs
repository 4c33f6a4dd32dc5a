//! Command-line flags and the validated driver configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use signet_runtime::endpoint::Endpoint;
use signet_runtime::logging::LogFormat;

pub use crate::files_mode::FilesConfig;

/// signet-csi: CSI node plugin that brings SPIFFE identity into pods as an
/// inline ephemeral volume: the Workload API socket (socket mode) or SVID
/// files kept current (files mode).
#[derive(Clone, Debug, Parser)]
#[command(name = "signet-csi", version)]
pub struct Args {
    /// Where the CSI services listen (unix:///path/csi.sock).
    #[arg(
        long,
        default_value = "unix:///var/lib/kubelet/plugins/csi.signet.dev/csi.sock"
    )]
    pub endpoint: Endpoint,
    /// This node's name, reported by NodeGetInfo.
    #[arg(long, env = "SIGNET_NODE_NAME")]
    pub node_id: String,
    /// The directory holding the agent's Workload API socket, bind-mounted
    /// read-only into pods in socket mode. It must hold no other socket
    /// (in particular not the agent's admin socket).
    #[arg(long)]
    pub socket_dir: PathBuf,
    /// The kubelet's root directory; targets must lie under <kubelet-dir>/pods.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// The CSI driver name (must match the CSIDriver object).
    #[arg(long, default_value = "csi.signet.dev")]
    pub driver_name: String,
    /// Log output: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
    /// Register with the kubelet through `<kubelet-dir>/plugins_registry/`
    /// (false when a node-driver-registrar sidecar does it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub kubelet_registration: bool,
    /// The CSI socket's path as the kubelet sees it, when it differs from
    /// `--endpoint` (the driver's own mount namespace).
    #[arg(long)]
    pub kubelet_registration_path: Option<PathBuf>,
    /// Files mode: the agent's delegated API socket (its admin_listen).
    #[arg(long, default_value = "/run/signet-admin/admin.sock", value_parser = socket_path)]
    pub agent_admin_socket: PathBuf,
    /// Files mode: where published volumes are recorded (no keys, no
    /// tokens) so that a restarted driver resumes renewing them. Keep it
    /// on the node's disk (a hostPath), not in the container.
    #[arg(long, default_value = "/var/lib/signet-csi")]
    pub state_dir: PathBuf,
    /// Files mode: the CSIDriver tokenRequests audience whose token is
    /// passed to the agent (and checked by the issuer with a TokenReview).
    #[arg(long, default_value = "signet-csi")]
    pub pod_token_audience: String,
    /// Files mode: how long a first NodePublishVolume waits for the pod's
    /// SVIDs before failing (the pod does not start without them).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub publish_timeout: Duration,
}

/// A socket path, written plain or as `unix:///path`.
fn socket_path(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value.strip_prefix("unix://").unwrap_or(value));
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{value:?} is not an absolute path"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--node-id (or SIGNET_NODE_NAME) must not be empty")]
    EmptyNodeId,
    #[error(
        "--driver-name {0:?} is not a valid CSI driver name: at most 63 characters, \
         starting and ending with a letter, only letters, digits, '-', '.' and '_'"
    )]
    DriverName(String),
    #[error("--endpoint {0} must be a unix:// endpoint")]
    NotUnix(String),
    #[error("--pod-token-audience must not be empty")]
    EmptyAudience,
    #[error("--publish-timeout must be between 1s and 110s (the kubelet gives up after 2m)")]
    PublishTimeout,
}

/// What the CSI services need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    pub driver_name: String,
    pub node_id: String,
    pub socket_dir: PathBuf,
    pub kubelet_dir: PathBuf,
    pub files: FilesConfig,
}

impl DriverConfig {
    /// Every target path must resolve strictly below this directory.
    pub fn pods_dir(&self) -> PathBuf {
        self.kubelet_dir.join("pods")
    }
}

impl Args {
    /// Validates the flags; returns the socket path and the driver config.
    pub fn validate(&self) -> Result<(PathBuf, DriverConfig), ConfigError> {
        let Some(socket) = self.endpoint.unix_path() else {
            return Err(ConfigError::NotUnix(self.endpoint.to_string()));
        };
        if self.node_id.trim().is_empty() {
            return Err(ConfigError::EmptyNodeId);
        }
        if !valid_driver_name(&self.driver_name) {
            return Err(ConfigError::DriverName(self.driver_name.clone()));
        }
        if self.pod_token_audience.trim().is_empty() {
            return Err(ConfigError::EmptyAudience);
        }
        if self.publish_timeout < Duration::from_secs(1)
            || self.publish_timeout > Duration::from_secs(110)
        {
            return Err(ConfigError::PublishTimeout);
        }
        Ok((
            socket.to_owned(),
            DriverConfig {
                driver_name: self.driver_name.clone(),
                node_id: self.node_id.clone(),
                socket_dir: self.socket_dir.clone(),
                kubelet_dir: self.kubelet_dir.clone(),
                files: FilesConfig {
                    admin_socket: self.agent_admin_socket.clone(),
                    state_dir: self.state_dir.clone(),
                    pod_token_audience: self.pod_token_audience.clone(),
                    publish_timeout: self.publish_timeout,
                },
            },
        ))
    }
}

/// The CSI spec's rule for plugin names (what csi-sanity checks too).
impl Args {
    /// Where the registration socket goes and what it tells the kubelet;
    /// `None` when registration is off.
    pub fn registration(
        &self,
        csi_socket: &std::path::Path,
    ) -> Option<(PathBuf, crate::registration::RegistrationInfo)> {
        if !self.kubelet_registration {
            return None;
        }
        let socket = crate::registration::registration_socket(&self.kubelet_dir, &self.driver_name);
        let endpoint = self
            .kubelet_registration_path
            .clone()
            .unwrap_or_else(|| csi_socket.to_owned());
        Some((
            socket,
            crate::registration::RegistrationInfo {
                driver_name: self.driver_name.clone(),
                endpoint,
            },
        ))
    }
}

pub fn valid_driver_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() >= 2
        && bytes.len() <= 63
        && first.is_ascii_alphabetic()
        && last.is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names() {
        assert!(valid_driver_name("csi.signet.dev"));
        assert!(valid_driver_name("a_b-c.d"));
        assert!(!valid_driver_name("csi.signet.dev."));
        assert!(!valid_driver_name("1csi"));
        assert!(!valid_driver_name("c"));
        assert!(!valid_driver_name("csi/signet"));
        assert!(!valid_driver_name(&"a".repeat(64)));
    }

    #[test]
    fn parses_flags() {
        let args = Args::try_parse_from([
            "signet-csi",
            "--endpoint",
            "unix:///tmp/csi.sock",
            "--node-id",
            "node-1",
            "--socket-dir",
            "/run/signet/workload",
            "--log-format",
            "json",
        ])
        .unwrap();
        let (socket, config) = args.validate().unwrap();
        assert_eq!(socket, PathBuf::from("/tmp/csi.sock"));
        assert_eq!(config.pods_dir(), PathBuf::from("/var/lib/kubelet/pods"));
        assert_eq!(config.driver_name, "csi.signet.dev");
        assert_eq!(args.log_format, LogFormat::Json);
        assert_eq!(
            config.files,
            FilesConfig {
                admin_socket: PathBuf::from("/run/signet-admin/admin.sock"),
                state_dir: PathBuf::from("/var/lib/signet-csi"),
                pod_token_audience: "signet-csi".to_owned(),
                publish_timeout: Duration::from_secs(30),
            }
        );
        let files = Args::try_parse_from([
            "signet-csi",
            "--node-id",
            "n",
            "--socket-dir",
            "/s",
            "--agent-admin-socket",
            "unix:///run/a/admin.sock",
            "--publish-timeout",
            "5s",
            "--pod-token-audience",
            "csi.example.org",
        ])
        .unwrap();
        let (_, config) = files.validate().unwrap();
        assert_eq!(
            config.files.admin_socket,
            PathBuf::from("/run/a/admin.sock")
        );
        assert_eq!(config.files.publish_timeout, Duration::from_secs(5));
        for bad in [
            ["--publish-timeout", "0s"],
            ["--publish-timeout", "5m"],
            ["--pod-token-audience", " "],
        ] {
            let args = Args::try_parse_from(
                ["signet-csi", "--node-id", "n", "--socket-dir", "/s"]
                    .into_iter()
                    .chain(bad),
            )
            .unwrap();
            assert!(args.validate().is_err(), "{bad:?}");
        }
        assert!(
            Args::try_parse_from([
                "signet-csi",
                "--node-id",
                "n",
                "--socket-dir",
                "/s",
                "--agent-admin-socket",
                "relative.sock"
            ])
            .is_err()
        );

        let tcp = Args::try_parse_from([
            "signet-csi",
            "--endpoint",
            "tcp://127.0.0.1:1",
            "--node-id",
            "n",
            "--socket-dir",
            "/s",
        ])
        .unwrap();
        assert!(matches!(tcp.validate(), Err(ConfigError::NotUnix(_))));
        let blank =
            Args::try_parse_from(["signet-csi", "--node-id", " ", "--socket-dir", "/s"]).unwrap();
        assert_eq!(blank.validate(), Err(ConfigError::EmptyNodeId));
    }
}
