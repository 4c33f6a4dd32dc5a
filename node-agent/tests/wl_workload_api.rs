//! The SPIFFE Workload API over a real unix socket, with this test process
//! as the attested workload and the in-process issuer stand-in minting real
//! SVIDs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod wl_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use signet_agent::testing::TestAgent;
use signet_identity::{CaConfig, CaKeyset, TrustDomain, verify_x509_svid};
use signet_proto::workload as pb;
use tonic::Code;
use wl_support::*;

fn own_id(path: &str) -> String {
    format!("spiffe://example.org/uid/{}/{path}", uid())
}

fn partner_bundle() -> signet_identity::TrustBundle {
    let now = signet_runtime::clock::Clock::new().now();
    CaKeyset::new(CaConfig::new(TrustDomain::new("partner.org").unwrap()), now)
        .unwrap()
        .bundle(now)
}

#[tokio::test]
async fn missing_security_header_is_invalid_argument() {
    let agent = TestAgent::builder().start();
    let mut raw = raw_client(&agent).await;
    let x509 = raw
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(x509.code(), Code::InvalidArgument);
    assert!(
        x509.message().contains("workload.spiffe.io"),
        "{}",
        x509.message()
    );
    let jwt = raw
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(jwt.code(), Code::InvalidArgument);
    let bundles = raw
        .fetch_x509_bundles(pb::X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(bundles.code(), Code::InvalidArgument);
    let jwt_bundles = raw
        .fetch_jwt_bundles(pb::JwtBundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(jwt_bundles.code(), Code::InvalidArgument);
    let validate = raw
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "a".into(),
            svid: "x.y.z".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(validate.code(), Code::InvalidArgument);
    // Checked before attestation or issuance: nothing was signed.
    assert_eq!(agent.issuer.x509_requests(), 0);
    assert_eq!(
        agent
            .metrics
            .request_count("FetchX509SVID", Code::InvalidArgument),
        1
    );
}

#[tokio::test]
async fn a_caller_without_identity_is_permission_denied() {
    let agent = TestAgent::builder().policy_yaml(nobody_policy()).start();
    let mut api = client(&agent).await;
    let x509 = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(x509.code(), Code::PermissionDenied, "{x509:?}");
    let jwt = api
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(jwt.code(), Code::PermissionDenied);
    let bundles = api
        .fetch_x509_bundles(pb::X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(bundles.code(), Code::PermissionDenied);
    assert_eq!(agent.issuer.x509_requests(), 0);
}

#[tokio::test]
async fn first_message_holds_the_full_state_default_first() {
    let partner = partner_bundle();
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &["partner.org"]))
        .federated_bundle(partner.clone())
        .start();
    let mut api = client(&agent).await;
    let mut stream = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec![own_id("web"), own_id("db")], "default first");
    let hints: Vec<&str> = first.svids.iter().map(|s| s.hint.as_str()).collect();
    assert_eq!(hints, vec!["web", "db"]);
    let bundle_td = TrustDomain::new("example.org").unwrap();
    for svid in &first.svids {
        let chain = certs(&svid.x509_svid);
        assert_key_matches(&svid.x509_svid_key, &chain[0]);
        let bundle =
            signet_identity::TrustBundle::from_x509_der(bundle_td.clone(), &svid.bundle).unwrap();
        assert!(!bundle.x509_authorities.is_empty());
        let verified = verify_x509_svid(&chain, &bundle, agent.now()).unwrap();
        assert_eq!(verified.spiffe_id.as_str(), svid.spiffe_id);
    }
    // Each SVID has its own key.
    assert_ne!(first.svids[0].x509_svid_key, first.svids[1].x509_svid_key);
    let federated: Vec<&String> = first.federated_bundles.keys().collect();
    assert_eq!(federated, vec!["spiffe://partner.org"]);
    assert_eq!(
        certs(&first.federated_bundles["spiffe://partner.org"]),
        partner.x509_authorities
    );
}

#[tokio::test]
async fn repeated_hints_stay_unique() {
    let agent = TestAgent::builder()
        .policy_yaml(policy("same", "same", &[]))
        .start();
    let mut api = client(&agent).await;
    let first = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let hints: Vec<&str> = first.svids.iter().map(|s| s.hint.as_str()).collect();
    assert_eq!(hints, vec!["same", ""], "the first keeps the hint");
}

#[tokio::test(start_paused = true)]
async fn stream_pushes_the_renewed_svid_and_callers_share_the_cache() {
    let agent = TestAgent::builder().policy_yaml(web_only_policy()).start();
    let mut api = client(&agent).await;
    let mut stream = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(agent.issuer.x509_requests(), 1);
    // A second call from the same workload is answered from the cache.
    let again = client(&agent)
        .await
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.svids[0].x509_svid, first.svids[0].x509_svid);
    assert_eq!(agent.issuer.x509_requests(), 1);

    // Paused time jumps to the renewal: half of the lifetime ±10 % of it,
    // counted from not_before, which is backdated 10 s (so the lifetime is
    // 1h10s and the earliest renewal 23m54s after issuance).
    let started = tokio::time::Instant::now();
    let renewed = stream.message().await.unwrap().unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(23 * 60 + 50) && waited <= Duration::from_secs(37 * 60),
        "renewed after {waited:?}"
    );
    assert_eq!(renewed.svids.len(), 1);
    assert_eq!(renewed.svids[0].spiffe_id, own_id("web"));
    let old = certs(&first.svids[0].x509_svid);
    let new = certs(&renewed.svids[0].x509_svid);
    assert_ne!(leaf_serial(&old[0]), leaf_serial(&new[0]));
    assert_ne!(renewed.svids[0].x509_svid_key, first.svids[0].x509_svid_key);
    assert_key_matches(&renewed.svids[0].x509_svid_key, &new[0]);
}

