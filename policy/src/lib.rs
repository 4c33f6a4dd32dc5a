//! WorkloadIdentity and Role resources, attributes, rules, templates and the
//! compiled PolicySnapshot. No I/O.

pub mod attributes;
pub mod crd;
pub mod dns;
pub mod glob;
pub mod template;
pub mod ttl;
