//! Listen and connect addresses written as URIs, the way SPIFFE tools spell
//! them (`unix:///run/signet/agent.sock`, `tcp://127.0.0.1:8081`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("endpoint {0:?} must start with unix:// or tcp://")]
    Scheme(String),
    #[error("unix endpoint {0:?} must name an absolute path (unix:///path)")]
    RelativeUnixPath(String),
    #[error("tcp endpoint {0:?} must be an IP address and port (tcp://127.0.0.1:8081)")]
    TcpAddress(String),
}

/// Where a server listens or a client connects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Endpoint {
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Unix(path) => Some(path),
            Self::Tcp(_) => None,
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = value.strip_prefix("unix://") {
            // unix:///abs/path; also accept unix:/abs/path below.
            if rest.starts_with('/') {
                return Ok(Self::Unix(PathBuf::from(rest)));
            }
            return Err(EndpointError::RelativeUnixPath(value.to_owned()));
        }
        if let Some(rest) = value.strip_prefix("unix:") {
            if rest.starts_with('/') {
                return Ok(Self::Unix(PathBuf::from(rest)));
            }
            return Err(EndpointError::RelativeUnixPath(value.to_owned()));
        }
        if let Some(rest) = value.strip_prefix("tcp://") {
            return rest
                .parse()
                .map(Self::Tcp)
                .map_err(|_| EndpointError::TcpAddress(value.to_owned()));
        }
        Err(EndpointError::Scheme(value.to_owned()))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spiffe_style_endpoints() {
        assert_eq!(
            "unix:///run/signet/agent.sock".parse(),
            Ok(Endpoint::Unix("/run/signet/agent.sock".into()))
        );
        assert_eq!(
            "unix:/tmp/a.sock".parse(),
            Ok(Endpoint::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            "tcp://127.0.0.1:8081".parse(),
            Ok(Endpoint::Tcp("127.0.0.1:8081".parse().unwrap()))
        );
        assert!(matches!(
            "unix://relative".parse::<Endpoint>(),
            Err(EndpointError::RelativeUnixPath(_))
        ));
        assert!(matches!(
            "tcp://localhost:80".parse::<Endpoint>(),
            Err(EndpointError::TcpAddress(_))
        ));
        assert!(matches!(
            "/run/x.sock".parse::<Endpoint>(),
            Err(EndpointError::Scheme(_))
        ));
        let round: Endpoint = "unix:///a/b.sock".parse().unwrap();
        assert_eq!(round.to_string(), "unix:///a/b.sock");
    }
}
