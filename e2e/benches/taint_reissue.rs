//! Taint to the last re-issued SVID: how long after an administrator taints
//! a retired X.509 CA every workload holds an SVID of the new CA again, and
//! the operator's ledger counts nothing live on the tainted one.
//!
//! What is real, all in this one process:
//! - the operator: `signet_operator::standalone::serve` on 127.0.0.1:0 with
//!   a temporary state directory (real CA keyset file, policy directory,
//!   audit log, SVID ledger, mTLS gRPC issuer API);
//! - the agents (`SIGNET_BENCH_AGENTS`, default 10): each joins with its own
//!   single-use token and runs what `signet-agent run` runs between the
//!   issuer and the Workload API: the `IssuerClient` (mTLS, agent-SVID
//!   renewal, early on a taint), `run_policy_watch` (the policy stream that
//!   carries `tainted_x509_authorities`) and the `SvidCache` (EC P-256 key
//!   and CSR per SVID, batched SignX509Svids, every answer verified against
//!   the bundle), with the default `CacheConfig` except the window;
//! - the administrator: prepare, activate and taint go over the operator's
//!   admin socket (`<state_dir>/admin.sock`), as `signet-operator authority`
//!   sends them, and so through `Authority::act`.
//!
//! What is synthetic: the workloads. Each is a distinct attribute set
//! (`workload.unix.uid`, one per workload) subscribed to its agent's
//! `SvidCache` directly, as the Workload API does for an attested caller;
//! the Workload API socket, attestation and client processes are left out
//! (10,000 processes do not fit on a 2-core machine, and none of them is on
//! the re-issue path). Workloads are spread evenly over the agents, as pods
//! over nodes.
//!
//! Per scenario (N workloads × re-issue window), on a fresh stack:
//! 1. every workload subscribes and gets its first SVID (the "fill" time);
//! 2. a new X.509 CA is prepared, reaches every agent's bundle, and is
//!    activated;
//! 3. the clock starts just before the taint request is sent; each
//!    workload's completion is the moment its subscription view publishes
//!    an SVID whose AuthorityKeyIdentifier is the new CA's, and the ledger's
//!    is the first poll (every 20 ms) of `authority show` that counts 0 live
//!    SVIDs (workloads' and agents' own) on the old CA.
//!
//! Reported: the total (the later of the last workload and the ledger),
//! when the last agent's policy named the tainted CA, re-issues per second
//! (N over the time to the last workload), p50/p99 of the per-workload
//! completion times, the CPU time the process used from the taint to the
//! end (user + system, /proc/self/stat: unlike wall time, not inflated by
//! other processes on the machine, whose load average is shown too), and
//! the process's peak RSS (VmHWM, reset through /proc/self/clear_refs just
//! before the taint; operator, agents and workloads together), in one
//! table after all scenarios. Timings are not asserted; correctness is:
//! every workload ends on the new CA, each cache scheduled exactly one
//! taint re-issue per SVID, the old CA's live count reaches 0 and the new
//! CA's is every workload plus every agent.
//!
//! `cargo bench -p signet-e2e --bench taint_reissue`, with
//! `SIGNET_BENCH_WORKLOADS` (default `1000,10000`), `SIGNET_BENCH_WINDOWS`
//! (default `0s,30s`) and `SIGNET_BENCH_AGENTS` (default 10; the operator
//! admits 20 joins at once from one address).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use signet_agent::cache::{
    CacheConfig, PolicyView, Subscription, SvidCache, SvidKeyFactory, WorkloadView,
};
use signet_agent::issuer::{IssuerClient, IssuerClientConfig, PolicyStore, run_policy_watch};
use signet_agent::metrics::Metrics;
use signet_identity::{AuthorityKind, AuthorityState, KeyType, TrustDomain};
use signet_operator::authority_admin::{AdminRequest, AdminResponse, call_socket};
use signet_operator::config::{FileConfig, Overrides, StandaloneConfig};
use signet_policy::{Attributes, Field};
use signet_runtime::clock::Clock;
use tokio::sync::watch;
use tokio::time::Instant;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

