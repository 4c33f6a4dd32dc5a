//! `make bench-compare`: Signet side by side with SPIRE on the same machine,
//! measured with the same go-spiffe client (`go-spiffe-mtls fetch-load` and
//! `go-spiffe-mtls fetch`, e2e/tools/go-spiffe-mtls, go-spiffe v2.9.0).
//!
//! SPIRE is `spire-server` + `spire-agent` v1.13.3 as
//! `e2e/tools/install-interop.sh` builds them (SQLite datastore, in-memory
//! keys, join-token node attestation, `unix` workload attestor; default
//! sync intervals), see [`signet_e2e::spire`]. Signet is the standalone
//! `signet-operator` + `signet-agent` (release builds), see
//! [`signet_e2e::standalone`]. The two run one after the other, never at
//! the same time: SPIRE's measurements first, its processes stopped, then
//! Signet's, so neither pays for the other's background work.
//!
//! For each system:
//! 1. cached FetchX509SVID: `fetch-load` with 1 and with 8 clients (each
//!    its own connection), all as one uid whose SVID is cached; a warm-up
//!    (not counted) first, then a fixed duration; requests/s, p50, p99;
//! 2. the same for FetchJWTSVID (one audience, cached);
//! 3. identity defined → SVID: a go-spiffe client of a fresh uid polls the
//!    Workload API (FetchX509SVID every 20 ms while refused) and prints
//!    `waiting`; then the identity is created (SPIRE: `spire-server entry
//!    create` for that uid, the CLI's run included; Signet: a policy file
//!    granting that uid, written atomically into the policy directory), and
//!    the time from just before the create to the client's line with the
//!    SVID is taken; median of a few runs;
//! 4. agent memory: a fresh deployment, the agent's VmRSS (/proc) idle, then
//!    after 100 and after 1,000 workloads of distinct uids (`setpriv`) each
//!    did one FetchX509SVID and exited (short-lived: what the agent keeps
//!    for them afterwards is what is measured). SPIRE gets one entry per uid
//!    (batches of `entry create -data`, created just before that step's
//!    workloads); Signet's single any-uid policy covers them all.
//!
//! Every response is checked for the expected SPIFFE ID, so a broken stack
//! fails the bench; timings are reported, never asserted.
//!
//! Needs root (clients run as other uids), the tools of `make test-setup`
//! (`e2e/tools/install-interop.sh`) and the release binaries; runs only
//! with SIGNET_BENCH_COMPARE=1 (so `cargo bench --workspace` skips it):
//! `make bench-compare`, i.e. `cargo build --release --workspace --bins &&
//! SIGNET_BENCH_COMPARE=1 cargo bench -p signet-e2e --bench bench_compare`. Knobs: BENCH_COMPARE_DURATION (seconds per load
//! run, default 5), BENCH_COMPARE_WARMUP (seconds, default 1),
//! BENCH_COMPARE_CREATE_RUNS (default 5), BENCH_COMPARE_WORKLOADS
//! (comma-separated cumulative counts, default `100,1000`),
//! BENCH_COMPARE_PARALLEL (workload processes at a time, default 8),
//! BENCH_COMPARE_OUT (also write the markdown report to this file).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use signet_e2e::deadline::Stopwatch;
use signet_e2e::interop::tool;
use signet_e2e::spire::{Spire, SpireConfig, stdout_of};
use signet_e2e::standalone::{Stack, binary, current_uid, proc_status_field};

/// The uid of the cached-load clients.
const LOAD_UID: u32 = 210_000;
/// First uid of the identity-creation runs (SPIRE; Signet adds 1,000).
const FRESH_UID: u32 = 220_000;
/// First uid of the memory workloads.
const WORKLOAD_UID: u32 = 230_000;
const AUDIENCE: &str = "bench-compare";
const SPIRE_TD: &str = "spire.example";

