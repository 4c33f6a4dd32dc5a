//! Standalone configuration: a YAML file (snake_case keys, unknown keys
//! rejected) whose fields the command-line flags override.
//!
//! ```yaml
//! trust_domain: example.org
//! policy_dir: /etc/signet/policy        # WorkloadIdentity and Role YAML
//! state_dir: /var/lib/signet/operator   # CA keyset, spent join tokens, bundle files
//! listen: 0.0.0.0:8443                  # issuer gRPC API (TLS, mTLS after Join)
//! server_names: [signet.example.org]    # extra DNS/IP SANs on the issuer certificate
//! ca:
//!   key_type: ec-p256                   # ec-p256 | ec-p384 | rsa-2048
//!   jwt_key_type: ec-p256
//!   ttl: 24h                            # lifetime of each X.509 CA
//!   jwt_ttl: 24h                        # lifetime of each JWT signing key
//!   jwt_issuer: https://oidc.example.org  # `iss` of JWT-SVIDs (default none)
//!   refresh_hint: 5m
//! agent_svid_ttl: 1h
//! join_tokens:
//!   - {name: vm-1, sha256: 3f5a...}      # from `signet-operator token generate`
//!   - {name: builders, token_file: /etc/signet/builders.token, reusable: true}
//! federation:                           # bundles of other trust domains
//!   partner.org: /etc/signet/partner.bundle.json   # SPIFFE bundle JSON or PEM, re-read when it changes
//!   spire.example:                      # from a SPIFFE bundle endpoint, refreshed at its hint
//!     bundle_endpoint_url: https://spire.example:8443/
//!     profile: https_spiffe             # or https_web (a Web PKI certificate; ca_file or system roots)
//!     endpoint_spiffe_id: spiffe://spire.example/spire/server
//!     bundle: /etc/signet/spire.bundle.json  # the first bundle (required for https_spiffe)
//! bundle_endpoint:                      # this trust domain's bundle endpoint (default off)
//!   listen: 0.0.0.0:8445
//!   profile: https_spiffe               # the issuer's SVID (spiffe://<td>/signet/issuer); or https_web with tls_cert/tls_key
//! audit_log: /var/log/signet/audit.log  # or "-" for stdout
//! metrics_listen: 127.0.0.1:9465        # /healthz /readyz /metrics (default off)
//! oidc:                                 # OIDC discovery + JWKS for JWT-SVID consumers (default off)
//!   listen: 0.0.0.0:8444
//!   issuer_url: https://oidc.example.org  # also becomes ca.jwt_issuer unless that is set
//!   tls_cert: /etc/signet/oidc/tls.crt  # without both: plain HTTP (behind a TLS-terminating proxy)
//!   tls_key: /etc/signet/oidc/tls.key
//! log: {format: text, level: info}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signet_identity::{CaConfig, KeyType, TrustDomain};

use crate::federation::{BundleSource, EndpointKind, FederatedDomain, read_bundle_file};
use signet_runtime::logging::LogConfig;

use crate::ca::IssuerNames;
use crate::standalone::join_tokens::JoinTokenConfig;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/signet/operator";
pub const DEFAULT_POLICY_DIR: &str = "/etc/signet/policy";
/// SVIDs of agents: short, renewed at half-life.
pub const DEFAULT_AGENT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Shortest CA lifetime accepted: the successor is published half a life
/// before it signs, which must leave agents and workloads time to fetch it
/// (short lifetimes are for rotation drills; SVIDs never outlive their CA).
const MIN_CA_TTL: Duration = Duration::from_secs(4 * 60);

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

/// The file as written; every field optional so flags can fill gaps.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default)]
    pub policy_dir: Option<PathBuf>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub server_names: Vec<String>,
    #[serde(default)]
    pub ca: CaSection,
    #[serde(default, with = "signet_runtime::duration::option")]
    pub agent_svid_ttl: Option<Duration>,
    #[serde(default)]
    pub join_tokens: Vec<JoinTokenConfig>,
    #[serde(default)]
    pub federation: BTreeMap<String, FederationEntry>,
    #[serde(default)]
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// Settings of `signet-operator kubernetes` only.
    #[serde(default)]
    pub kubernetes: Option<KubernetesSection>,
    #[serde(default)]
    pub log: LogConfig,
}

