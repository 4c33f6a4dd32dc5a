//! FetchX509SVID over the unix socket for a cached identity: first-message
//! latency (p50/p99) on a kept connection and on a fresh connection per
//! call, and throughput with concurrent clients. The issuer is the
//! in-process stand-in; each call does the real work of the agent (header
//! check, unix attestation through procfs, cache lookup, response encoding).
//!
//! `cargo bench -p signet-agent --bench workload_api`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use tokio::time::Instant;

use signet_agent::cli::connect;
use signet_agent::testing::TestAgent;
use signet_proto::workload::X509svidRequest;

const LATENCY_CALLS: usize = 2_000;
const THROUGHPUT_CLIENTS: usize = 16;
const THROUGHPUT_TIME: Duration = Duration::from_secs(5);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<44} n={:<6} p50={:>8.1}µs p99={:>8.1}µs max={:>8.1}µs",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );
}

async fn first_message(client: &mut signet_agent::cli::WorkloadClient) {
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let message = stream.message().await.unwrap().unwrap();
    assert!(!message.svids.is_empty());
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let agent = TestAgent::builder().start();
        let endpoint = agent.endpoint();
        // Warm up: issue the SVIDs once so every measured call is a cache hit.
        let mut client = connect(&endpoint).await.unwrap();
        for _ in 0..50 {
            first_message(&mut client).await;
        }
        let issued = agent.issuer.x509_requests();

        let mut kept = Vec::with_capacity(LATENCY_CALLS);
        for _ in 0..LATENCY_CALLS {
            let started = Instant::now();
            first_message(&mut client).await;
            kept.push(started.elapsed());
        }
        report("FetchX509SVID first message (kept conn)", kept);

        let mut fresh = Vec::with_capacity(LATENCY_CALLS / 4);
        for _ in 0..LATENCY_CALLS / 4 {
            let started = Instant::now();
            let mut client = connect(&endpoint).await.unwrap();
            first_message(&mut client).await;
            fresh.push(started.elapsed());
        }
        report("FetchX509SVID first message (new conn)", fresh);

        let deadline = Instant::now() + THROUGHPUT_TIME;
        let mut tasks = Vec::new();
        for _ in 0..THROUGHPUT_CLIENTS {
            let endpoint = endpoint.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = connect(&endpoint).await.unwrap();
                let mut done = 0u64;
                while Instant::now() < deadline {
                    first_message(&mut client).await;
                    done += 1;
                }
                done
            }));
        }
        let started = Instant::now();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let elapsed = started.elapsed();
        println!(
            "{:<44} {} calls in {:.2}s = {:.0} req/s ({THROUGHPUT_CLIENTS} clients, {} worker threads)",
            "FetchX509SVID throughput",
            total,
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        assert_eq!(
            agent.issuer.x509_requests(),
            issued,
            "every measured call must be served from the cache"
        );
    });
}