struct Settings {
    duration: u64,
    warmup: u64,
    create_runs: usize,
    workloads: Vec<usize>,
    parallel: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Settings {
    fn from_env() -> Self {
        let workloads = std::env::var("BENCH_COMPARE_WORKLOADS")
            .unwrap_or_else(|_| "100,1000".to_owned())
            .split(',')
            .map(|n| n.trim().parse().expect("BENCH_COMPARE_WORKLOADS: numbers"))
            .collect::<Vec<usize>>();
        assert!(
            workloads.windows(2).all(|w| w[0] < w[1]),
            "BENCH_COMPARE_WORKLOADS must increase"
        );
        Self {
            duration: env_or("BENCH_COMPARE_DURATION", 5),
            warmup: env_or("BENCH_COMPARE_WARMUP", 1),
            create_runs: env_or("BENCH_COMPARE_CREATE_RUNS", 5),
            workloads,
            parallel: env_or("BENCH_COMPARE_PARALLEL", 8).max(1),
        }
    }
}

/// One system under test, as the measurements see it.
trait System: Sync {
    /// The Workload API (`unix:///...`).
    fn endpoint(&self) -> String;
    /// The SPIFFE ID the workloads of `uid` should receive.
    fn expected_id(&self, uid: u32) -> String;
    /// Defines the identity of `uid` (the thing scenario 3 times).
    fn grant(&mut self, uid: u32);
    /// Defines the identities of many uids (before scenario 4's workloads).
    fn grant_many(&mut self, uids: &[u32]);
    /// The agent's process ID.
    fn agent_pid(&self) -> u32;
}

struct SpireSystem(Spire);

impl SpireSystem {
    fn start() -> Self {
        let (server, agent) = Spire::installed().expect("spire-server and spire-agent");
        // INFO, as a deployment would log (DEBUG costs SPIRE throughput).
        let mut spire = Spire::start(server, agent, SpireConfig::new(SPIRE_TD).log_level("INFO"));
        spire.start_agent();
        spire.wait_for_agent();
        Self(spire)
    }
}

impl System for SpireSystem {
    fn endpoint(&self) -> String {
        self.0.agent_endpoint()
    }
    fn expected_id(&self, uid: u32) -> String {
        format!("spiffe://{SPIRE_TD}/svc/uid/{uid}")
    }
    fn grant(&mut self, uid: u32) {
        self.0.create_entry(&format!("/svc/uid/{uid}"), uid, &[]);
    }
    fn grant_many(&mut self, uids: &[u32]) {
        for chunk in uids.chunks(500) {
            let entries: Vec<(String, u32)> = chunk
                .iter()
                .map(|uid| (format!("/svc/uid/{uid}"), *uid))
                .collect();
            self.0.create_entries(&entries);
        }
    }
    fn agent_pid(&self) -> u32 {
        self.0.agent_pid().expect("spire-agent running")
    }
}

/// Signet with per-uid policy files (so that an identity can be created),
/// or with the any-uid policy (`any_uid`), for the memory runs.
struct SignetSystem {
    stack: Stack,
    any_uid: bool,
}

const SIGNET_ROLE: &str = r#"apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: e2e-agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [e2e]}}
"#;

/// A policy file granting `uid` (and only it) `/svc/uid/<uid>`.
fn signet_uid_identity(uid: u32) -> String {
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: svc-{uid}, labels: {{suite: e2e}}}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.unix.uid, eq: "{uid}"}}]
  spiffe: {{id: "/svc/uid/{{{{ workload.unix.uid }}}}"}}
"#
    )
}

impl SignetSystem {
    fn start(any_uid: bool) -> Self {
        let policy = if any_uid {
            signet_e2e::standalone::any_uid_policy(&[])
        } else {
            // The agents' Role and one identity the load client does not use.
            format!("{}---\n{SIGNET_ROLE}", signet_uid_identity(LOAD_UID - 1))
        };
        Self {
            stack: Stack::start(&policy),
            any_uid,
        }
    }
}

impl System for SignetSystem {
    fn endpoint(&self) -> String {
        self.stack.endpoint()
    }
    fn expected_id(&self, uid: u32) -> String {
        format!("spiffe://{}/svc/uid/{uid}", self.stack.trust_domain)
    }
    fn grant(&mut self, uid: u32) {
        assert!(!self.any_uid, "the any-uid policy already grants {uid}");
        self.stack
            .write_policy(&format!("svc-{uid}.yaml"), &signet_uid_identity(uid));
    }
    fn grant_many(&mut self, _uids: &[u32]) {
        assert!(self.any_uid, "grant_many relies on the any-uid policy");
    }
    fn agent_pid(&self) -> u32 {
        self.stack
            .agent
            .as_ref()
            .expect("signet-agent running")
            .pid()
    }
}

