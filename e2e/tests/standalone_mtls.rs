//! Two workloads authenticate each other over mTLS with SVIDs fetched
//! through the Workload API by a standard client (the `spiffe` crate inside
//! `signet-mtls-example`); a third workload, with a valid SVID of a
//! different identity, is refused. Client processes switch uid with
//! `setpriv`, so this test needs root (it fails without root when
//! `SIGNET_REQUIRE_ROOT=1`, as in CI).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use signet_e2e::standalone::{Stack, any_uid_policy, binary, have_root};

fn client_as(uid: u32, stack: &Stack, port: u16, server_id: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .arg(binary("signet-mtls-example"))
        .args([
            "client",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--server-id",
            server_id,
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", stack.endpoint())
        .output()
        .unwrap()
}

#[test]
fn workloads_authenticate_each_other_and_an_unlisted_identity_is_refused() {
    if !have_root("workloads_authenticate_each_other_and_an_unlisted_identity_is_refused") {
        return;
    }
    let stack = Stack::start(&any_uid_policy(&[]));
    let server_id = "spiffe://example.org/svc/uid/0";
    let allowed = "spiffe://example.org/svc/uid/65534";

    let mut server = Command::new(binary("signet-mtls-example"))
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            allowed,
            "--connections",
            "1",
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", stack.endpoint())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let port: u16 = listening.rsplit(':').next().unwrap().parse().unwrap();

    // A workload with a valid SVID of another identity: the server refuses it.
    let refused = client_as(65533, &stack, port, server_id);
    assert!(!refused.status.success(), "{refused:?}");
    let refusal = lines.next().unwrap().unwrap();
    assert!(refusal.starts_with("refused"), "{refusal}");
    assert!(
        refusal.contains("svc/uid/65533"),
        "the refusal names the peer's ID: {refusal}"
    );

    // A client expecting a different server ID refuses the server.
    let wrong_server = client_as(65534, &stack, port, "spiffe://example.org/svc/uid/1");
    assert!(!wrong_server.status.success());
    assert!(lines.next().unwrap().unwrap().starts_with("refused"));

    // The allowed pair talks.
    let ok = client_as(65534, &stack, port, server_id);
    assert!(ok.status.success(), "{ok:?}");
    let reply = String::from_utf8_lossy(&ok.stdout);
    // The client adds which of its SVIDs it used.
    assert!(
        reply.trim().starts_with(&format!(
            "hello {allowed}, this is {server_id} (client svid "
        )),
        "{reply}"
    );
    assert!(server.wait().unwrap().success());
}
