//! signet-agent: workload attestation, the SPIFFE Workload API and Envoy SDS
//! on a node.

pub mod attest;
pub mod backoff;
pub mod cache;
pub mod clock;
