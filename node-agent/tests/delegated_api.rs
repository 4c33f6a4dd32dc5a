//! The delegated API (`signet.issuer.v1.Delegated`) over the agent's real
//! admin socket, with the in-process issuer stand-in minting real SVIDs
//! from the same compiled policy: what signet-csi files mode receives for a
//! pod, how it changes, and who may ask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod wl_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use signet_agent::cli::unix_channel;
use signet_agent::testing::TestAgent;
use signet_identity::{CertificateDer, validate_jwt_svid, verify_x509_svid};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::delegated_client::DelegatedClient;
use tonic::Code;
use tonic::transport::Channel;
use wl_support::{assert_key_matches, leaf_serial};

const POD_UID: &str = "6b1f3c2e-9a51-4d0b-8f7e-2c4d5e6f7a81";

/// Pods in namespace `payments` get `/ns/<ns>/sa/<sa>` (hint `payments`).
fn pod_policy() -> String {
    r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: pods}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.kubernetes.namespace, eq: payments}]
  spiffe:
    id: /ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}
    hint: payments
    x509:
      ttl: 1h
      dnsSans: ["{{ workload.kubernetes.pod_name }}.payments.svc"]
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: local}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow:
    workloadIdentityLabels: {"*": ["*"]}
    spiffe: [{path: "/*", dnsSans: ["*"]}]
"#
    .to_owned()
}

/// The same, for every namespace.
fn any_namespace_policy() -> String {
    pod_policy().replace(
        "conditions: [{attribute: workload.kubernetes.namespace, eq: payments}]",
        "conditions: [{attribute: workload.kubernetes.namespace, not_eq: kube-system}]",
    )
}

async fn client(path: &Path) -> DelegatedClient<Channel> {
    DelegatedClient::new(
        unix_channel(&format!("unix://{}", path.display()))
            .await
            .unwrap(),
    )
}

fn pod(namespace: &str, token: &str) -> pb::SubscribePodSvidsRequest {
    pb::SubscribePodSvidsRequest {
        pod_uid: POD_UID.into(),
        pod_namespace: namespace.into(),
        pod_name: "web-0".into(),
        service_account: "api".into(),
        pod_token: token.into(),
    }
}

/// A JWT-shaped token with an expiry an hour ahead (the agent only reads
/// `exp` to prefer the newest; the issuer verifies the rest).
fn pod_token(marker: &str) -> String {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = signet_runtime::clock::Clock::new()
        .now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    format!(
        "{}.{}.c2ln",
        engine.encode(br#"{"alg":"RS256"}"#),
        engine.encode(format!(r#"{{"exp":{exp},"sub":"{marker}"}}"#))
    )
}

async fn next(
    stream: &mut tonic::Streaming<pb::PodSvidsUpdate>,
    within: Duration,
) -> pb::PodSvidsUpdate {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("no update in time")
        .unwrap()
        .expect("the stream ended")
}

fn chain(svid: &pb::PodSvid) -> Vec<CertificateDer<'static>> {
    svid.cert_chain
        .iter()
        .map(|der| CertificateDer::from(der.clone()))
        .collect()
}

#[tokio::test]
async fn subscribe_sends_svids_with_their_keys_and_the_bundle() {
    let agent = TestAgent::builder().policy_yaml(pod_policy()).start();
    let mut delegated = client(&agent.admin_socket).await;
    let token = pod_token("web-0");
    let mut stream = delegated
        .subscribe_pod_svids(pod("payments", &token))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, Duration::from_secs(10)).await;

    assert_eq!(first.svids.len(), 1);
    let svid = &first.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/ns/payments/sa/api");
    assert_eq!(svid.hint, "payments");
    assert_key_matches(&svid.private_key, &svid.cert_chain[0]);
    // The bundle is the issuer's CAs, one DER certificate per entry, and
    // the chain verifies against it.
    let bundle = agent.issuer.bundle();
    let ders: Vec<Vec<u8>> = bundle.x509_authorities.iter().map(|c| c.to_vec()).collect();
    assert_eq!(first.bundle, ders);
    let verified = verify_x509_svid(&chain(svid), &bundle, agent.now()).unwrap();
    assert_eq!(verified.spiffe_id.as_str(), svid.spiffe_id);
    let not_after = verified
        .not_after
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(svid.expires_at_unix, i64::try_from(not_after).unwrap());
    assert!(first.federated_bundles.is_empty());

    // The pod's token is kept for the issuer requests made on its behalf.
    assert_eq!(
        agent
            .pod_tokens
            .get(POD_UID, signet_runtime::clock::Clock::new().now()),
        Some(token.clone())
    );

    // A second stream for the same pod (the kubelet re-publishing) shares
    // the SVID and key instead of minting another.
    let mut again = delegated
        .subscribe_pod_svids(pod("payments", ""))
        .await
        .unwrap()
        .into_inner();
    let second = next(&mut again, Duration::from_secs(10)).await;
    assert_eq!(second.svids, first.svids);
    assert_eq!(agent.issuer.x509_requests(), 1);
    // An empty token does not replace the one held.
    assert_eq!(
        agent
            .pod_tokens
            .get(POD_UID, signet_runtime::clock::Clock::new().now()),
        Some(token)
    );
}

#[tokio::test]
async fn rotation_at_half_life_pushes_a_new_key_and_certificate() {
    let agent = TestAgent::builder().policy_yaml(pod_policy()).start();
    // Twelve-second SVIDs (certificates are backdated by at most ten
    // seconds, which counts towards their life): renewed within seconds.
    agent.issuer.set_x509_ttl(Some(Duration::from_secs(12)));
    let mut delegated = client(&agent.admin_socket).await;
    let mut stream = delegated
        .subscribe_pod_svids(pod("payments", ""))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, Duration::from_secs(10)).await;
    let rotated = next(&mut stream, Duration::from_secs(20)).await;
    let (old, new) = (&first.svids[0], &rotated.svids[0]);
    assert_eq!(new.spiffe_id, old.spiffe_id);
    assert_ne!(
        leaf_serial(&new.cert_chain[0]),
        leaf_serial(&old.cert_chain[0])
    );
    assert_ne!(new.private_key, old.private_key, "a new key per SVID");
    assert_key_matches(&new.private_key, &new.cert_chain[0]);
    assert!(new.expires_at_unix >= old.expires_at_unix);
    assert!(agent.issuer.x509_requests() >= 2);
}

