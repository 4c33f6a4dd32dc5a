//! One local user cannot starve the others by flooding the workload socket.
//!
//! Attack: the socket is open to every process on the node, so a user opens
//! thousands of connections that never speak, then hundreds that complete
//! the HTTP/2 handshake and sit idle. Before, each held a descriptor and
//! memory in the agent for as long as the attacker liked. Now connections
//! beyond the per-uid bound are closed at accept, silent ones at the
//! handshake timeout, handshaken ones that make no call at the idle timeout
//! (while a client's open stream outlives it), and another user's call is
//! served throughout. The
//! real operator and agent binaries; the second user is run with `setpriv`,
//! so this needs root (fails without it when `SIGNET_REQUIRE_ROOT=1`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use std::sync::Arc;

use signet_e2e::standalone::{
    Stack, TRUST_DOMAIN, have_root, http_get, proc_status_field, wait_until,
};
use signet_identity::{BundleSet, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeServerVerifier};
use tonic::transport::Channel;

const PER_UID: usize = 200;
const SILENT: usize = 2000;
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: web, labels: {suite: e2e}}
spec:
  rules:
    allow: [{expression: 'workload.unix.uid in ["0", "65534"]'}]
  spiffe: {id: "/web/uid/{{ workload.unix.uid }}"}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: e2e-agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [e2e]}}
"#;

fn counter(metrics_port: u16, series: &str) -> u64 {
    let metrics = http_get(metrics_port, "/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let rss = proc_status_field(pid, "VmRSS");
    rss.trim_end_matches("kB").trim().parse().unwrap()
}

/// Room for the flood's descriptors in this process.
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    let wanted = 1 << 16;
    let limit = Rlimit {
        current: Some(hard.map_or(wanted, |hard| hard.min(wanted))),
        maximum: hard,
    };
    setrlimit(Resource::Nofile, limit).unwrap();
}

/// Whether the agent has closed `stream` (a read returns end of file).
fn closed_by_agent(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_connection_flood_from_one_user_leaves_the_others_served() {
    if !have_root("a_connection_flood_from_one_user_leaves_the_others_served") {
        return;
    }
    raise_open_files();
    let metrics_port = signet_e2e::cluster::free_port();
    let mut stack = Stack::operator_only(POLICY);
    stack.set_agent_extra(&format!(
        "metrics_listen: 127.0.0.1:{metrics_port}\n\
         limits: {{connections_per_uid: {PER_UID}, handshake_timeout: 10s, idle_timeout: {}s}}\n",
        IDLE_TIMEOUT.as_secs()
    ));
    stack.start_agent();
    let agent = stack.agent.as_ref().unwrap().pid();
    let served = stack.fetch_x509_as(0);
    assert!(served.status.success(), "{served:?}");
    let rss_before = rss_kib(agent);

    // Thousands of connections from root that never send a byte.
    let mut silent: Vec<UnixStream> = (0..SILENT)
        .map(|_| UnixStream::connect(stack.socket_path()).unwrap())
        .collect();
    let refused = r#"signet_agent_connections_refused_total{reason="per_uid_limit"}"#;
    wait_until(
        "the connections beyond the bound to be closed",
        Duration::from_secs(30),
        || counter(metrics_port, refused) >= (SILENT - PER_UID) as u64,
    );
    assert_eq!(
        counter(metrics_port, refused),
        (SILENT - PER_UID) as u64,
        "only connections beyond the per-uid bound are closed"
    );
    // Another user is served while root's share is taken.
    let other = stack.fetch_x509_as(65534);
    assert!(other.status.success(), "uid 65534 was starved: {other:?}");
    // Root itself is refused at its bound.
    let starved = stack.fetch_x509_as(0);
    assert!(!starved.status.success(), "{starved:?}");

    // The silent ones within the bound are closed at the handshake timeout.
    wait_until(
        "the silent connections to be closed",
        Duration::from_secs(60),
        || {
            counter(
                metrics_port,
                r#"signet_agent_connections_refused_total{reason="handshake_timeout"}"#,
            ) >= PER_UID as u64
        },
    );
    let still_open = silent
        .iter_mut()
        .map(closed_by_agent)
        .filter(|closed| !closed)
        .count();
    assert_eq!(still_open, 0, "the agent kept silent connections open");
    drop(silent);

    // Connections that complete the HTTP/2 handshake and sit idle hold
    // their slots until the idle timeout; one more is closed at once.
    let mut idle: Vec<UnixStream> = (0..PER_UID)
        .map(|_| {
            let mut stream = UnixStream::connect(stack.socket_path()).unwrap();
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                .unwrap();
            stream
        })
        .collect();
    wait_until(
        "the idle connections to be served",
        Duration::from_secs(30),
        || counter(metrics_port, "signet_agent_connections") >= PER_UID as u64,
    );
    let before = counter(metrics_port, refused);
    let starved = stack.fetch_x509_as(0);
    assert!(!starved.status.success(), "{starved:?}");
    assert!(counter(metrics_port, refused) > before);
    let other = stack.fetch_x509_as(65534);
    assert!(other.status.success(), "uid 65534 was starved: {other:?}");
    let rss_flooded = rss_kib(agent);
    assert!(
        idle.iter_mut().all(|stream| !closed_by_agent(stream)),
        "a handshaken connection was closed"
    );

    // Idle for the idle timeout, they are closed by the agent and their
    // slots released: root is served again.
    wait_until(
        "the idle connections to be closed at the idle timeout",
        IDLE_TIMEOUT * 4,
        || counter(metrics_port, "signet_agent_connections") == 0,
    );
    assert_eq!(
        counter(
            metrics_port,
            r#"signet_agent_connections_refused_total{reason="idle_timeout"}"#
        ),
        PER_UID as u64,
        "each idle connection was closed for being idle"
    );
    assert!(
        idle.iter_mut().all(closed_by_agent),
        "an idle connection is still open"
    );
    drop(idle);
    // A client's open stream is a call in progress: its connection outlives
    // the idle timeout.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures::StreamExt;
        let client = spiffe::WorkloadApiClient::connect_to(stack.endpoint())
            .await
            .unwrap();
        let mut stream = client.stream_x509_contexts().await.unwrap();
        assert!(stream.next().await.unwrap().is_ok());
        let held = tokio::time::timeout(IDLE_TIMEOUT * 2, stream.next()).await;
        assert!(
            held.is_err(),
            "the stream ended while open: {:?}",
            held.map(|next| next.map(|item| item.map(|_| ())))
        );
        assert_eq!(counter(metrics_port, "signet_agent_connections"), 1);
    });
    drop(runtime);
    wait_until(
        "the stream's connection to be released",
        Duration::from_secs(30),
        || counter(metrics_port, "signet_agent_connections") == 0,
    );
    let served = stack.fetch_x509_as(0);
    assert!(served.status.success(), "{served:?}");
    let rss_after = rss_kib(agent);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "agent RSS: {rss_before} KiB before, {rss_flooded} KiB with {PER_UID} idle connections held, {rss_after} KiB after ({SILENT} silent connections refused or timed out, {PER_UID} closed when idle)"
        );
    }
    // Bounded: the flood's connections are gone, not accumulated.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// An unauthenticated client of the issuer API (what `Join` is called on).
