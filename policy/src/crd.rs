//! The `signet.dev/v1alpha1` custom resources: `WorkloadIdentity` and `Role`.
//!
//! These types are the wire shape only (what `kubectl apply` sends and the
//! loader reads). Meaning is given by [`crate::snapshot::PolicySnapshot::compile`],
//! which validates every field and reports problems per object.
//!
//! Doc comments on fields become the `kubectl explain` text, so they are
//! written for the cluster administrator rather than for Rust callers.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of both kinds.
pub const GROUP: &str = "signet.dev";
/// API version of both kinds.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` value of both kinds.
pub const API_VERSION: &str = "signet.dev/v1alpha1";
/// The condition type every Signet object reports in `status.conditions`.
pub const READY_CONDITION: &str = "Ready";

/// The two policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    /// `WorkloadIdentity`.
    WorkloadIdentity,
    /// `Role`.
    Role,
}

impl ObjectKind {
    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::WorkloadIdentity => "WorkloadIdentity",
            ObjectKind::Role => "Role",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identity a matching workload gets.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "WorkloadIdentity",
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "wi",
    category = "signet",
    doc = "WorkloadIdentity describes a SPIFFE identity (its ID, SANs, subject and lifetimes) and which attested workloads may receive it. A Role must also grant the identity to the workload.",
    printcolumn = r#"{"name":"SPIFFE ID","type":"string","jsonPath":".spec.spiffe.id","description":"SPIFFE ID path template"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the object compiled and is in force"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"Why the object is not ready","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentitySpec {
    /// Which attested workloads may receive this identity. Omitted (or an empty allow list) matches every attested workload; a Role still has to grant it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Rules>,
    /// The SPIFFE ID and SVID contents issued to matching workloads.
    pub spiffe: SpiffeSpec,
    /// Trust domains (e.g. "partner.example") whose trust bundles are delivered to workloads holding this identity, so they can authenticate peers from those domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federates_with: Vec<String>,
}

/// Attribute rules deciding which workloads match.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// The workload matches if any one of these rules holds. Empty means every workload matches (subject to deny).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Rule>,
    /// The workload is refused if any one of these rules holds, whatever allow says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Rule>,
}

/// One rule: a list of attribute conditions that must all hold, or a predicate expression that must be true. Exactly one of conditions and expression must be set.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = exactly_one_rule_form)]
pub struct Rule {
    /// Every condition must hold for the rule to hold. At least one condition is required when set. Set either conditions or expression.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub conditions: Vec<AttributeCondition>,
    /// A predicate over workload attributes; the rule holds only when it is true. Example: workload.kubernetes.namespace == "payments" && (workload.kubernetes.labels.app in ["api", "worker"] || glob(workload.kubernetes.service_account, "batch-*")) && !(workload.unix.uid == "0"). Operators, tightest first: ! (not), then attr == "v", attr != "v", attr in ["a", "b"], glob(attr, "pattern") ("*" matches any characters) and has(attr) (present), then &&, then ||; parentheses group. Strings use double quotes with \" and \\ escapes; values of ==, != and in are literal (no "*"). Attribute names are those of conditions; a label key with other characters is written workload.kubernetes.labels["app.kubernetes.io/name"]. A comparison on an attribute the workload lacks is unknown, never true or false, and so is its negation: !(attr == "v") does not hold when attr is absent (write !has(attr) || attr != "v" for that). Errors name the column. At most 4096 bytes, 64 nested levels of "(" and "!", 256 values per in list. Set either conditions or expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = crate::expr::MAX_EXPRESSION_LEN))]
    pub expression: Option<String>,
}

/// Lets the API server reject a rule with both or neither of conditions and
/// expression, before the operator's own validation reports it.
fn exactly_one_rule_form(schema: &mut schemars::Schema) {
    schema.insert(
        "oneOf".to_owned(),
        serde_json::json!([{ "required": ["conditions"] }, { "required": ["expression"] }]),
    );
}

