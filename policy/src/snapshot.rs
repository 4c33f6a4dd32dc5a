//! The compiled, versioned policy the issuer and agents evaluate.
//!
//! [`PolicySnapshot::compile`] validates every WorkloadIdentity and Role,
//! reports each one (an invalid object is skipped, never poisoning the rest)
//! and indexes the valid ones. The snapshot is immutable and cheap to clone
//! (one `Arc`).
//!
//! # Decision
//! Identity W is issued to workload P only if
//! 1. W's rules allow P (see [`crate::rules`]);
//! 2. no Role applying to P denies W by labels;
//! 3. some Role applying to P allows W by labels;
//! 4. every template of W renders for P (a missing or empty attribute means W
//!    does not apply), the rendered SPIFFE ID and DNS SANs are valid, and the
//!    ID is not one of Signet's own (under `/signet`, see [`RESERVED_ID_RULE`]);
//! 5. no Role applying to P has a deny `spiffe` entry catching the rendered ID/SANs;
//! 6. one of the Roles from step 3 covers the rendered ID and SANs with its
//!    allow `spiffe` entries (or has none).
//!
//! # Order
//! Results are sorted by WorkloadIdentity name (byte order), so the first
//! SVID a workload receives — the Workload API default — is stable across
//! policy versions and agents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use serde::{Deserialize, Serialize};
use signet_identity::{RESERVED_PATH, SpiffeId, TrustDomain, is_reserved_path};

use crate::attributes::{Attributes, Field};
pub use crate::crd::ObjectKind;
use crate::crd::{READY_CONDITION, Role, WorkloadIdentity};
use crate::dns::validate_dns_name;
use crate::document::PolicyDocument;
use crate::expr::ExprError;
use crate::role::{CompiledRole, RoleError, SubjectView, SvidNames};
use crate::rules::{RuleError, Rules, RulesOutcome};
use crate::selector::IdentitySelector;
use crate::template::{Part, RenderError, Template, TemplateError};
use crate::ttl;

/// Deepest nesting accepted in `spec.spiffe.jwt.extraClaims`.
pub const MAX_CLAIM_DEPTH: usize = 10;

/// JWT claims the issuer sets itself and extraClaims may not override.
pub const RESERVED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// Machine-readable reason an object failed validation; used as the `reason`
/// of its `Ready=False` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValidationReason {
    /// `metadata.name` missing or empty.
    MissingName,
    /// Another object of the same kind with the same name came first.
    DuplicateName,
    /// A template does not parse.
    InvalidTemplate,
    /// A condition or template names an attribute outside the schema.
    UnknownAttribute,
    /// A condition or rule is malformed (operator count, globs, empty lists,
    /// neither or both of conditions and expression).
    InvalidCondition,
    /// A rule's expression does not parse (the message gives the column).
    InvalidExpression,
    /// `spec.spiffe.id` names a different trust domain.
    SpiffeIdOutsideTrustDomain,
    /// `spec.spiffe.id` can never render to a valid SPIFFE ID.
    InvalidSpiffeId,
    /// A TTL does not parse or is out of bounds.
    InvalidTtl,
    /// A DNS SAN can never render to a valid DNS name.
    InvalidDnsSan,
    /// An IP SAN is not an IP address.
    InvalidIpSan,
    /// `federatesWith` holds an invalid or the own trust domain.
    InvalidTrustDomain,
    /// `extraClaims` sets a reserved claim or nests too deeply.
    InvalidClaims,
    /// A Role subject lacks a field its kind needs, or has one it does not use.
    InvalidSubject,
    /// A Node subject's label selector is malformed.
    InvalidSelector,
    /// A `workloadIdentityLabels` entry is malformed.
    InvalidLabelSelector,
    /// A Role `spiffe` path glob cannot match a SPIFFE ID path.
    InvalidSpiffePath,
    /// A Role `ipSans` entry is not a CIDR range or address.
    InvalidCidr,
    /// `spec.spiffe.id` is always under `/signet`, which only Signet's own
    /// agents and issuer may hold.
    ReservedId,
}

impl ValidationReason {
    /// The CamelCase string used in conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationReason::MissingName => "MissingName",
            ValidationReason::DuplicateName => "DuplicateName",
            ValidationReason::InvalidTemplate => "InvalidTemplate",
            ValidationReason::UnknownAttribute => "UnknownAttribute",
            ValidationReason::InvalidCondition => "InvalidCondition",
            ValidationReason::InvalidExpression => "InvalidExpression",
            ValidationReason::SpiffeIdOutsideTrustDomain => "SpiffeIdOutsideTrustDomain",
            ValidationReason::InvalidSpiffeId => "InvalidSpiffeId",
            ValidationReason::InvalidTtl => "InvalidTtl",
            ValidationReason::InvalidDnsSan => "InvalidDnsSan",
            ValidationReason::InvalidIpSan => "InvalidIpSan",
            ValidationReason::InvalidTrustDomain => "InvalidTrustDomain",
            ValidationReason::InvalidClaims => "InvalidClaims",
            ValidationReason::InvalidSubject => "InvalidSubject",
            ValidationReason::InvalidSelector => "InvalidSelector",
            ValidationReason::InvalidLabelSelector => "InvalidLabelSelector",
            ValidationReason::InvalidSpiffePath => "InvalidSpiffePath",
            ValidationReason::InvalidCidr => "InvalidCidr",
            ValidationReason::ReservedId => "ReservedId",
        }
    }
}

impl std::fmt::Display for ValidationReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an object was not put in force. `reason` is that of the first
/// problem; `message` lists every problem as `field: description`, separated by `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{reason}: {message}")]
pub struct ValidationError {
    /// Machine-readable reason.
    pub reason: ValidationReason,
    /// Human-readable details with field paths.
    pub message: String,
}

/// The outcome of compiling one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectReport {
    /// The object's kind.
    pub kind: ObjectKind,
    /// `metadata.name` (empty if missing).
    pub name: String,
    /// `metadata.generation`, when the object came from the API server.
    pub generation: Option<i64>,
    /// `Ok` when the object is in force.
    pub result: Result<(), ValidationError>,
}

