//! signet-operator: policy reconciler, certificate authority and issuer API.
//!
//! Rooms by concern: [`standalone`] and [`cluster`] are the two run modes,
//! [`issuer`] is the gRPC API both serve, [`ca`] the certificate authority;
//! the rest is shared by all of them.

pub mod agents;
pub mod authority_admin;
pub use signet_runtime::audit;
pub mod ca;
pub mod cluster;
pub mod config;
pub mod federation;
pub mod http_server;
pub mod inventory;
pub mod issuer;
pub mod ledger;
pub mod metrics;
pub mod oidc;
pub mod policy_state;
pub mod revocation;
pub mod server;
pub mod standalone;
pub mod upstream;