/// A test of one workload attribute. Exactly one of eq, not_eq, in, not_in must be set. A condition on an attribute the workload does not have never holds (not even not_eq or not_in).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[schemars(transform = exactly_one_operator)]
pub struct AttributeCondition {
    /// Dotted attribute name, e.g. "workload.kubernetes.namespace" or "workload.kubernetes.labels.app".
    pub attribute: String,
    /// Holds when the attribute equals this value exactly (no globs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eq: Option<String>,
    /// Holds when the attribute is present and differs from this value.
    #[serde(default, rename = "not_eq", skip_serializing_if = "Option::is_none")]
    pub not_eq: Option<String>,
    /// Holds when the attribute equals one of these values.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub in_: Option<Vec<String>>,
    /// Holds when the attribute is present and equals none of these values.
    #[serde(default, rename = "not_in", skip_serializing_if = "Option::is_none")]
    pub not_in: Option<Vec<String>>,
}

/// Lets the API server reject a condition without exactly one operator, before
/// the operator's own validation reports it on the object.
fn exactly_one_operator(schema: &mut schemars::Schema) {
    let branches: Vec<serde_json::Value> = ["eq", "not_eq", "in", "not_in"]
        .iter()
        .map(|op| serde_json::json!({ "required": [op] }))
        .collect();
    schema.insert("oneOf".to_owned(), serde_json::Value::Array(branches));
}

/// The SPIFFE ID and SVID contents.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeSpec {
    /// Path of the SPIFFE ID within the configured trust domain, starting with "/", with {{ attribute }} templates, e.g. "/ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}". Attribute values rendered here may only contain letters, digits, ".", "-" and "_". A full "spiffe://TRUST_DOMAIN/..." form is accepted if the trust domain is the configured one.
    pub id: String,
    /// Hint passed to workloads in the Workload API to tell SVIDs apart (may use templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// X.509-SVID settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509: Option<X509Spec>,
    /// JWT-SVID settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// X.509-SVID settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct X509Spec {
    /// Certificate lifetime as a duration ("1h", "30m", "1h30m"). Default 1h, allowed 1m to 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+[hms])+$"))]
    pub ttl: Option<String>,
    /// DNS subject alternative names (may use templates), e.g. "{{ workload.kubernetes.pod_name }}.payments.svc". Each rendered name must be a valid hostname; "*" is allowed only as a whole first label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_sans: Vec<String>,
    /// IP address subject alternative names (literal IPv4 or IPv6 addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_sans: Vec<String>,
    /// Subject distinguished name fields (may use templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_template: Option<SubjectTemplate>,
}

/// Subject distinguished name of the X.509-SVID.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubjectTemplate {
    /// Common name. Empty or omitted uses the first rendered DNS SAN, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// Organization (O) values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organization: Vec<String>,
    /// Organizational unit (OU) values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizational_unit: Vec<String>,
}

/// JWT-SVID settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Token lifetime as a duration ("5m", "90s"). Default 5m, allowed 1m to 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^([0-9]+[hms])+$"))]
    pub ttl: Option<String>,
    /// Extra claims added to every JWT-SVID. Any JSON value; string values anywhere inside (up to 10 levels deep) may use templates. Registered claims (iss, sub, aud, exp, nbf, iat, jti) cannot be set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "free_form_object")]
    pub extra_claims: BTreeMap<String, serde_json::Value>,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Observed state written by the operator; the same shape for both kinds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The "Ready" condition says whether the object compiled and is in force; when False its reason (e.g. InvalidTemplate, UnknownAttribute, InvalidExpression, InvalidTtl, ReservedId) and message say what to fix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The metadata.generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Declares conditions as a map keyed by type, so server-side apply merges
/// each condition separately instead of replacing the list.
fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = generator.subschema_for::<Condition>();
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item
    })
}

/// Who may hold which WorkloadIdentities.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "Role",
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "signetrole",
    category = "signet",
    doc = "Role grants WorkloadIdentities (selected by label) and SPIFFE IDs/SANs to the workloads matched by its subjects. Deny entries of any applying Role override allows.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the object compiled and is in force"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"Why the object is not ready","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RoleSpec {
    /// Workloads this Role applies to; it applies when any subject matches. No subjects means the Role applies to nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// What the Role grants.
    #[serde(default)]
    pub allow: RoleGrant,
    /// What the Role refuses; refusals win over any allow in any Role.
    #[serde(default)]
    pub deny: RoleGrant,
}

