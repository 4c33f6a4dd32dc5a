//! The agent's side of the issuer API: its own credential (join, renewal at
//! half-life, persisted across restarts), the policy stream, and signing
//! workload SVIDs for the cache.
//!
//! `client.rs` holds the connection and the agent credential; `checks.rs`
//! verifies everything the issuer returns; `signer.rs` is the cache's
//! `Signer`; `policy.rs` compiles and publishes the policy in force;
//! `pod_tokens.rs` keeps the pods' service-account tokens for the issuer.

pub mod checks;
pub mod client;
pub mod node_pods;
pub mod pod_tokens;
pub mod policy;
pub mod signer;

pub use client::{AGENT_STATE_FILE, IssuerClient, IssuerClientConfig, IssuerError};
pub use pod_tokens::PodTokens;
pub use policy::{AgentPolicy, PolicyStore, run_policy_watch};

#[cfg(test)]
mod tests;
