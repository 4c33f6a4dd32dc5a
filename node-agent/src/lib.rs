//! signet-agent: workload attestation, the SPIFFE Workload API and Envoy SDS
//! on a node.
//!
//! Rooms by concern: `attest/` (who the caller is), `cache/` (keys and
//! SVIDs per workload), `issuer/` (the agent's credential, the policy
//! stream, signing), `api/` (the sockets the agent serves); `agent.rs`
//! wires them together.

pub mod agent;
pub mod api;
pub mod attest;
pub mod backoff;
pub mod cache;
pub mod cli;
pub mod config;
pub mod issuer;
pub mod metrics;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