/// A set of workloads a Role applies to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// ServiceAccount: pods running as a Kubernetes service account (namespace and name, "*" globs allowed). Node: workloads on nodes whose labels match selector. Agent: workloads attested by agents whose name matches name ("*" globs allowed), e.g. standalone agents by join name. User and Group: people and pipelines asking with `signet issue`, by the Kubernetes user name or a group the API server authenticated them with (name, "*" globs allowed); these never apply to attested workloads, and the workload kinds never apply to them.
    pub kind: SubjectKind,
    /// Service account namespace (ServiceAccount only); "*" globs allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Service account name (ServiceAccount), agent name (Agent), user name (User, e.g. "jane@example.com" or "system:serviceaccount:ci:deployer") or group name (Group); "*" globs allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Node label selector (Node only). An empty selector matches every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The kind of a Role subject.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    /// A Kubernetes service account.
    ServiceAccount,
    /// Kubernetes nodes selected by label.
    Node,
    /// Signet agents selected by name.
    Agent,
    /// A Kubernetes user (or service account, by its user name) asking
    /// with `signet issue`.
    User,
    /// Members of a Kubernetes group asking with `signet issue`.
    Group,
}

/// Grants (under allow) or refusals (under deny).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoleGrant {
    /// WorkloadIdentities selected by their labels: every key listed must be present on the identity with one of the listed values. Values may use "*" globs; the key "*" with value "*" selects every identity. Empty selects none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workload_identity_labels: BTreeMap<String, Vec<String>>,
    /// Under allow: the rendered SPIFFE ID must match one entry whose SAN lists cover every rendered SAN; omitted or empty puts no limit on IDs and SANs. Under deny: an identity is refused if an entry's path matches and (when listed) any of its SANs matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spiffe: Vec<SpiffeGrant>,
}

/// A SPIFFE ID path pattern with the SANs allowed (or refused) alongside it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpiffeGrant {
    /// SPIFFE ID path glob, e.g. "/ns/payments/*"; "*" matches any characters including "/".
    pub path: String,
    /// DNS SAN globs, e.g. "*.payments.svc".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_sans: Vec<String>,
    /// IP SAN ranges in CIDR notation, e.g. "10.0.0.0/8"; a bare address means that single address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_sans: Vec<String>,
}

/// Errors producing the CRD manifests.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// YAML serialization failed.
    #[error("serializing CRD {name} to YAML: {source}")]
    Yaml {
        /// The CRD's metadata.name.
        name: String,
        /// The serializer's error.
        source: serde_yaml::Error,
    },
}

/// Another trust domain whose bundle workloads may receive (those whose
/// WorkloadIdentity lists it in `federatesWith`).
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "FederatedTrustDomain",
    status = "FederationStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "signetftd",
    category = "signet",
    doc = "FederatedTrustDomain names another SPIFFE trust domain and where its bundle comes from: its SPIFFE bundle endpoint (https_web or https_spiffe), refreshed at the bundle's refresh hint, or the bundle itself (offline federation: update it through Git). Workloads receive it when their WorkloadIdentity lists the trust domain in federatesWith.",
    printcolumn = r#"{"name":"Trust Domain","type":"string","jsonPath":".spec.trustDomain"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".spec.bundleEndpointURL","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Sequence","type":"integer","jsonPath":".status.bundleSequence"}"#,
    printcolumn = r#"{"name":"Last Refresh","type":"date","jsonPath":".status.lastRefresh"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FederatedTrustDomainSpec {
    /// The trust domain, e.g. partner.org (not this one's own).
    pub trust_domain: String,
    /// The trust domain's SPIFFE bundle endpoint (https://). Without one, trustDomainBundle is the bundle, used as it is until the object changes.
    #[serde(
        default,
        rename = "bundleEndpointURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub bundle_endpoint_url: Option<String>,
    /// How the endpoint authenticates itself (required with bundleEndpointURL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint_profile: Option<BundleEndpointProfile>,
    /// The trust domain's bundle (SPIFFE bundle JSON or PEM CA certificates): the first bundle for an endpoint (required for https_spiffe, whose endpoint it authenticates), or the bundle itself without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain_bundle: Option<String>,
}

