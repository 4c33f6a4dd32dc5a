//! What the commands share: output formats and argument parsing.

use std::io::Write;

use clap::ValueEnum;
use signet_identity::TrustDomain;

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub fn trust_domain(name: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(name).map_err(|e| format!("trust domain {name:?}: {e}"))
}

pub fn write_json(out: &mut dyn Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::other)?;
    writeln!(out)
}
