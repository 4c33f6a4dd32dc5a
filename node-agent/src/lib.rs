//! signet-agent: workload attestation, the SPIFFE Workload API and Envoy SDS
//! on a node.

pub mod agent;
pub mod attest;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delegated;
pub mod issuer_client;
pub mod keys;
pub mod metrics;
pub mod pod_tokens;
pub mod policy_watch;
pub mod sds;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod workload_api;
