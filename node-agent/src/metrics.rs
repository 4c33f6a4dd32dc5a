//! Prometheus metrics of the agent, served on `metrics_listen` `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::attest::AttestErrorKind;

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Every metric the agent records. Cheap to share behind an `Arc`; a
/// `Default` instance records into nothing registered (tests).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    requests: Family<Labels2, Counter>,
    attestation_failures: Family<Labels1, Counter>,
    svids_cached: Gauge,
    signing_requests: Family<Labels1, Counter>,
    signing_failures: Family<Labels2, Counter>,
    local_denials: Family<Labels1, Counter>,
    connections: Gauge,
    connections_refused: Family<Labels1, Counter>,
    svids_on_tainted_authority: Gauge,
    taint_reissues: Counter,
    pod_bind_to_svid_ready: BindToReady,
    pods_signed_ahead: Counter,
}

/// Seconds from a pod's binding to its SVIDs signed ahead.
#[derive(Clone, Debug)]
struct BindToReady(Histogram);

impl Default for BindToReady {
    fn default() -> Self {
        Self(Histogram::new([
            0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]))
    }
}

impl Metrics {
    /// Creates the metrics and registers them under `signet_agent_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "signet_agent_workload_api_requests",
            "Workload API and SDS calls by RPC and gRPC status code (streams count once, with the code they started with)",
            metrics.requests.clone(),
        );
        registry.register(
            "signet_agent_attestation_failures",
            "Workload attestation failures by kind",
            metrics.attestation_failures.clone(),
        );
        registry.register(
            "signet_agent_svids_cached",
            "X.509-SVIDs currently held by the cache",
            metrics.svids_cached.clone(),
        );
        registry.register(
            "signet_agent_signing_requests",
            "SVIDs requested from the issuer, by type (x509, jwt)",
            metrics.signing_requests.clone(),
        );
        registry.register(
            "signet_agent_signing_failures",
            "SVID requests that produced no SVID, by type and reason (unavailable, denied, invalid_svid)",
            metrics.signing_failures.clone(),
        );
        registry.register(
            "signet_agent_local_denials",
            "Callers the agent refused without asking the issuer, by reason (process_changed, evidence_mismatch, attestation_unavailable, attestation_failed, no_peer, no_identity)",
            metrics.local_denials.clone(),
        );
        registry.register(
            "signet_agent_connections",
            "Open Workload API and SDS connections",
            metrics.connections.clone(),
        );
        registry.register(
            "signet_agent_connections_refused",
            "Workload API and SDS connections closed at accept, by reason (per_uid_limit, total_limit, handshake_timeout)",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "signet_agent_svids_on_tainted_authority",
            "X.509-SVIDs currently held by the cache that a tainted CA signed",
            metrics.svids_on_tainted_authority.clone(),
        );
        registry.register(
            "signet_agent_taint_reissues",
            "SVID re-issues (workload and agent SVIDs) scheduled because the authority that signed them was tainted",
            metrics.taint_reissues.clone(),
        );
        registry.register(
            "signet_agent_pod_bind_to_svid_ready_seconds",
            "Seconds from the operator seeing a pod bound to this node to every SVID signed ahead for it being in the cache",
            metrics.pod_bind_to_svid_ready.0.clone(),
        );
        registry.register(
            "signet_agent_pods_signed_ahead",
            "Pods whose SVIDs were signed before their first caller",
            metrics.pods_signed_ahead.clone(),
        );
        metrics
    }

    /// A pod's SVIDs signed ahead are in the cache, `since_bound` after it
    /// was bound (when known).
    pub fn pod_signed_ahead(&self, since_bound: Option<std::time::Duration>) {
        self.pods_signed_ahead.inc();
        if let Some(since_bound) = since_bound {
            self.pod_bind_to_svid_ready
                .0
                .observe(since_bound.as_secs_f64());
        }
    }

    pub fn local_denial(&self, reason: &'static str) {
        self.local_denials
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn request(&self, rpc: &'static str, code: tonic::Code) {
        self.requests
            .get_or_create(&[("rpc", rpc), ("code", code_name(code))])
            .inc();
    }

    pub fn attestation_failure(&self, kind: AttestErrorKind) {
        self.attestation_failures
            .get_or_create(&[("kind", attest_kind_name(kind))])
            .inc();
    }

    pub fn set_connections(&self, count: usize) {
        self.connections
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    pub fn set_svids_cached(&self, count: usize) {
        self.svids_cached
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_svids_on_tainted_authority(&self, count: usize) {
        self.svids_on_tainted_authority
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn taint_reissues(&self, count: u64) {
        self.taint_reissues.inc_by(count);
    }

    pub fn signing_requests(&self, kind: &'static str, count: usize) {
        self.signing_requests
            .get_or_create(&[("type", kind)])
            .inc_by(count as u64);
    }

    pub fn signing_failures(&self, kind: &'static str, reason: &'static str, count: usize) {
        self.signing_failures
            .get_or_create(&[("type", kind), ("reason", reason)])
            .inc_by(count as u64);
    }

    /// Current count for one RPC and code (tests and benchmarks).
    pub fn request_count(&self, rpc: &'static str, code: tonic::Code) -> u64 {
        self.requests
            .get_or_create(&[("rpc", rpc), ("code", code_name(code))])
            .get()
    }
}

fn attest_kind_name(kind: AttestErrorKind) -> &'static str {
    match kind {
        AttestErrorKind::Unauthenticated => "process_changed",
        AttestErrorKind::PermissionDenied => "evidence_mismatch",
        AttestErrorKind::FailedPrecondition => "misconfigured",
        AttestErrorKind::Unavailable => "unavailable",
        AttestErrorKind::DeadlineExceeded => "deadline_exceeded",
        AttestErrorKind::Internal => "internal",
    }
}

/// gRPC code names as the gRPC documentation spells them.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exported() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.request("FetchX509SVID", tonic::Code::Ok);
        metrics.attestation_failure(AttestErrorKind::Unauthenticated);
        metrics.set_svids_cached(3);
        metrics.signing_requests("x509", 2);
        metrics.signing_failures("x509", "denied", 1);
        metrics.set_svids_on_tainted_authority(4);
        metrics.taint_reissues(4);
        metrics.taint_reissues(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for expected in [
            r#"signet_agent_workload_api_requests_total{rpc="FetchX509SVID",code="OK"} 1"#,
            r#"signet_agent_attestation_failures_total{kind="process_changed"} 1"#,
            "signet_agent_svids_cached 3",
            r#"signet_agent_signing_requests_total{type="x509"} 2"#,
            r#"signet_agent_signing_failures_total{type="x509",reason="denied"} 1"#,
            "signet_agent_svids_on_tainted_authority 4",
            "signet_agent_taint_reissues_total 5",
        ] {
            assert!(text.contains(expected), "{expected} missing from\n{text}");
        }
    }
}
