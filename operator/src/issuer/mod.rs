//! The issuer gRPC API (`signet.issuer.v1.Issuer`) both run modes serve:
//! the service and its limits, the requests as checked at its edge,
//! deciding and signing, the policy stream, and the seam where each mode
//! verifies workloads.

pub mod join_throttle;
pub mod node_pods;
pub mod policy_stream;
pub mod request;
pub mod service;
pub mod signing;
pub mod workload;

pub use crate::federation::Federation;
pub use service::{IssuerError, IssuerParts, IssuerService, IssuerSettings};
pub use workload::{AgentTestimony, WorkloadRejection, WorkloadVerifier};
