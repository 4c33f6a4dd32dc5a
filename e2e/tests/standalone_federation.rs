//! SPIFFE federation between two Signet trust domains, over both bundle
//! endpoint profiles, with the real binaries: `a.org` serves its bundle
//! endpoint with its issuer's SVID (`https_spiffe`), `b.org` with a Web PKI
//! certificate (`https_web`, from a test CA here). Each operator fetches
//! the other's bundle, its agent hands it to workloads whose identity
//! federates with the other domain, go-spiffe (spire-agent's `api fetch`)
//! writes it out, go-spiffe workloads in the two domains complete mTLS,
//! and a CA rotation in `a.org` reaches `b.org`'s workloads through the
//! endpoint while go-spiffe workloads keep connecting both ways, without
//! a failed connection.
//! A bundle file (offline federation) is re-read when a pipeline replaces
//! it.
//!
//! spire-agent and the go-spiffe workload (`e2e/tools/go-spiffe-mtls`)
//! come from `e2e/tools/install-interop.sh` (`make test-setup`); without
//! them those checks are skipped unless
//! `SIGNET_REQUIRE_INTEROP=1` (as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use signet_e2e::cluster::free_port;
use signet_e2e::interop::{GoMtlsServer, go_mtls_once, go_mtls_traffic, traffic_summary};
use signet_e2e::standalone::{Stack, binary, http_get, wait_until_every};
use signet_identity::x509::certs_from_pem;

fn policy(peer: &str) -> String {
    signet_e2e::standalone::any_uid_policy(&[peer])
}

