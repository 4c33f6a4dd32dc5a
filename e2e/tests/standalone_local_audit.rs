//! Refusals the agent makes without asking the issuer are audited, and a
//! caller retrying in a loop cannot flood the audit log.
//!
//! Attack: a process no WorkloadIdentity applies to calls the Workload API
//! hundreds of times in a row. Before, these refusals left no trace at all
//! (the issuer never hears of them); written one line each, a loop would
//! fill the agent's disk. The real operator and agent binaries and the
//! `spiffe` crate's client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use signet_e2e::standalone::{Stack, current_uid, http_get, uid_policy, wait_until};
use spiffe::WorkloadApiClient;

const CALLS: usize = 300;

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_loop_is_audited_once_then_summarised() {
    let uid = current_uid();
    let other = if uid == 65534 { 65533 } else { 65534 };
    let metrics_port = signet_e2e::cluster::free_port();
    let mut stack = Stack::operator_only(&uid_policy("web", other));
    stack.set_agent_extra(&format!(
        "metrics_listen: 127.0.0.1:{metrics_port}\naudit_summary_window: 2s\n"
    ));
    stack.start_agent();

    let client = WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    for _ in 0..CALLS {
        let refused = client.fetch_x509_svid().await;
        assert!(refused.is_err(), "uid {uid} was issued an SVID");
    }

    let uid_text = uid.to_string();
    let ours = |e: &serde_json::Value| {
        e["event"] == "svid.denied"
            && e["reason"] == "no_identity"
            && e["workload"]["workload.unix.uid"].as_str() == Some(uid_text.as_str())
    };
    // The window ends two seconds after the first refusal; the summary is
    // written at the next tick.
    wait_until("the refusal summary", Duration::from_secs(15), || {
        stack
            .agent_audit_events()
            .iter()
            .any(|e| ours(e) && e.get("suppressed").is_some())
    });
    let events: Vec<_> = stack
        .agent_audit_events()
        .into_iter()
        .filter(ours)
        .collect();
    let (summaries, single): (Vec<_>, Vec<_>) =
        events.iter().partition(|e| e.get("suppressed").is_some());
    // The loop may straddle a window boundary, so allow a second window;
    // what matters is that every refusal is accounted for in a handful of
    // lines, not one line per call.
    assert!(
        !single.is_empty() && single.len() <= 2 && summaries.len() <= 2,
        "expected one full event and one summary per window, got {events:#?}"
    );
    let accounted: u64 = single.len() as u64
        + summaries
            .iter()
            .map(|e| e["suppressed"].as_u64().unwrap())
            .sum::<u64>();
    assert_eq!(accounted, CALLS as u64, "{events:#?}");
    let first = single[0];
    assert_eq!(first["credential"], "x509_svid");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("no WorkloadIdentity applies"),
        "{first}"
    );
    assert!(
        first["workload"]["workload.unix.pid"].is_string(),
        "{first}"
    );
    assert!(
        summaries[0]["message"]
            .as_str()
            .unwrap()
            .contains("more like this since"),
        "{}",
        summaries[0]
    );

    // Every refusal is counted in the metric, by a reason from a fixed set.
    let metrics = http_get(metrics_port, "/metrics");
    let expected = format!(r#"signet_agent_local_denials_total{{reason="no_identity"}} {CALLS}"#);
    assert!(
        metrics.contains(&expected),
        "{expected} missing from:\n{metrics}"
    );

    // The operator heard none of it: the agent refused locally.
    assert!(
        !stack.audit_events().iter().any(ours),
        "the issuer was asked for a workload no identity applies to"
    );
}
