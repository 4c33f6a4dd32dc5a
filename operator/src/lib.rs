//! signet-operator: policy reconciler, certificate authority and issuer API.

pub mod audit;
pub mod join;
