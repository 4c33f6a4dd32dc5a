//! The issuer gRPC API (`signet.issuer.v1.Issuer`) both run modes serve.

pub mod service;

pub use service::{IssuerParts, IssuerService, IssuerSettings};
