//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    /// `x509`, `jwt` or `agent`.
    pub kind: &'static str,
    pub workload_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub kind: &'static str,
    pub workload_identity: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrustDomainLabels {
    pub trust_domain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabels {
    /// `x509` or `jwt`.
    pub kind: &'static str,
    /// Subject key id (hex) or `kid`.
    pub id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityStateLabels {
    pub kind: &'static str,
    pub id: String,
    /// `prepared`, `active`, `retired` or `tainted`.
    pub state: &'static str,
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Per authority of the trust domain: its state (value 1), notAfter
    /// (Unix seconds) and live SVIDs it signed; and the live SVIDs signed
    /// by tainted authorities altogether.
    pub authority_state: Family<AuthorityStateLabels, Gauge>,
    pub authority_not_after: Family<AuthorityLabels, Gauge>,
    pub authority_live_svids: Family<AuthorityLabels, Gauge>,
    pub svids_on_tainted_authorities: Gauge,
    pub issued: Family<IssuedLabels, Counter>,
    pub denied: Family<DeniedLabels, Counter>,
    pub policy_version: Gauge,
    pub bundle_sequence: Gauge,
    pub agents_connected: Gauge,
    /// Pods in the issuer's watch (Kubernetes mode).
    pub pods_cached: Gauge,
    /// Nodes in the operator's metadata watch (Kubernetes mode).
    pub nodes_cached: Gauge,
    /// Per federated trust domain: when its bundle was last fetched or read
    /// successfully, its `spiffe_sequence`, its earliest X.509 authority
    /// expiry (Unix seconds), and failed refreshes.
    pub federation_last_refresh: Family<TrustDomainLabels, Gauge>,
    pub federation_sequence: Family<TrustDomainLabels, Gauge>,
    pub federation_earliest_expiry: Family<TrustDomainLabels, Gauge>,
    pub federation_failures: Family<TrustDomainLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `signet_operator_`.
    pub fn register(registry: &mut Registry) -> std::sync::Arc<Self> {
        let metrics = Self::default();
        let sub = registry.sub_registry_with_prefix("signet_operator");
        sub.register(
            "svids_issued",
            "SVIDs issued, by kind and WorkloadIdentity",
            metrics.issued.clone(),
        );
        sub.register(
            "svids_denied",
            "SVID requests denied, by kind, WorkloadIdentity and reason",
            metrics.denied.clone(),
        );
        sub.register(
            "authority_state",
            "Each authority of the trust domain (kind, id) in its state: prepared, active, retired or tainted (value 1)",
            metrics.authority_state.clone(),
        );
        sub.register(
            "authority_not_after_timestamp_seconds",
            "Each authority's notAfter",
            metrics.authority_not_after.clone(),
        );
        sub.register(
            "authority_live_svids",
            "SVIDs in use (latest per holder, not expired) that each authority signed, as this replica signed them",
            metrics.authority_live_svids.clone(),
        );
        sub.register(
            "svids_on_tainted_authorities",
            "SVIDs in use that a tainted authority signed (falls to 0 as agents re-issue)",
            metrics.svids_on_tainted_authorities.clone(),
        );
        sub.register(
            "policy_version",
            "Version of the policy in force",
            metrics.policy_version.clone(),
        );
        sub.register(
            "bundle_sequence",
            "spiffe_sequence of the published trust bundle",
            metrics.bundle_sequence.clone(),
        );
        sub.register(
            "agents_watching",
            "Agents with an open WatchPolicy stream",
            metrics.agents_connected.clone(),
        );
        sub.register(
            "pods_cached",
            "Pods in the issuer's own watch of the API server (Kubernetes mode)",
            metrics.pods_cached.clone(),
        );
        sub.register(
            "nodes_cached",
            "Nodes (metadata only) in the operator's own watch of the API server (Kubernetes mode)",
            metrics.nodes_cached.clone(),
        );
        sub.register(
            "federation_last_refresh_timestamp_seconds",
            "When each federated trust domain's bundle was last fetched or read successfully",
            metrics.federation_last_refresh.clone(),
        );
        sub.register(
            "federation_bundle_sequence",
            "spiffe_sequence of each federated trust domain's bundle in force",
            metrics.federation_sequence.clone(),
        );
        sub.register(
            "federation_earliest_expiry_timestamp_seconds",
            "Earliest notAfter of each federated trust domain's X.509 authorities",
            metrics.federation_earliest_expiry.clone(),
        );
        sub.register(
            "federation_refresh_failures",
            "Failed fetches or reads of each federated trust domain's bundle",
            metrics.federation_failures.clone(),
        );
        std::sync::Arc::new(metrics)
    }

    /// Records the bundle in force for `trust_domain` (its sequence and
    /// earliest expiry); `refreshed` when it was just fetched or read (not
    /// when loaded from saved state).
    pub fn federation_bundle(
        &self,
        trust_domain: &signet_identity::TrustDomain,
        sequence: u64,
        earliest_expiry: Option<std::time::SystemTime>,
        refreshed: Option<std::time::SystemTime>,
    ) {
        let labels = TrustDomainLabels {
            trust_domain: trust_domain.to_string(),
        };
        let seconds = |time: std::time::SystemTime| {
            time.duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        };
        if let Some(time) = refreshed {
            self.federation_last_refresh
                .get_or_create(&labels)
                .set(seconds(time));
        }
        self.federation_sequence
            .get_or_create(&labels)
            .set(i64::try_from(sequence).unwrap_or(i64::MAX));
        if let Some(expiry) = earliest_expiry {
            self.federation_earliest_expiry
                .get_or_create(&labels)
                .set(seconds(expiry));
        }
    }

    pub fn federation_failed(&self, trust_domain: &signet_identity::TrustDomain) {
        self.federation_failures
            .get_or_create(&TrustDomainLabels {
                trust_domain: trust_domain.to_string(),
            })
            .inc();
    }

    pub fn issued(&self, kind: &'static str, workload_identity: &str) {
        self.issued
            .get_or_create(&IssuedLabels {
                kind,
                workload_identity: workload_identity.to_owned(),
            })
            .inc();
    }

    pub fn denied(&self, kind: &'static str, workload_identity: &str, reason: &str) {
        self.denied
            .get_or_create(&DeniedLabels {
                kind,
                workload_identity: workload_identity.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