/// A federated trust domain, as written: a bundle file, or an endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FederationEntry {
    File(PathBuf),
    Endpoint(EndpointSection),
}

/// How a SPIFFE bundle endpoint authenticates itself.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProfileName {
    HttpsWeb,
    HttpsSpiffe,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    pub bundle_endpoint_url: String,
    pub profile: ProfileName,
    /// `https_spiffe`: the endpoint's SPIFFE ID.
    #[serde(default)]
    pub endpoint_spiffe_id: Option<String>,
    /// The first bundle (required for `https_spiffe`).
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    /// `https_web`: CA certificates (PEM) for the endpoint's certificate;
    /// the system's roots when unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// This trust domain's SPIFFE bundle endpoint (`bundle_endpoint`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointConfig {
    pub listen: SocketAddr,
    pub profile: ProfileName,
    /// `https_web`: the serving certificate chain and key (PEM).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// The `kubernetes` section, as written (resolved by `cluster::config`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub ca_secret: Option<String>,
    #[serde(default)]
    pub bundle_config_map: Option<String>,
    #[serde(default)]
    pub lease_name: Option<String>,
    #[serde(default, with = "signet_runtime::duration::option")]
    pub lease_duration: Option<Duration>,
    #[serde(default)]
    pub agent_service_account: Option<String>,
    #[serde(default)]
    pub agent_audience: Option<String>,
    #[serde(default)]
    pub pod_token_audience: Option<String>,
    #[serde(default)]
    pub webhook: Option<WebhookSection>,
    #[serde(default)]
    pub user_issuance: Option<UserIssuanceSection>,
}

/// SVIDs for people and pipelines through the API server
/// (`kubernetes.user_issuance`; off without it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserIssuanceSection {
    /// Where the aggregated API listens (HTTPS, the issuer's certificate;
    /// clients must present the API server's front-proxy certificate).
    pub listen: SocketAddr,
    /// The APIService whose `caBundle` the leader keeps equal to the trust
    /// bundle; none when unset.
    #[serde(default)]
    pub api_service: Option<String>,
    /// Lifetime when the request names none (default 15m).
    #[serde(default, with = "signet_runtime::duration::option")]
    pub default_ttl: Option<Duration>,
    /// Longest lifetime ever issued to a user (default 1h).
    #[serde(default, with = "signet_runtime::duration::option")]
    pub max_ttl: Option<Duration>,
}

/// The validating admission webhook (`kubernetes.webhook`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Where the webhook listens (HTTPS, the issuer's certificate).
    pub listen: SocketAddr,
    /// The ValidatingWebhookConfiguration whose `caBundle` the leader keeps
    /// equal to the trust bundle; none when unset (then `caBundle` is
    /// someone else's to manage).
    #[serde(default)]
    pub configuration: Option<String>,
}

/// OIDC discovery (`/.well-known/openid-configuration`) and the JWKS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub listen: SocketAddr,
    pub issuer_url: String,
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSection {
    #[serde(default)]
    pub key_type: Option<KeyType>,
    #[serde(default)]
    pub jwt_key_type: Option<KeyType>,
    #[serde(default, with = "signet_runtime::duration::option")]
    pub ttl: Option<Duration>,
    #[serde(default, with = "signet_runtime::duration::option")]
    pub jwt_ttl: Option<Duration>,
    #[serde(default)]
    pub jwt_issuer: Option<String>,
    #[serde(default, with = "signet_runtime::duration::option")]
    pub refresh_hint: Option<Duration>,
    /// The organisation's CA that signs this trust domain's CAs.
    #[serde(default)]
    pub upstream: Option<crate::upstream::UpstreamFiles>,
}

/// Command-line values that win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub trust_domain: Option<String>,
    pub policy_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub audit_log: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
    /// `NAME=PATH` pairs: single-use tokens read from files.
    pub join_token_files: Vec<(String, PathBuf)>,
}