#[tokio::test]
async fn a_pod_entitled_to_nothing_gets_an_empty_update_until_policy_allows_it() {
    let agent = TestAgent::builder().policy_yaml(pod_policy()).start();
    let mut delegated = client(&agent.admin_socket).await;
    let mut stream = delegated
        .subscribe_pod_svids(pod("shop", ""))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream, Duration::from_secs(10)).await;
    assert!(first.svids.is_empty(), "{first:?}");
    assert!(first.bundle.is_empty());
    assert_eq!(agent.issuer.x509_requests(), 0);

    // The stream stays open and follows the policy.
    agent.set_policy(&any_namespace_policy());
    let granted = next(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        granted.svids[0].spiffe_id,
        "spiffe://example.org/ns/shop/sa/api"
    );
    assert!(!granted.bundle.is_empty());

    // And back: revoked means an empty list again, not an error.
    agent.set_policy(&pod_policy());
    let revoked = next(&mut stream, Duration::from_secs(10)).await;
    assert!(revoked.svids.is_empty());
}

#[tokio::test]
async fn bad_requests_are_invalid_arguments() {
    let agent = TestAgent::builder().policy_yaml(pod_policy()).start();
    let mut delegated = client(&agent.admin_socket).await;
    let cases = [
        (
            pb::SubscribePodSvidsRequest {
                pod_uid: String::new(),
                ..pod("payments", "")
            },
            "pod_uid",
        ),
        (
            pb::SubscribePodSvidsRequest {
                pod_uid: "../../etc".into(),
                ..pod("payments", "")
            },
            "pod_uid",
        ),
        (pod("Payments", ""), "pod_namespace"),
        (
            pb::SubscribePodSvidsRequest {
                pod_name: String::new(),
                ..pod("payments", "")
            },
            "pod_name",
        ),
        (
            pb::SubscribePodSvidsRequest {
                service_account: "a b".into(),
                ..pod("payments", "")
            },
            "service_account",
        ),
        (pod("payments", "not a token"), "pod_token"),
    ];
    for (request, field) in cases {
        let status = delegated.subscribe_pod_svids(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    let jwt = delegated
        .fetch_pod_jwt_svids(pb::FetchPodJwtSvidsRequest {
            pod_uid: POD_UID.into(),
            audience: vec![],
            pod_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(jwt.code(), Code::InvalidArgument);
    assert!(jwt.message().contains("audience"), "{jwt:?}");
    assert_eq!(agent.issuer.x509_requests(), 0);
    assert!(agent.pod_tokens.is_empty());
}

#[tokio::test]
async fn jwt_svids_are_served_for_a_subscribed_pod_only() {
    let agent = TestAgent::builder().policy_yaml(pod_policy()).start();
    let mut delegated = client(&agent.admin_socket).await;
    let fetch = |audience: &str| pb::FetchPodJwtSvidsRequest {
        pod_uid: POD_UID.into(),
        audience: vec![audience.into()],
        pod_token: String::new(),
    };
    // Nothing is known of a pod without a stream.
    let unknown = delegated
        .fetch_pod_jwt_svids(fetch("vault"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    let mut stream = delegated
        .subscribe_pod_svids(pod("payments", ""))
        .await
        .unwrap()
        .into_inner();
    next(&mut stream, Duration::from_secs(10)).await;
    let response = delegated
        .fetch_pod_jwt_svids(fetch("vault"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.svids.len(), 1);
    let jwt = &response.svids[0];
    assert_eq!(jwt.spiffe_id, "spiffe://example.org/ns/payments/sa/api");
    assert_eq!(jwt.workload_identity, "pods");
    assert_eq!(jwt.hint, "payments");
    assert!(!jwt.jti.is_empty());
    let validated =
        validate_jwt_svid(&jwt.token, "vault", &agent.issuer.bundle(), agent.now()).unwrap();
    assert_eq!(validated.spiffe_id.as_str(), jwt.spiffe_id);
    let exp = validated
        .expiry
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(jwt.expires_at_unix, i64::try_from(exp).unwrap());

    // Closing the last stream forgets the pod (and its token).
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match delegated.fetch_pod_jwt_svids(fetch("vault")).await {
            Err(status) if status.code() == Code::NotFound => break,
            _ => {
                assert!(tokio::time::Instant::now() < deadline, "pod not forgotten");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Environment variable telling [`delegated_call_helper`] which socket to
/// call: set only in the child process of the test below.
const HELPER_SOCKET_ENV: &str = "SIGNET_TEST_DELEGATED_SOCKET";

/// Not a test of its own: when run as another user by
/// `another_users_call_is_refused_even_if_the_socket_is_reachable`, calls
/// SubscribePodSvids and exits with 100 + the gRPC code (99 when the
/// connection fails). Without the environment variable it does nothing.
#[test]
fn delegated_call_helper() {
    let Ok(socket) = std::env::var(HELPER_SOCKET_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let code = runtime.block_on(async move {
        let Ok(channel) = unix_channel(&format!("unix://{socket}")).await else {
            return 99;
        };
        match DelegatedClient::new(channel)
            .subscribe_pod_svids(pod("payments", ""))
            .await
        {
            Ok(_) => 100,
            Err(status) => 100 + status.code() as i32,
        }
    });
    std::process::exit(code);
}

#[tokio::test]
async fn another_users_call_is_refused_even_if_the_socket_is_reachable() {
    if !rustix::process::geteuid().is_root() {
        #[allow(clippy::print_stderr)] // why the test did not run
        {
            eprintln!("SKIPPED: running a client as another uid needs root");
        }
        return;
    }
    let agent = TestAgent::builder().policy_yaml(pod_policy()).start();
    let admin_dir = agent.admin_socket.parent().unwrap();
    // Sanity: the agent made both private.
    let mode = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().mode() & 0o777
    };
    assert_eq!(mode(admin_dir), 0o700);
    assert_eq!(mode(&agent.admin_socket), 0o600);
    // Open them up as a misconfiguration would: the uid check still holds.
    for (path, bits) in [
        (admin_dir.parent().unwrap(), 0o755),
        (admin_dir, 0o755),
        (agent.admin_socket.as_path(), 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap();
    }
    let socket = agent.admin_socket.clone();
    let status = tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "delegated_call_helper", "--test-threads=1"])
            .env(HELPER_SOCKET_ENV, &socket)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        status.code(),
        Some(100 + Code::PermissionDenied as i32),
        "the call as uid 65534 ended with {status:?}"
    );
    // Nothing was issued for the refused caller.
    assert_eq!(agent.issuer.x509_requests(), 0);

    // Root (this process) is served.
    let mut delegated = client(&agent.admin_socket).await;
    let mut stream = delegated
        .subscribe_pod_svids(pod("payments", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next(&mut stream, Duration::from_secs(10)).await.svids.len(),
        1
    );
}
