//! A short run of every fuzz target, in `make test` (CI); `make fuzz` runs
//! them at scale.

#[test]
fn every_target_survives_a_short_run() {
    let cases = std::env::var("SIGNET_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let failures: Vec<String> = signet_fuzz::TARGETS
        .iter()
        .filter_map(|target| signet_fuzz::run(target, cases).err())
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