/// The validated configuration the operator runs with.
#[derive(Clone, Debug)]
pub struct StandaloneConfig {
    pub trust_domain: TrustDomain,
    pub policy_dir: PathBuf,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub issuer_names: IssuerNames,
    pub ca: CaConfig,
    /// Where `ca.upstream` came from, followed for changes.
    pub upstream: Option<crate::upstream::UpstreamFiles>,
    pub agent_svid_ttl: Duration,
    pub join_tokens: Vec<JoinTokenConfig>,
    pub federation: BTreeMap<TrustDomain, FederatedDomain>,
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// Default: `<state_dir>/audit.log`.
    pub audit_log: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    pub oidc: Option<OidcConfig>,
    pub log: LogConfig,
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

impl StandaloneConfig {
    /// Merges `file` (if any) and `overrides`, then validates.
    pub fn resolve(file: FileConfig, overrides: Overrides) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid(message);
        let trust_domain_text = overrides
            .trust_domain
            .or(file.trust_domain)
            .ok_or_else(|| invalid("trust_domain is required (or --trust-domain)".into()))?;
        let trust_domain = TrustDomain::new(&trust_domain_text)
            .map_err(|e| invalid(format!("trust_domain {trust_domain_text:?}: {e}")))?;
        let state_dir = overrides
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let policy_dir = overrides
            .policy_dir
            .or(file.policy_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR));
        let listen = match overrides.listen.or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|e| invalid(format!("default listen address: {e}")))?,
        };

        let mut ca = CaConfig::new(trust_domain.clone());
        if let Some(key_type) = file.ca.key_type {
            ca.x509_key_type = key_type;
        }
        if let Some(key_type) = file.ca.jwt_key_type {
            ca.jwt_key_type = key_type;
        }
        if let Some(ttl) = file.ca.ttl {
            ca.x509_ttl = ttl;
        }
        if let Some(ttl) = file.ca.jwt_ttl {
            ca.jwt_ttl = ttl;
        }
        if file.ca.refresh_hint.is_some() {
            ca.refresh_hint = file.ca.refresh_hint;
        }
        if ca.x509_ttl < MIN_CA_TTL || ca.jwt_ttl < MIN_CA_TTL {
            return Err(invalid(format!(
                "ca.ttl and ca.jwt_ttl must be at least {}",
                humantime::format_duration(MIN_CA_TTL)
            )));
        }
        if let Some(oidc) = &file.oidc {
            if oidc.tls_cert.is_some() != oidc.tls_key.is_some() {
                return Err(invalid(
                    "oidc: set both tls_cert and tls_key, or neither".into(),
                ));
            }
            crate::oidc::OidcSettings::new(&oidc.issuer_url)
                .map_err(|e| invalid(format!("oidc.issuer_url: {e}")))?;
        }
        if let Some(files) = &file.ca.upstream {
            let loaded = files
                .load(signet_runtime::clock::Clock::new().now())
                .map_err(|e| invalid(format!("ca.upstream: {e}")))?;
            ca.upstream = Some(loaded.upstream);
        }
        // Tokens must name the issuer their keys are discovered from.
        let jwt_issuer = file.ca.jwt_issuer.clone().or_else(|| {
            file.oidc
                .as_ref()
                .map(|o| o.issuer_url.trim_end_matches('/').to_owned())
        });
        if let Some(issuer) = &jwt_issuer {
            if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                return Err(invalid(format!(
                    "ca.jwt_issuer {issuer:?} must be an http(s) URL"
                )));
            }
            ca.jwt_issuer = Some(issuer.clone());
        }

        let agent_svid_ttl = file.agent_svid_ttl.unwrap_or(DEFAULT_AGENT_SVID_TTL);
        if agent_svid_ttl < Duration::from_secs(60) || agent_svid_ttl > ca.x509_ttl / 2 {
            return Err(invalid(
                "agent_svid_ttl must be at least 1m and at most half of ca.ttl".into(),
            ));
        }

        let mut issuer_names = IssuerNames::default();
        for name in ["localhost".to_owned()]
            .into_iter()
            .chain(file.server_names.iter().cloned())
        {
            match name.parse() {
                Ok(ip) => issuer_names.ips.push(ip),
                Err(_) if signet_policy::dns::validate_dns_name(&name).is_ok() => {
                    issuer_names.dns.push(name)
                }
                Err(_) => {
                    return Err(invalid(format!(
                        "server_names: {name:?} is neither a DNS name nor an IP address"
                    )));
                }
            }
        }
        if let Ok(ip) = "127.0.0.1".parse() {
            issuer_names.ips.push(ip);
        }
        if !listen.ip().is_unspecified() && !issuer_names.ips.contains(&listen.ip()) {
            issuer_names.ips.push(listen.ip());
        }

        let mut join_tokens = file.join_tokens;
        for (name, path) in overrides.join_token_files {
            join_tokens.push(JoinTokenConfig {
                name,
                sha256: None,
                token_file: Some(path),
                reusable: false,
            });
        }

        let mut federation = BTreeMap::new();
        for (domain, entry) in &file.federation {
            let foreign = TrustDomain::new(domain)
                .map_err(|e| invalid(format!("federation: {domain:?}: {e}")))?;
            if foreign == trust_domain {
                return Err(invalid(format!(
                    "federation: {domain} is this operator's own trust domain"
                )));
            }
            federation.insert(foreign.clone(), federated_domain(&foreign, entry)?);
        }
        if let Some(endpoint) = &file.bundle_endpoint {
            let has_files = endpoint.tls_cert.is_some() && endpoint.tls_key.is_some();
            match endpoint.profile {
                ProfileName::HttpsWeb if !has_files => {
                    return Err(invalid(
                        "bundle_endpoint: https_web needs tls_cert and tls_key".into(),
                    ));
                }
                ProfileName::HttpsSpiffe
                    if endpoint.tls_cert.is_some() || endpoint.tls_key.is_some() =>
                {
                    return Err(invalid(
                        "bundle_endpoint: https_spiffe is served with the issuer's SVID; tls_cert and tls_key are for https_web".into(),
                    ));
                }
                _ => {}
            }
        }

        let audit_log = overrides
            .audit_log
            .or(file.audit_log)
            .unwrap_or_else(|| state_dir.join("audit.log"));

        Ok(Self {
            trust_domain,
            policy_dir,
            state_dir,
            listen,
            issuer_names,
            ca,
            upstream: file.ca.upstream,
            agent_svid_ttl,
            join_tokens,
            federation,
            bundle_endpoint: file.bundle_endpoint,
            audit_log,
            metrics_listen: overrides.metrics_listen.or(file.metrics_listen),
            oidc: file.oidc,
            log: file.log,
        })
    }
}

