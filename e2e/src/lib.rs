//! End-to-end tests: a real standalone stack of Signet processes, and (in
//! `e2e/cluster`) a real single-node Kubernetes cluster.

pub mod cluster;
pub mod deadline;
pub mod interop;
pub mod pki;
pub mod spire;
pub mod standalone;