const TRUST_DOMAIN: &str = "example.org";
const FIRST_UID: u32 = 100_000;
const LEDGER_POLL: Duration = Duration::from_millis(20);
/// Beyond the window, how long the re-issue may take before the bench fails.
const SLACK: Duration = Duration::from_secs(300);

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: bench, labels: {suite: bench}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, not_eq: "0"}]
  spiffe:
    id: "/bench/uid/{{ workload.unix.uid }}"
    x509: {ttl: 1h}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: bench-agents}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {suite: [bench]}}
"#;

fn env_list<T>(name: &str, default: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| parse(item).unwrap_or_else(|| panic!("{name}: cannot read {item:?}")))
        .collect()
}

/// Key identifier (lowercase hex) of the CA that signed the DER `leaf`.
fn authority_of(leaf: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    cert.extensions()
        .iter()
        .find_map(|extension| match extension.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .map(|key_id| key_id.0.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether the view holds SVIDs, all signed by the CA `key_id`.
fn all_signed_by(view: &WorkloadView, key_id: &str) -> bool {
    !view.svids.is_empty()
        && view.svids.iter().all(|svid| {
            svid.cert_chain
                .first()
                .and_then(|leaf| authority_of(leaf))
                .is_some_and(|id| id.eq_ignore_ascii_case(key_id))
        })
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system, all threads) this process has used so far.
/// The 1-minute load average (other processes compete for the same cores).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false if refused.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

// === the operator ===

struct Operator {
    dir: tempfile::TempDir,
    address: String,
    tokens: Vec<(String, String)>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Operator {
    async fn start(agents: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let policy_dir = dir.path().join("policy");
        std::fs::create_dir_all(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("policy.yaml"), POLICY).unwrap();
        let mut tokens = Vec::new();
        let mut token_files = Vec::new();
        for i in 0..agents {
            let name = format!("bench-agent-{i}");
            let token = signet_operator::standalone::join_tokens::generate_token().unwrap();
            let path = dir.path().join(format!("{name}.token"));
            std::fs::write(&path, format!("{token}\n")).unwrap();
            token_files.push((name.clone(), path));
            tokens.push((name, token));
        }
        let state_dir = dir.path().join("operator");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = StandaloneConfig::resolve(
            FileConfig::default(),
            Overrides {
                trust_domain: Some(TRUST_DOMAIN.to_owned()),
                policy_dir: Some(policy_dir),
                state_dir: Some(state_dir.clone()),
                listen: Some(address),
                audit_log: Some(dir.path().join("audit.log")),
                metrics_listen: None,
                join_token_files: token_files,
            },
        )
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(error) = signet_operator::standalone::serve(config, listener, shutdown).await
            {
                panic!("operator failed: {error}");
            }
        });
        let operator = Self {
            dir,
            address: address.to_string(),
            tokens,
            _stop: stop,
        };
        // Ready once the admin socket answers (the bundle files are written
        // before it is bound).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if call_socket(&operator.state_dir(), &AdminRequest::Show)
                .await
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the operator did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        operator
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("operator")
    }

    async fn admin(&self, request: AdminRequest) -> AdminResponse {
        let answer = call_socket(&self.state_dir(), &request).await.unwrap();
        assert!(answer.ok, "{request:?} refused: {:?}", answer.error);
        answer
    }
}

fn x509_with_state(answer: &AdminResponse, state: AuthorityState) -> String {
    answer
        .authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::X509 && a.state == state && !a.tainted)
        .map(|a| a.id.clone())
        .unwrap_or_else(|| panic!("no {state:?} X.509 authority: {answer:?}"))
}

fn live_svids(answer: &AdminResponse, id: &str) -> u64 {
    answer
        .authorities
        .iter()
        .find(|a| a.kind == AuthorityKind::X509 && a.id.eq_ignore_ascii_case(id))
        .map_or(0, |a| a.live_svids)
}

// === the agents ===

struct Agent {
    store: PolicyStore,
    cache: SvidCache,
    _dir: tempfile::TempDir,
}

async fn start_agent(
    operator: &Operator,
    name: &str,
    token: &str,
    window: Duration,
    shutdown: &watch::Receiver<bool>,
) -> Agent {
    let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new();
    let bootstrap = IssuerClient::read_bootstrap_bundle(
        &operator
            .state_dir()
            .join(signet_operator::standalone::BUNDLE_PEM_FILE),
        &trust_domain,
    )
    .unwrap();
    let client = IssuerClient::new(
        IssuerClientConfig {
            address: operator.address.clone(),
            trust_domain,
            state_dir: dir.path().to_owned(),
            join_token: Some(token.to_owned()),
            service_account_token_path: None,
            node_name: None,
        },
        bootstrap,
        clock,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    client
        .ensure_identity()
        .await
        .unwrap_or_else(|e| panic!("{name} could not join: {e}"));
    let store = PolicyStore::new();
    tokio::spawn(client.clone().run_renewal(window, shutdown.clone()));
    tokio::spawn(run_policy_watch(
        client.clone(),
        store.clone(),
        None,
        shutdown.clone(),
    ));
    let cache = SvidCache::spawn(
        CacheConfig {
            taint_reissue_window: window,
            ..CacheConfig::default()
        },
        clock,
        store.cache_receiver(),
        Arc::new(client),
        Arc::new(SvidKeyFactory::new(KeyType::EcP256)),
    );
    cache
        .wait_for_policy(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{name} got no policy: {e}"));
    Agent {
        store,
        cache,
        _dir: dir,
    }
}

fn workload(index: usize) -> Attributes {
    let uid = (FIRST_UID + u32::try_from(index).unwrap()).to_string();
    let mut attributes = Attributes::default();
    attributes.set(Field::UnixUid, uid.clone());
    attributes.set(Field::UnixGid, uid);
    attributes.set(Field::UnixPid, "4242");
    attributes
}

/// Waits until every agent's own bundle holds `count` X.509 authorities.
async fn wait_for_bundles(agents: &[Agent], count: usize) {
    for agent in agents {
        let mut policy = agent.store.subscribe();
        let arrived = tokio::time::timeout(
            Duration::from_secs(30),
            policy.wait_for(|policy| {
                policy
                    .as_ref()
                    .and_then(|p| p.own_bundle())
                    .is_some_and(|b| b.x509_authorities.len() == count)
            }),
        )
        .await;
        assert!(
            matches!(arrived, Ok(Ok(_))),
            "an agent's bundle never held {count} X.509 authorities"
        );
    }
}

// === one scenario ===

struct Outcome {
    workloads: usize,
    agents: usize,
    window: Duration,
    fill: Duration,
    last_workload: Duration,
    ledger_zero: Duration,
    /// Taint request to the last agent's policy naming the tainted CA.
    taint_known: Duration,
    completions: Vec<Duration>,
    /// CPU time of the whole process from the taint to the end.
    cpu: Duration,
    load: f64,
    peak_rss_kib: u64,
}

async fn scenario(workloads: usize, agent_count: usize, window: Duration) -> Outcome {
    let (stop_agents, shutdown) = watch::channel(false);
    let operator = Operator::start(agent_count).await;
    let mut agents = Vec::with_capacity(agent_count);
    for (name, token) in &operator.tokens {
        agents.push(start_agent(&operator, name, token, window, &shutdown).await);
    }

    // 1. Every workload holds an SVID of the first CA.
    let first = operator.admin(AdminRequest::Show).await;
    let old_ca = x509_with_state(&first, AuthorityState::Active);
    let filling = Instant::now();
    let mut subscriptions: Vec<Subscription> = Vec::with_capacity(workloads);
    for index in 0..workloads {
        let agent = &agents[index % agent_count];
        subscriptions.push(agent.cache.subscribe(&workload(index)).await.unwrap());
    }
    for (index, subscription) in subscriptions.iter_mut().enumerate() {
        let view = subscription
            .first_matching(SLACK, |view| all_signed_by(view, &old_ca))
            .await;
        assert!(
            all_signed_by(&view, &old_ca),
            "workload {index} got no SVID of the first CA: {:?}",
            view.status
        );
    }
    let fill = filling.elapsed();

    // 2. A new CA, in every agent's bundle, then signing.
    let prepared = operator
        .admin(AdminRequest::Prepare {
            kind: AuthorityKind::X509,
        })
        .await;
    let new_ca = x509_with_state(&prepared, AuthorityState::Prepared);
    wait_for_bundles(&agents, 2).await;
    let activated = operator
        .admin(AdminRequest::Activate {
            kind: AuthorityKind::X509,
        })
        .await;
    assert_eq!(x509_with_state(&activated, AuthorityState::Active), new_ca);
    assert_eq!(
        live_svids(&activated, &old_ca),
        (workloads + agent_count) as u64
    );

    // 3. Taint the old CA; time every workload's move and the ledger's.
    let mut waiting = Vec::with_capacity(workloads);
    for mut subscription in subscriptions {
        let new_ca = new_ca.clone();
        waiting.push(tokio::spawn(async move {
            let moved = subscription
                .view()
                .wait_for(|view| all_signed_by(view, &new_ca))
                .await
                .is_ok();
            (Instant::now(), moved, subscription)
        }));
    }
    let mut learning = Vec::with_capacity(agents.len());
    for agent in &agents {
        let mut policy = agent.store.subscribe();
        let old_ca = old_ca.clone();
        learning.push(tokio::spawn(async move {
            let _ = policy
                .wait_for(|policy| {
                    policy
                        .as_ref()
                        .is_some_and(|p| p.tainted().x509_tainted(&old_ca))
                })
                .await;
            Instant::now()
        }));
    }
    tokio::task::yield_now().await;
    reset_peak_rss();
    let load = load_average();
    let cpu_before = signet_e2e::standalone::proc_cpu_time(None);
    let tainted_at = Instant::now();
    operator
        .admin(AdminRequest::Taint {
            kind: AuthorityKind::X509,
            id: old_ca.clone(),
        })
        .await;
    let state_dir = operator.state_dir();
    let ledger_old_ca = old_ca.clone();
    let ledger = tokio::spawn(async move {
        loop {
            let answer = call_socket(&state_dir, &AdminRequest::Show).await.unwrap();
            if live_svids(&answer, &ledger_old_ca) == 0 {
                return Instant::now();
            }
            tokio::time::sleep(LEDGER_POLL).await;
        }
    });

    let limit = tainted_at + window + SLACK;
    let mut completions = Vec::with_capacity(workloads);
    let mut subscriptions = Vec::with_capacity(workloads);
    for (index, task) in waiting.into_iter().enumerate() {
        let (at, moved, subscription) = tokio::time::timeout_at(limit, task)
            .await
            .unwrap_or_else(|_| panic!("workload {index} still holds an SVID of the tainted CA"))
            .unwrap();
        assert!(moved, "workload {index}: the cache stopped");
        completions.push(at.duration_since(tainted_at));
        subscriptions.push(subscription);
    }
    let ledger_zero = tokio::time::timeout_at(limit, ledger)
        .await
        .expect("the ledger still counts live SVIDs of the tainted CA")
        .unwrap()
        .duration_since(tainted_at);
    let cpu = signet_e2e::standalone::proc_cpu_time(None).saturating_sub(cpu_before);
    let peak_rss_kib = status_kib("VmHWM:");
    let mut taint_known = Duration::ZERO;
    for task in learning {
        taint_known = taint_known.max(task.await.unwrap().duration_since(tainted_at));
    }

    // Correctness: all on the new CA now, one re-issue each, the ledger agrees.
    for (index, subscription) in subscriptions.iter_mut().enumerate() {
        assert!(
            all_signed_by(&subscription.view().borrow(), &new_ca),
            "workload {index} went back to another CA"
        );
    }
    let reissues: u64 = agents.iter().map(|a| a.cache.taint_reissues()).sum();
    assert_eq!(reissues, workloads as u64, "taint re-issues scheduled");
    let remaining: usize = agents
        .iter()
        .map(|a| a.cache.svids_on_tainted_authority())
        .sum();
    assert_eq!(remaining, 0, "SVIDs of the tainted CA still cached");
    let end = operator.admin(AdminRequest::Show).await;
    assert_eq!(live_svids(&end, &old_ca), 0);
    assert_eq!(
        live_svids(&end, &new_ca),
        (workloads + agent_count) as u64,
        "live SVIDs of the new CA: every workload's and every agent's"
    );
    assert!(!end.counts_incomplete);

    stop_agents.send_replace(true);
    drop(subscriptions);
    completions.sort();
    Outcome {
        workloads,
        agents: agent_count,
        window,
        fill,
        last_workload: completions.last().copied().unwrap_or_default(),
        ledger_zero,
        taint_known,
        completions,
        cpu,
        load,
        peak_rss_kib,
    }
}

fn report(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:>6} {:>6} {:>6} {:>7} | {:>6} {:>7} {:>9} {:>8} | {:>10} {:>7} {:>7} | {:>6} {:>10} | {:>5} {:>8}",
        "N",
        "agents",
        "window",
        "fill",
        "known",
        "total",
        "last SVID",
        "ledger 0",
        "reissues/s",
        "p50",
        "p99",
        "CPU",
        "CPU/SVID",
        "load",
        "peak RSS"
    );
    for o in outcomes {
        let total = o.last_workload.max(o.ledger_zero);
        println!(
            "{:>6} {:>6} {:>6} {:>7} | {:>6} {:>7} {:>9} {:>8} | {:>10.0} {:>7} {:>7} | {:>6} {:>8.2}ms | {:>5.1} {:>4} MiB",
            o.workloads,
            o.agents,
            humantime::format_duration(o.window).to_string(),
            secs(o.fill),
            secs(o.taint_known),
            secs(total),
            secs(o.last_workload),
            secs(o.ledger_zero),
            o.workloads as f64 / o.last_workload.as_secs_f64(),
            secs(percentile(&o.completions, 0.50)),
            secs(percentile(&o.completions, 0.99)),
            secs(o.cpu),
            o.cpu.as_secs_f64() * 1e3 / o.workloads as f64,
            o.load,
            o.peak_rss_kib / 1024,
        );
    }
    println!();
    println!("fill       N workloads subscribe and each gets its first SVID (before the taint)");
    println!("known      taint request → the last agent's policy names the tainted CA");
    println!("total      taint request → the later of 'last SVID' and 'ledger 0'");
    println!("last SVID  taint request → the last workload's view holds a new-CA SVID");
    println!("ledger 0   taint request → `authority show` counts 0 live SVIDs on the old CA");
    println!("reissues/s N / 'last SVID'; p50/p99: per-workload taint → new-CA SVID");
    println!("CPU        user+system CPU of this process (operator, agents, workloads) from");
    println!("           the taint to the end; CPU/SVID is that over N");
    println!("load       1-minute load average at the taint (other processes on the machine)");
    println!("peak RSS   VmHWM of this process from just before the taint");
}

fn main() {
    let sizes = env_list("SIGNET_BENCH_WORKLOADS", "1000,10000", |s| {
        s.replace('_', "").parse::<usize>().ok().filter(|n| *n > 0)
    });
    let windows = env_list("SIGNET_BENCH_WINDOWS", "0s,30s", |s| {
        humantime::parse_duration(s).ok()
    });
    let agent_count: usize = std::env::var("SIGNET_BENCH_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(10);
    signet_tls::install_default_provider();
    if !reset_peak_rss() {
        println!("note: /proc/self/clear_refs refused; peak RSS is since the bench started");
    }
    let mut outcomes = Vec::new();
    for &workloads in &sizes {
        for &window in &windows {
            let agents = agent_count.min(workloads);
            println!(
                "taint_reissue: {workloads} workloads on {agents} agents, window {} ...",
                humantime::format_duration(window)
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome = runtime.block_on(scenario(workloads, agents, window));
            runtime.shutdown_timeout(Duration::from_secs(5));
            println!(
                "  fill {}, last SVID {}, ledger 0 after {}",
                secs(outcome.fill),
                secs(outcome.last_workload),
                secs(outcome.ledger_zero)
            );
            outcomes.push(outcome);
        }
    }
    report(&outcomes);
}
