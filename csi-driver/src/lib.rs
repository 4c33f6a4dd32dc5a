//! signet-csi: a CSI node plugin that brings SPIFFE identity into pods.
//!
//! Socket mode bind-mounts the signet-agent's socket directory read-only
//! onto an inline ephemeral volume's target path, so the pod reaches the
//! Workload API at `unix:///<mount>/agent.sock`.

pub mod config;
pub mod error;
pub mod mountinfo;
pub mod mounts;
pub mod paths;
pub mod registration;
pub mod server;
pub mod service;
