//! SPIFFE federation between Signet and a real SPIRE deployment, both
//! directions: `spire-server` and `spire-agent` (built from SPIRE's Go
//! module by `e2e/tools/install-interop.sh`) run `spire.example`; a
//! standalone Signet operator and agent run `signet.example`. Each server
//! serves its bundle endpoint with its own SVID (`https_spiffe`: SPIRE's
//! `spiffe://spire.example/spire/server`, Signet's issuer SVID) and fetches
//! the other's.
//!
//! Each side starts from the other's X.509 authorities only (PEM, as an
//! administrator would paste them), so a JWT-SVID from the other domain
//! can only validate once the bundle was fetched from the endpoint: that is
//! what proves the endpoint feeds each side. Then go-spiffe workloads, one
//! on each Workload API, complete mTLS both ways round, and a JWT-SVID from
//! each domain validates on the other side's Workload API.
//!
//! The SPIRE side is [`signet_e2e::spire::Spire`] with federation on.
//!
//! Without the tools the test is skipped, unless `SIGNET_REQUIRE_INTEROP=1`
//! (as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use signet_e2e::cluster::free_port;
use signet_e2e::interop::{GoMtlsServer, go_mtls_once, tool};
use signet_e2e::spire::{Spire, SpireConfig, SpireFederation, stdout_of};
use signet_e2e::standalone::{Stack, current_uid, http_get, wait_until_every};
use signet_identity::x509::certs_from_pem;

const SPIRE_TD: &str = "spire.example";
const SIGNET_TD: &str = "signet.example";
const AUDIENCE: &str = "federation-test";

