//! Cold issuance: how long a brand-new process waits for its first X.509-SVID
//! from a real standalone stack (`signet-operator` and `signet-agent`
//! processes, as `make demo` runs them), when the agent has never seen that
//! workload before.
//!
//! The agent caches SVIDs per workload (its attributes minus the PID), so
//! every cold sample runs its client under a uid no earlier process used:
//! the policy grants `/cold/uid/{{ workload.unix.uid }}` to any non-root uid.
//! The client is this bench executable re-executed (std `Command::uid/gid`,
//! supplementary groups dropped) in client mode: it connects to the Workload
//! API with the `spiffe` crate, calls FetchX509SVID and prints one line.
//!
//! Timed from just before `spawn` to the client's line on its stdout, so a
//! cold sample includes: fork/exec and start-up of a small Rust process,
//! connecting to the unix socket, the agent's attestation (procfs, peer
//! credentials; the executable's hash is cached after the warm-up sample),
//! local policy evaluation, EC P-256 key generation and CSR, the
//! SignX509Svids round trip over mTLS (the issuer's policy decision, signing
//! and audit line), the agent's check of the returned SVID, the response,
//! and the client's parsing of it. Process exit is not included.
//!
//! Two comparisons run on the same stack:
//! - warm: the same uid every time, so the SVID is already cached and only
//!   the spawn, attestation and cache hit remain;
//! - spawn only: the client exits as soon as it starts (no Workload API),
//!   the floor that process creation alone puts under both.
//!
//! Needs root (to run clients as other uids) and the release binaries:
//! `cargo build --release --bins && cargo bench -p signet-e2e --bench cold_issuance`
//! (falls back to target/debug binaries, with a warning).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use signet_e2e::standalone::{Stack, binary, current_uid};

/// Set in the environment of a re-executed client: `fetch` or `noop`.
const CLIENT_MODE: &str = "SIGNET_COLD_ISSUANCE_CLIENT";
/// Samples per scenario (override with COLD_ISSUANCE_SAMPLES).
const DEFAULT_SAMPLES: usize = 200;
/// First uid handed to cold clients; each sample takes the next one.
const FIRST_COLD_UID: u32 = 200_000;
const WARM_UID: u32 = 199_999;
/// Uid of the discarded first request.
const WARMUP_UID: u32 = 199_998;

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: cold, labels: {suite: e2e}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, not_eq: "0"}]
  spiffe:
    id: "/cold/uid/{{ workload.unix.uid }}"
    hint: cold
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: e2e-agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [e2e]}}
"#;

fn main() {
    match std::env::var(CLIENT_MODE).as_deref() {
        Ok("fetch") => client_fetch(),
        Ok(_) => println!("ok"),
        Err(_) => bench(),
    }
}

/// Client mode: one FetchX509SVID, then `ok <spiffe id> <µs in the call>`.
fn client_fetch() {
    let started = signet_e2e::deadline::Stopwatch::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoint = std::env::var("SPIFFE_ENDPOINT_SOCKET").unwrap();
    let svid = runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(endpoint)
            .await
            .unwrap();
        client.fetch_x509_svid().await.unwrap()
    });
    println!("ok {} {}", svid.spiffe_id(), started.elapsed().as_micros());
}

struct Sample {
    /// Spawn to the client's line.
    total: Duration,
    /// Inside the client: runtime start, connect and the call.
    in_client: Option<Duration>,
}

/// Runs this executable as `uid` in `mode` and times it.
fn run_client(stack: &Stack, mode: &str, uid: u32) -> Sample {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command
        .env_clear()
        .env(CLIENT_MODE, mode)
        .env("SPIFFE_ENDPOINT_SOCKET", stack.endpoint())
        .current_dir("/")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let started = signet_e2e::deadline::Stopwatch::start();
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let total = started.elapsed();
    let status = child.wait().unwrap();
    assert!(
        status.success() && line.starts_with("ok"),
        "client as uid {uid} failed ({status}): {line:?}"
    );
    let mut words = line.split_whitespace().skip(1);
    if mode == "fetch" {
        let id = words.next().unwrap_or_default();
        assert_eq!(id, format!("spiffe://example.org/cold/uid/{uid}"));
    }
    let in_client = words
        .next()
        .and_then(|micros| micros.parse().ok())
        .map(Duration::from_micros);
    Sample { total, in_client }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report_line(name: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap();
    println!(
        "{name:<40} n={:<4} mean={:>7.2}ms p50={:>7.2}ms p99={:>7.2}ms min={:>7.2}ms max={:>7.2}ms",
        samples.len(),
        millis(mean),
        millis(percentile(&samples, 0.50)),
        millis(percentile(&samples, 0.99)),
        millis(samples[0]),
        millis(samples[samples.len() - 1]),
    );
}

fn report(name: &str, samples: &[Sample]) {
    report_line(
        &format!("{name}: spawn → reply"),
        samples.iter().map(|s| s.total).collect(),
    );
    report_line(
        &format!("{name}: inside the client"),
        samples.iter().filter_map(|s| s.in_client).collect(),
    );
}

fn bench() {
    if current_uid() != 0 {
        println!("cold_issuance: skipped, needs root to run clients under fresh uids");
        return;
    }
    let samples: usize = std::env::var("COLD_ISSUANCE_SAMPLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SAMPLES);
    for name in ["signet-operator", "signet-agent"] {
        let path = binary(name);
        let profile = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("using {}", path.display());
        if profile != "release" {
            println!("warning: {name} is not a release build; run `cargo build --release --bins`");
        }
    }

    let stack = Stack::start(POLICY);
    // The first request also waits for the agent's first policy and hashes
    // this executable once; neither is part of a cold issuance.
    run_client(&stack, "fetch", WARMUP_UID);
    run_client(&stack, "fetch", WARM_UID);

    // Interleaved, so that load from other processes on the machine
    // affects the three scenarios alike.
    let (mut spawn, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..samples {
        spawn.push(run_client(&stack, "noop", WARM_UID));
        let uid = FIRST_COLD_UID + u32::try_from(i).unwrap();
        cold.push(run_client(&stack, "fetch", uid));
        warm.push(run_client(&stack, "fetch", WARM_UID));
    }

    println!();
    report("spawn only", &spawn);
    report("warm (cached SVID)", &warm);
    report("cold (new workload)", &cold);

    let issued = stack
        .audit_events()
        .iter()
        .filter(|e| e["event"] == "svid.issued" && e["credential"] == "x509_svid")
        .count();
    println!(
        "X.509-SVIDs issued by the operator: {issued} (expected {})",
        samples + 2
    );
}
