//! `signet-operator standalone`: the issuer on one machine, with policy from
//! a directory, the CA keyset in a state directory and agents joining with
//! join tokens.

pub mod agent_file;
pub mod agent_standing;
pub mod join_tokens;
pub mod keyset_file;
pub mod policy_dir;
pub mod run;

pub use run::{
    BUNDLE_JSON_FILE, BUNDLE_PEM_FILE, JWKS_FILE, KEYSET_FILE, StandaloneError, run, serve,
};