/// How a SPIFFE bundle endpoint authenticates itself.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct BundleEndpointProfile {
    /// https_web: a Web PKI certificate for the URL's host (the operator's system roots). https_spiffe: an X.509-SVID of endpointSPIFFEID, checked with the trust domain's own bundle.
    #[serde(rename = "type")]
    pub profile: EndpointProfileType,
    /// The endpoint's SPIFFE ID (https_spiffe only), in the federated trust domain.
    #[serde(
        default,
        rename = "endpointSPIFFEID",
        skip_serializing_if = "Option::is_none"
    )]
    pub endpoint_spiffe_id: Option<String>,
}

/// A SPIFFE bundle endpoint profile.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndpointProfileType {
    #[default]
    HttpsSpiffe,
    HttpsWeb,
}

/// What the operator knows of a federated trust domain's bundle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FederationStatus {
    /// "Ready" is True while a bundle of the trust domain is in force; its message carries the last refresh error, if any. False with reason InvalidSpec when the spec cannot be used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// spiffe_sequence of the bundle in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_sequence: Option<u64>,
    /// When the bundle was last fetched successfully (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<String>,
    /// The earliest expiry of the bundle's X.509 authorities (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_expiry: Option<String>,
    /// The bundle in force (SPIFFE bundle JSON), kept here so that a restarted replica starts from it when it is newer than trustDomainBundle: after the other domain has rotated, an outdated first bundle could no longer authenticate its https_spiffe endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

/// One node agent, as the operator sees it: written by the operator (never
/// by users or agents), one object per agent, deleted with its Node or
/// once the agent has not been seen for a while.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "Agent",
    status = "AgentStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "signetagent",
    category = "signet",
    doc = "Agent is the operator's inventory record of one signet-agent: its node, how it joined, when it was last seen and what it serves. Written by the operator; read it with kubectl get agents.signet.dev or kubectl signet agents list.",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Workloads","type":"integer","jsonPath":".status.workloads","description":"Workloads the issuer signed for through this agent in the last hour"}"#,
    printcolumn = r#"{"name":"Last Seen","type":"date","jsonPath":".status.lastSeen"}"#,
    printcolumn = r#"{"name":"SVID Expiry","type":"string","jsonPath":".status.svidExpiry","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The agent's SPIFFE ID.
    pub spiffe_id: String,
    /// The Node it runs on (in-cluster agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// How it joined: `kubernetes` (a projected service-account token) or `join_token`.
    pub join_method: String,
}

/// What the operator last saw of an agent. Times are RFC 3339.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Its first join since the record was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_join: Option<String>,
    /// Its last join (agents join again after a restart that lost their SVID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_join: Option<String>,
    /// Its last renewal of its own SVID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal: Option<String>,
    /// When a replica last saw its policy stream open (refreshed every two minutes while open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// When its current SVID expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub svid_expiry: Option<String>,
    /// The agent's version, as it reports it on its policy stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Workloads the issuer signed for through this agent in the last hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<u32>,
}

/// What is asked of one signing authority of the trust domain (an X.509
/// CA or a JWT signing key). The operator keeps one object per authority
/// in its keyset; create one with only `kind` to prepare a new authority.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "signet.dev",
    version = "v1alpha1",
    kind = "SigningAuthority",
    status = "SigningAuthorityStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "signingauthority",
    category = "signet",
    doc = "SigningAuthority is one X.509 CA or JWT signing key of the trust domain, kept by the operator (one object per key). Create one with only spec.kind to prepare a new key; set spec.activate on a prepared one to make it sign; set spec.taint on a retired one so agents re-issue everything it signed; set spec.revoke to remove it from the bundle (WhenUnused waits until no live SVID signed by it is left, summed over every operator replica).",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.kind"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Tainted","type":"boolean","jsonPath":".status.tainted"}"#,
    printcolumn = r#"{"name":"Live SVIDs","type":"integer","jsonPath":".status.liveSvids","description":"Live SVIDs it signed, summed over the operator's replicas"}"#,
    printcolumn = r#"{"name":"Not After","type":"string","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"ID","type":"string","jsonPath":".spec.id","priority":1}"#,
    printcolumn = r#"{"name":"Upstream","type":"boolean","jsonPath":".status.upstreamSigned","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.kind == oldSelf.kind", "message": "kind cannot change"},
    {"rule": "!has(oldSelf.id) || (has(self.id) && self.id == oldSelf.id)", "message": "id cannot change once set"},
    {"rule": "!has(oldSelf.taint) || !oldSelf.taint || (has(self.taint) && self.taint)", "message": "a taint cannot be undone"}
]))]
pub struct SigningAuthoritySpec {
    /// x509 (a CA signing X.509-SVIDs) or jwt (a key signing JWT-SVIDs).
    pub kind: SigningAuthorityKind,
    /// The X.509 CA's subject key identifier (hex) or the JWT key's kid. Set by the operator; leave it out to ask for a new authority to be prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Make this prepared authority the one that signs; the active one retires (it stays in the bundle until it expires or is revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate: Option<bool>,
    /// Distrust this retired authority: every agent re-issues the SVIDs it signed, jittered over the agents' taint_reissue_window. Cannot be undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taint: Option<bool>,
    /// Remove this tainted authority from the bundle: WhenUnused once no live SVID signed by it is left (summed over the operator's replicas), Now at once (SVIDs it signed stop verifying). The object is deleted once it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<RevokePolicy>,
}

