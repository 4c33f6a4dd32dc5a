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

#[derive(Debug, Default)]
pub struct Metrics {
    pub issued: Family<IssuedLabels, Counter>,
    pub denied: Family<DeniedLabels, Counter>,
    pub policy_version: Gauge,
    pub bundle_sequence: Gauge,
    pub agents_connected: Gauge,
    /// Pods in the issuer's watch (Kubernetes mode).
    pub pods_cached: Gauge,
    /// Nodes in the operator's metadata watch (Kubernetes mode).
    pub nodes_cached: Gauge,
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
        std::sync::Arc::new(metrics)
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