impl ObjectReport {
    /// The `Ready` condition to write to the object's status. The transition
    /// time is kept from `previous` when the status did not change, so
    /// re-reconciling does not churn it.
    pub fn ready_condition(&self, now: Time, previous: Option<&Condition>) -> Condition {
        let (status, reason, message) = match &self.result {
            Ok(()) => ("True", "Compiled", "compiled and in force".to_owned()),
            Err(e) => ("False", e.reason.as_str(), e.message.clone()),
        };
        let last_transition_time = match previous {
            Some(p) if p.type_ == READY_CONDITION && p.status == status => {
                p.last_transition_time.clone()
            }
            _ => now,
        };
        Condition {
            type_: READY_CONDITION.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: self.generation,
            last_transition_time,
        }
    }
}

/// Machine-readable reason an identity was not issued to a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialReason {
    /// No WorkloadIdentity with that name is in force.
    UnknownIdentity,
    /// The WorkloadIdentity exists but failed validation.
    InvalidIdentity,
    /// The identity's allow rules do not match the workload.
    NoMatchingRule,
    /// One of the identity's deny rules matches the workload.
    DeniedByRule,
    /// A template needs an attribute the workload lacks (or has empty).
    MissingAttribute,
    /// No Role applying to the workload grants the identity (by labels, or for
    /// the rendered SPIFFE ID and SANs).
    NoRoleAllows,
    /// A Role applying to the workload denies the identity or its rendered names.
    RoleDenied,
    /// The rendered SPIFFE ID is invalid (e.g. an attribute value with '/').
    InvalidRenderedId,
    /// A rendered DNS SAN is not a valid DNS name.
    InvalidRenderedSan,
    /// Excluded by the caller's [`IdentitySelector`].
    NotSelected,
    /// The rendered SPIFFE ID is under `/signet`, which only Signet's own
    /// agents and issuer may hold (e.g. a namespace named `signet` rendered
    /// into `/{{ workload.kubernetes.namespace }}/...`).
    ReservedId,
    /// A deny rule reads an attribute the agent could not read for this
    /// workload (e.g. `workload.unix.binary_hash` without the privilege to
    /// open the executable), so the rule cannot be evaluated and the
    /// identity is withheld rather than issued past it.
    AttributeUnavailable,
}

impl DenialReason {
    /// The snake_case string used in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::UnknownIdentity => "unknown_identity",
            DenialReason::InvalidIdentity => "invalid_identity",
            DenialReason::NoMatchingRule => "no_matching_rule",
            DenialReason::DeniedByRule => "denied_by_rule",
            DenialReason::MissingAttribute => "missing_attribute",
            DenialReason::NoRoleAllows => "no_role_allows",
            DenialReason::RoleDenied => "role_denied",
            DenialReason::InvalidRenderedId => "invalid_rendered_id",
            DenialReason::InvalidRenderedSan => "invalid_rendered_san",
            DenialReason::NotSelected => "not_selected",
            DenialReason::ReservedId => "reserved_id",
            DenialReason::AttributeUnavailable => "attribute_unavailable",
        }
    }
}

impl std::fmt::Display for DenialReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an identity is not issued to a workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{reason}: {message}")]
pub struct Denial {
    /// Machine-readable reason for audit events.
    pub reason: DenialReason,
    /// Details for humans.
    pub message: String,
}

impl Denial {
    fn new(reason: DenialReason, message: impl Into<String>) -> Self {
        Denial {
            reason,
            message: message.into(),
        }
    }
}

/// The X.509 subject of an SVID.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct X509Subject {
    /// Common name; the first DNS SAN when the template leaves it empty.
    pub common_name: Option<String>,
    /// O values.
    pub organization: Vec<String>,
    /// OU values.
    pub organizational_unit: Vec<String>,
}

/// What goes into an X.509-SVID besides the SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Params {
    /// Certificate lifetime.
    pub ttl: Duration,
    /// DNS SANs, lowercase, deduplicated, in template order.
    pub dns_sans: Vec<String>,
    /// IP SANs.
    pub ip_sans: Vec<IpAddr>,
    /// Subject DN.
    pub subject: X509Subject,
}

/// What goes into a JWT-SVID besides `sub`/`aud`/times.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtParams {
    /// Token lifetime.
    pub ttl: Duration,
    /// Rendered extra claims.
    pub extra_claims: serde_json::Map<String, serde_json::Value>,
}

/// One identity a workload may be issued, fully rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuableIdentity {
    /// Name of the WorkloadIdentity.
    pub workload_identity: String,
    /// Labels of the WorkloadIdentity.
    pub labels: BTreeMap<String, String>,
    /// The rendered SPIFFE ID, in the snapshot's trust domain.
    pub spiffe_id: SpiffeId,
    /// Rendered Workload API hint.
    pub hint: Option<String>,
    /// X.509-SVID contents.
    pub x509: X509Params,
    /// JWT-SVID contents.
    pub jwt: JwtParams,
    /// Trust domains whose bundles accompany this identity, sorted.
    pub federates_with: Vec<TrustDomain>,
}

#[derive(Debug, Clone, PartialEq)]
enum ClaimTemplate {
    Literal(serde_json::Value),
    String(Template),
    Array(Vec<ClaimTemplate>),
    Object(Vec<(String, ClaimTemplate)>),
}