/// A federated trust domain's configuration, checked; bundle files are
/// read now, so a missing one stops the start.
fn federated_domain(
    trust_domain: &TrustDomain,
    entry: &FederationEntry,
) -> Result<FederatedDomain, ConfigError> {
    let context =
        |reason: String| ConfigError::Invalid(format!("federation: {trust_domain}: {reason}"));
    let read =
        |path: &Path| read_bundle_file(trust_domain, path).map_err(|e| context(e.to_string()));
    match entry {
        FederationEntry::File(path) => Ok(FederatedDomain {
            initial: Some(read(path)?),
            source: BundleSource::File(path.clone()),
        }),
        FederationEntry::Endpoint(endpoint) => {
            if endpoint.profile == ProfileName::HttpsWeb && endpoint.endpoint_spiffe_id.is_some() {
                return Err(context("endpoint_spiffe_id is for https_spiffe".into()));
            }
            let initial = endpoint.bundle.as_deref().map(read).transpose()?;
            crate::federation::endpoint_domain(
                trust_domain,
                &endpoint.bundle_endpoint_url,
                match endpoint.profile {
                    ProfileName::HttpsWeb => EndpointKind::Web {
                        ca_file: endpoint.ca_file.clone(),
                    },
                    ProfileName::HttpsSpiffe => EndpointKind::Spiffe {
                        endpoint_id: endpoint.endpoint_spiffe_id.as_deref(),
                        ca_file_set: endpoint.ca_file.is_some(),
                    },
                },
                initial,
            )
            .map_err(context)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<StandaloneConfig, ConfigError> {
        let file: FileConfig = serde_yaml::from_str(yaml).map_err(|source| ConfigError::Parse {
            path: "test.yaml".into(),
            source,
        })?;
        StandaloneConfig::resolve(file, Overrides::default())
    }

    #[test]
    fn full_file_is_read() {
        let config = parse(
            r#"
trust_domain: example.org
policy_dir: /p
state_dir: /s
listen: 127.0.0.1:9443
server_names: [issuer.example.org, 10.0.0.5]
ca: {key_type: ec-p384, ttl: 48h, jwt_ttl: 12h, jwt_issuer: "https://oidc.example.org", refresh_hint: 1m}
agent_svid_ttl: 30m
join_tokens: [{name: vm-1, sha256: "00"}]
audit_log: "-"
metrics_listen: 127.0.0.1:9465
log: {format: json, level: debug}
"#,
        )
        .unwrap();
        assert_eq!(config.trust_domain.as_str(), "example.org");
        assert_eq!(config.ca.x509_key_type, KeyType::EcP384);
        assert_eq!(config.ca.x509_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(config.ca.jwt_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(config.ca.refresh_hint, Some(Duration::from_secs(60)));
        assert_eq!(config.agent_svid_ttl, Duration::from_secs(1800));
        assert_eq!(config.audit_log, PathBuf::from("-"));
        assert!(
            config
                .issuer_names
                .dns
                .contains(&"issuer.example.org".to_owned())
        );
        assert!(
            config
                .issuer_names
                .ips
                .contains(&"10.0.0.5".parse().unwrap())
        );
        assert!(
            config
                .issuer_names
                .ips
                .contains(&"127.0.0.1".parse().unwrap())
        );
        assert_eq!(config.join_tokens[0].name, "vm-1");
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = serde_yaml::from_str("trust_domain: file.org\n").unwrap();
        let config = StandaloneConfig::resolve(
            file,
            Overrides {
                trust_domain: Some("flag.org".into()),
                join_token_files: vec![("vm-2".into(), "/t".into())],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.trust_domain.as_str(), "flag.org");
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            config.audit_log,
            PathBuf::from(DEFAULT_STATE_DIR).join("audit.log")
        );
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.join_tokens[0].token_file, Some(PathBuf::from("/t")));
        assert!(!config.join_tokens[0].reusable);
    }

    #[test]
    fn mistakes_are_reported_with_the_field() {
        let cases = [
            ("policy_dir: /p\n", "trust_domain is required"),
            ("trust_domain: Example.ORG\n", "trust_domain"),
            ("trust_domain: a.org\nunknown_key: 1\n", "unknown field"),
            ("trust_domain: a.org\nca: {ttl: 1m}\n", "ca.ttl"),
            (
                "trust_domain: a.org\nagent_svid_ttl: 20h\n",
                "agent_svid_ttl",
            ),
            (
                "trust_domain: a.org\nserver_names: [\"bad name\"]\n",
                "server_names",
            ),
            (
                "trust_domain: a.org\nca: {jwt_issuer: oidc.example}\n",
                "jwt_issuer",
            ),
            (
                "trust_domain: a.org\nfederation: {a.org: /x}\n",
                "own trust domain",
            ),
            (
                "trust_domain: a.org\nfederation: {b.org: /nonexistent}\n",
                "/nonexistent",
            ),
            ("trust_domain: a.org\nca: {ttl: soon}\n", "ca"),
            (
                "trust_domain: a.org\nfederation: {b.org: {bundle_endpoint_url: \"http://b.org/\", profile: https_web}}\n",
                "https:// URL",
            ),
            (
                "trust_domain: a.org\nfederation: {b.org: {bundle_endpoint_url: \"https://b.org/\", profile: https_spiffe, endpoint_spiffe_id: \"spiffe://b.org/x\"}}\n",
                "needs a first bundle",
            ),
            (
                "trust_domain: a.org\nfederation: {b.org: {bundle_endpoint_url: \"https://b.org/\", profile: https_spiffe}}\n",
                "needs the endpoint's SPIFFE ID",
            ),
            (
                "trust_domain: a.org\nfederation: {b.org: {bundle_endpoint_url: \"https://b.org/\", profile: https_web, endpoint_spiffe_id: \"spiffe://b.org/x\"}}\n",
                "for https_spiffe",
            ),
            (
                "trust_domain: a.org\nbundle_endpoint: {listen: \"127.0.0.1:8445\", profile: https_web}\n",
                "tls_cert and tls_key",
            ),
        ];
        for (yaml, expected) in cases {
            let error = parse(yaml)
                .err()
                .unwrap_or_else(|| panic!("{yaml} was accepted"));
            assert!(error.to_string().contains(expected), "{yaml}: {error}");
        }
    }
}
