//! Policy fan-out to a fleet of agents: how long after one policy change
//! every agent's policy stream carries it, how large each update is, and
//! what the operator spends (RSS, CPU) with many agents and many
//! WorkloadIdentities.
//!
//! What is real: the operator (`signet-operator standalone`, the release
//! build if there is one, as its own process so its RSS and CPU are its
//! own) with a policy directory of `SIGNET_BENCH_IDENTITIES`
//! WorkloadIdentities; the agents' side of the issuer API: each simulated
//! agent is an `IssuerClient` (its own mTLS connection with an agent SVID)
//! holding a `WatchPolicy` stream open and decoding every update.
//!
//! What is simulated: the agents do nothing with the updates (a real agent
//! compiles the policy; a thousand of them on two cores would measure this
//! machine, not the operator), and they share a few agent identities: the
//! operator admits 20 joins at once per peer address (then one every 3 s),
//! and every simulated agent connects from 127.0.0.1, so 20 agents join
//! and the others start from a copy of their state (SVID and key) while
//! each still opens its own connection and stream.
//!
//! `cargo bench -p signet-e2e --bench policy_fanout`, with
//! `SIGNET_BENCH_AGENTS` (default 1000), `SIGNET_BENCH_IDENTITIES` (default
//! 1000; 10000 takes a few minutes more) and `SIGNET_BENCH_CHANGES`
//! (default 5). A whole policy sent in parts counts once its last part is
//! in.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use signet_agent::issuer::{IssuerClient, IssuerClientConfig};
use signet_agent::metrics::Metrics;
use signet_e2e::standalone::{Stack, proc_cpu_time, proc_status_field};
use signet_identity::TrustDomain;
use signet_runtime::clock::Clock;
use tokio::sync::watch;
use tokio::time::Instant;