impl ClaimTemplate {
    fn render(&self, attrs: &Attributes) -> Result<serde_json::Value, RenderError> {
        Ok(match self {
            ClaimTemplate::Literal(v) => v.clone(),
            ClaimTemplate::String(t) => serde_json::Value::String(t.render(attrs)?),
            ClaimTemplate::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|i| i.render(attrs))
                    .collect::<Result<_, _>>()?,
            ),
            ClaimTemplate::Object(fields) => {
                let mut m = serde_json::Map::new();
                for (k, v) in fields {
                    m.insert(k.clone(), v.render(attrs)?);
                }
                serde_json::Value::Object(m)
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CompiledIdentity {
    name: String,
    labels: BTreeMap<String, String>,
    rules: Rules,
    id_path: Template,
    hint: Option<Template>,
    x509_ttl: Duration,
    dns_sans: Vec<Template>,
    ip_sans: Vec<IpAddr>,
    common_name: Option<Template>,
    organization: Vec<Template>,
    organizational_unit: Vec<Template>,
    jwt_ttl: Duration,
    extra_claims: Vec<(String, ClaimTemplate)>,
    federates_with: Vec<TrustDomain>,
}

/// Collects problems found while compiling one object.
#[derive(Default)]
struct Problems(Vec<(ValidationReason, String)>);

impl Problems {
    fn push(&mut self, reason: ValidationReason, field: &str, message: impl std::fmt::Display) {
        self.0.push((reason, format!("{field}: {message}")));
    }

    fn template(&mut self, field: &str, text: &str) -> Option<Template> {
        match Template::parse(text) {
            Ok(t) => Some(t),
            Err(e) => {
                let reason = match e {
                    TemplateError::UnknownAttribute { .. } => ValidationReason::UnknownAttribute,
                    _ => ValidationReason::InvalidTemplate,
                };
                self.push(reason, field, e);
                None
            }
        }
    }

    fn into_result(self) -> Result<(), ValidationError> {
        let Some((reason, _)) = self.0.first() else {
            return Ok(());
        };
        Err(ValidationError {
            reason: *reason,
            message: self
                .0
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

fn role_reason(e: &RoleError) -> ValidationReason {
    match e {
        RoleError::MissingField { .. } | RoleError::UnexpectedField { .. } => {
            ValidationReason::InvalidSubject
        }
        RoleError::Selector(_) => ValidationReason::InvalidSelector,
        RoleError::Labels(_) => ValidationReason::InvalidLabelSelector,
        RoleError::Path(_) => ValidationReason::InvalidSpiffePath,
        RoleError::Cidr(_) => ValidationReason::InvalidCidr,
    }
}

fn rule_reason(e: &RuleError) -> ValidationReason {
    match e {
        // Unknown names get the same reason wherever they are written.
        RuleError::Attribute(_) | RuleError::Expression(ExprError::UnknownAttribute { .. }) => {
            ValidationReason::UnknownAttribute
        }
        RuleError::Expression(_) => ValidationReason::InvalidExpression,
        RuleError::Operators(_)
        | RuleError::EmptyList(_)
        | RuleError::Glob { .. }
        | RuleError::EmptyRule
        | RuleError::BothForms => ValidationReason::InvalidCondition,
    }
}

const SPIFFE_SCHEME: &str = "spiffe://";

/// Why IDs under `/signet` are refused, for reports and denials alike.
pub const RESERVED_ID_RULE: &str =
    "/signet/** belongs to Signet's agents and issuer; no workload may hold such an ID";

/// Whether every rendering of a SPIFFE ID path template is reserved, judged
/// from its literal text alone. Rendered values are single non-empty path
/// segments, so a template whose text before the first attribute is
/// `/signet/...` always lands under `/signet`, while `/signet{{ x }}` never
/// does; anything decided by attribute values is checked when rendering.
fn always_reserved(t: &Template) -> bool {
    match t.parts() {
        [] => false,
        [Part::Literal(l)] => is_reserved_path(l),
        [Part::Literal(l), ..] => l
            .strip_prefix(RESERVED_PATH)
            .is_some_and(|rest| rest.starts_with('/')),
        [Part::Attribute(_), ..] => false,
    }
}

/// Splits `spec.spiffe.id` into its path template text, accepting the full
/// `spiffe://<td>/...` form only for the configured trust domain.
fn id_path_text<'a>(id: &'a str, td: &TrustDomain, problems: &mut Problems) -> Option<&'a str> {
    let Some(rest) = id.strip_prefix(SPIFFE_SCHEME) else {
        return Some(id);
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority != td.as_str() {
        problems.push(
            ValidationReason::SpiffeIdOutsideTrustDomain,
            "spec.spiffe.id",
            format_args!(
                "trust domain {authority:?} is not the configured trust domain {:?}",
                td.as_str()
            ),
        );
        return None;
    }
    Some(path)
}

fn compile_identity(
    wi: &WorkloadIdentity,
    name: &str,
    td: &TrustDomain,
    problems: &mut Problems,
) -> Option<CompiledIdentity> {
    let spec = &wi.spec;
    let rules = match Rules::compile(spec.rules.as_ref()) {
        Ok(r) => Some(r),
        Err(errs) => {
            for (path, e) in errs {
                problems.push(rule_reason(&e), &path, e);
            }
            None
        }
    };

    // SPIFFE ID: the literal structure is checked now by rendering with a
    // harmless placeholder; only attribute values are left for render time.
    let id_path = id_path_text(&spec.spiffe.id, td, problems)
        .and_then(|p| problems.template("spec.spiffe.id", p));
    if let Some(t) = &id_path {
        let sample = t.render_placeholder("x");
        if sample.is_empty() {
            problems.push(
                ValidationReason::InvalidSpiffeId,
                "spec.spiffe.id",
                "the path must not be empty (SVIDs need a path below the trust domain)",
            );
        } else if let Err(e) = SpiffeId::from_path(td, &sample) {
            problems.push(ValidationReason::InvalidSpiffeId, "spec.spiffe.id", e);
        } else if always_reserved(t) {
            problems.push(
                ValidationReason::ReservedId,
                "spec.spiffe.id",
                format_args!("{:?} is reserved: {RESERVED_ID_RULE}", spec.spiffe.id),
            );
        }
    }
    let hint = spec
        .spiffe
        .hint
        .as_deref()
        .filter(|h| !h.is_empty())
        .map(|h| problems.template("spec.spiffe.hint", h));

    let x509 = spec.spiffe.x509.clone().unwrap_or_default();
    let x509_ttl = ttl::parse_bounded(
        x509.ttl.as_deref(),
        ttl::X509_DEFAULT_TTL,
        ttl::X509_MIN_TTL,
        ttl::X509_MAX_TTL,
    )
    .map_err(|e| problems.push(ValidationReason::InvalidTtl, "spec.spiffe.x509.ttl", e))
    .ok();
    let mut dns_sans = Vec::new();
    for (i, d) in x509.dns_sans.iter().enumerate() {
        let field = format!("spec.spiffe.x509.dnsSans[{i}]");
        if let Some(t) = problems.template(&field, d) {
            match validate_dns_name(&t.render_placeholder("x")) {
                Ok(()) => dns_sans.push(t),
                Err(e) => problems.push(ValidationReason::InvalidDnsSan, &field, e),
            }
        }
    }
    let mut ip_sans = Vec::new();
    for (i, ip) in x509.ip_sans.iter().enumerate() {
        match ip.parse::<IpAddr>() {
            Ok(a) => ip_sans.push(a),
            Err(_) => problems.push(
                ValidationReason::InvalidIpSan,
                &format!("spec.spiffe.x509.ipSans[{i}]"),
                format_args!("{ip:?} is not an IP address"),
            ),
        }
    }
    let subject = x509.subject_template.clone().unwrap_or_default();
    let common_name = subject
        .common_name
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| problems.template("spec.spiffe.x509.subjectTemplate.commonName", c));
    let mut template_list = |field: &str, items: &[String]| -> Vec<Template> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, s)| problems.template(&format!("{field}[{i}]"), s))
            .collect()
    };
    let organization = template_list(
        "spec.spiffe.x509.subjectTemplate.organization",
        &subject.organization,
    );
    let organizational_unit = template_list(
        "spec.spiffe.x509.subjectTemplate.organizationalUnit",
        &subject.organizational_unit,
    );

    let jwt = spec.spiffe.jwt.clone().unwrap_or_default();
    let jwt_ttl = ttl::parse_bounded(
        jwt.ttl.as_deref(),
        ttl::JWT_DEFAULT_TTL,
        ttl::JWT_MIN_TTL,
        ttl::JWT_MAX_TTL,
    )
    .map_err(|e| problems.push(ValidationReason::InvalidTtl, "spec.spiffe.jwt.ttl", e))
    .ok();
    let mut extra_claims = Vec::new();
    for (k, v) in &jwt.extra_claims {
        let field = format!("spec.spiffe.jwt.extraClaims.{k}");
        if RESERVED_CLAIMS.contains(&k.as_str()) {
            problems.push(
                ValidationReason::InvalidClaims,
                &field,
                format_args!("{k:?} is a registered claim set by the issuer"),
            );
            continue;
        }
        if let Some(c) = compile_claim(v, &field, 1, problems) {
            extra_claims.push((k.clone(), c));
        }
    }

    let mut federates_with = BTreeSet::new();
    for (i, f) in spec.federates_with.iter().enumerate() {
        let field = format!("spec.federatesWith[{i}]");
        match TrustDomain::new(f) {
            Ok(d) if d == *td => problems.push(
                ValidationReason::InvalidTrustDomain,
                &field,
                "a trust domain cannot federate with itself",
            ),
            Ok(d) => {
                federates_with.insert(d);
            }
            Err(e) => problems.push(ValidationReason::InvalidTrustDomain, &field, e),
        }
    }

    if !problems.0.is_empty() {
        return None;
    }
    Some(CompiledIdentity {
        name: name.to_owned(),
        labels: wi.metadata.labels.clone().unwrap_or_default(),
        rules: rules?,
        id_path: id_path?,
        hint: hint.flatten(),
        x509_ttl: x509_ttl?,
        dns_sans,
        ip_sans,
        common_name: common_name.flatten(),
        organization,
        organizational_unit,
        jwt_ttl: jwt_ttl?,
        extra_claims,
        federates_with: federates_with.into_iter().collect(),
    })
}

fn compile_claim(
    v: &serde_json::Value,
    field: &str,
    depth: usize,
    problems: &mut Problems,
) -> Option<ClaimTemplate> {
    use serde_json::Value;
    let nested = matches!(v, Value::Array(_) | Value::Object(_));
    if nested && depth >= MAX_CLAIM_DEPTH {
        problems.push(
            ValidationReason::InvalidClaims,
            field,
            format_args!("claims may nest at most {MAX_CLAIM_DEPTH} levels deep"),
        );
        return None;
    }
    match v {
        Value::String(s) => problems.template(field, s).map(ClaimTemplate::String),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| compile_claim(item, &format!("{field}[{i}]"), depth + 1, problems))
            .collect::<Option<Vec<_>>>()
            .map(ClaimTemplate::Array),
        Value::Object(m) => m
            .iter()
            .map(|(k, item)| {
                compile_claim(item, &format!("{field}.{k}"), depth + 1, problems)
                    .map(|c| (k.clone(), c))
            })
            .collect::<Option<Vec<_>>>()
            .map(ClaimTemplate::Object),
        other => Some(ClaimTemplate::Literal(other.clone())),
    }
}

/// Attribute values rendered into the SPIFFE ID path must stay inside one
/// path segment, so a value can never add segments (`a/b`) or escape (`..`
/// is caught by ID validation afterwards).
fn check_path_segment(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Ok(())
    } else {
        Err("contains characters not allowed in a SPIFFE ID path segment (only letters, digits, '.', '-' and '_')".to_owned())
    }
}

