//! Process plumbing shared by Signet's binaries.
//!
//! Kept apart from the binaries so that signet-operator, signet-agent and
//! signet-csi never depend on each other, and apart from the SPIFFE crates
//! because nothing here knows about identities.

pub mod audit;
pub mod clock;
pub mod duration;
pub mod endpoint;
pub mod files;
pub mod h2_authority;
pub mod http;
pub mod logging;
pub mod shutdown;
pub mod uds;