/// A CA and a serving certificate for `localhost` from it, as PEM files.
fn web_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join("web-ca.pem"),
        dir.join("web.crt"),
        dir.join("web.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// The DER certificates in a PEM file (empty when it is missing).
fn ders(path: &Path) -> BTreeSet<Vec<u8>> {
    std::fs::read_to_string(path)
        .map(|pem| {
            certs_from_pem(&pem)
                .unwrap()
                .into_iter()
                .map(|c| c.to_vec())
                .collect()
        })
        .unwrap_or_default()
}

/// `signet-agent api fetch x509 --write DIR` on `stack`'s socket; the
/// federated bundle of `peer` as written.
fn federated_bundle(stack: &Stack, peer: &str) -> BTreeSet<Vec<u8>> {
    let out = stack.path("fetched");
    let _ = std::fs::remove_dir_all(&out);
    let fetched = stack.agent_api(&["fetch", "x509", "--write", out.to_str().unwrap()]);
    if !fetched.status.success() {
        return BTreeSet::new();
    }
    ders(&out.join(format!("federated_bundle.{peer}.pem")))
}

fn metric(port: u16, name: &str, trust_domain: &str) -> Option<f64> {
    http_get(port, "/metrics").lines().find_map(|line| {
        let rest = line.strip_prefix(&format!("{name}{{trust_domain=\"{trust_domain}\"}} "))?;
        rest.trim().parse().ok()
    })
}

/// Runs the mTLS example's client in `client` against a server in
/// `server`, both as this user; Ok(greeting) or Err(output).
fn mtls(
    server: &Stack,
    client: &Stack,
    server_id: &str,
    client_id: &str,
) -> Result<String, String> {
    let mut serving = Command::new(binary("signet-mtls-example"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .args(["--allow", client_id, "--connections", "1"])
        .env("SPIFFE_ENDPOINT_SOCKET", server.endpoint())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serving.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let port: u16 = listening.rsplit(':').next().unwrap().parse().unwrap();
    let output = Command::new(binary("signet-mtls-example"))
        .args(["client", "--connect", &format!("127.0.0.1:{port}")])
        .args(["--server-id", server_id])
        .env("SPIFFE_ENDPOINT_SOCKET", client.endpoint())
        .output()
        .unwrap();
    let served = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = serving.kill();
    let _ = serving.wait();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{listening}\n{served}\n{text}"))
    }
}

#[test]
fn two_trust_domains_federate_over_both_endpoint_profiles_and_follow_rotation() {
    let work = tempfile::tempdir().unwrap();
    let (web_ca, web_cert, web_key) = web_pki(work.path());
    let (port_a, port_b) = (free_port(), free_port());
    let (metrics_a, metrics_b) = (free_port(), free_port());

    // a.org rotates its CA within the test: the successor is announced
    // after 2 minutes. Its bundle asks to be re-fetched every 5 s.
    let mut a = Stack::operator_only_in("a.org", &policy("b.org"), |_| {
        format!(
            "ca: {{ttl: 4m, jwt_ttl: 4m, refresh_hint: 5s}}\nagent_svid_ttl: 2m\nmetrics_listen: 127.0.0.1:{metrics_a}\n\
             bundle_endpoint: {{listen: \"127.0.0.1:{port_a}\", profile: https_spiffe}}\n\
             federation:\n  b.org: {{bundle_endpoint_url: \"https://localhost:{port_b}/\", profile: https_web, ca_file: {}}}\n",
            web_ca.display()
        )
    });
    let a_bundle = a.path("operator/bundle.spiffe.json");
    let mut b = Stack::operator_only_in("b.org", &policy("a.org"), |_| {
        format!(
            "metrics_listen: 127.0.0.1:{metrics_b}\n\
             bundle_endpoint: {{listen: \"127.0.0.1:{port_b}\", profile: https_web, tls_cert: {}, tls_key: {}}}\n\
             federation:\n  a.org: {{bundle_endpoint_url: \"https://127.0.0.1:{port_a}/\", profile: https_spiffe, endpoint_spiffe_id: \"spiffe://a.org/signet/issuer\", bundle: {}}}\n",
            web_cert.display(),
            web_key.display(),
            a_bundle.display()
        )
    });
    a.start_agent();
    b.start_agent();
    let a_cas = ders(&a.bundle_pem_path());
    let b_cas = ders(&b.bundle_pem_path());

    // Each side's workloads receive the other's bundle, fetched from its
    // endpoint (a.org's over https_web, b.org's over https_spiffe).
    wait_until_every(
        "each agent to hand out the other domain's bundle",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || federated_bundle(&a, "b.org") == b_cas && federated_bundle(&b, "a.org") == a_cas,
    );
    assert_eq!(
        metric(
            metrics_b,
            "signet_operator_federation_bundle_sequence",
            "a.org"
        ),
        Some(1.0)
    );
    assert!(
        metric(
            metrics_a,
            "signet_operator_federation_last_refresh_timestamp_seconds",
            "b.org"
        )
        .is_some_and(|t| t > 0.0)
    );
    assert!(
        metric(
            metrics_b,
            "signet_operator_federation_earliest_expiry_timestamp_seconds",
            "a.org"
        )
        .is_some_and(|t| t > 0.0)
    );

    // go-spiffe sees it too.
    if let Some(spire_agent) = signet_e2e::interop::tool("bin/spire-agent") {
        let out = work.path().join("go-spiffe");
        std::fs::create_dir_all(&out).unwrap();
        let fetched = Command::new(spire_agent)
            .args(["api", "fetch", "x509", "-socketPath"])
            .arg(b.socket_path())
            .arg("-write")
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&fetched.stdout);
        assert!(
            fetched.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&fetched.stderr)
        );
        assert!(stdout.contains("trust domain spiffe://a.org"), "{stdout}");
        assert_eq!(ders(&out.join("federated_bundle.0.0.pem")), a_cas);
    }

    // mTLS across the two trust domains, both ways round: go-spiffe
    // workloads, and the Rust `spiffe` crate (the mTLS example).
    let uid = signet_e2e::standalone::current_uid();
    let (a_id, b_id) = (
        format!("spiffe://a.org/svc/uid/{uid}"),
        format!("spiffe://b.org/svc/uid/{uid}"),
    );
    let greeting = mtls(&a, &b, &a_id, &b_id).unwrap();
    assert!(
        greeting.contains(&format!("hello {b_id}, this is {a_id}")),
        "{greeting}"
    );
    let go_servers = GoMtlsServer::start(&a.endpoint(), &[&b_id])
        .zip(GoMtlsServer::start(&b.endpoint(), &[&a_id]));
    if let Some((server_a, server_b)) = &go_servers {
        let greeting = go_mtls_once(&b.endpoint(), server_a, &a_id).unwrap();
        assert_eq!(greeting.trim(), format!("hello {b_id}, this is {a_id}"));
        let greeting = go_mtls_once(&a.endpoint(), server_b, &b_id).unwrap();
        assert_eq!(greeting.trim(), format!("hello {a_id}, this is {b_id}"));
    }

    // a.org rotates its CA (successor announced at half its 4 m life,
    // active at a sixth left) while go-spiffe workloads keep connecting
    // across the domains both ways; not one connection may fail, and each
    // loop runs until a.org's side has shown SVIDs from both CAs.
    let traffic = go_servers.as_ref().map(|(server_a, server_b)| {
        (
            go_mtls_traffic(
                &b.endpoint(),
                server_a.port,
                &a_id,
                2,
                Duration::from_secs(330),
            ),
            go_mtls_traffic(
                &a.endpoint(),
                server_b.port,
                &b_id,
                2,
                Duration::from_secs(330),
            ),
        )
    });
    let mut rotated = BTreeSet::new();
    wait_until_every(
        "a.org's successor CA in b.org's federated bundle",
        Duration::from_secs(200),
        Duration::from_secs(1),
        || {
            rotated = federated_bundle(&b, "a.org");
            rotated.len() == 2 && a_cas.is_subset(&rotated)
        },
    );
    assert_eq!(rotated, ders(&a.bundle_pem_path()));
    assert!(
        metric(
            metrics_b,
            "signet_operator_federation_bundle_sequence",
            "a.org"
        )
        .is_some_and(|s| s >= 2.0)
    );
    if let Some((to_a, from_a)) = traffic {
        let (to_a, from_a) = (traffic_summary(to_a), traffic_summary(from_a));
        assert_eq!((to_a.failed, from_a.failed), (0, 0), "{to_a:?}\n{from_a:?}");
        assert_eq!(
            to_a.server_issuers, 2,
            "b.org's client saw a.org's rotation: {to_a:?}"
        );
        assert_eq!(
            from_a.client_issuers, 2,
            "a.org's client rotated: {from_a:?}"
        );
        signet_e2e::cluster::note(&format!(
            "go-spiffe traffic across a.org's rotation: {} + {} connections, none failed",
            to_a.connections, from_a.connections
        ));
    }
    mtls(&a, &b, &a_id, &b_id).unwrap();

    // b.org's endpoint going away keeps the last good bundle in force, and
    // the failures are counted.
    b.stop_operator();
    wait_until_every(
        "a.org to count failed refreshes of b.org",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            metric(
                metrics_a,
                "signet_operator_federation_refresh_failures_total",
                "b.org",
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    assert_eq!(federated_bundle(&a, "b.org"), b_cas);

    // After a restart, b.org starts from the a.org bundle it saved.
    let saved = b.path("operator/federation/a.org.json");
    assert!(
        std::fs::read_to_string(&saved)
            .unwrap()
            .contains("spiffe_sequence")
    );
    drop(b);
}

/// Offline federation: the foreign bundle is a file a pipeline replaces;
/// the operator re-reads it and agents get the new contents.
#[test]
fn a_bundle_file_is_followed_when_it_is_replaced() {
    let partner = Stack::operator_only_in("partner.org", &policy("example.org"), |_| String::new());
    let other = Stack::operator_only_in("other.org", &policy("example.org"), |_| String::new());
    let file = partner.path("foreign.pem");
    std::fs::copy(partner.bundle_pem_path(), &file).unwrap();
    let metrics = free_port();
    let mut stack = Stack::operator_only_in("example.org", &policy("partner.org"), |_| {
        format!(
            "metrics_listen: 127.0.0.1:{metrics}\nfederation:\n  partner.org: {}\n",
            file.display()
        )
    });
    stack.start_agent();
    let first = ders(&partner.bundle_pem_path());
    wait_until_every(
        "the partner bundle from the file",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || federated_bundle(&stack, "partner.org") == first,
    );
    // The pipeline publishes new contents (here: another domain's CA, as
    // after a re-key), replacing the file.
    let staging = partner.path("foreign.pem.new");
    std::fs::copy(other.bundle_pem_path(), &staging).unwrap();
    std::fs::rename(&staging, &file).unwrap();
    let second = ders(&other.bundle_pem_path());
    wait_until_every(
        "the replaced bundle file to reach workloads",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || federated_bundle(&stack, "partner.org") == second,
    );
    // A broken file keeps the last good bundle (the failure is counted).
    std::fs::write(&file, "not a bundle").unwrap();
    wait_until_every(
        "the broken file to be refused",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            metric(
                metrics,
                "signet_operator_federation_refresh_failures_total",
                "partner.org",
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    assert_eq!(federated_bundle(&stack, "partner.org"), second);
}