/// Attribute values rendered into DNS SANs may only add hostname characters:
/// a wildcard must come from the template text, never from a workload.
fn check_dns_value(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    {
        Ok(())
    } else {
        Err(
            "contains characters not allowed in a DNS name (only letters, digits, '.' and '-')"
                .to_owned(),
        )
    }
}

fn render_denial(field: &str, e: RenderError) -> Denial {
    let reason = match e {
        RenderError::Missing(_) | RenderError::Empty(_) => DenialReason::MissingAttribute,
        RenderError::Rejected { .. } if field.starts_with("spec.spiffe.x509.dnsSans") => {
            DenialReason::InvalidRenderedSan
        }
        RenderError::Rejected { .. } => DenialReason::InvalidRenderedId,
    };
    Denial::new(reason, format!("{field}: {e}"))
}

impl CompiledIdentity {
    fn render(&self, td: &TrustDomain, attrs: &Attributes) -> Result<IssuableIdentity, Denial> {
        let path = self
            .id_path
            .render_with(attrs, check_path_segment)
            .map_err(|e| render_denial("spec.spiffe.id", e))?;
        let spiffe_id = SpiffeId::from_path(td, &path).map_err(|e| {
            Denial::new(
                DenialReason::InvalidRenderedId,
                format!("spec.spiffe.id: rendered path {path:?}: {e}"),
            )
        })?;
        // Compile time only refuses templates reserved by their literal text;
        // attribute values (a namespace called "signet") are caught here.
        if spiffe_id.is_reserved() {
            return Err(Denial::new(
                DenialReason::ReservedId,
                format!("spec.spiffe.id: rendered ID {spiffe_id} is reserved: {RESERVED_ID_RULE}"),
            ));
        }
        let render =
            |field: &str, t: &Template| t.render(attrs).map_err(|e| render_denial(field, e));
        let hint = self
            .hint
            .as_ref()
            .map(|t| render("spec.spiffe.hint", t))
            .transpose()?;
        let mut dns_sans: Vec<String> = Vec::with_capacity(self.dns_sans.len());
        for (i, t) in self.dns_sans.iter().enumerate() {
            // Field paths are only formatted on failure: this is the hot path.
            let field = || format!("spec.spiffe.x509.dnsSans[{i}]");
            let name = t
                .render_with(attrs, check_dns_value)
                .map_err(|e| render_denial(&field(), e))?
                .to_ascii_lowercase();
            validate_dns_name(&name).map_err(|e| {
                Denial::new(
                    DenialReason::InvalidRenderedSan,
                    format!("{}: {e}", field()),
                )
            })?;
            if !dns_sans.contains(&name) {
                dns_sans.push(name);
            }
        }
        let common_name = match &self.common_name {
            Some(t) => Some(render("spec.spiffe.x509.subjectTemplate.commonName", t)?),
            None => dns_sans.first().cloned(),
        };
        let render_all = |field: &str, ts: &[Template]| {
            ts.iter()
                .enumerate()
                .map(|(i, t)| {
                    t.render(attrs)
                        .map_err(|e| render_denial(&format!("{field}[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let organization = render_all(
            "spec.spiffe.x509.subjectTemplate.organization",
            &self.organization,
        )?;
        let organizational_unit = render_all(
            "spec.spiffe.x509.subjectTemplate.organizationalUnit",
            &self.organizational_unit,
        )?;
        let mut extra_claims = serde_json::Map::new();
        for (k, c) in &self.extra_claims {
            let v = c
                .render(attrs)
                .map_err(|e| render_denial(&format!("spec.spiffe.jwt.extraClaims.{k}"), e))?;
            extra_claims.insert(k.clone(), v);
        }
        Ok(IssuableIdentity {
            workload_identity: self.name.clone(),
            labels: self.labels.clone(),
            spiffe_id,
            hint,
            x509: X509Params {
                ttl: self.x509_ttl,
                dns_sans,
                ip_sans: self.ip_sans.clone(),
                subject: X509Subject {
                    common_name,
                    organization,
                    organizational_unit,
                },
            },
            jwt: JwtParams {
                ttl: self.jwt_ttl,
                extra_claims,
            },
            federates_with: self.federates_with.clone(),
        })
    }
}

#[derive(Debug)]
struct Inner {
    version: u64,
    trust_domain: TrustDomain,
    /// Sorted by name. Shared with the snapshots compiled after this one
    /// while the identity does not change.
    identities: Vec<Arc<CompiledIdentity>>,
    /// Identity indices whose allow rules pin the Kubernetes namespace.
    identities_by_namespace: HashMap<String, Vec<u32>>,
    /// Identity indices that may match in any namespace (or none).
    identities_anywhere: Vec<u32>,
    /// Sorted by name.
    roles: Vec<CompiledRole>,
    roles_by_namespace: HashMap<String, Vec<u32>>,
    roles_anywhere: Vec<u32>,
    /// WorkloadIdentities that failed validation, for precise denials.
    invalid_identities: BTreeMap<String, ValidationError>,
    /// The valid objects, as shipped to agents.
    document: PolicyDocument,
}

/// The result of [`PolicySnapshot::explain_workload`].
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Every Role in force, in name order.
    pub roles: Vec<RoleApplication>,
    /// Every WorkloadIdentity (invalid ones too), in name order.
    pub identities: Vec<IdentityExplanation>,
}

/// Whether a Role applies to the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleApplication {
    /// The Role's name.
    pub role: String,
    /// Its subjects, described.
    pub subjects: Vec<String>,
    /// The first subject matching the workload; `None`: the Role does not apply.
    pub matched_subject: Option<String>,
}

/// One WorkloadIdentity's decision for the workload.
#[derive(Debug, Clone)]
pub struct IdentityExplanation {
    /// The WorkloadIdentity's name.
    pub workload_identity: String,
    /// Its labels (what Roles select it by).
    pub labels: BTreeMap<String, String>,
    /// The rules' verdict in words (which rule held, or why none did).
    pub rules: String,
    /// What each Role applying to the workload says of this identity.
    pub roles: Vec<RoleVerdict>,
    /// The rendered identity, when its templates could be rendered.
    pub rendered: Option<IssuableIdentity>,
    /// The decision, exactly as the issuer makes it.
    pub outcome: Result<IssuableIdentity, Denial>,
}

/// What one applying Role says of one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleVerdict {
    /// The Role's name.
    pub role: String,
    /// `allow.workloadIdentityLabels` selects the identity.
    pub allows_labels: bool,
    /// `deny.workloadIdentityLabels` selects it.
    pub denies_labels: bool,
    /// `allow.spiffe` covers the rendered ID and SANs (`None`: not rendered).
    pub allows_names: Option<bool>,
    /// `deny.spiffe` catches them.
    pub denies_names: Option<bool>,
}

/// A compiled, immutable, versioned policy. Clones share one allocation.
#[derive(Debug, Clone)]
pub struct PolicySnapshot {
    inner: Arc<Inner>,
}

/// Metadata kept when an object is shipped to agents: enough to identify and
/// compile it, without client-side bookkeeping like managedFields.
fn slim_metadata(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        labels: m.labels.clone(),
        generation: m.generation,
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        ..ObjectMeta::default()
    }
}

fn object_name(meta: &ObjectMeta) -> Option<&str> {
    meta.name.as_deref().filter(|n| !n.is_empty())
}

fn missing_name() -> ValidationError {
    ValidationError {
        reason: ValidationReason::MissingName,
        message: "metadata.name: required".to_owned(),
    }
}

fn duplicate_name(kind: ObjectKind, name: &str) -> ValidationError {
    ValidationError {
        reason: ValidationReason::DuplicateName,
        message: format!(
            "metadata.name: another {kind} named {name:?} came first and is the one in force"
        ),
    }
}

/// Merges two ascending, disjoint index lists.
fn merge_sorted(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

fn to_index(i: usize) -> u32 {
    // More than 4 billion objects cannot fit in memory anyway.
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn index_by_namespace(
    pins: impl Iterator<Item = Option<BTreeSet<String>>>,
) -> (HashMap<String, Vec<u32>>, Vec<u32>) {
    let mut by_ns: HashMap<String, Vec<u32>> = HashMap::new();
    let mut anywhere = Vec::new();
    for (i, pin) in pins.enumerate() {
        match pin {
            Some(namespaces) => {
                for ns in namespaces {
                    by_ns.entry(ns).or_default().push(to_index(i));
                }
            }
            None => anywhere.push(to_index(i)),
        }
    }
    (by_ns, anywhere)
}

// Lives here rather than in `document.rs` so that the document (plain data
// and its loader) does not import the snapshot that imports it.
impl PolicyDocument {
    /// Compiles the document (see [`PolicySnapshot::compile`]).
    pub fn compile(
        &self,
        version: u64,
        trust_domain: &TrustDomain,
    ) -> (PolicySnapshot, Vec<ObjectReport>) {
        PolicySnapshot::compile(
            version,
            trust_domain,
            &self.workload_identities,
            &self.roles,
        )
    }

    /// Compiles the document (see [`PolicySnapshot::compile_after`]),
    /// reusing what `previous` compiled for identities that did not change.
    pub fn compile_after(
        &self,
        version: u64,
        trust_domain: &TrustDomain,
        previous: &PolicySnapshot,
    ) -> (PolicySnapshot, Vec<ObjectReport>) {
        PolicySnapshot::compile_after(
            version,
            trust_domain,
            &self.workload_identities,
            &self.roles,
            previous,
        )
    }
}

impl PolicySnapshot {
    /// Compiles WorkloadIdentities and Roles for `trust_domain`.
    ///
    /// Returns the snapshot and one report per input object, identities first,
    /// each in input order. Invalid objects are left out of the snapshot. When
    /// two objects of one kind share a name, the first is used and the later
    /// ones are reported as `DuplicateName`.
    pub fn compile(
        version: u64,
        trust_domain: &TrustDomain,
        identities: &[WorkloadIdentity],
        roles: &[Role],
    ) -> (PolicySnapshot, Vec<ObjectReport>) {
        Self::compile_reusing(version, trust_domain, identities, roles, None)
    }

    /// Like [`PolicySnapshot::compile`], but an identity whose spec and
    /// metadata equal those `previous` compiled is taken from `previous`
    /// rather than compiled again: one change among thousands of
    /// identities costs a compile of one.
    pub fn compile_after(
        version: u64,
        trust_domain: &TrustDomain,
        identities: &[WorkloadIdentity],
        roles: &[Role],
        previous: &PolicySnapshot,
    ) -> (PolicySnapshot, Vec<ObjectReport>) {
        Self::compile_reusing(version, trust_domain, identities, roles, Some(previous))
    }

    /// What `self` compiled for `wi`, if `wi` is the very object it compiled.
    fn compiled_before(&self, wi: &WorkloadIdentity, name: &str) -> Option<Arc<CompiledIdentity>> {
        let inner = &*self.inner;
        let at = inner
            .document
            .workload_identities
            .binary_search_by(|o| o.metadata.name.as_deref().unwrap_or_default().cmp(name))
            .ok()?;
        let before = inner.document.workload_identities.get(at)?;
        if before.spec != wi.spec || before.metadata != slim_metadata(&wi.metadata) {
            return None;
        }
        let at = inner
            .identities
            .binary_search_by(|i| i.name.as_str().cmp(name))
            .ok()?;
        inner.identities.get(at).cloned()
    }

    fn compile_reusing(
        version: u64,
        trust_domain: &TrustDomain,
        identities: &[WorkloadIdentity],
        roles: &[Role],
        previous: Option<&PolicySnapshot>,
    ) -> (PolicySnapshot, Vec<ObjectReport>) {
        let previous = previous.filter(|p| p.inner.trust_domain == *trust_domain);
        let mut reports = Vec::with_capacity(identities.len() + roles.len());
        let mut compiled_ids: BTreeMap<String, (Arc<CompiledIdentity>, &WorkloadIdentity)> =
            BTreeMap::new();
        let mut invalid_identities = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for wi in identities {
            let name = object_name(&wi.metadata);
            let result = match name {
                None => Err(missing_name()),
                Some(n) if !seen.insert(n.to_owned()) => {
                    Err(duplicate_name(ObjectKind::WorkloadIdentity, n))
                }
                Some(n) => {
                    let mut problems = Problems::default();
                    let compiled = match previous.and_then(|p| p.compiled_before(wi, n)) {
                        Some(reused) => Some(reused),
                        None => compile_identity(wi, n, trust_domain, &mut problems).map(Arc::new),
                    };
                    match compiled {
                        Some(c) => {
                            compiled_ids.insert(n.to_owned(), (c, wi));
                            Ok(())
                        }
                        None => {
                            let err =
                                problems
                                    .into_result()
                                    .err()
                                    .unwrap_or_else(|| ValidationError {
                                        reason: ValidationReason::InvalidTemplate,
                                        message: "validation failed".to_owned(),
                                    });
                            invalid_identities.insert(n.to_owned(), err.clone());
                            Err(err)
                        }
                    }
                }
            };
            reports.push(ObjectReport {
                kind: ObjectKind::WorkloadIdentity,
                name: name.unwrap_or_default().to_owned(),
                generation: wi.metadata.generation,
                result,
            });
        }

        let mut compiled_roles: BTreeMap<String, (CompiledRole, &Role)> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for role in roles {
            let name = object_name(&role.metadata);
            let result = match name {
                None => Err(missing_name()),
                Some(n) if !seen.insert(n.to_owned()) => Err(duplicate_name(ObjectKind::Role, n)),
                Some(n) => match CompiledRole::compile(n, &role.spec) {
                    Ok(c) => {
                        compiled_roles.insert(n.to_owned(), (c, role));
                        Ok(())
                    }
                    Err(errs) => {
                        let mut problems = Problems::default();
                        for (path, e) in errs {
                            problems.push(role_reason(&e), &path, e);
                        }
                        problems.into_result()
                    }
                },
            };
            reports.push(ObjectReport {
                kind: ObjectKind::Role,
                name: name.unwrap_or_default().to_owned(),
                generation: role.metadata.generation,
                result,
            });
        }

        let document = PolicyDocument {
            workload_identities: compiled_ids
                .values()
                .map(|(_, src)| WorkloadIdentity {
                    metadata: slim_metadata(&src.metadata),
                    spec: src.spec.clone(),
                    status: None,
                })
                .collect(),
            roles: compiled_roles
                .values()
                .map(|(_, src)| Role {
                    metadata: slim_metadata(&src.metadata),
                    spec: src.spec.clone(),
                    status: None,
                })
                .collect(),
        };
        let identities: Vec<Arc<CompiledIdentity>> =
            compiled_ids.into_values().map(|(c, _)| c).collect();
        let roles: Vec<CompiledRole> = compiled_roles.into_values().map(|(c, _)| c).collect();
        let (identities_by_namespace, identities_anywhere) =
            index_by_namespace(identities.iter().map(|i| i.rules.namespace_pins()));
        let (roles_by_namespace, roles_anywhere) =
            index_by_namespace(roles.iter().map(CompiledRole::namespace_pins));

        let snapshot = PolicySnapshot {
            inner: Arc::new(Inner {
                version,
                trust_domain: trust_domain.clone(),
                identities,
                identities_by_namespace,
                identities_anywhere,
                roles,
                roles_by_namespace,
                roles_anywhere,
                invalid_identities,
                document,
            }),
        };
        (snapshot, reports)
    }

    /// An empty snapshot (nothing is issued), e.g. before the first policy arrives.
    pub fn empty(version: u64, trust_domain: &TrustDomain) -> PolicySnapshot {
        Self::compile(version, trust_domain, &[], &[]).0
    }

    /// The policy version this snapshot was compiled as.
    pub fn version(&self) -> u64 {
        self.inner.version
    }

    /// The trust domain every rendered SPIFFE ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.trust_domain
    }

    /// Names of the WorkloadIdentities in force, sorted.
    pub fn identity_names(&self) -> impl Iterator<Item = &str> {
        self.inner.identities.iter().map(|i| i.name.as_str())
    }

    /// Names of the Roles in force, sorted.
    pub fn role_names(&self) -> impl Iterator<Item = &str> {
        self.inner.roles.iter().map(|r| r.name())
    }

    /// Names of the Roles in force with a `Node` subject, which applies only
    /// where the operator knows the agent's Node (never in standalone mode).
    pub fn roles_with_node_subjects(&self) -> impl Iterator<Item = &str> {
        self.inner
            .roles
            .iter()
            .filter(|r| r.has_node_subjects())
            .map(|r| r.name())
    }

    /// The objects in force (valid ones only, with trimmed metadata), for
    /// shipping to agents, which compile the same document themselves.
    pub fn document(&self) -> &PolicyDocument {
        &self.inner.document
    }

    /// Roles that apply to the workload, in name order.
    fn applicable_roles(&self, attrs: &Attributes) -> Vec<&CompiledRole> {
        let inner = &*self.inner;
        let view = SubjectView::new(attrs);
        let pinned = attrs
            .field(Field::KubernetesNamespace)
            .and_then(|ns| inner.roles_by_namespace.get(ns))
            .map(Vec::as_slice)
            .unwrap_or_default();
        merge_sorted(pinned, &inner.roles_anywhere)
            .into_iter()
            .filter_map(|i| inner.roles.get(i as usize))
            .filter(|r| r.applies_to_view(&view))
            .collect()
    }

    /// Identities whose rules could match the workload, in name order.
    fn candidate_identities(&self, attrs: &Attributes) -> impl Iterator<Item = &CompiledIdentity> {
        let inner = &*self.inner;
        let pinned = attrs
            .field(Field::KubernetesNamespace)
            .and_then(|ns| inner.identities_by_namespace.get(ns))
            .map(Vec::as_slice)
            .unwrap_or_default();
        merge_sorted(pinned, &inner.identities_anywhere)
            .into_iter()
            .filter_map(|i| inner.identities.get(i as usize).map(AsRef::as_ref))
    }

    fn decide_one(
        &self,
        id: &CompiledIdentity,
        attrs: &Attributes,
        roles: &[&CompiledRole],
    ) -> Result<IssuableIdentity, Denial> {
        match id.rules.evaluate(attrs) {
            RulesOutcome::Allowed => {}
            RulesOutcome::NoMatchingRule => {
                let detail = id
                    .rules
                    .allow
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.why_not(attrs).map(|why| format!("allow[{i}]: {why}")))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Denial::new(
                    DenialReason::NoMatchingRule,
                    format!("no allow rule matches ({detail})"),
                ));
            }
            RulesOutcome::Denied(i) => {
                return Err(Denial::new(
                    DenialReason::DeniedByRule,
                    format!("deny rule {i} matches"),
                ));
            }
        }
        // Checked once the allow rules hold: only an identity that would
        // otherwise apply is withheld for want of an attribute.
        if let Some((i, field, why)) = id.rules.unevaluable_deny(attrs) {
            return Err(Denial::new(
                DenialReason::AttributeUnavailable,
                format!(
                    "deny rule {i} reads {}, which could not be read for this workload ({why}); the identity is withheld rather than issued unchecked",
                    field.as_str()
                ),
            ));
        }
        if let Some(r) = roles.iter().find(|r| r.denies_labels(&id.labels)) {
            return Err(Denial::new(
                DenialReason::RoleDenied,
                format!("Role {:?} denies this identity by its labels", r.name()),
            ));
        }
        let granting: Vec<&CompiledRole> = roles
            .iter()
            .copied()
            .filter(|r| r.allows_labels(&id.labels))
            .collect();
        if granting.is_empty() {
            let applying = roles.iter().map(|r| r.name()).collect::<Vec<_>>();
            return Err(Denial::new(
                DenialReason::NoRoleAllows,
                format!(
                    "no Role applying to the workload selects this identity by labels (applying Roles: {applying:?})"
                ),
            ));
        }
        let issuable = id.render(&self.inner.trust_domain, attrs)?;
        let names = SvidNames {
            path: issuable.spiffe_id.path(),
            dns_sans: &issuable.x509.dns_sans,
            ip_sans: &issuable.x509.ip_sans,
        };
        if let Some(r) = roles.iter().find(|r| r.denies_names(&names)) {
            return Err(Denial::new(
                DenialReason::RoleDenied,
                format!(
                    "Role {:?} denies SPIFFE ID {} or its SANs",
                    r.name(),
                    issuable.spiffe_id
                ),
            ));
        }
        if !granting.iter().any(|r| r.allows_names(&names)) {
            return Err(Denial::new(
                DenialReason::NoRoleAllows,
                format!(
                    "no Role granting this identity allows SPIFFE ID {} with DNS SANs {:?} and IP SANs {:?}",
                    issuable.spiffe_id, issuable.x509.dns_sans, issuable.x509.ip_sans
                ),
            ));
        }
        Ok(issuable)
    }

