//! What the agent serves: the SPIFFE Workload API and Envoy SDS on the
//! workload socket (`workload.rs`, `sds.rs`, `serve.rs`), and the delegated
//! API for signet-csi on the root-only admin socket (`delegated.rs`).
//!
//! Connections carry the caller's credentials from accept time
//! (`peer.rs`), within per-uid bounds (`limits.rs`); handlers share `state.rs`, map failures to gRPC codes in
//! `error.rs`, and every stream follows the cache through `follow.rs`.

pub mod audit;
pub mod delegated;
pub mod error;
pub mod follow;
pub mod idle;
pub mod limits;
pub mod peer;
pub mod sds;
pub mod serve;
pub mod state;
pub mod workload;

pub use error::{ApiError, code_of};
pub use serve::serve;
pub use state::ServerState;