/// The go-spiffe tool, copied where every uid may run it.
struct GoClient {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl GoClient {
    fn install() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let source = tool("bin/go-spiffe-mtls").expect("go-spiffe-mtls (make test-setup)");
        let dir = tempfile::Builder::new()
            .prefix("bench-compare-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("go-spiffe-mtls");
        std::fs::copy(&source, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { _dir: dir, path }
    }

    /// The tool with `args`, run as `uid` (and gid) without other groups.
    fn command_as(&self, uid: u32, args: &[&str]) -> Command {
        let mut command = Command::new("setpriv");
        command
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(&self.path)
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null());
        command
    }

    /// `fetch`: FetchX509SVID as `uid` until it returns `expect`.
    fn fetch_command(&self, uid: u32, endpoint: &str, expect: &str) -> Command {
        self.command_as(
            uid,
            &[
                "fetch", "-socket", endpoint, "-expect", expect, "-timeout", "120s", "-retry",
                "20ms",
            ],
        )
    }
}

/// One workload's FetchX509SVID (retrying while refused), asserting its ID.
fn fetch_as(client: &GoClient, system: &dyn System, uid: u32) {
    let expect = system.expected_id(uid);
    let output = client
        .fetch_command(uid, &system.endpoint(), &expect)
        .output()
        .unwrap();
    let stdout = stdout_of(&format!("fetch as uid {uid}"), &output);
    let line = stdout.lines().last().unwrap_or_default();
    let result: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(result["id"], expect.as_str(), "uid {uid}: {stdout}");
}

/// A `fetch-load` run's summary.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
}

fn load(
    client: &GoClient,
    system: &dyn System,
    settings: &Settings,
    kind: &str,
    clients: usize,
) -> Load {
    let expect = system.expected_id(LOAD_UID);
    let output = client
        .command_as(
            LOAD_UID,
            &[
                "fetch-load",
                "-socket",
                &system.endpoint(),
                "-kind",
                kind,
                "-audience",
                AUDIENCE,
                "-clients",
                &clients.to_string(),
                "-warmup",
                &format!("{}s", settings.warmup),
                "-duration",
                &format!("{}s", settings.duration),
                "-expect",
                &expect,
            ],
        )
        .output()
        .unwrap();
    let stdout = stdout_of(&format!("fetch-load {kind} x{clients}"), &output);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["errors"], 0, "{summary}");
    assert!(summary["requests"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["ids"], serde_json::json!([expect]), "{summary}");
    println!("  {kind} x{clients}: {summary}");
    Load {
        per_second: summary["per_second"].as_f64().unwrap(),
        p50_us: summary["p50_us"].as_f64().unwrap(),
        p99_us: summary["p99_us"].as_f64().unwrap(),
    }
}

/// Scenario 3, once: create `uid`'s identity while its client waits.
fn identity_to_svid(client: &GoClient, system: &mut dyn System, uid: u32) -> Duration {
    let expect = system.expected_id(uid);
    let mut child = client
        .fetch_command(uid, &system.endpoint(), &expect)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(
        first, "waiting",
        "uid {uid} had an SVID before its identity"
    );
    let started = Stopwatch::start();
    system.grant(uid);
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    let took = started.elapsed();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "uid {uid}: {line} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(result["id"], expect.as_str());
    took
}

fn rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// Runs one short-lived workload per uid, `parallel` at a time.
fn run_workloads(client: &GoClient, system: &dyn System, uids: &[u32], parallel: usize) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                while let Some(uid) = uids.get(next.fetch_add(1, Ordering::Relaxed)) {
                    fetch_as(client, system, *uid);
                }
            });
        }
    });
}