    /// Every identity the workload may be issued, sorted by WorkloadIdentity
    /// name. The first is the workload's default SVID.
    pub fn evaluate(&self, attrs: &Attributes) -> Vec<IssuableIdentity> {
        let roles = self.applicable_roles(attrs);
        if roles.is_empty() {
            return Vec::new();
        }
        self.candidate_identities(attrs)
            .filter(|id| Self::may_issue(id, attrs, &roles))
            .filter_map(|id| self.decide_one(id, attrs, &roles).ok())
            .collect()
    }

    /// Cheap checks run before [`Self::decide_one`] on the fast path, so the
    /// common "does not match" case builds no denial message.
    fn may_issue(id: &CompiledIdentity, attrs: &Attributes, roles: &[&CompiledRole]) -> bool {
        id.rules.evaluate(attrs) == RulesOutcome::Allowed
            && roles.iter().any(|r| r.allows_labels(&id.labels))
            && id.rules.unevaluable_deny(attrs).is_none()
    }

    /// Like [`PolicySnapshot::evaluate`], restricted to identities the
    /// selector picks (checked before rendering).
    pub fn evaluate_selected(
        &self,
        attrs: &Attributes,
        selector: &IdentitySelector,
    ) -> Vec<IssuableIdentity> {
        let roles = self.applicable_roles(attrs);
        if roles.is_empty() {
            return Vec::new();
        }
        self.candidate_identities(attrs)
            .filter(|id| selector.matches(&id.name, &id.labels))
            .filter(|id| Self::may_issue(id, attrs, &roles))
            .filter_map(|id| self.decide_one(id, attrs, &roles).ok())
            .collect()
    }

