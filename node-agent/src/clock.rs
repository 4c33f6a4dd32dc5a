//! The agent's time source (shared with the operator through signet-runtime).

pub use signet_runtime::clock::Clock;
