//! signet-csi: a CSI node plugin that brings SPIFFE identity into pods.
//!
//! Socket mode bind-mounts the signet-agent's socket directory read-only
//! onto an inline ephemeral volume's target path, so the pod reaches the
//! Workload API at `unix:///<mount>/agent.sock`. Files mode mounts a tmpfs
//! there holding the pod's SVID, key, bundle and JWT-SVIDs, fetched from the
//! agent's delegated API and replaced before they expire.

pub mod agent_client;
pub mod config;
pub mod error;
pub mod files_mode;
pub mod mountinfo;
pub mod mounts;
pub mod paths;
pub mod pod_info;
pub mod registration;
pub mod server;
pub mod service;
pub mod state;
pub mod svid_files;
