//! Interop with real third-party SPIFFE clients: code Signet did not write,
//! talking to a real standalone Signet stack (operator and agent processes)
//! over the Workload API socket.
//!
//! - py-spiffe (PyPI `spiffe`), the SPIFFE project's Python library, runs
//!   `tests/interop/py_spiffe_client.py` and reports what it saw as JSON.
//! - SPIRE's `spire-agent api` commands, built on go-spiffe: `fetch x509
//!   -write` writes the SVID, key and bundle files the way sidecar helpers
//!   do, `fetch jwt`/`validate jwt` round-trip a JWT-SVID, and `watch`
//!   (go-spiffe's `WatchX509Context`) is the long-running consumer.
//!   (spiffe-helper would be the obvious file writer, but the Go module
//!   proxy refuses to serve it here; see the install script.)
//!
//! The tools live in `${SIGNET_TOOLS_DIR:-$HOME/.cache/signet-tools}` and are
//! installed by `e2e/tools/install-interop.sh`. Without them a test says why
//! and passes, unless `SIGNET_REQUIRE_INTEROP=1` (as CI sets), when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use signet_e2e::interop::tool;
use signet_e2e::pki::CorporatePki;
use signet_e2e::standalone::{Stack, current_uid, uid_policy, wait_until};
use signet_identity::x509::{certs_from_pem, spiffe_id_from_cert};

const AUDIENCE: &str = "interop-audience";

/// `Stack::start`, except that the agent starts only once the operator has
/// published its bundle: the operator accepts TCP connections (which is what
/// the harness waits for) before it has created its CA and written
/// `bundle.pem`, and an agent started in between exits. Under load (four
/// stacks on two cores) that window is real.
fn start_stack() -> Stack {
    start_stack_with(|_| String::new())
}

/// [`start_stack`] with an operator configuration file.
fn start_stack_with(config: impl FnOnce(&Stack) -> String) -> Stack {
    let mut stack = Stack::operator_only_with_config(&uid_policy("web", current_uid()), config);
    let bundle = stack.bundle_pem_path();
    wait_until("the operator's bundle.pem", Duration::from_secs(30), || {
        bundle.is_file()
    });
    stack.start_agent();
    stack
}

fn expected_id() -> String {
    format!("spiffe://example.org/web/uid/{}", current_uid())
}

fn check(what: &str, output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// DER of every certificate in a PEM file.
fn ders(path: &Path) -> BTreeSet<Vec<u8>> {
    let pem =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    certs_from_pem(&pem)
        .unwrap()
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

fn pem_ders(pems: &[serde_json::Value]) -> BTreeSet<Vec<u8>> {
    pems.iter()
        .flat_map(|p| certs_from_pem(p.as_str().unwrap()).unwrap())
        .map(|c| c.as_ref().to_vec())
        .collect()
}

// ---------------------------------------------------------------- py-spiffe

/// Runs the py-spiffe client against `stack` and returns its JSON report.
fn run_py_spiffe(python: &Path, stack: &Stack, authority: Option<&str>) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/py_spiffe_client.py");
    let mut command = Command::new(python);
    command.arg(&script);
    if let Some(authority) = authority {
        command.args(["--authority", authority]);
    }
    let output = command
        .args([AUDIENCE, "example.org"])
        .env("SPIFFE_ENDPOINT_SOCKET", stack.endpoint())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = check("py-spiffe client", &output);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("py-spiffe client printed no JSON ({e}):\n{stdout}"))
}

