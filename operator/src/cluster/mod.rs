//! `signet-operator kubernetes`: the operator inside a cluster.

pub mod admission;
pub mod agent_records;
pub mod agent_standing;
pub mod bundle_config_map;
pub mod ca_bundle;
pub mod config;
pub mod explain;
pub mod federated_trust_domains;
pub mod front_proxy;
pub mod keyset_secret;
pub mod leader;
pub mod nodes;
pub mod pod_events;
pub mod pods;
pub mod reconciler;
pub mod run;
pub mod signing_authorities;
pub mod token_review;
pub mod user_issuance;

pub use config::ClusterConfig;
pub use run::{ClusterError, run};
