//! The standalone agent inventory, on the real operator, agent and `signet`
//! binaries: after an agent joins and a workload fetches an SVID, `signet
//! agents list --state-dir` shows the agent with its join method, version,
//! a recent last-seen, its SVID expiry and the workload; `agents show`
//! gives it in full; a revocation shows; a restarted operator keeps the
//! agent's first join.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use signet_e2e::standalone::{Stack, binary, current_uid, uid_policy, wait_until};

fn signet(args: &[&str]) -> std::process::Output {
    Command::new(binary("signet"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running signet {args:?}: {e}"))
}

fn agents_json(stack: &Stack) -> serde_json::Value {
    let state_dir = stack.path("operator");
    let out = signet(&[
        "agents",
        "list",
        "--state-dir",
        state_dir.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "signet agents list: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn time(value: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(
        value
            .as_str()
            .unwrap_or_else(|| panic!("not a time: {value}")),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_list_shows_what_the_operator_saw() {
    let mut stack = Stack::start(&uid_policy("web", current_uid()));
    let fetched = stack.agent_api(&["fetch", "x509"]);
    assert!(fetched.status.success(), "fetch: {fetched:?}");

    // The file is written within a second of a change.
    let mut listed = serde_json::Value::Null;
    wait_until(
        "the inventory to show the agent and its workload",
        Duration::from_secs(10),
        || {
            listed = agents_json(&stack);
            listed[0]["status"]["workloads"] == 1
        },
    );
    let agent = &listed[0];
    assert_eq!(agent["name"], "agent", "{listed}");
    assert_eq!(agent["spec"]["joinMethod"], "join_token");
    assert_eq!(
        agent["spec"]["spiffeId"],
        "spiffe://example.org/signet/agent/join/agent"
    );
    assert_eq!(agent["status"]["version"], env!("CARGO_PKG_VERSION"));
    let now = signet_runtime::clock::Clock::new().now();
    let seen = time(&agent["status"]["lastSeen"]);
    assert!(
        now.duration_since(seen).unwrap_or_default() < Duration::from_secs(60),
        "last seen {seen:?} is not recent"
    );
    assert!(
        time(&agent["status"]["svidExpiry"]) > now,
        "the agent's SVID has expired: {agent}"
    );
    let first_join = agent["status"]["firstJoin"].clone();
    assert!(first_join.is_string(), "{agent}");
    assert!(agent.get("revoked").is_none(), "{agent}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(stack.path("operator/agents.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "agents.json is private");

    let state_dir = stack.path("operator");
    let state_dir = state_dir.to_str().unwrap();
    let table = signet(&["agents", "list", "--state-dir", state_dir]);
    let table = String::from_utf8(table.stdout).unwrap();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["agent", "-", "join_token", env!("CARGO_PKG_VERSION"), "1"],
        "{table}"
    );
    assert_eq!(row.last(), Some(&"active"), "{table}");
    let shown = signet(&["agents", "show", "agent", "--state-dir", state_dir]);
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(shown.contains("Join method:   join_token\n"), "{shown}");
    assert!(shown.contains("Revoked:       no\n"), "{shown}");
    let unknown = signet(&["agents", "show", "nobody", "--state-dir", state_dir]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no agent \"nobody\""),
        "{unknown:?}"
    );

    // A restart keeps the record and its first join.
    stack.stop_agent();
    stack.stop_operator();
    stack.start_operator();
    stack.start_agent();
    let fetched = stack.agent_api(&["fetch", "x509"]);
    assert!(fetched.status.success(), "fetch after restart: {fetched:?}");
    wait_until(
        "the restarted agent to be seen again",
        Duration::from_secs(10),
        || {
            let listed = agents_json(&stack);
            listed[0]["status"]["lastSeen"] != agent["status"]["lastSeen"]
        },
    );
    let after = agents_json(&stack);
    assert_eq!(after[0]["status"]["firstJoin"], first_join, "{after}");

    // A revocation shows in the list.
    let revoked = stack.operator_cli(
        &[
            "agent",
            "revoke",
            "agent",
            "--reason",
            "retired",
            "--state-dir",
        ],
        &[stack.path("operator")],
    );
    assert!(revoked.status.success(), "{revoked:?}");
    let table = signet(&["agents", "list", "--state-dir", state_dir]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.lines().nth(1).unwrap().ends_with("revoked"),
        "{table}"
    );
    assert_eq!(agents_json(&stack)[0]["revoked"]["reason"], "retired");
}