/// Everything py-spiffe does, unchanged: grpc's default `:authority` (see
/// the next test for why that matters).
#[test]
fn py_spiffe_fetches_and_validates_x509_and_jwt_svids() {
    let Some(python) = tool("venv/bin/python") else {
        return;
    };
    let stack = start_stack();
    let report = run_py_spiffe(&python, &stack, None);
    let id = expected_id();

    let x509 = &report["x509"];
    assert_eq!(x509["spiffe_id"], id.as_str(), "{report:#}");
    assert_eq!(x509["svid_count"], 1);
    assert_eq!(x509["trust_domain"], "example.org");
    assert_eq!(x509["leaf_uri_sans"], serde_json::json!([id]));
    assert_eq!(
        x509["leaf_dns_sans"],
        serde_json::json!(["web.e2e.internal"])
    );
    assert!(x509["chain_length"].as_u64().unwrap() >= 1);
    assert_eq!(x509["key_matches_leaf"], true, "{report:#}");
    assert_eq!(
        x509["bundle_trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert_eq!(x509["chain_verifies"], true, "{report:#}");
    // The bundle py-spiffe received is the one the operator published.
    assert_eq!(
        pem_ders(x509["bundle_pems"].as_array().unwrap()),
        ders(&stack.bundle_pem_path())
    );

    assert_eq!(report["x509_source"]["spiffe_id"], id.as_str());
    assert_eq!(report["x509_source"]["has_bundle"], true);

    let jwt = &report["jwt"];
    assert_eq!(jwt["spiffe_id"], id.as_str(), "{report:#}");
    assert_eq!(jwt["audience"], serde_json::json!([AUDIENCE]));
    let now = signet_e2e::deadline::wall_now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(jwt["expiry"].as_u64().unwrap() > now, "{report:#}");
    assert_eq!(jwt["validated_by_agent"], id.as_str());
    assert_eq!(jwt["validated_locally"], id.as_str());
    assert_eq!(jwt["wrong_audience_rejected"], true, "{report:#}");
    assert_eq!(jwt["tampered_rejected"], true, "{report:#}");
    assert_eq!(
        jwt["bundle_trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert!(jwt["bundle_keys"].as_u64().unwrap() >= 1);
}

/// py-spiffe exactly as users run it. grpc's C core (grpcio >= 1.57) sends
/// the percent-encoded socket path as `:authority` on unix sockets
/// (`tmp%2F...%2Fagent.sock`), which the HTTP/2 server under tonic would
/// reject as a malformed authority; the agent rewrites it
/// (node-agent/src/h2_authority.rs), so no client option is needed. A
/// client that does set a valid authority keeps working too.
#[test]
fn py_spiffe_with_an_explicit_authority() {
    let Some(python) = tool("venv/bin/python") else {
        return;
    };
    let stack = start_stack();
    let report = run_py_spiffe(&python, &stack, Some("localhost"));
    assert_eq!(report["x509"]["spiffe_id"], expected_id().as_str());
    assert_eq!(report["jwt"]["validated_by_agent"], expected_id().as_str());
}

// ------------------------------------------------ spire-agent (go-spiffe)

/// `spire-agent api COMMAND... -socketPath SOCKET`; the caller adds flags
/// (Go's flag package stops at the first non-flag, so the socket goes first).
fn spire_agent(stack: &Stack, binary: &Path, words: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("api")
        .args(words)
        .arg("-socketPath")
        .arg(stack.socket_path());
    command
}

#[test]
fn spire_agent_writes_svid_key_and_bundle_files() {
    let Some(binary) = tool("bin/spire-agent") else {
        return;
    };
    let stack = start_stack();
    let out = stack.path("spire-out");
    std::fs::create_dir_all(&out).unwrap();
    let output = spire_agent(&stack, &binary, &["fetch", "x509"])
        .arg("-write")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = check("spire-agent api fetch x509", &output);
    // go-spiffe parsed the response and verified the chain against the bundle.
    assert!(stdout.contains("Received 1 svid"), "{stdout}");
    assert!(
        stdout.contains(&format!("SPIFFE ID:\t\t{}", expected_id())),
        "{stdout}"
    );
    assert!(stdout.contains("Hint:\t\t\tweb"), "{stdout}");

    let svid = std::fs::read_to_string(out.join("svid.0.pem")).unwrap();
    let chain = certs_from_pem(&svid).unwrap();
    assert!(!chain.is_empty());
    assert_eq!(
        spiffe_id_from_cert(chain[0].as_ref()).unwrap().to_string(),
        expected_id()
    );

    let key = out.join("svid.0.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "key file mode {mode:o}");

    let bundle = ders(&out.join("bundle.0.pem"));
    let published = ders(&stack.bundle_pem_path());
    assert!(!published.is_empty());
    assert!(
        published.is_subset(&bundle),
        "the written bundle lacks the operator's CA"
    );
}

#[test]
fn spire_agent_fetches_and_validates_a_jwt_svid() {
    let Some(binary) = tool("bin/spire-agent") else {
        return;
    };
    let stack = start_stack();
    let output = spire_agent(&stack, &binary, &["fetch", "jwt"])
        .args(["-audience", AUDIENCE, "-output", "json"])
        .output()
        .unwrap();
    let stdout = check("spire-agent api fetch jwt", &output);
    // [JWTSVIDResponse, JWTBundlesResponse], protojson-encoded.
    let responses: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("fetch jwt printed no JSON ({e}):\n{stdout}"));
    let svid = &responses[0]["svids"][0];
    assert_eq!(svid["spiffe_id"], expected_id().as_str(), "{responses:#}");
    assert_eq!(svid["hint"], "web", "{responses:#}");
    let token = svid["svid"].as_str().unwrap();
    // JWKS keyed by trust domain ID, base64 (protojson bytes).
    assert!(
        responses[1]["bundles"]["spiffe://example.org"]
            .as_str()
            .is_some_and(|jwks| !jwks.is_empty()),
        "{responses:#}"
    );

    let validated = spire_agent(&stack, &binary, &["validate", "jwt"])
        .args(["-audience", AUDIENCE, "-svid", token])
        .output()
        .unwrap();
    let stdout = check("spire-agent api validate jwt", &validated);
    assert!(stdout.contains("SVID is valid."), "{stdout}");
    assert!(stdout.contains(&expected_id()), "{stdout}");

    let wrong = spire_agent(&stack, &binary, &["validate", "jwt"])
        .args(["-audience", "someone-else", "-svid", token])
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong audience validated");
}

/// Kills the child when dropped, so a failing assertion leaves nothing behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A long-running go-spiffe consumer stays attached and sees policy changes.
#[test]
fn spire_agent_watch_stays_attached_and_sees_updates() {
    let Some(binary) = tool("bin/spire-agent") else {
        return;
    };
    let uid = current_uid();
    let stack = start_stack();
    let log = stack.path("watch.out");
    let mut watch = KillOnDrop(
        spire_agent(&stack, &binary, &["watch"])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(stack.path("watch.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let read = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(stack.path("watch.err")).unwrap_or_default()
        )
    };
    let mut alive = || watch.0.try_wait().unwrap().is_none();

    wait_until("the first update", Duration::from_secs(30), || {
        read().contains(&format!("SPIFFE ID:\t\t{}", expected_id()))
    });
    assert!(read().contains("Received 1 svid after"), "{}", read());
    assert!(alive(), "watch exited: {}", read());

    stack.write_policy(
        "more.yaml",
        &uid_policy("api", uid).replace("e2e-agents", "e2e-agents-2"),
    );
    wait_until(
        "the update with a second SVID",
        Duration::from_secs(30),
        || read().contains("Received 2 svids"),
    );
    assert!(
        read().contains(&format!("SPIFFE ID:\t\tspiffe://example.org/api/uid/{uid}")),
        "{}",
        read()
    );
    assert!(alive(), "watch exited: {}", read());
}

// ---------------------------------------------------------- upstream CA

/// `ca.upstream` from files: the bundle holds only the corporate root, and
/// SVIDs (leaf, the trust domain's CA, the issuing CA) verify against it
/// with py-spiffe, go-spiffe (mTLS between two workloads) and openssl.
#[test]
fn svids_under_an_upstream_ca_verify_against_its_root_alone() {
    let work = tempfile::tempdir().unwrap();
    let pki = CorporatePki::generate();
    let files = pki.write(work.path());
    let stack = start_stack_with(|_| {
        format!(
            "ca:\n  upstream:\n    cert_file: {}\n    key_file: {}\n    bundle_file: {}\n",
            files.chain.display(),
            files.key.display(),
            files.roots.display()
        )
    });
    let root: BTreeSet<Vec<u8>> = [pki.root_der.clone()].into();
    assert_eq!(
        ders(&stack.bundle_pem_path()),
        root,
        "the bundle is the root alone"
    );

    // Signet's own client: the chain carries the trust domain's CA and the
    // issuing CA, not the root.
    let fetched = stack.agent_api(&[
        "fetch",
        "x509",
        "--write",
        stack.path("svid").to_str().unwrap(),
    ]);
    assert!(fetched.status.success(), "{fetched:?}");

    if let Some(python) = tool("venv/bin/python") {
        let report = run_py_spiffe(&python, &stack, None);
        let x509 = &report["x509"];
        assert_eq!(x509["spiffe_id"], expected_id().as_str(), "{report:#}");
        assert_eq!(x509["chain_length"], 3, "{report:#}");
        assert_eq!(x509["chain_verifies"], true, "{report:#}");
        assert_eq!(pem_ders(x509["bundle_pems"].as_array().unwrap()), root);
        // JWT keys stay Signet's own.
        assert_eq!(
            report["jwt"]["validated_locally"],
            expected_id().as_str(),
            "{report:#}"
        );
    }

    if let Some(binary) = tool("bin/spire-agent") {
        let out = stack.path("go-spiffe");
        std::fs::create_dir_all(&out).unwrap();
        let output = spire_agent(&stack, &binary, &["fetch", "x509"])
            .arg("-write")
            .arg(&out)
            .output()
            .unwrap();
        check("spire-agent api fetch x509", &output);
        assert_eq!(ders(&out.join("bundle.0.pem")), root);
        let chain =
            certs_from_pem(&std::fs::read_to_string(out.join("svid.0.pem")).unwrap()).unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(
            spiffe_id_from_cert(chain[0].as_ref()).unwrap().to_string(),
            expected_id()
        );
        // openssl: the leaf, with the two CAs as untrusted intermediates,
        // against the root alone.
        let leaf = stack.path("leaf.pem");
        let intermediates = stack.path("intermediates.pem");
        std::fs::write(&leaf, signet_identity::x509::certs_to_pem(&chain[..1])).unwrap();
        std::fs::write(
            &intermediates,
            signet_identity::x509::certs_to_pem(&chain[1..]),
        )
        .unwrap();
        let verify = || {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(out.join("bundle.0.pem"))
                .arg("-untrusted")
                .arg(&intermediates)
                .arg(&leaf)
                .output()
                .unwrap()
        };
        let said = check("openssl verify", &verify());
        assert!(said.contains(": OK"), "{said}");
        // Without the issuing CA, the path to the root is broken.
        std::fs::write(
            &intermediates,
            signet_identity::x509::certs_to_pem(&chain[1..2]),
        )
        .unwrap();
        let broken = verify();
        assert!(!broken.status.success(), "verified without the issuing CA");
    }

    // go-spiffe mTLS between two workloads, each checking the other's
    // three-certificate chain against the root.
    if let Some(server) =
        signet_e2e::interop::GoMtlsServer::start(&stack.endpoint(), &[&expected_id()])
    {
        let greeting =
            signet_e2e::interop::go_mtls_once(&stack.endpoint(), &server, &expected_id()).unwrap();
        assert_eq!(
            greeting.trim(),
            format!("hello {0}, this is {0}", expected_id())
        );
    }
}

/// A broken upstream refuses to start, saying why (and writes no CA).
#[test]
fn an_upstream_that_does_not_chain_to_its_roots_is_refused_at_start() {
    let work = tempfile::tempdir().unwrap();
    let files = CorporatePki::generate().write(work.path());
    let other_dir = work.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = CorporatePki::generate().write(&other_dir);
    let config = work.path().join("operator.yaml");
    std::fs::write(
        &config,
        format!(
            "trust_domain: example.org\nca:\n  upstream:\n    cert_file: {}\n    key_file: {}\n    bundle_file: {}\n",
            files.chain.display(),
            files.key.display(),
            other.roots.display()
        ),
    )
    .unwrap();
    let state = work.path().join("state");
    let output = Command::new(signet_e2e::standalone::binary("signet-operator"))
        .args(["standalone", "--config"])
        .arg(&config)
        .arg("--policy-dir")
        .arg(work.path())
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("ca.upstream") && said.contains("does not verify against the roots"),
        "{said}"
    );
    assert!(
        !state.join("ca-keyset.json").exists(),
        "a CA was created anyway"
    );
}