/// The two kinds of signing authority.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SigningAuthorityKind {
    /// An X.509 CA.
    #[default]
    #[serde(rename = "x509")]
    X509,
    /// A JWT signing key.
    #[serde(rename = "jwt")]
    Jwt,
}

/// Remove this tainted authority from the bundle: WhenUnused once no live
/// SVID signed by it is left (summed over the operator's replicas), Now at
/// once (SVIDs it signed stop verifying). The object is deleted once the
/// authority is revoked.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokePolicy {
    /// Once no live SVID signed by it is left.
    WhenUnused,
    /// At once.
    Now,
}

/// The authority as the operator last saw it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SigningAuthorityStatus {
    /// "Ready" is True when what the spec asks is done; False with reason Refused (and why) when the operator cannot do it, Pending while a revocation waits for live SVIDs, Preparing while a new authority is being made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// prepared (in the bundle, not yet signing), active (signing) or retired (in the bundle until it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Whether it is tainted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted: Option<bool>,
    /// Start of validity (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// End of validity (RFC 3339); it leaves the bundle then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// X.509 CAs: whether it is signed by the configured upstream CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_signed: Option<bool>,
    /// SVIDs it signed that are still in use (the latest of each holder, not expired), summed over the operator's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_svids: Option<u64>,
    /// Some replica could not count every SVID (its ledger was full): liveSvids may be low, and WhenUnused does not revoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_incomplete: Option<bool>,
    /// Each operator replica's own count (each writes its entry); a replica that stopped reporting still counts until the SVIDs it counted expire.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["replica"]))]
    pub replicas: Vec<ReplicaCount>,
}

/// One operator replica's count of the live SVIDs an authority signed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaCount {
    /// The replica (its pod name and a per-start suffix).
    pub replica: String,
    /// Live SVIDs this replica signed with the authority.
    pub live_svids: u64,
    /// When the last of them expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_until: Option<String>,
    /// When the replica last reported (RFC 3339); it reports at least every minute.
    pub reported_at: String,
    /// The replica's ledger was full: its count may be low.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
}

/// One generated CRD manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdFile {
    /// File name inside `crds/`, e.g. `signet.dev_roles.yaml`.
    pub file_name: String,
    /// Complete file contents.
    pub contents: String,
}

/// The CustomResourceDefinitions: the two policy kinds and the agent inventory.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        WorkloadIdentity::crd(),
        Role::crd(),
        Agent::crd(),
        FederatedTrustDomain::crd(),
        SigningAuthority::crd(),
    ]
}

