//! `signet explain`: why a workload gets (or does not get) each identity,
//! from `PolicySnapshot::explain_workload`, the issuer's own decision with
//! its steps.

use std::io::Write;

use serde::Serialize;
use signet_policy::snapshot::ObjectReport;
use signet_policy::{Explanation, IdentityExplanation, IssuableIdentity, RoleVerdict};

/// The explanation as JSON (`--output json`), for scripts.
#[derive(Serialize)]
pub struct JsonExplanation<'a> {
    roles: Vec<JsonRole<'a>>,
    identities: Vec<JsonIdentity<'a>>,
}

#[derive(Serialize)]
struct JsonRole<'a> {
    role: &'a str,
    applies: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    matched_subject: Option<&'a str>,
    subjects: &'a [String],
}

#[derive(Serialize)]
struct JsonIdentity<'a> {
    workload_identity: &'a str,
    issued: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    rules: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_sans: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_sans: Option<Vec<String>>,
    roles: Vec<JsonVerdict<'a>>,
}

#[derive(Serialize)]
struct JsonVerdict<'a> {
    role: &'a str,
    allows_labels: bool,
    denies_labels: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    allows_names: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    denies_names: Option<bool>,
}

impl<'a> JsonExplanation<'a> {
    pub fn new(explanation: &'a Explanation) -> Self {
        JsonExplanation {
            roles: explanation
                .roles
                .iter()
                .map(|r| JsonRole {
                    role: &r.role,
                    applies: r.matched_subject.is_some(),
                    matched_subject: r.matched_subject.as_deref(),
                    subjects: &r.subjects,
                })
                .collect(),
            identities: explanation
                .identities
                .iter()
                .map(|i| {
                    let (reason, message) = match &i.outcome {
                        Ok(_) => (None, None),
                        Err(d) => (Some(d.reason.as_str()), Some(d.message.as_str())),
                    };
                    JsonIdentity {
                        workload_identity: &i.workload_identity,
                        issued: i.outcome.is_ok(),
                        reason,
                        message,
                        rules: &i.rules,
                        spiffe_id: i.rendered.as_ref().map(|r| r.spiffe_id.to_string()),
                        dns_sans: i.rendered.as_ref().map(|r| r.x509.dns_sans.as_slice()),
                        ip_sans: i
                            .rendered
                            .as_ref()
                            .map(|r| r.x509.ip_sans.iter().map(ToString::to_string).collect()),
                        roles: i
                            .roles
                            .iter()
                            .map(|v| JsonVerdict {
                                role: &v.role,
                                allows_labels: v.allows_labels,
                                denies_labels: v.denies_labels,
                                allows_names: v.allows_names,
                                denies_names: v.denies_names,
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }
}

/// Objects that do not compile, so a reader knows why an identity is
/// missing from the list.
pub fn write_not_in_force(out: &mut dyn Write, reports: &[ObjectReport]) -> std::io::Result<()> {
    for report in reports {
        if let Err(error) = &report.result {
            writeln!(
                out,
                "not in force: {} {}: {error}",
                report.kind.as_str(),
                report.name
            )?;
        }
    }
    Ok(())
}

/// The explanation for a person.
pub fn write_text(out: &mut dyn Write, explanation: &Explanation) -> std::io::Result<()> {
    writeln!(out, "Roles:")?;
    if explanation.roles.is_empty() {
        writeln!(out, "  (none in force: no identity can be issued)")?;
    }
    for role in &explanation.roles {
        match &role.matched_subject {
            Some(subject) => writeln!(out, "  {:<24} applies: {subject}", role.role)?,
            None => writeln!(
                out,
                "  {:<24} does not apply (subjects: {})",
                role.role,
                role.subjects.join("; ")
            )?,
        }
    }
    writeln!(out)?;
    writeln!(out, "WorkloadIdentities:")?;
    if explanation.identities.is_empty() {
        writeln!(out, "  (none in force)")?;
    }
    for identity in &explanation.identities {
        write_identity(out, identity)?;
    }
    let issued = explanation
        .identities
        .iter()
        .filter(|i| i.outcome.is_ok())
        .count();
    writeln!(out)?;
    writeln!(
        out,
        "{issued} of {} identities issued",
        explanation.identities.len()
    )
}

fn write_identity(out: &mut dyn Write, identity: &IdentityExplanation) -> std::io::Result<()> {
    match &identity.outcome {
        Ok(issued) => writeln!(
            out,
            "  ISSUED   {} -> {}",
            identity.workload_identity, issued.spiffe_id
        )?,
        Err(denial) => writeln!(
            out,
            "  REFUSED  {}: {} ({})",
            identity.workload_identity,
            denial.message,
            denial.reason.as_str()
        )?,
    }
    writeln!(out, "           rules: {}", identity.rules)?;
    if let Some(rendered) = &identity.rendered {
        write_rendered(out, rendered, identity.outcome.is_ok())?;
    }
    for verdict in &identity.roles {
        writeln!(
            out,
            "           Role {}: {}",
            verdict.role,
            describe(verdict)
        )?;
    }
    Ok(())
}

fn write_rendered(
    out: &mut dyn Write,
    rendered: &IssuableIdentity,
    issued: bool,
) -> std::io::Result<()> {
    if !issued {
        writeln!(out, "           would be: {}", rendered.spiffe_id)?;
    }
    if !rendered.x509.dns_sans.is_empty() {
        writeln!(
            out,
            "           dnsSans: {}",
            rendered.x509.dns_sans.join(", ")
        )?;
    }
    if !rendered.x509.ip_sans.is_empty() {
        let ips: Vec<String> = rendered
            .x509
            .ip_sans
            .iter()
            .map(ToString::to_string)
            .collect();
        writeln!(out, "           ipSans: {}", ips.join(", "))?;
    }
    if let Some(hint) = &rendered.hint {
        writeln!(out, "           hint: {hint}")?;
    }
    Ok(())
}

fn describe(verdict: &RoleVerdict) -> String {
    let mut parts = Vec::new();
    match (verdict.allows_labels, verdict.denies_labels) {
        (_, true) => parts.push("denies it by its labels"),
        (true, false) => parts.push("selects it by its labels"),
        (false, false) => parts.push("does not select it by its labels"),
    }
    match (verdict.allows_names, verdict.denies_names) {
        (_, Some(true)) => parts.push("denies its ID or SANs"),
        (Some(true), _) if verdict.allows_labels => parts.push("allows its ID and SANs"),
        (Some(false), _) if verdict.allows_labels => parts.push("does not allow its ID or SANs"),
        _ => {}
    }
    parts.join(", ")
}