#[tokio::test]
async fn revocation_drops_the_svid_then_ends_the_stream() {
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &[]))
        .start();
    let mut api = client(&agent).await;
    let mut stream = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.svids.len(), 2);

    agent.set_policy(&web_only_policy());
    let second = stream.message().await.unwrap().unwrap();
    let ids: Vec<&str> = second.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec![own_id("web")]);
    // The remaining SVID is the same one, not re-issued.
    assert_eq!(second.svids[0].x509_svid, first.svids[0].x509_svid);

    agent.set_policy(&nobody_policy());
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied, "{end:?}");
}

#[tokio::test]
async fn svids_keep_being_served_while_the_issuer_is_down() {
    let agent = TestAgent::builder().policy_yaml(web_only_policy()).start();
    let mut api = client(&agent).await;
    let first = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    agent.issuer.set_unavailable(true);
    let cached = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cached.svids[0].x509_svid, first.svids[0].x509_svid);
}

#[tokio::test]
async fn jwt_svids_round_trip_through_validation() {
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &[]))
        .start();
    let mut api = client(&agent).await;
    let fetched = api
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = fetched.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec![own_id("web"), own_id("db")]);
    assert_eq!(fetched.svids[0].hint, "web");

    let validated = api
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: fetched.svids[0].svid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.spiffe_id, own_id("web"));
    let claims = signet_agent::cli::struct_to_json(&validated.claims.unwrap());
    assert_eq!(claims["sub"], own_id("web"));
    assert_eq!(claims["aud"], "payments");

    // A token for another audience is invalid.
    let wrong = api
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "ledger".into(),
            svid: fetched.svids[0].svid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::InvalidArgument);
    let garbage = api
        .validate_jwtsvid(pb::ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: "not.a.token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    for (audience, svid) in [("", "x"), ("a", "")] {
        let missing = api
            .validate_jwtsvid(pb::ValidateJwtsvidRequest {
                audience: audience.into(),
                svid: svid.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::InvalidArgument);
    }

    // Audience is required; the SPIFFE ID filter selects one identity.
    let no_audience = api
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_audience.code(), Code::InvalidArgument);
    let only_db = api
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: own_id("db"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_db.svids.len(), 1);
    assert_eq!(only_db.svids[0].spiffe_id, own_id("db"));
    let not_mine = api
        .fetch_jwtsvid(pb::JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: "spiffe://example.org/someone-else".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(not_mine.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn bundle_streams_carry_own_and_federated_trust_domains() {
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &["partner.org"]))
        .federated_bundle(partner_bundle())
        .start();
    let mut api = client(&agent).await;
    let x509 = api
        .fetch_x509_bundles(pb::X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let mut tds: Vec<&String> = x509.bundles.keys().collect();
    tds.sort();
    assert_eq!(tds, vec!["spiffe://example.org", "spiffe://partner.org"]);
    assert_eq!(
        certs(&x509.bundles["spiffe://example.org"]),
        agent.issuer.bundle().x509_authorities
    );

    let mut jwt_stream = api
        .fetch_jwt_bundles(pb::JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let jwt = jwt_stream.message().await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&jwt.bundles["spiffe://example.org"]).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k["kid"].is_string()));
    assert!(jwt.bundles.contains_key("spiffe://partner.org"));

    // Dropping the federation removes the partner bundle from the stream.
    agent.set_policy(&policy("web", "db", &[]));
    let next = jwt_stream.message().await.unwrap().unwrap();
    let tds: Vec<&String> = next.bundles.keys().collect();
    assert_eq!(tds, vec!["spiffe://example.org"]);
}

#[tokio::test]
async fn socket_permissions_are_as_configured() {
    let open = TestAgent::builder().start();
    let mode = std::fs::metadata(open.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    let private = TestAgent::builder().socket_mode(0o600).start();
    let mode = std::fs::metadata(private.socket_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn health_is_served_on_the_socket() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let agent = TestAgent::builder().start();
    let channel = signet_agent::cli::unix_channel(&agent.endpoint())
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in [
        "",
        "SpiffeWorkloadAPI",
        "envoy.service.secret.v3.SecretDiscoveryService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
}

/// A fake `/proc/<our pid>` whose start time the test controls: the caller
/// looks like this process when it connects, then like another process
/// that reused its PID.
#[tokio::test]
async fn a_caller_whose_process_changed_is_refused() {
    let proc_dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let me = proc_dir.path().join(pid.to_string());
    std::fs::create_dir(&me).unwrap();
    let gid = rustix::process::getegid().as_raw();
    let stat = |start: u64| {
        format!("{pid} (wl) S 1 {pid} {pid} 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0")
    };
    std::fs::write(me.join("stat"), stat(5555)).unwrap();
    let u = uid();
    std::fs::write(
        me.join("status"),
        format!("Uid:\t{u}\t{u}\t{u}\t{u}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\n"),
    )
    .unwrap();
    std::os::unix::fs::symlink(std::env::current_exe().unwrap(), me.join("exe")).unwrap();

    let agent = TestAgent::builder()
        .policy_yaml(web_only_policy())
        .proc_root(proc_dir.path())
        .start();
    let mut api = client(&agent).await;
    // The process as recorded at accept time: served.
    api.fetch_jwtsvid(pb::JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    })
    .await
    .unwrap();
    // Same connection, but /proc/<pid> now describes another process.
    std::fs::write(me.join("stat"), stat(6666)).unwrap();
    let refused = api
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("PID reuse"),
        "{}",
        refused.message()
    );
    assert_eq!(agent.issuer.x509_requests(), 0);
}