/// The manifests checked in under `crds/`, one file per CRD named
/// `<group>_<plural>.yaml` (the controller-gen convention Helm charts expect).
/// Output is deterministic so regeneration produces no diff.
pub fn crd_files() -> Result<Vec<CrdFile>, CrdError> {
    definitions()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_yaml::to_string(&crd).map_err(|source| CrdError::Yaml {
                name: name.clone(),
                source,
            })?;
            Ok(CrdFile {
                file_name: format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural),
                contents: format!(
                    "# Generated from policy/src/crd.rs by `make crds`; do not edit.\n{body}"
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema_of(crd: &CustomResourceDefinition) -> serde_json::Value {
        serde_json::to_value(&crd.spec.versions[0].schema).unwrap()
    }

    #[test]
    fn every_kind_is_cluster_scoped_with_status_and_names() {
        for crd in definitions() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Cluster");
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, VERSION);
            assert!(v.subresources.as_ref().unwrap().status.is_some());
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["signet".to_owned()][..])
            );
        }
        let wi = WorkloadIdentity::crd();
        assert_eq!(
            wi.metadata.name.as_deref(),
            Some("workloadidentities.signet.dev")
        );
        assert_eq!(
            wi.spec.names.short_names.as_deref(),
            Some(&["wi".to_owned()][..])
        );
        let cols: Vec<_> = wi.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["SPIFFE ID", "Ready", "Reason", "Age"]);
        assert_eq!(
            Role::crd().metadata.name.as_deref(),
            Some("roles.signet.dev")
        );
    }

    #[test]
    fn conditions_merge_per_type_under_server_side_apply() {
        let s = schema_of(&WorkloadIdentity::crd());
        let conds = &s["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conds["x-kubernetes-list-type"], json!("map"));
        assert_eq!(conds["x-kubernetes-list-map-keys"], json!(["type"]));
        assert!(conds["items"]["properties"]["lastTransitionTime"].is_object());
        assert!(
            s["openAPIV3Schema"]["properties"]["status"]["properties"]["observedGeneration"]
                .is_object()
        );
    }

    #[test]
    fn condition_schema_requires_exactly_one_operator() {
        let s = schema_of(&WorkloadIdentity::crd());
        let cond = &s["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["properties"]
            ["allow"]["items"]["properties"]["conditions"]["items"];
        assert_eq!(
            cond["oneOf"],
            json!([{"required": ["eq"]}, {"required": ["not_eq"]}, {"required": ["in"]}, {"required": ["not_in"]}])
        );
        for key in ["attribute", "eq", "not_eq", "in", "not_in"] {
            assert!(cond["properties"][key].is_object(), "{key}");
        }
    }

    #[test]
    fn rule_schema_requires_conditions_or_expression() {
        let s = schema_of(&WorkloadIdentity::crd());
        for list in ["allow", "deny"] {
            let rule = &s["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]["properties"]
                [list]["items"];
            assert_eq!(
                rule["oneOf"],
                json!([{"required": ["conditions"]}, {"required": ["expression"]}]),
                "{list}"
            );
            let expression = &rule["properties"]["expression"];
            assert_eq!(expression["type"], json!("string"));
            assert_eq!(expression["maxLength"], json!(4096));
            assert_eq!(expression["minLength"], json!(1));
            assert_eq!(rule["properties"]["conditions"]["minItems"], json!(1));
            assert!(rule.get("required").is_none(), "{rule}");
        }
    }

    #[test]
    fn extra_claims_keep_arbitrary_json() {
        let s = schema_of(&WorkloadIdentity::crd());
        let claims = &s["openAPIV3Schema"]["properties"]["spec"]["properties"]["spiffe"]["properties"]
            ["jwt"]["properties"]["extraClaims"];
        assert_eq!(claims["x-kubernetes-preserve-unknown-fields"], json!(true));
    }

    #[test]
    fn every_spec_property_has_a_description() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    if p.get("description").is_none() {
                        missing.push(here.clone());
                    }
                    walk(&here, p, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for crd in definitions() {
            let s = schema_of(&crd);
            let mut missing = Vec::new();
            walk(
                "spec",
                &s["openAPIV3Schema"]["properties"]["spec"],
                &mut missing,
            );
            assert!(
                missing.is_empty(),
                "{}: undocumented {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn file_names_follow_group_plural() {
        let files = crd_files().unwrap();
        let names: Vec<_> = files.iter().map(|f| f.file_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "signet.dev_workloadidentities.yaml",
                "signet.dev_roles.yaml",
                "signet.dev_agents.yaml",
                "signet.dev_federatedtrustdomains.yaml",
                "signet.dev_signingauthorities.yaml"
            ]
        );
        assert_eq!(
            crd_files().unwrap(),
            files,
            "generation must be deterministic"
        );
    }
}
