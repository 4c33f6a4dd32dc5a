//! `signet`: the operator's command-line tool, standalone and as a kubectl
//! plugin (`kubectl signet ...` when installed as `kubectl-signet`).
//!
//! Every answer comes from the policy crate's own decision code
//! (`PolicySnapshot::explain_workload`, `evaluate`, `decide`), never from a
//! re-implementation of it.

pub mod agents;
pub mod args;
pub mod attributes;
pub mod cluster;
pub mod command;
pub mod explain;
pub mod issue;
pub mod load;
pub mod policy_test;