fn anonymous_issuer(stack: &Stack) -> IssuerClient<Channel> {
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle_pem = std::fs::read_to_string(stack.bundle_pem_path()).unwrap();
    let mut set = BundleSet::new();
    set.insert(TrustBundle::from_x509_pem(trust_domain.clone(), &bundle_pem).unwrap());
    let verifier = Arc::new(SpiffeServerVerifier::new(
        SharedBundles::new(set),
        PeerPolicy::OneOf(vec![
            SpiffeId::from_path(&trust_domain, "/signet/issuer").unwrap(),
        ]),
    ));
    let config = signet_tls::client_config(None, verifier).unwrap();
    let address = format!("127.0.0.1:{}", stack.port);
    IssuerClient::new(signet_tls::connect_channel(&address, Arc::new(config)).unwrap())
}

fn join_request(token: String) -> pb::JoinRequest {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    pb::JoinRequest {
        credential: Some(pb::join_request::Credential::JoinToken(token)),
        csr: signet_identity::x509::create_csr(&key).unwrap(),
        node_name: String::new(),
    }
}

/// Attack: thousands of `Join` calls with guessed tokens, and one with a
/// megabyte token. Before, each was verified and audited, so a peer could
/// guess at line rate and fill the audit log; the oversized token was
/// accepted into memory and the audit line. Now the token size is
/// refused as InvalidArgument, the flood is throttled (ResourceExhausted)
/// after a burst, the audit log holds the burst only, a joined agent keeps
/// being served, and a real join succeeds once the budget refills.
#[tokio::test(flavor = "multi_thread")]
async fn a_join_flood_is_throttled_and_leaves_joined_agents_served() {
    const GUESSES: usize = 2000;
    let uid = signet_e2e::standalone::current_uid();
    let mut stack = Stack::operator_only_with_config(
        &signet_e2e::standalone::uid_policy("web", uid),
        |stack| stack.reusable_token_config("fleet"),
    );
    stack.start_agent();
    let operator = stack.operator.as_ref().unwrap().pid();
    let served = stack.agent_api(&["fetch", "x509"]);
    assert!(served.status.success(), "{served:?}");
    let rss_before = rss_kib(operator);
    let mut issuer = anonymous_issuer(&stack);

    let huge = issuer
        .join(join_request("x".repeat(1 << 20)))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), tonic::Code::InvalidArgument, "{huge:?}");
    assert!(huge.message().contains("exceeds the limit"), "{huge:?}");

    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for guess in 0..GUESSES {
        let refused = issuer
            .join(join_request(format!("guess-{guess:08}")))
            .await
            .unwrap_err();
        *codes.entry(format!("{:?}", refused.code())).or_default() += 1;
    }
    let throttled = codes.get("ResourceExhausted").copied().unwrap_or(0);
    let checked = codes.get("Unauthenticated").copied().unwrap_or(0);
    assert!(
        checked <= 21 && throttled >= GUESSES - 21 && checked + throttled == GUESSES,
        "expected a burst of checked guesses, then throttling: {codes:?}"
    );
    let audited = stack
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "agent.join_denied")
        .count();
    assert!(
        audited <= checked + 1,
        "{audited} join denials audited for {checked} checked guesses"
    );

    // The joined agent is unaffected (its calls are mTLS, not Join)...
    let served = stack.agent_api(&["fetch", "jwt", "--audience", "after-flood"]);
    assert!(served.status.success(), "{served:?}");
    // ...and a real token joins once the budget has refilled.
    let fleet = std::fs::read_to_string(stack.path("fleet-token")).unwrap();
    let mut attempts = 0;
    let joined = loop {
        match issuer.join(join_request(fleet.trim().to_owned())).await {
            Err(status) if status.code() == tonic::Code::ResourceExhausted && attempts < 60 => {
                // Polled: the budget refills with time, no event announces it.
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => break Some(other),
        }
    };
    let joined = joined
        .unwrap()
        .expect("the real token was refused")
        .into_inner();
    assert!(
        joined.spiffe_id.ends_with("/signet/agent/join/fleet"),
        "{}",
        joined.spiffe_id
    );
    let rss_after = rss_kib(operator);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "operator RSS: {rss_before} KiB before, {rss_after} KiB after {GUESSES} guessed joins and a 1 MiB token"
        );
    }
    assert!(
        rss_after < rss_before + 64 * 1024,
        "operator RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Attack: oversized requests on the workload socket, a megabyte JWT
/// audience and 100,000 SDS resource names. Before, the audience was
/// signed by the issuer (a 1.3 MB token, an MB-sized audit line) and only
/// then refused by the agent, as PermissionDenied; the SDS names were all
/// held per stream. Now both are InvalidArgument at the agent, nothing
/// reaches the issuer, and a normal call is still served.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_requests_are_refused_at_the_agent() {
    use signet_proto::envoy::service::discovery::v3::DiscoveryRequest;
    use signet_proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;

    let uid = signet_e2e::standalone::current_uid();
    let stack = Stack::start(&signet_e2e::standalone::uid_policy("web", uid));
    let agent = stack.agent.as_ref().unwrap().pid();
    let client = spiffe::WorkloadApiClient::connect_to(stack.endpoint())
        .await
        .unwrap();
    client.fetch_jwt_token(["normal"], None).await.unwrap();
    let rss_before = rss_kib(agent);
    let audit_before = stack.audit_events().len();

    let huge = "a".repeat(1 << 20);
    let refused = client
        .fetch_jwt_token([huge.as_str()], None)
        .await
        .unwrap_err();
    let text = format!("{refused:?}");
    assert!(
        text.contains("InvalidArgument") && text.contains("bytes is not allowed"),
        "{text}"
    );
    let many: Vec<String> = (0..17).map(|i| format!("aud-{i}")).collect();
    let refused = client
        .fetch_jwt_token(many.iter().map(String::as_str), None)
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("InvalidArgument"),
        "{refused:?}"
    );

    let channel = signet_agent::cli::unix_channel(&stack.endpoint())
        .await
        .unwrap();
    let mut sds = SecretDiscoveryServiceClient::new(channel).max_encoding_message_size(usize::MAX);
    let names: Vec<String> = (0..100_000)
        .map(|i| format!("spiffe://example.org/name/{i}"))
        .collect();
    let refused = sds
        .fetch_secrets(DiscoveryRequest {
            resource_names: names,
            ..DiscoveryRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("at most"), "{refused:?}");

    // Nothing oversized reached the issuer or its audit log.
    let after: Vec<_> = stack
        .audit_events()
        .into_iter()
        .skip(audit_before)
        .collect();
    assert!(after.is_empty(), "the issuer was asked: {after:?}");
    // A normal call is still served.
    client.fetch_jwt_token(["normal"], None).await.unwrap();
    let rss_after = rss_kib(agent);
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "agent RSS: {rss_before} KiB before, {rss_after} KiB after a 1 MiB audience and 100,000 SDS names"
        );
    }
    assert!(
        rss_after < rss_before + 64 * 1024,
        "agent RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
