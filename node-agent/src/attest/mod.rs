//! Workload attestation: turning a connected peer into attributes of the
//! typed schema (`signet_policy::Attributes`), so an attestor cannot
//! produce a name the policy does not know.
//!
//! [`WorkloadAttestor`] (in `workload.rs`) runs the enabled attestors for a
//! caller; each attestor has a file of its own, and `kind.rs` holds the one
//! error classification they share.

pub mod cgroup;
pub mod config;
pub mod docker;
pub mod engine;
pub mod forgery;
pub mod kind;
pub mod kubelet;
pub mod kubernetes;
pub mod podman;
pub mod procfs;
pub mod unix;
pub mod workload;

pub use config::AttestorsConfig;
pub use kind::AttestErrorKind;
pub use workload::{AttestError, WorkloadAttestor};
