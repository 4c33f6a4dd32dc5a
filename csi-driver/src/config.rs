//! Command-line flags and the validated driver configuration.

use std::path::PathBuf;

use clap::Parser;
use signet_runtime::endpoint::Endpoint;
use signet_runtime::logging::LogFormat;

/// signet-csi: CSI node plugin that mounts the SPIFFE Workload API socket
/// into pods as an inline ephemeral volume.
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
}

/// What the CSI services need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    pub driver_name: String,
    pub node_id: String,
    pub socket_dir: PathBuf,
    pub kubelet_dir: PathBuf,
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
        Ok((
            socket.to_owned(),
            DriverConfig {
                driver_name: self.driver_name.clone(),
                node_id: self.node_id.clone(),
                socket_dir: self.socket_dir.clone(),
                kubelet_dir: self.kubelet_dir.clone(),
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