#[derive(Default)]
struct Results {
    x509: [Load; 2],
    jwt: [Load; 2],
    create: Vec<Duration>,
    /// Idle, then after each workload count.
    rss_kib: Vec<u64>,
    /// How long each step's new workloads took to all hold SVIDs.
    workload_time: Vec<Duration>,
}

fn measure_api(
    system: &mut dyn System,
    client: &GoClient,
    settings: &Settings,
    fresh: u32,
) -> Results {
    let mut results = Results::default();
    system.grant(LOAD_UID);
    fetch_as(client, system, LOAD_UID);
    for (i, clients) in [1, 8].into_iter().enumerate() {
        results.x509[i] = load(client, system, settings, "x509", clients);
    }
    for (i, clients) in [1, 8].into_iter().enumerate() {
        results.jwt[i] = load(client, system, settings, "jwt", clients);
    }
    for run in 0..settings.create_runs {
        let took = identity_to_svid(client, system, fresh + u32::try_from(run).unwrap());
        println!("  identity → SVID: {took:?}");
        results.create.push(took);
    }
    results
}

fn measure_memory(
    system: &mut dyn System,
    client: &GoClient,
    settings: &Settings,
    into: &mut Results,
) {
    std::thread::sleep(Duration::from_secs(2));
    into.rss_kib.push(rss_kib(system.agent_pid()));
    let mut done = 0;
    for &count in &settings.workloads {
        let uids: Vec<u32> = (done..count)
            .map(|i| WORKLOAD_UID + u32::try_from(i).unwrap())
            .collect();
        system.grant_many(&uids);
        let started = Stopwatch::start();
        run_workloads(client, system, &uids, settings.parallel);
        into.workload_time.push(started.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(system.agent_pid());
        println!("  {count} workloads: VmRSS {rss} kB");
        into.rss_kib.push(rss);
        done = count;
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_else(|e| format!("({program}: {e})"))
}

fn file_line(path: &str, prefix: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with(prefix))
        .map(|line| line.trim().to_owned())
        .unwrap_or_default()
}

fn machine(load_before: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = file_line("/proc/cpuinfo", "model name");
    let memory = file_line("/proc/meminfo", "MemTotal");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let spire = tool("bin/spire-server")
        .map(|p| command_line(p.to_str().unwrap(), &["--version"]))
        .unwrap_or_default();
    let profile = binary("signet-agent")
        .parent()
        .and_then(Path::file_name)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "- date: {date}\n- CPUs (nproc): {cpus} ({cpu_name})\n- memory: {memory}\n\
         - kernel: {kernel}\n- Rust: {rust} (Signet binaries: `{profile}` profile)\n\
         - Go: {go} (go-spiffe v2.9.0 client)\n- SPIRE: {spire}\n\
         - load average before / after: {load_before} / {load_after}\n",
        date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        cpu_name = cpu.split(':').nth(1).unwrap_or_default().trim(),
        memory = memory
            .trim_start_matches("MemTotal:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<f64>()
            .map_or(memory.clone(), |kib| format!(
                "{:.1} GiB",
                kib / 1024.0 / 1024.0
            )),
        kernel = kernel.trim(),
        rust = command_line("rustc", &["--version"]),
        go = command_line("go", &["version"]),
        load_after = loadavg(),
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn fmt_load(l: &Load) -> String {
    format!(
        "{:.0} req/s · p50 {:.2} ms · p99 {:.2} ms",
        l.per_second,
        l.p50_us / 1e3,
        l.p99_us / 1e3
    )
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn fmt_create(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "-".to_owned();
    }
    let min = samples.iter().min().unwrap();
    let max = samples.iter().max().unwrap();
    format!(
        "{:.0} ms (min {:.0}, max {:.0})",
        median(samples).as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    )
}

fn clients_label(clients: usize) -> String {
    if clients == 1 {
        "1 client".to_owned()
    } else {
        format!("{clients} concurrent clients")
    }
}

fn table(settings: &Settings, spire: &Results, signet: &Results) -> String {
    let mut out = String::from("| Measurement | SPIRE 1.13.3 | Signet |\n|---|---|---|\n");
    let mut row = |name: String, a: String, b: String| {
        out.push_str(&format!("| {name} | {a} | {b} |\n"));
    };
    for (i, clients) in [1, 8].into_iter().enumerate() {
        row(
            format!("cached FetchX509SVID, {}", clients_label(clients)),
            fmt_load(&spire.x509[i]),
            fmt_load(&signet.x509[i]),
        );
    }
    for (i, clients) in [1, 8].into_iter().enumerate() {
        row(
            format!("cached FetchJWTSVID, {}", clients_label(clients)),
            fmt_load(&spire.jwt[i]),
            fmt_load(&signet.jwt[i]),
        );
    }
    row(
        format!(
            "identity created → X.509-SVID in hand (median of {})",
            settings.create_runs
        ),
        fmt_create(&spire.create),
        fmt_create(&signet.create),
    );
    let mib = |kib: Option<&u64>| {
        kib.map_or("-".to_owned(), |k| format!("{:.1} MiB", *k as f64 / 1024.0))
    };
    row(
        "agent VmRSS, idle (no workload yet)".to_owned(),
        mib(spire.rss_kib.first()),
        mib(signet.rss_kib.first()),
    );
    for (i, count) in settings.workloads.iter().enumerate() {
        row(
            format!("agent VmRSS, {count} workloads (distinct uids) served"),
            mib(spire.rss_kib.get(i + 1)),
            mib(signet.rss_kib.get(i + 1)),
        );
    }
    let mut done = 0;
    for (i, count) in settings.workloads.iter().enumerate() {
        let secs = |r: &Results| {
            r.workload_time
                .get(i)
                .map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        };
        row(
            format!(
                "wall time for workloads {}–{count} to get their first SVID ({} at a time)",
                done + 1,
                settings.parallel
            ),
            secs(spire),
            secs(signet),
        );
        done = *count;
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Minutes long and starting SPIRE: only when asked (`make bench-compare`),
    // not as part of `cargo bench --workspace`.
    if std::env::var("SIGNET_BENCH_COMPARE").as_deref() != Ok("1") {
        println!("bench_compare: skipped, set SIGNET_BENCH_COMPARE=1 (make bench-compare)");
        return;
    }
    if current_uid() != 0 {
        println!("bench_compare: skipped, needs root to run clients under other uids");
        return;
    }
    if Spire::installed().is_none() || tool("bin/go-spiffe-mtls").is_none() {
        println!("bench_compare: skipped, run `make test-setup` (e2e/tools/install-interop.sh)");
        return;
    }
    for name in ["signet-operator", "signet-agent"] {
        let path = binary(name);
        println!("using {}", path.display());
        if path.parent().and_then(Path::file_name) != Some("release".as_ref()) {
            println!("warning: {name} is not a release build; run `cargo build --release --bins`");
        }
    }
    let settings = Settings::from_env();
    let load_before = loadavg();
    let client = GoClient::install();

    println!("SPIRE: Workload API");
    let mut spire_results = {
        let mut spire = SpireSystem::start();
        measure_api(&mut spire, &client, &settings, FRESH_UID)
    };
    println!("SPIRE: agent memory");
    {
        let mut spire = SpireSystem::start();
        measure_memory(&mut spire, &client, &settings, &mut spire_results);
    }
    println!("Signet: Workload API");
    let mut signet_results = {
        let mut signet = SignetSystem::start(false);
        measure_api(&mut signet, &client, &settings, FRESH_UID + 1_000)
    };
    println!("Signet: agent memory");
    {
        let mut signet = SignetSystem::start(true);
        measure_memory(&mut signet, &client, &settings, &mut signet_results);
    }

    let report = format!(
        "### Machine\n\n{}\n### Results\n\n{}\nLoad runs: {}s warm-up + {}s measured per cell, go-spiffe \
         `fetch-load` as one uid; identity → SVID: {} runs, client polling every 20 ms.\n",
        machine(&load_before),
        table(&settings, &spire_results, &signet_results),
        settings.warmup,
        settings.duration,
        settings.create_runs,
    );
    println!("\n{report}");
    if let Ok(path) = std::env::var("BENCH_COMPARE_OUT") {
        std::fs::write(&path, &report).unwrap();
        println!("written to {path}");
    }
}
