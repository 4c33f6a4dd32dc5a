//! Configuration of `signet-operator kubernetes`: the same YAML file as
//! standalone mode (trust domain, CA, TTLs, audit, metrics, OIDC), without
//! the standalone-only keys, plus a `kubernetes` section:
//!
//! ```yaml
//! kubernetes:
//!   namespace: signet-system          # default: $POD_NAMESPACE
//!   ca_secret: signet-ca              # Secret holding the CA keyset
//!   bundle_config_map: signet-bundle  # ConfigMap the trust bundle is published to
//!   lease_name: signet-operator       # Lease of the leader election
//!   lease_duration: 15s
//!   agent_service_account: signet-agent  # agents' service account (same namespace)
//!   agent_audience: signet-issuer     # audience of the agents' projected tokens
//!   pod_token_audience: signet-csi    # audience of pod tokens signet-csi passes on
//!   webhook:                          # validating admission webhook (off without it)
//!     listen: 0.0.0.0:9443
//!     configuration: signet-operator  # ValidatingWebhookConfiguration whose caBundle the leader keeps current
//!   user_issuance:                    # `signet issue` for people and pipelines (off without it)
//!     listen: 0.0.0.0:9444            # the aggregated API issuance.signet.dev
//!     api_service: v1alpha1.issuance.signet.dev  # APIService whose caBundle the leader keeps current
//!     default_ttl: 15m
//!     max_ttl: 1h                     # also capped by each WorkloadIdentity's own TTL
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::cluster::leader::ElectionSettings;
use crate::config::{
    ConfigError, FileConfig, OidcConfig, Overrides, StandaloneConfig, WebhookSection,
};

/// Command-line values of the kubernetes subcommand.
#[derive(Clone, Debug, Default)]
pub struct KubernetesOverrides {
    pub namespace: Option<String>,
    /// This replica's name in the Lease (its pod name).
    pub identity: Option<String>,
    pub lease_duration: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    pub namespace: String,
    pub ca_secret: String,
    pub bundle_config_map: String,
    pub election: ElectionSettings,
    pub agent_service_account: String,
    pub agent_audience: String,
    pub pod_token_audience: String,
    pub webhook: Option<WebhookSection>,
    pub user_issuance: Option<UserIssuanceConfig>,
}

/// `kubernetes.user_issuance`, resolved.
#[derive(Clone, Debug)]
pub struct UserIssuanceConfig {
    pub listen: std::net::SocketAddr,
    pub api_service: Option<String>,
    pub ttls: crate::cluster::user_issuance::UserTtls,
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The settings both modes share (`policy_dir`, `state_dir` and
    /// `join_tokens` are not used in a cluster).
    pub base: StandaloneConfig,
    pub kubernetes: KubernetesConfig,
    pub oidc: Option<OidcConfig>,
}

/// Whether `name` can name a Kubernetes object: an RFC 1123 subdomain
/// (dot-separated labels of lowercase letters, digits and inner hyphens).
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Kubernetes object name (RFC 1123 subdomain).
fn check_name(field: &str, value: &str) -> Result<(), ConfigError> {
    if is_dns_subdomain(value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{field} {value:?} is not a valid Kubernetes name"
        )))
    }
}

