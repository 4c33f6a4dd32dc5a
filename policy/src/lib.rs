//! Signet's policy engine: the `WorkloadIdentity` and `Role` resources, the
//! attestation attribute model, rule and template evaluation, and the
//! compiled, versioned [`PolicySnapshot`]. No I/O: callers pass objects in and
//! get decisions out.
//!
//! Typical use (operator and agent alike):
//! 1. collect objects (from the API server, a [`PolicyDocument`] received over
//!    the issuer API, or [`parse_yaml_documents`] in standalone mode);
//! 2. [`PolicySnapshot::compile`] them, writing each [`ObjectReport`] to the
//!    object's status;
//! 3. [`PolicySnapshot::evaluate`] a workload's [`Attributes`] to get the
//!    identities to issue, or [`PolicySnapshot::decide`] /
//!    [`PolicySnapshot::explain`] for a reasoned answer to audit.

pub mod attributes;
pub mod crd;
pub mod dns;
pub mod document;
pub mod expr;
pub mod glob;
pub mod role;
pub mod rules;
pub mod selector;
pub mod snapshot;
pub mod template;
pub mod ttl;

pub use attributes::{
    AgentContext, AttributeError, AttributeName, Attributes, Field, LabelMap, NodeFacts, Origin,
    Producer, UserFacts,
};
pub use crd::{PolicyStatus, Role, RoleSpec, WorkloadIdentity, WorkloadIdentitySpec};
pub use document::{LoadError, PolicyDocument, PolicyObject, parse_yaml_documents};
pub use expr::{Expr, ExprError, Truth};
pub use selector::IdentitySelector;
pub use snapshot::{
    Denial, DenialReason, Explanation, IdentityExplanation, IssuableIdentity, JwtParams,
    ObjectKind, ObjectReport, PolicySnapshot, RoleApplication, RoleVerdict, ValidationError,
    ValidationReason, X509Params, X509Subject,
};
