//! signet-operator: policy reconciler, certificate authority and issuer API.

pub mod agents;
pub mod audit;
pub mod authority;
pub mod cluster;
pub mod config;
pub mod issuer;
pub mod join;
pub mod metrics;
pub mod oidc;
pub mod policy_source;
pub mod server;
pub mod standalone;