const JOINED: usize = 20;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `count` WorkloadIdentities (one file) and the Role that grants them.
fn policy(count: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {name: fleet}\nspec:\n  subjects: [{kind: Agent, name: \"*\"}]\n  allow: {workloadIdentityLabels: {suite: [fleet]}}\n",
    );
    for i in 0..count {
        yaml.push_str(&identity(i, "1h"));
    }
    yaml
}

fn identity(index: usize, ttl: &str) -> String {
    format!(
        "---\napiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {{name: app-{index}, labels: {{suite: fleet, team: team-{team}}}}}\nspec:\n  rules:\n    allow:\n      - conditions:\n          - {{attribute: workload.kubernetes.namespace, eq: app-{index}}}\n          - {{attribute: workload.kubernetes.service_account, eq: app-{index}}}\n  spiffe:\n    id: \"/ns/app-{index}/sa/{{{{ workload.kubernetes.service_account }}}}\"\n    x509: {{ttl: {ttl}}}\n",
        team = index % 50
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1000.0)
}

/// One simulated agent's view: the last version it received and when.
struct Seen {
    version: watch::Sender<(u64, Option<Instant>)>,
    bytes: AtomicU64,
}

fn main() {
    let agents = env_number("SIGNET_BENCH_AGENTS", 1000);
    let identities = env_number("SIGNET_BENCH_IDENTITIES", 1_000);
    let changes = env_number("SIGNET_BENCH_CHANGES", 5);
    signet_tls::install_default_provider();

    let started = Instant::now();
    let stack = Stack::operator_only_with_config(&policy(identities), |stack| {
        stack.reusable_token_config("fleet")
    });
    let operator_pid = stack.operator.as_ref().unwrap().pid();
    println!(
        "operator ready with {identities} WorkloadIdentities in {:.1}s (pid {operator_pid})",
        started.elapsed().as_secs_f64()
    );
    let token = std::fs::read_to_string(stack.path("fleet-token"))
        .unwrap()
        .trim()
        .to_owned();
    let address = format!("127.0.0.1:{}", stack.port);
    let trust_domain = TrustDomain::new(&stack.trust_domain).unwrap();
    let bootstrap =
        IssuerClient::read_bootstrap_bundle(&stack.bundle_pem_path(), &trust_domain).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let stack = &stack;
    runtime.block_on(async move {
        let dirs: Vec<tempfile::TempDir> = (0..agents).map(|_| tempfile::tempdir().unwrap()).collect();
        let client_for = |i: usize, join: bool| {
            IssuerClient::new(
                IssuerClientConfig {
                    address: address.clone(),
                    trust_domain: trust_domain.clone(),
                    state_dir: dirs[i].path().to_owned(),
                    join_token: join.then(|| token.clone()),
                    service_account_token_path: None,
                    node_name: None,
                },
                bootstrap.clone(),
                Clock::new(),
                Arc::new(Metrics::default()),
            )
            .unwrap()
        };
        // The first ones join; the others start from a copy of their state.
        let joined_at = Instant::now();
        for i in 0..JOINED.min(agents) {
            client_for(i, true).ensure_identity().await.unwrap();
        }
        for i in JOINED..agents {
            for entry in std::fs::read_dir(dirs[i % JOINED].path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), dirs[i].path().join(entry.file_name())).unwrap();
            }
        }
        let mut seen = Vec::new();
        let mut clients = Vec::new();
        for i in 0..agents {
            let client = client_for(i, false);
            client.ensure_identity().await.unwrap();
            let view = Arc::new(Seen {
                version: watch::channel((0, None)).0,
                bytes: AtomicU64::new(0),
            });
            let stream_view = view.clone();
            let stream_client = client.clone();
            tokio::spawn(async move {
                let mut stream = stream_client.watch_policy(0).await.unwrap();
                while let Ok(Some(update)) = stream.message().await {
                    if update.partial {
                        // More parts of a whole policy follow.
                        continue;
                    }
                    stream_view
                        .bytes
                        .store(update.encoded_len() as u64, Ordering::Relaxed);
                    stream_view
                        .version
                        .send_replace((update.version, Some(Instant::now())));
                }
                panic!("a policy stream ended");
            });
            seen.push(view);
            clients.push(client);
        }
        // Everyone has the first policy.
        for view in &seen {
            let mut rx = view.version.subscribe();
            tokio::time::timeout(Duration::from_secs(300), rx.wait_for(|(v, _)| *v > 0))
                .await
                .expect("an agent got no policy")
                .unwrap();
        }
        let first = seen[0].version.borrow().0;
        let update_bytes = seen[0].bytes.load(Ordering::Relaxed);
        println!(
            "{agents} agents streaming in {:.1}s; policy update {:.2} MiB; operator RSS {} (peak {})",
            joined_at.elapsed().as_secs_f64(),
            update_bytes as f64 / 1048576.0,
            proc_status_field(operator_pid, "VmRSS"),
            proc_status_field(operator_pid, "VmHWM"),
        );
        println!();
        println!("change  first    p50      p99      last     | update KiB | operator CPU  RSS        peak");
        let mut version = first;
        for change in 1..=changes {
            // One WorkloadIdentity more (its own file), as a user applying one.
            let cpu_before = proc_cpu_time(Some(operator_pid));
            let at = Instant::now();
            stack.write_policy(
                &format!("change-{change}.yaml"),
                &identity(identities + change, "30m"),
            );
            let mut arrivals = Vec::with_capacity(agents);
            for view in &seen {
                let mut rx = view.version.subscribe();
                let arrived = tokio::time::timeout(
                    Duration::from_secs(300),
                    rx.wait_for(|(v, _)| *v > version),
                )
                .await
                .expect("the change did not reach every agent")
                .unwrap();
                arrivals.push(arrived.1.unwrap().saturating_duration_since(at));
            }
            version = seen[0].version.borrow().0;
            arrivals.sort();
            // Let the operator finish sending before reading its CPU.
            tokio::time::sleep(Duration::from_millis(200)).await;
            println!(
                "{change:<7} {:<8} {:<8} {:<8} {:<8} | {:>10.1} | {:>12.2}s  {:<10} {}",
                ms(arrivals[0]),
                ms(percentile(&arrivals, 0.5)),
                ms(percentile(&arrivals, 0.99)),
                ms(arrivals[arrivals.len() - 1]),
                seen[0].bytes.load(Ordering::Relaxed) as f64 / 1024.0,
                (proc_cpu_time(Some(operator_pid)) - cpu_before).as_secs_f64(),
                proc_status_field(operator_pid, "VmRSS"),
                proc_status_field(operator_pid, "VmHWM"),
            );
        }
        drop(clients);
    });
    println!();
    println!(
        "first..last  time from the policy file written to the first/last agent holding the new version"
    );
    println!(
        "update KiB   encoded size of one PolicyUpdate as an agent received it (a delta: the changed object, the bundle)"
    );
    println!(
        "operator     CPU the operator process spent on the change; its RSS after it, and its peak so far"
    );
}