impl ClusterConfig {
    pub fn resolve(
        mut file: FileConfig,
        mut overrides: Overrides,
        kube: KubernetesOverrides,
    ) -> Result<Self, ConfigError> {
        let invalid = |message: &str| ConfigError::Invalid(message.to_owned());
        if file.policy_dir.is_some() || file.state_dir.is_some() || !file.join_tokens.is_empty() {
            return Err(invalid(
                "policy_dir, state_dir and join_tokens are standalone settings: in a cluster, policy is WorkloadIdentity/Role objects, the CA lives in a Secret and agents join with service-account tokens",
            ));
        }
        let section = file.kubernetes.take().unwrap_or_default();
        // Audit events go to the container log unless a file is configured.
        if overrides.audit_log.is_none() && file.audit_log.is_none() {
            overrides.audit_log = Some(PathBuf::from("-"));
        }
        let base = StandaloneConfig::resolve(file, overrides)?;

        let namespace = kube
            .namespace
            .or(section.namespace)
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .ok_or_else(|| {
                invalid("kubernetes.namespace is required (or --namespace, $POD_NAMESPACE)")
            })?;
        check_name("kubernetes.namespace", &namespace)?;
        let identity = kube
            .identity
            .or_else(|| std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|name| name.trim().to_owned())
                    .filter(|name| !name.is_empty())
            })
            .ok_or_else(|| {
                invalid("cannot tell this replica's name: set --identity or $POD_NAME")
            })?;
        let lease_duration = kube
            .lease_duration
            .or(section.lease_duration)
            .unwrap_or(Duration::from_secs(15));
        if lease_duration < Duration::from_secs(3) {
            return Err(invalid("kubernetes.lease_duration must be at least 3s"));
        }
        let ca_secret = section.ca_secret.unwrap_or_else(|| "signet-ca".into());
        let bundle_config_map = section
            .bundle_config_map
            .unwrap_or_else(|| "signet-bundle".into());
        let lease_name = section
            .lease_name
            .unwrap_or_else(|| "signet-operator".into());
        let agent_service_account = section
            .agent_service_account
            .unwrap_or_else(|| "signet-agent".into());
        for (field, value) in [
            ("kubernetes.ca_secret", &ca_secret),
            ("kubernetes.bundle_config_map", &bundle_config_map),
            ("kubernetes.lease_name", &lease_name),
            ("kubernetes.agent_service_account", &agent_service_account),
        ] {
            check_name(field, value)?;
        }
        let agent_audience = section
            .agent_audience
            .unwrap_or_else(|| "signet-issuer".into());
        let pod_token_audience = section
            .pod_token_audience
            .unwrap_or_else(|| "signet-csi".into());
        if agent_audience.is_empty() || pod_token_audience.is_empty() {
            return Err(invalid(
                "kubernetes.agent_audience and pod_token_audience must not be empty",
            ));
        }
        if agent_audience == pod_token_audience {
            // A pod's token must never pass for an agent's, nor the reverse.
            return Err(invalid(
                "kubernetes.agent_audience and pod_token_audience must differ",
            ));
        }
        if let Some(configuration) = section
            .webhook
            .as_ref()
            .and_then(|w| w.configuration.as_ref())
        {
            check_name("kubernetes.webhook.configuration", configuration)?;
        }
        let user_issuance = match section.user_issuance {
            None => None,
            Some(users) => {
                if let Some(name) = &users.api_service {
                    check_name("kubernetes.user_issuance.api_service", name)?;
                }
                let max = users.max_ttl.unwrap_or(Duration::from_secs(3600));
                // A default above the maximum could never be given: it is
                // the maximum (so lowering max_ttl alone is enough).
                let default = users
                    .default_ttl
                    .unwrap_or(Duration::from_secs(15 * 60))
                    .min(max);
                if default.is_zero() || max.is_zero() {
                    return Err(invalid(
                        "kubernetes.user_issuance: default_ttl and max_ttl must be positive",
                    ));
                }
                Some(UserIssuanceConfig {
                    listen: users.listen,
                    api_service: users.api_service,
                    ttls: crate::cluster::user_issuance::UserTtls { default, max },
                })
            }
        };
        let oidc = base.oidc.clone();
        Ok(Self {
            base,
            kubernetes: KubernetesConfig {
                namespace,
                ca_secret,
                bundle_config_map,
                election: ElectionSettings::new(lease_name, identity)
                    .with_lease_duration(lease_duration),
                agent_service_account,
                agent_audience,
                pod_token_audience,
                webhook: section.webhook,
                user_issuance,
            },
            oidc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(yaml: &str) -> Result<ClusterConfig, ConfigError> {
        let file: FileConfig = serde_yaml::from_str(yaml).unwrap();
        ClusterConfig::resolve(
            file,
            Overrides::default(),
            KubernetesOverrides {
                identity: Some("operator-0".into()),
                ..KubernetesOverrides::default()
            },
        )
    }

    #[test]
    fn defaults_and_the_kubernetes_section() {
        let config =
            resolve("trust_domain: example.org\nkubernetes: {namespace: signet-system}\n").unwrap();
        assert_eq!(config.kubernetes.ca_secret, "signet-ca");
        assert_eq!(config.kubernetes.bundle_config_map, "signet-bundle");
        assert_eq!(config.kubernetes.election.lease_name, "signet-operator");
        assert_eq!(config.kubernetes.election.identity, "operator-0");
        assert_eq!(config.kubernetes.agent_audience, "signet-issuer");
        assert_eq!(config.base.audit_log, PathBuf::from("-"));
        let custom = resolve(
            "trust_domain: example.org\nkubernetes: {namespace: ns, ca_secret: my-ca, lease_duration: 6s}\n",
        )
        .unwrap();
        assert_eq!(custom.kubernetes.ca_secret, "my-ca");
        assert_eq!(
            custom.kubernetes.election.lease_duration,
            Duration::from_secs(6)
        );
    }

    #[test]
    fn user_issuance_lifetimes() {
        let config = resolve("trust_domain: example.org\nkubernetes: {namespace: ns}\n").unwrap();
        assert!(config.kubernetes.user_issuance.is_none(), "off by default");
        let users = |section: &str| {
            resolve(&format!(
                "trust_domain: example.org\nkubernetes: {{namespace: ns, user_issuance: {section}}}\n"
            ))
        };
        let on = users("{listen: \"0.0.0.0:9444\"}").unwrap();
        let ttls = on.kubernetes.user_issuance.unwrap().ttls;
        assert_eq!(
            (ttls.default, ttls.max),
            (Duration::from_secs(900), Duration::from_secs(3600))
        );
        // Lowering the maximum alone lowers the default with it.
        let short = users("{listen: \"0.0.0.0:9444\", max_ttl: 10m}").unwrap();
        let ttls = short.kubernetes.user_issuance.unwrap().ttls;
        assert_eq!(
            (ttls.default, ttls.max),
            (Duration::from_secs(600), Duration::from_secs(600))
        );
        let err = users("{listen: \"0.0.0.0:9444\", max_ttl: 0s}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be positive"), "{err}");
        let err = users("{listen: \"0.0.0.0:9444\", api_service: Not_A_Name}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_service"), "{err}");
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        assert!(is_dns_subdomain("node-a"));
        assert!(is_dns_subdomain("ip-10-0-0-1.ec2.internal"));
        assert!(!is_dns_subdomain("Node_A"));
        assert!(!is_dns_subdomain(""));
        assert!(!is_dns_subdomain("-a"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("a.-b"));
    }

    #[test]
    fn standalone_keys_and_bad_names_are_refused() {
        let err =
            resolve("trust_domain: example.org\npolicy_dir: /x\nkubernetes: {namespace: ns}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("standalone settings"), "{err}");
        let err =
            resolve("trust_domain: example.org\nkubernetes: {namespace: ns, ca_secret: My_CA}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("kubernetes.ca_secret"), "{err}");
        let err =
            resolve("trust_domain: example.org\nkubernetes: {namespace: ns, lease_duration: 1s}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("lease_duration"), "{err}");
    }
}
