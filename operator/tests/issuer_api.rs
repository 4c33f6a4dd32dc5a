//! The issuer gRPC API from a client's side, over real TLS against an
//! in-process standalone operator: what a forged or confused agent gets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use signet_identity::x509::spiffe_id_from_cert;
use signet_proto::issuer::v1 as pb;
use support::*;
use tokio_stream::StreamExt;

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: web, labels: {suite: api}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, eq: "1000"}]
  spiffe:
    id: "/web/{{ agent.name }}/uid/{{ workload.unix.uid }}"
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: unlisted, labels: {suite: other}}
spec:
  spiffe: {id: "/unlisted"}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [api]}}
"#;

fn x509(workload: pb::Workload, identity: &str) -> pb::X509SvidRequest {
    pb::X509SvidRequest {
        workload: Some(workload),
        workload_identity: identity.to_owned(),
        csr: csr(),
    }
}

fn denial(result: &pb::X509SvidResult) -> &pb::Denial {
    match &result.result {
        Some(pb::x509_svid_result::Result::Denial(denial)) => denial,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_issuer_renders_the_id_and_refuses_what_policy_does_not_allow() {
    let operator = start_operator(POLICY).await;
    let (mut client, joined) = operator.join().await;
    assert_eq!(joined.agent_name, AGENT_NAME);
    assert_eq!(
        joined.spiffe_id,
        format!("spiffe://example.org/signet/agent/join/{AGENT_NAME}")
    );

    // agent.* comes from the caller's SVID only: an agent reporting it for a
    // workload is refused outright.
    let mut forged = workload(1000);
    forged
        .attributes
        .insert("agent.name".to_owned(), "someone-else".to_owned());
    let response = client
        .sign_x509_svids(pb::SignX509SvidsRequest {
            requests: vec![
                x509(workload(1000), "web"),
                x509(forged, "web"),
                x509(workload(2000), "web"),
                x509(workload(1000), "unlisted"),
                x509(workload(1000), "does-not-exist"),
                pb::X509SvidRequest {
                    csr: b"not a CSR".to_vec(),
                    ..x509(workload(1000), "web")
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.results.len(),
        6,
        "one result per request, in order"
    );

    let Some(pb::x509_svid_result::Result::Svid(svid)) = &response.results[0].result else {
        panic!("not issued: {:?}", response.results[0]);
    };
    let expected = format!("spiffe://example.org/web/{AGENT_NAME}/uid/1000");
    assert_eq!(svid.spiffe_id, expected);
    assert_eq!(
        spiffe_id_from_cert(&svid.cert_chain[0])
            .unwrap()
            .to_string(),
        expected
    );

    // Forged agent attributes, attributes no rule allows, a Role that does
    // not grant the identity, an unknown identity and a bad CSR: refused
    // with a reason, not retryable.
    for (index, result) in response.results.iter().enumerate().skip(1) {
        let denial = denial(result);
        assert!(
            !denial.reason.is_empty() && !denial.message.is_empty(),
            "{denial:?}"
        );
        assert!(!denial.retryable, "request {index}: {denial:?}");
    }
    assert_eq!(denial(&response.results[1]).reason, "invalid_attributes");
    assert_eq!(denial(&response.results[5]).reason, "invalid_csr");

    // Issued and denied requests are audited.
    let events = operator.audit_events();
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "svid.issued")
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["workload"]["agent.name"], AGENT_NAME);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "svid.denied")
            .count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_an_agent_svid_and_reused_tokens_are_unauthenticated() {
    let operator = start_operator(POLICY).await;
    let status = operator
        .anonymous()
        .sign_x509_svids(pb::SignX509SvidsRequest {
            requests: vec![x509(workload(1000), "web")],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let status = operator
        .anonymous()
        .join(pb::JoinRequest {
            credential: Some(pb::join_request::Credential::JoinToken("wrong".into())),
            csr: csr(),
            node_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // The single-use token works once.
    let _ = operator.join().await;
    let status = operator
        .anonymous()
        .join(pb::JoinRequest {
            credential: Some(pb::join_request::Credential::JoinToken(
                operator.token.clone(),
            )),
            csr: csr(),
            node_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        operator
            .audit_events()
            .iter()
            .any(|e| e["event"] == "agent.join_denied")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_batches_and_bad_jwt_requests_get_the_right_codes() {
    let operator = start_operator(POLICY).await;
    let (mut client, _) = operator.join().await;
    let request = x509(workload(1000), "web");
    let status = client
        .sign_x509_svids(pb::SignX509SvidsRequest {
            requests: vec![request; signet_proto::issuer_protocol::MAX_BATCH + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    let response = client
        .sign_jwt_svids(pb::SignJwtSvidsRequest {
            requests: vec![
                pb::JwtSvidRequest {
                    workload: Some(workload(1000)),
                    workload_identity: "web".into(),
                    audience: vec!["vault".into()],
                },
                pb::JwtSvidRequest {
                    workload: Some(workload(1000)),
                    workload_identity: "web".into(),
                    audience: vec![],
                },
            ],
        })
        .await;
    match response {
        Ok(response) => {
            let results = response.into_inner().results;
            let Some(pb::jwt_svid_result::Result::Svid(jwt)) = &results[0].result else {
                panic!("not issued: {:?}", results[0]);
            };
            assert_eq!(
                jwt.spiffe_id,
                format!("spiffe://example.org/web/{AGENT_NAME}/uid/1000")
            );
            assert!(
                matches!(
                    results[1].result,
                    Some(pb::jwt_svid_result::Result::Denial(_))
                ),
                "a JWT-SVID without an audience is refused: {:?}",
                results[1]
            );
        }
        Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_audience_is_refused_unsigned_and_audited_bounded() {
    use signet_proto::issuer_protocol::MAX_AUDIENCE_LEN;
    let operator = start_operator(POLICY).await;
    let (mut client, _) = operator.join().await;
    let huge = "v".repeat(1 << 20);
    let jwt = |audience: Vec<String>| pb::JwtSvidRequest {
        workload: Some(workload(1000)),
        workload_identity: "web".into(),
        audience,
    };
    let results = client
        .sign_jwt_svids(pb::SignJwtSvidsRequest {
            requests: vec![
                jwt(vec!["vault".into(), huge.clone()]),
                jwt(vec!["a".repeat(MAX_AUDIENCE_LEN + 1)]),
                jwt(vec!["a".repeat(MAX_AUDIENCE_LEN)]),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for result in &results[..2] {
        let Some(pb::jwt_svid_result::Result::Denial(denial)) = &result.result else {
            panic!("an oversized audience was signed: {result:?}");
        };
        assert_eq!(denial.reason, "invalid_request", "{denial:?}");
        assert!(!denial.retryable);
    }
    assert!(
        matches!(
            results[2].result,
            Some(pb::jwt_svid_result::Result::Svid(_))
        ),
        "exactly the limit is fine: {:?}",
        results[2]
    );

    let audit = std::fs::read_to_string(operator.path("audit.log")).unwrap();
    assert!(
        audit.len() < 64 * 1024,
        "the audit log holds {} bytes",
        audit.len()
    );
    let events = operator.audit_events();
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "svid.denied")
        .collect();
    assert_eq!(denied.len(), 2);
    assert_eq!(
        denied[0]["audiences"][0], "vault",
        "what was asked is recorded"
    );
    assert!(
        denied[0]["audiences"][1]
            .as_str()
            .unwrap()
            .ends_with("more bytes]")
    );
}

/// Templates that render Signet's own IDs when an attribute's value is
/// `signet`: no policy can hand a workload an agent's or the issuer's ID.
const IMPOSTOR_POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: agent-impostor, labels: {suite: api}}
spec:
  spiffe: {id: "/{{ workload.kubernetes.namespace }}/agent/k8s/node-1"}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: issuer-impostor, labels: {suite: api}}
spec:
  spiffe: {id: "/{{ workload.kubernetes.namespace }}/issuer"}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [api]}}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn no_workload_gets_a_reserved_id_whatever_the_policy_renders() {
    let operator = start_operator(IMPOSTOR_POLICY).await;
    let (mut client, _) = operator.join().await;
    let in_namespace = |namespace: &str| {
        let mut workload = workload(1000);
        workload.attributes.insert(
            "workload.kubernetes.namespace".to_owned(),
            namespace.to_owned(),
        );
        workload
    };
    let x509_results = client
        .sign_x509_svids(pb::SignX509SvidsRequest {
            requests: vec![
                x509(in_namespace("signet"), "agent-impostor"),
                x509(in_namespace("signet"), "issuer-impostor"),
                x509(in_namespace("shop"), "agent-impostor"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for result in &x509_results[..2] {
        let denial = denial(result);
        assert!(denial.reason.contains("reserved"), "{denial:?}");
        assert!(!denial.retryable);
    }
    // The same template with another value is an ordinary identity.
    let Some(pb::x509_svid_result::Result::Svid(svid)) = &x509_results[2].result else {
        panic!("not issued: {:?}", x509_results[2]);
    };
    assert_eq!(svid.spiffe_id, "spiffe://example.org/shop/agent/k8s/node-1");

    let jwt_results = client
        .sign_jwt_svids(pb::SignJwtSvidsRequest {
            requests: vec![pb::JwtSvidRequest {
                workload: Some(in_namespace("signet")),
                workload_identity: "agent-impostor".into(),
                audience: vec!["vault".into()],
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let Some(pb::jwt_svid_result::Result::Denial(denial)) = &jwt_results[0].result else {
        panic!(
            "a JWT-SVID with a reserved ID came back: {:?}",
            jwt_results[0]
        );
    };
    assert!(denial.reason.contains("reserved"), "{denial:?}");

    // Each refusal is audited with its reason; nothing reserved was issued.
    let events = operator.audit_events();
    let denied: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "svid.denied")
        .collect();
    assert_eq!(denied.len(), 3);
    assert!(
        denied
            .iter()
            .all(|e| e["reason"].as_str().unwrap().contains("reserved"))
    );
    assert!(events.iter().all(|e| {
        e["event"] != "svid.issued"
            || !e["spiffe_id"]
                .as_str()
                .unwrap()
                .starts_with("spiffe://example.org/signet/")
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_policy_sends_the_current_state_then_each_change() {
    let operator = start_operator(POLICY).await;
    let (mut client, _) = operator.join().await;
    let mut updates = client
        .watch_policy(pb::WatchPolicyRequest {
            known_version: 0,
            agent_version: "e2e".into(),
            accepts_policy_deltas: false,
            accepts_policy_parts: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.next().await.unwrap().unwrap();
    assert_eq!(first.trust_domain, "example.org");
    assert!(String::from_utf8_lossy(&first.policy).contains("\"web\""));
    assert!(!first.trust_bundle.is_empty());

    std::fs::write(
        operator.path("policy/policy.yaml"),
        POLICY.replace("name: web,", "name: web2,"),
    )
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), updates.next())
        .await
        .expect("a policy update after the file changed")
        .unwrap()
        .unwrap();
    assert!(second.version > first.version);
    assert!(String::from_utf8_lossy(&second.policy).contains("\"web2\""));
}