    /// Decides one named identity for the workload, with the reason when it
    /// is not issued.
    pub fn decide(
        &self,
        attrs: &Attributes,
        workload_identity_name: &str,
    ) -> Result<IssuableIdentity, Denial> {
        let inner = &*self.inner;
        let found = inner
            .identities
            .binary_search_by(|i| i.name.as_str().cmp(workload_identity_name));
        let Ok(idx) = found else {
            return Err(match inner.invalid_identities.get(workload_identity_name) {
                Some(e) => Denial::new(
                    DenialReason::InvalidIdentity,
                    format!("WorkloadIdentity {workload_identity_name:?} is invalid: {e}"),
                ),
                None => Denial::new(
                    DenialReason::UnknownIdentity,
                    format!("no WorkloadIdentity named {workload_identity_name:?} is in force"),
                ),
            });
        };
        let roles = self.applicable_roles(attrs);
        match inner.identities.get(idx) {
            Some(id) => self.decide_one(id, attrs, &roles),
            None => Err(Denial::new(
                DenialReason::UnknownIdentity,
                "index out of range",
            )),
        }
    }

    /// Everything the decision for this workload rests on, step by step:
    /// which Roles apply (and through which subject), and for every
    /// WorkloadIdentity its rules' verdict, what each applying Role says of
    /// it, and the outcome. The outcome comes from the very function the
    /// issuer decides with; the steps are read off the same compiled rules
    /// and Roles, so an explanation cannot disagree with an issuance.
    pub fn explain_workload(&self, attrs: &Attributes) -> Explanation {
        let inner = &*self.inner;
        let view = SubjectView::new(attrs);
        let roles = inner
            .roles
            .iter()
            .map(|r| RoleApplication {
                role: r.name().to_owned(),
                subjects: r.subjects_described(),
                matched_subject: r.matching_subject(&view),
            })
            .collect();
        let applying = self.applicable_roles(attrs);
        let mut identities: Vec<IdentityExplanation> = inner
            .identities
            .iter()
            .map(|id| {
                let outcome = self.decide_one(id, attrs, &applying);
                let rendered = match &outcome {
                    Ok(issuable) => Some(issuable.clone()),
                    Err(_) => id.render(&inner.trust_domain, attrs).ok(),
                };
                let verdicts = applying
                    .iter()
                    .map(|r| {
                        let names = rendered.as_ref().map(|issuable| SvidNames {
                            path: issuable.spiffe_id.path(),
                            dns_sans: &issuable.x509.dns_sans,
                            ip_sans: &issuable.x509.ip_sans,
                        });
                        RoleVerdict {
                            role: r.name().to_owned(),
                            allows_labels: r.allows_labels(&id.labels),
                            denies_labels: r.denies_labels(&id.labels),
                            allows_names: names.as_ref().map(|n| r.allows_names(n)),
                            denies_names: names.as_ref().map(|n| r.denies_names(n)),
                        }
                    })
                    .collect();
                IdentityExplanation {
                    workload_identity: id.name.clone(),
                    labels: id.labels.clone(),
                    rules: id.rules.describe(attrs),
                    roles: verdicts,
                    rendered,
                    outcome,
                }
            })
            .collect();
        for (name, e) in &inner.invalid_identities {
            identities.push(IdentityExplanation {
                workload_identity: name.clone(),
                labels: BTreeMap::new(),
                rules: "not in force".to_owned(),
                roles: Vec::new(),
                rendered: None,
                outcome: Err(Denial::new(
                    DenialReason::InvalidIdentity,
                    format!("WorkloadIdentity {name:?} is invalid: {e}"),
                )),
            });
        }
        identities.sort_by(|a, b| a.workload_identity.cmp(&b.workload_identity));
        Explanation { roles, identities }
    }

    /// Decides every identity (valid and invalid) for the workload, sorted by
    /// name, for audit logs and `explain`-style tooling. Slower than
    /// [`PolicySnapshot::evaluate`]: no index is used.
    pub fn explain(&self, attrs: &Attributes) -> Vec<(String, Result<IssuableIdentity, Denial>)> {
        let inner = &*self.inner;
        let roles = self.applicable_roles(attrs);
        let mut out: Vec<(String, Result<IssuableIdentity, Denial>)> = inner
            .identities
            .iter()
            .map(|id| (id.name.clone(), self.decide_one(id, attrs, &roles)))
            .collect();
        for (name, e) in &inner.invalid_identities {
            out.push((
                name.clone(),
                Err(Denial::new(
                    DenialReason::InvalidIdentity,
                    format!("WorkloadIdentity {name:?} is invalid: {e}"),
                )),
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