fn ders(pem: &str) -> BTreeSet<Vec<u8>> {
    certs_from_pem(pem)
        .unwrap()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

fn read_ders(path: &Path) -> BTreeSet<Vec<u8>> {
    std::fs::read_to_string(path)
        .map(|pem| ders(&pem))
        .unwrap_or_default()
}

/// `spire-agent api WORDS -socketPath SOCKET ARGS`: go-spiffe's Workload
/// API client against either side's agent.
fn workload_api(agent_bin: &Path, socket: &Path, words: &[&str], args: &[&str]) -> Output {
    Command::new(agent_bin)
        .arg("api")
        .args(words)
        .arg("-socketPath")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

/// A JWT-SVID for `AUDIENCE` from the agent on `socket`.
fn fetch_jwt(agent_bin: &Path, socket: &Path) -> Option<String> {
    let output = workload_api(
        agent_bin,
        socket,
        &["fetch", "jwt"],
        &["-audience", AUDIENCE, "-output", "json"],
    );
    if !output.status.success() {
        return None;
    }
    let responses: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    responses[0]["svids"][0]["svid"].as_str().map(str::to_owned)
}

/// Validates `token` on the agent at `socket`: Ok(its output) or Err.
fn validate_jwt(agent_bin: &Path, socket: &Path, token: &str) -> Result<String, String> {
    let output = workload_api(
        agent_bin,
        socket,
        &["validate", "jwt"],
        &["-audience", AUDIENCE, "-svid", token],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The certificates of `peer`'s federated bundle that go-spiffe wrote out
/// from the agent at `socket` (empty until there is one).
fn federated_bundle_written(agent_bin: &Path, socket: &Path, out: &Path) -> BTreeSet<Vec<u8>> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let fetched = workload_api(
        agent_bin,
        socket,
        &["fetch", "x509"],
        &["-write", out.to_str().unwrap()],
    );
    if !fetched.status.success() {
        return BTreeSet::new();
    }
    read_ders(&out.join("federated_bundle.0.0.pem"))
}

fn metric(port: u16, name: &str) -> Option<f64> {
    http_get(port, "/metrics").lines().find_map(|line| {
        let rest = line.strip_prefix(&format!("{name}{{trust_domain=\"{SPIRE_TD}\"}} "))?;
        rest.trim().parse().ok()
    })
}

fn signet_policy() -> String {
    signet_e2e::standalone::any_uid_policy(&[SPIRE_TD])
}

#[test]
fn signet_and_spire_federate_both_ways() {
    let (Some(server_bin), Some(agent_bin), Some(_)) = (
        tool("bin/spire-server"),
        tool("bin/spire-agent"),
        tool("bin/go-spiffe-mtls"),
    ) else {
        return;
    };
    let uid = current_uid();
    let signet_endpoint_port = free_port();
    let mut spire = Spire::start(
        server_bin,
        agent_bin.clone(),
        SpireConfig::new(SPIRE_TD).federating_with(SpireFederation {
            trust_domain: SIGNET_TD.to_owned(),
            bundle_endpoint_url: format!("https://127.0.0.1:{signet_endpoint_port}/"),
            endpoint_spiffe_id: format!("spiffe://{SIGNET_TD}/signet/issuer"),
        }),
    );

    // Signet starts from SPIRE's X.509 authorities only.
    let spire_cas = stdout_of(
        "spire-server bundle show",
        &spire.server_with(&["bundle", "show"], &["-format", "pem"]),
    );
    std::fs::write(spire.path("spire-bundle.pem"), &spire_cas).unwrap();
    let spire_cas = ders(&spire_cas);
    let metrics = free_port();
    let mut signet = Stack::operator_only_in(SIGNET_TD, &signet_policy(), |_| {
        format!(
            "metrics_listen: 127.0.0.1:{metrics}\n\
             bundle_endpoint: {{listen: \"127.0.0.1:{signet_endpoint_port}\", profile: https_spiffe}}\n\
             federation:\n  {SPIRE_TD}: {{bundle_endpoint_url: \"https://127.0.0.1:{}/\", profile: https_spiffe, endpoint_spiffe_id: \"spiffe://{SPIRE_TD}/spire/server\", bundle: {}}}\n",
            spire.bundle_port().unwrap(),
            spire.path("spire-bundle.pem").display()
        )
    });
    let signet_bundle = signet.bundle_pem_path();
    wait_until_every(
        "Signet's bundle.pem",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || signet_bundle.is_file(),
    );
    let signet_cas = read_ders(&signet_bundle);

    // SPIRE starts from Signet's X.509 authorities only, then fetches the
    // whole bundle (with its JWT keys) from Signet's endpoint.
    stdout_of(
        "spire-server bundle set",
        &spire.server_with(
            &["bundle", "set"],
            &[
                "-format",
                "pem",
                "-id",
                &format!("spiffe://{SIGNET_TD}"),
                "-path",
                signet_bundle.to_str().unwrap(),
            ],
        ),
    );
    wait_until_every(
        "SPIRE to fetch Signet's bundle, JWT keys and all, from its endpoint",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let _ = spire.server_with(
                &["federation", "refresh"],
                &["-id", &format!("spiffe://{SIGNET_TD}")],
            );
            let listed = spire.server_with(
                &["bundle", "list"],
                &["-id", &format!("spiffe://{SIGNET_TD}"), "-format", "spiffe"],
            );
            String::from_utf8_lossy(&listed.stdout).contains("jwt-svid")
        },
    );

    // The agent's workload (this test's uid) federates with Signet's
    // trust domain.
    spire.create_entry("/web", uid, &[SIGNET_TD]);
    spire.start_agent();
    signet.start_agent();

    // Each side's workloads receive the other's X.509 authorities (go-spiffe
    // writes out what it received).
    let spire_socket = spire.path("agent.sock");
    wait_until_every(
        "each side's workload to receive the other's bundle",
        Duration::from_secs(90),
        Duration::from_secs(1),
        || {
            federated_bundle_written(&agent_bin, &signet.socket_path(), &signet.path("out"))
                == spire_cas
                && federated_bundle_written(&agent_bin, &spire_socket, &spire.path("out"))
                    == signet_cas
        },
    );
    assert!(
        metric(
            metrics,
            "signet_operator_federation_last_refresh_timestamp_seconds"
        )
        .is_some_and(|t| t > 0.0),
        "Signet never refreshed SPIRE's bundle from its endpoint"
    );

    // mTLS between a go-spiffe workload of each domain, both ways round.
    let (spire_id, signet_id) = (
        format!("spiffe://{SPIRE_TD}/web"),
        format!("spiffe://{SIGNET_TD}/svc/uid/{uid}"),
    );
    let on_spire = GoMtlsServer::start(&spire.agent_endpoint(), &[&signet_id]).unwrap();
    let greeting = go_mtls_once(&signet.endpoint(), &on_spire, &spire_id).unwrap();
    assert_eq!(
        greeting.trim(),
        format!("hello {signet_id}, this is {spire_id}")
    );
    let on_signet = GoMtlsServer::start(&signet.endpoint(), &[&spire_id]).unwrap();
    let greeting = go_mtls_once(&spire.agent_endpoint(), &on_signet, &signet_id).unwrap();
    assert_eq!(
        greeting.trim(),
        format!("hello {spire_id}, this is {signet_id}")
    );
    // A server that admits only its own domain refuses the other's client.
    let closed = GoMtlsServer::start(&spire.agent_endpoint(), &[&spire_id]).unwrap();
    assert!(go_mtls_once(&signet.endpoint(), &closed, &spire_id).is_err());

    // A JWT-SVID from each domain validates on the other's Workload API
    // (Signet's only with the JWT keys SPIRE fetched from Signet's
    // endpoint, and the other way round).
    let spire_token = fetch_jwt(&agent_bin, &spire_socket).expect("a JWT-SVID from SPIRE");
    let signet_token =
        fetch_jwt(&agent_bin, &signet.socket_path()).expect("a JWT-SVID from Signet");
    let mut on_signet_side = Err(String::new());
    wait_until_every(
        "Signet to validate SPIRE's JWT-SVID",
        Duration::from_secs(30),
        Duration::from_secs(1),
        || {
            on_signet_side = validate_jwt(&agent_bin, &signet.socket_path(), &spire_token);
            on_signet_side.is_ok()
        },
    );
    let validated = on_signet_side.unwrap();
    assert!(validated.contains(&spire_id), "{validated}");
    let validated = validate_jwt(&agent_bin, &spire_socket, &signet_token).unwrap();
    assert!(validated.contains(&signet_id), "{validated}");

    // And a token of a domain neither side federates with is refused.
    let stranger = Stack::start(&signet_e2e::standalone::uid_policy("web", uid));
    let stranger_token =
        fetch_jwt(&agent_bin, &stranger.socket_path()).expect("a JWT-SVID from example.org");
    assert!(validate_jwt(&agent_bin, &spire_socket, &stranger_token).is_err());
    assert!(validate_jwt(&agent_bin, &signet.socket_path(), &stranger_token).is_err());
}
