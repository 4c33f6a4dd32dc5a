//! Compiled Roles: which workloads a Role applies to, and which
//! WorkloadIdentities, SPIFFE IDs and SANs it grants or refuses them.
//!
//! Semantics, where the resource leaves room:
//! - A Role applies to a workload when any subject matches. `ServiceAccount`
//!   needs the workload's Kubernetes namespace and service account; `Node`
//!   needs the operator to know the agent's Node (`node.name`, set from the
//!   API server; never in standalone mode) and matches the selector against `node.labels.*` with
//!   Kubernetes selector semantics (so `NotIn` and `DoesNotExist` hold for a
//!   label the node lacks); `Agent` matches `agent.name`.
//! - `workloadIdentityLabels`: every listed key must be on the identity with a
//!   value matching one of its globs; `{"*": ["*"]}` selects every identity; an
//!   empty map selects none.
//! - An allow `spiffe` entry covers an SVID when its path glob matches the
//!   rendered path, every DNS SAN matches one of its `dnsSans` globs and every
//!   IP SAN lies in one of its `ipSans` ranges. An empty allow list puts no
//!   limit on IDs and SANs. Grants are per Role: the Role whose labels allow the
//!   identity must also cover its ID and SANs.
//! - A deny `spiffe` entry catches an SVID when its path glob matches and, if it
//!   lists `dnsSans`/`ipSans`, any one SAN matches them. (Teleport requires all
//!   SANs to match a deny entry, so an extra SAN escapes a deny; here it cannot.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::attributes::{AttributeName, Attributes, Field, LabelMap};
use crate::crd::{self, SubjectKind};
use crate::glob::Glob;

/// Why part of a Role could not be compiled. The caller pairs it with a field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// A field the subject kind requires is missing or empty.
    #[error("{kind:?} subjects need {field}")]
    MissingField {
        /// The subject kind.
        kind: SubjectKind,
        /// The missing field.
        field: &'static str,
    },
    /// A field that has no meaning for the subject kind.
    #[error("{field} does not apply to {kind:?} subjects")]
    UnexpectedField {
        /// The subject kind.
        kind: SubjectKind,
        /// The field.
        field: &'static str,
    },
    /// A malformed label selector requirement.
    #[error("{0}")]
    Selector(String),
    /// A malformed `workloadIdentityLabels` entry.
    #[error("{0}")]
    Labels(String),
    /// A SPIFFE path glob that cannot match any SPIFFE ID path.
    #[error("path {0:?} must start with '/' or '*'")]
    Path(String),
    /// Not an IP address or CIDR range.
    #[error("{0:?} is not an IP address or CIDR range")]
    Cidr(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SelectorOp {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

/// A compiled Kubernetes label selector over `node.labels.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeSelector {
    requirements: Vec<(AttributeName, SelectorOp)>,
}

impl NodeSelector {
    fn compile(
        sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
        path: &str,
        errors: &mut Vec<(String, RoleError)>,
    ) -> Self {
        let mut requirements = Vec::new();
        // Keys become full attribute names once, so matching does not build strings.
        let push = |reqs: &mut Vec<(AttributeName, SelectorOp)>,
                    key: &str,
                    op: SelectorOp,
                    errors: &mut Vec<(String, RoleError)>| {
            match AttributeName::label(LabelMap::NodeLabels, key) {
                Ok(name) => reqs.push((name, op)),
                Err(e) => errors.push((path.to_owned(), RoleError::Selector(e.to_string()))),
            }
        };
        for (k, v) in sel.match_labels.iter().flatten() {
            push(
                &mut requirements,
                k,
                SelectorOp::In([v.clone()].into()),
                errors,
            );
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let here = format!("{path}.matchExpressions[{i}]");
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    errors.push((
                        here,
                        RoleError::Selector(format!("operator {} needs values", e.operator)),
                    ));
                    continue;
                }
                "In" => SelectorOp::In(values),
                "NotIn" => SelectorOp::NotIn(values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    errors.push((
                        here,
                        RoleError::Selector(format!("operator {} takes no values", e.operator)),
                    ));
                    continue;
                }
                "Exists" => SelectorOp::Exists,
                "DoesNotExist" => SelectorOp::DoesNotExist,
                other => {
                    errors.push((
                        format!("{here}.operator"),
                        RoleError::Selector(format!(
                            "unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"
                        )),
                    ));
                    continue;
                }
            };
            push(&mut requirements, &e.key, op, errors);
        }
        NodeSelector { requirements }
    }

    fn matches(&self, attrs: &Attributes) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = attrs.get(key);
            match op {
                SelectorOp::In(vs) => value.is_some_and(|v| vs.contains(v)),
                SelectorOp::NotIn(vs) => value.is_none_or(|v| !vs.contains(v)),
                SelectorOp::Exists => value.is_some(),
                SelectorOp::DoesNotExist => value.is_none(),
            }
        })
    }
}

impl std::fmt::Display for NodeSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("(every node)");
        }
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|(name, op)| {
                let key = name
                    .label_key()
                    .map_or(name.as_str(), |(_, key)| key)
                    .to_owned();
                let list =
                    |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(", ");
                match op {
                    SelectorOp::In(vs) => format!("{key} in [{}]", list(vs)),
                    SelectorOp::NotIn(vs) => format!("{key} notin [{}]", list(vs)),
                    SelectorOp::Exists => key,
                    SelectorOp::DoesNotExist => format!("!{key}"),
                }
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SubjectMatcher {
    ServiceAccount { namespace: Glob, name: Glob },
    Node(NodeSelector),
    Agent(Glob),
    User(Glob),
    Group(Glob),
}

impl SubjectMatcher {
    fn compile(
        s: &crd::Subject,
        path: &str,
        errors: &mut Vec<(String, RoleError)>,
    ) -> Option<Self> {
        let before = errors.len();
        let mut need = |v: &Option<String>, field: &'static str| -> Option<Glob> {
            match v.as_deref() {
                Some(v) if !v.is_empty() => Some(Glob::new(v)),
                _ => {
                    errors.push((
                        format!("{path}.{field}"),
                        RoleError::MissingField {
                            kind: s.kind,
                            field,
                        },
                    ));
                    None
                }
            }
        };
        let matcher = match s.kind {
            SubjectKind::ServiceAccount => {
                let namespace = need(&s.namespace, "namespace");
                let name = need(&s.name, "name");
                namespace
                    .zip(name)
                    .map(|(namespace, name)| SubjectMatcher::ServiceAccount { namespace, name })
            }
            SubjectKind::Agent => need(&s.name, "name").map(SubjectMatcher::Agent),
            SubjectKind::User => need(&s.name, "name").map(SubjectMatcher::User),
            SubjectKind::Group => need(&s.name, "name").map(SubjectMatcher::Group),
            SubjectKind::Node => match &s.selector {
                Some(sel) => Some(SubjectMatcher::Node(NodeSelector::compile(
                    sel,
                    &format!("{path}.selector"),
                    errors,
                ))),
                None => {
                    errors.push((
                        format!("{path}.selector"),
                        RoleError::MissingField {
                            kind: s.kind,
                            field: "selector",
                        },
                    ));
                    None
                }
            },
        };
        let unexpected: &[(&'static str, bool)] = match s.kind {
            SubjectKind::ServiceAccount => &[("selector", s.selector.is_some())],
            SubjectKind::Agent | SubjectKind::User | SubjectKind::Group => &[
                ("namespace", s.namespace.is_some()),
                ("selector", s.selector.is_some()),
            ],
            SubjectKind::Node => &[
                ("namespace", s.namespace.is_some()),
                ("name", s.name.is_some()),
            ],
        };
        for (field, present) in unexpected {
            if *present {
                errors.push((
                    format!("{path}.{field}"),
                    RoleError::UnexpectedField {
                        kind: s.kind,
                        field,
                    },
                ));
            }
        }
        matcher.filter(|_| errors.len() == before)
    }

    /// The subject as a person would write it, for explanations.
    fn describe(&self) -> String {
        match self {
            SubjectMatcher::ServiceAccount { namespace, name } => {
                format!("ServiceAccount {}/{}", namespace.as_str(), name.as_str())
            }
            SubjectMatcher::Node(selector) => format!("Node {selector}"),
            SubjectMatcher::Agent(name) => format!("Agent {}", name.as_str()),
            SubjectMatcher::User(name) => format!("User {}", name.as_str()),
            SubjectMatcher::Group(name) => format!("Group {}", name.as_str()),
        }
    }

    fn matches(&self, w: &SubjectView<'_>) -> bool {
        match self {
            SubjectMatcher::ServiceAccount { namespace, name } => {
                match (w.namespace, w.service_account) {
                    (Some(ns), Some(sa)) => namespace.matches(ns) && name.matches(sa),
                    _ => false,
                }
            }
            SubjectMatcher::Node(sel) => w.on_node && sel.matches(w.attrs),
            SubjectMatcher::Agent(name) => w.agent_name.is_some_and(|a| name.matches(a)),
            SubjectMatcher::User(name) => w.user_name.is_some_and(|u| name.matches(u)),
            SubjectMatcher::Group(name) => w
                .attrs
                .labels(LabelMap::UserGroups)
                .any(|(group, _)| name.matches(group)),
        }
    }
}

/// The attributes subjects look at, fetched once per workload rather than once
/// per Role.
#[derive(Debug, Clone, Copy)]
pub struct SubjectView<'a> {
    attrs: &'a Attributes,
    namespace: Option<&'a str>,
    service_account: Option<&'a str>,
    on_node: bool,
    agent_name: Option<&'a str>,
    /// Only requests from `signet issue` have one.
    user_name: Option<&'a str>,
}

impl<'a> SubjectView<'a> {
    /// Extracts the subject-relevant attributes of a workload.
    pub fn new(attrs: &'a Attributes) -> Self {
        SubjectView {
            attrs,
            namespace: attrs.field(Field::KubernetesNamespace),
            service_account: attrs.field(Field::KubernetesServiceAccount),
            // Only the operator's word about the Node counts: without it
            // (standalone agents, a Node not yet seen) a negative selector
            // must not match by the absence of labels.
            on_node: attrs.field(Field::NodeName).is_some(),
            agent_name: attrs.field(Field::AgentName),
            user_name: attrs.field(Field::UserName),
        }
    }
}

/// A compiled `workloadIdentityLabels` selector.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelMatcher {
    everything: bool,
    keys: Vec<(String, Vec<Glob>)>,
}

impl LabelMatcher {
    /// Compiles a `{key: [value globs]}` map. See the module docs for semantics.
    pub fn compile(
        labels: &BTreeMap<String, Vec<String>>,
        path: &str,
        errors: &mut Vec<(String, RoleError)>,
    ) -> Self {
        let mut m = LabelMatcher::default();
        for (k, vs) in labels {
            let here = format!("{path}[{k:?}]");
            if vs.is_empty() {
                errors.push((
                    here,
                    RoleError::Labels(format!(
                        "label {k:?} needs at least one value (\"*\" for any)"
                    )),
                ));
                continue;
            }
            if k == "*" {
                if vs.iter().any(|v| v != "*") {
                    errors.push((
                        here,
                        RoleError::Labels("the key \"*\" only takes the value \"*\"".to_owned()),
                    ));
                }
                m.everything = true;
                continue;
            }
            m.keys
                .push((k.clone(), vs.iter().map(|v| Glob::new(v)).collect()));
        }
        m
    }

    /// Whether an identity with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        if self.everything {
            return true;
        }
        !self.keys.is_empty()
            && self.keys.iter().all(|(k, globs)| {
                labels
                    .get(k)
                    .is_some_and(|v| globs.iter().any(|g| g.matches(v)))
            })
    }
}

/// A compiled `spiffe` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpiffeMatcher {
    path: Glob,
    dns_sans: Vec<Glob>,
    ip_sans: Vec<IpNet>,
}

impl SpiffeMatcher {
    fn compile(g: &crd::SpiffeGrant, path: &str, errors: &mut Vec<(String, RoleError)>) -> Self {
        if !(g.path.starts_with('/') || g.path.starts_with('*')) {
            errors.push((format!("{path}.path"), RoleError::Path(g.path.clone())));
        }
        let mut ip_sans = Vec::new();
        for (i, c) in g.ip_sans.iter().enumerate() {
            match parse_cidr(c) {
                Some(net) => ip_sans.push(net),
                None => errors.push((format!("{path}.ipSans[{i}]"), RoleError::Cidr(c.clone()))),
            }
        }
        SpiffeMatcher {
            path: Glob::new(&g.path),
            // Rendered DNS SANs are lowercased, so patterns are too.
            dns_sans: g
                .dns_sans
                .iter()
                .map(|d| Glob::new(&d.to_ascii_lowercase()))
                .collect(),
            ip_sans,
        }
    }

    fn covers(&self, svid: &SvidNames<'_>) -> bool {
        self.path.matches(svid.path)
            && svid
                .dns_sans
                .iter()
                .all(|d| self.dns_sans.iter().any(|g| g.matches(d)))
            && svid
                .ip_sans
                .iter()
                .all(|ip| self.ip_sans.iter().any(|n| n.contains(ip)))
    }

    fn catches(&self, svid: &SvidNames<'_>) -> bool {
        self.path.matches(svid.path)
            && (self.dns_sans.is_empty()
                || svid
                    .dns_sans
                    .iter()
                    .any(|d| self.dns_sans.iter().any(|g| g.matches(d))))
            && (self.ip_sans.is_empty()
                || svid
                    .ip_sans
                    .iter()
                    .any(|ip| self.ip_sans.iter().any(|n| n.contains(ip))))
    }
}

fn parse_cidr(s: &str) -> Option<IpNet> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// The names an SVID would carry, checked against `spiffe` entries.
#[derive(Debug, Clone, Copy)]
pub struct SvidNames<'a> {
    /// The SPIFFE ID path (without scheme and trust domain).
    pub path: &'a str,
    /// Rendered DNS SANs, lowercase.
    pub dns_sans: &'a [String],
    /// IP SANs.
    pub ip_sans: &'a [IpAddr],
}

/// The compiled allow or deny half of a Role.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Grant {
    labels: LabelMatcher,
    spiffe: Vec<SpiffeMatcher>,
}

impl Grant {
    fn compile(g: &crd::RoleGrant, path: &str, errors: &mut Vec<(String, RoleError)>) -> Self {
        Grant {
            labels: LabelMatcher::compile(
                &g.workload_identity_labels,
                &format!("{path}.workloadIdentityLabels"),
                errors,
            ),
            spiffe: g
                .spiffe
                .iter()
                .enumerate()
                .map(|(i, s)| SpiffeMatcher::compile(s, &format!("{path}.spiffe[{i}]"), errors))
                .collect(),
        }
    }
}

/// A compiled Role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRole {
    name: String,
    subjects: Vec<SubjectMatcher>,
    allow: Grant,
    deny: Grant,
}

impl CompiledRole {
    /// Compiles a Role's spec, collecting every error with its field path
    /// (e.g. `spec.subjects[1].selector`).
    pub fn compile(name: &str, spec: &crd::RoleSpec) -> Result<Self, Vec<(String, RoleError)>> {
        let mut errors = Vec::new();
        let subjects = spec
            .subjects
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                SubjectMatcher::compile(s, &format!("spec.subjects[{i}]"), &mut errors)
            })
            .collect();
        let allow = Grant::compile(&spec.allow, "spec.allow", &mut errors);
        let deny = Grant::compile(&spec.deny, "spec.deny", &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledRole {
            name: name.to_owned(),
            subjects,
            allow,
            deny,
        })
    }

    /// The Role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether any subject matches the workload.
    pub fn applies_to(&self, attrs: &Attributes) -> bool {
        self.applies_to_view(&SubjectView::new(attrs))
    }

    /// Like [`CompiledRole::applies_to`], with the attributes fetched beforehand.
    pub fn applies_to_view(&self, view: &SubjectView<'_>) -> bool {
        self.subjects.iter().any(|s| s.matches(view))
    }

    /// The first subject that matches the workload, described, or `None`
    /// when the Role does not apply.
    pub fn matching_subject(&self, view: &SubjectView<'_>) -> Option<String> {
        self.subjects
            .iter()
            .find(|s| s.matches(view))
            .map(SubjectMatcher::describe)
    }

    /// Every subject, described.
    pub fn subjects_described(&self) -> Vec<String> {
        self.subjects.iter().map(SubjectMatcher::describe).collect()
    }

    /// Whether any subject is of kind `Node`: such subjects apply only where
    /// the operator knows the agent's Node, never in standalone mode.
    pub fn has_node_subjects(&self) -> bool {
        self.subjects
            .iter()
            .any(|s| matches!(s, SubjectMatcher::Node(_)))
    }

    /// Whether the allow labels select an identity with these labels.
    pub fn allows_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.allow.labels.matches(labels)
    }

    /// Whether the deny labels select an identity with these labels.
    pub fn denies_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.deny.labels.matches(labels)
    }

    /// Whether the allow `spiffe` entries cover the SVID's names (true when
    /// there are none).
    pub fn allows_names(&self, svid: &SvidNames<'_>) -> bool {
        self.allow.spiffe.is_empty() || self.allow.spiffe.iter().any(|m| m.covers(svid))
    }

    /// Whether a deny `spiffe` entry catches the SVID's names.
    pub fn denies_names(&self, svid: &SvidNames<'_>) -> bool {
        self.deny.spiffe.iter().any(|m| m.catches(svid))
    }

    /// The namespaces outside which this Role cannot apply, when every subject
    /// is a ServiceAccount with a literal namespace (used to index Roles).
    pub fn namespace_pins(&self) -> Option<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for s in &self.subjects {
            match s {
                SubjectMatcher::ServiceAccount { namespace, .. } if namespace.is_literal() => {
                    out.insert(namespace.as_str().to_owned());
                }
                _ => return None,
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(yaml: &str) -> CompiledRole {
        let spec: crd::RoleSpec = serde_yaml::from_str(yaml).unwrap();
        CompiledRole::compile("r", &spec).unwrap()
    }

    fn role_errors(yaml: &str) -> Vec<String> {
        let spec: crd::RoleSpec = serde_yaml::from_str(yaml).unwrap();
        CompiledRole::compile("r", &spec)
            .unwrap_err()
            .into_iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect()
    }

    fn pod(ns: &str, sa: &str) -> Attributes {
        let mut a = Attributes::new();
        a.set(Field::KubernetesNamespace, ns);
        a.set(Field::KubernetesServiceAccount, sa);
        a
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn service_account_subjects_with_globs() {
        let r = role(
            r#"
subjects:
  - {kind: ServiceAccount, namespace: payments, name: "*"}
  - {kind: ServiceAccount, namespace: "team-*", name: "ci-*"}
"#,
        );
        assert!(r.applies_to(&pod("payments", "anything")));
        assert!(r.applies_to(&pod("team-a", "ci-runner")));
        assert!(!r.applies_to(&pod("team-a", "web")));
        assert!(!r.applies_to(&pod("payments2", "x")));
        // Not a pod at all.
        assert!(!r.applies_to(&Attributes::new()));
        assert_eq!(r.namespace_pins(), None);
        let r = role(
            "subjects: [{kind: ServiceAccount, namespace: a, name: x}, {kind: ServiceAccount, namespace: b, name: '*'}]",
        );
        assert_eq!(
            r.namespace_pins(),
            Some(["a".to_owned(), "b".to_owned()].into())
        );
    }

    #[test]
    fn user_and_group_subjects_apply_to_people_only() {
        use crate::attributes::UserFacts;
        let r = role(
            r#"
subjects:
  - {kind: User, name: "jane@example.com"}
  - {kind: User, name: "system:serviceaccount:ci:*"}
  - {kind: Group, name: sre}
"#,
        );
        let user = |name: &str, groups: &[&str]| {
            Attributes::of_user(&UserFacts {
                name: name.into(),
                uid: None,
                groups: groups.iter().map(|g| g.to_string()).collect(),
            })
        };
        assert!(r.applies_to(&user("jane@example.com", &[])));
        assert!(r.applies_to(&user("system:serviceaccount:ci:deployer", &[])));
        assert!(r.applies_to(&user("bob", &["dev", "sre"])));
        assert!(!r.applies_to(&user("bob", &["dev", "sre-interns"])));
        assert!(!r.applies_to(&user("system:serviceaccount:prod:deployer", &[])));
        // A pod running as the ci/deployer service account is a workload,
        // not the user: User subjects never apply to it.
        assert!(!r.applies_to(&pod("ci", "deployer")));
        // And a ServiceAccount subject never applies to that user.
        let workloads = role("subjects: [{kind: ServiceAccount, namespace: ci, name: '*'}]");
        assert!(!workloads.applies_to(&user("system:serviceaccount:ci:deployer", &[])));
        assert_eq!(
            role_errors("subjects: [{kind: Group, namespace: x, name: sre}, {kind: User}]"),
            vec![
                "spec.subjects[0].namespace: namespace does not apply to Group subjects".to_owned(),
                "spec.subjects[1].name: User subjects need name".to_owned(),
            ]
        );
    }

    #[test]
    fn node_subjects_use_kubernetes_selector_semantics() {
        let r = role(
            r#"
subjects:
  - kind: Node
    selector:
      matchLabels: {pool: pci}
      matchExpressions:
        - {key: zone, operator: In, values: [a, b]}
        - {key: tainted, operator: DoesNotExist}
        - {key: tier, operator: NotIn, values: [dev]}
        - {key: kubernetes.io/os, operator: Exists}
"#,
        );
        let node = |pairs: &[(&str, &str)]| {
            let mut a = Attributes::new();
            a.set(Field::NodeName, "n1");
            a.set_labels(LabelMap::NodeLabels, pairs.iter().copied())
                .unwrap();
            a
        };
        assert!(r.applies_to(&node(&[
            ("pool", "pci"),
            ("zone", "a"),
            ("kubernetes.io/os", "linux")
        ])));
        // NotIn holds for a missing label, as in Kubernetes.
        assert!(r.applies_to(&node(&[
            ("pool", "pci"),
            ("zone", "b"),
            ("kubernetes.io/os", "linux"),
            ("tier", "prod")
        ])));
        assert!(!r.applies_to(&node(&[
            ("pool", "pci"),
            ("zone", "c"),
            ("kubernetes.io/os", "linux")
        ])));
        assert!(!r.applies_to(&node(&[("pool", "pci"), ("zone", "a")])));
        assert!(!r.applies_to(&node(&[
            ("pool", "pci"),
            ("zone", "a"),
            ("kubernetes.io/os", "linux"),
            ("tainted", "")
        ])));
        assert!(!r.applies_to(&node(&[
            ("pool", "pci"),
            ("zone", "a"),
            ("kubernetes.io/os", "linux"),
            ("tier", "dev")
        ])));
        assert!(!r.applies_to(&node(&[
            ("pool", "gpu"),
            ("zone", "a"),
            ("kubernetes.io/os", "linux")
        ])));

        // An empty selector selects every node, but only workloads on a node.
        let any = role("subjects: [{kind: Node, selector: {}}]");
        assert!(any.applies_to(&node(&[])));
        assert!(!any.applies_to(&pod("a", "b")));
        // Without the operator's word about the Node (standalone agents, or
        // a pod that names its node itself) no Node subject applies: not
        // even a negative selector, which would otherwise match by the
        // absence of labels.
        let mut standalone = Attributes::new();
        standalone.set(Field::AgentNodeName, "host1");
        standalone.set(Field::KubernetesNodeName, "host1");
        assert!(!any.applies_to(&standalone));
        let not_dmz = role(
            "subjects: [{kind: Node, selector: {matchExpressions: [{key: pool, operator: NotIn, values: [dmz]}]}}]",
        );
        assert!(!not_dmz.applies_to(&standalone));
        assert!(not_dmz.applies_to(&node(&[("pool", "web")])));
        assert!(!not_dmz.applies_to(&node(&[("pool", "dmz")])));
    }

    #[test]
    fn agent_subjects_match_join_names() {
        let r = role("subjects: [{kind: Agent, name: 'vm-*'}]");
        let mut a = Attributes::new();
        a.set(Field::AgentName, "vm-7");
        assert!(r.applies_to(&a));
        a.set(Field::AgentName, "bare-1");
        assert!(!r.applies_to(&a));
        assert!(!r.applies_to(&Attributes::new()));
    }

    #[test]
    fn subject_shape_errors_name_the_field() {
        let errs = role_errors(
            r#"
subjects:
  - {kind: ServiceAccount, namespace: payments}
  - {kind: Node}
  - {kind: Agent, name: x, namespace: y}
  - {kind: Node, selector: {matchExpressions: [{key: a, operator: Like, values: [b]}, {key: a, operator: In}, {key: b, operator: Exists, values: [c]}]}}
"#,
        );
        assert_eq!(
            errs,
            [
                "spec.subjects[0].name: ServiceAccount subjects need name",
                "spec.subjects[1].selector: Node subjects need selector",
                "spec.subjects[2].namespace: namespace does not apply to Agent subjects",
                "spec.subjects[3].selector.matchExpressions[0].operator: unknown operator \"Like\" (expected In, NotIn, Exists or DoesNotExist)",
                "spec.subjects[3].selector.matchExpressions[1]: operator In needs values",
                "spec.subjects[3].selector.matchExpressions[2]: operator Exists takes no values",
            ]
        );
    }

    #[test]
    fn identity_label_selection() {
        let r = role(
            r#"
allow:
  workloadIdentityLabels: {team: [payments, "ledger-*"], env: ["*"]}
deny:
  workloadIdentityLabels: {tier: [admin]}
"#,
        );
        assert!(r.allows_labels(&labels(&[("team", "payments"), ("env", "prod")])));
        assert!(r.allows_labels(&labels(&[("team", "ledger-eu"), ("env", "")])));
        assert!(!r.allows_labels(&labels(&[("team", "payments")])));
        assert!(!r.allows_labels(&labels(&[("team", "web"), ("env", "prod")])));
        assert!(r.denies_labels(&labels(&[("tier", "admin")])));
        assert!(!r.denies_labels(&labels(&[("tier", "user")])));

        let all = role("allow: {workloadIdentityLabels: {'*': ['*']}}");
        assert!(all.allows_labels(&BTreeMap::new()));
        // An empty selector selects nothing, in allow and deny alike.
        let none = role("subjects: []");
        assert!(!none.allows_labels(&labels(&[("a", "b")])));
        assert!(!none.denies_labels(&labels(&[("a", "b")])));

        let errs = role_errors("allow: {workloadIdentityLabels: {'*': [x], team: []}}");
        assert_eq!(
            errs,
            [
                "spec.allow.workloadIdentityLabels[\"*\"]: the key \"*\" only takes the value \"*\"",
                "spec.allow.workloadIdentityLabels[\"team\"]: label \"team\" needs at least one value (\"*\" for any)",
            ]
        );
    }

    fn names<'a>(path: &'a str, dns: &'a [String], ips: &'a [IpAddr]) -> SvidNames<'a> {
        SvidNames {
            path,
            dns_sans: dns,
            ip_sans: ips,
        }
    }

    #[test]
    fn allow_entries_must_cover_every_san() {
        let r = role(
            r#"
allow:
  spiffe:
    - {path: "/ns/payments/*", dnsSans: ["*.payments.svc", "*.Payments.Example"], ipSans: ["10.0.0.0/8", "fd00::1"]}
    - {path: "/bare"}
"#,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let dns = vec!["a.payments.svc".to_owned(), "b.payments.example".to_owned()];
        assert!(r.allows_names(&names(
            "/ns/payments/sa/x",
            &dns,
            &[ip("10.1.2.3"), ip("fd00::1")]
        )));
        assert!(r.allows_names(&names("/ns/payments/sa/x", &[], &[])));
        // One SAN outside the entry's globs spoils it.
        let dns2 = vec!["a.payments.svc".to_owned(), "evil.com".to_owned()];
        assert!(!r.allows_names(&names("/ns/payments/sa/x", &dns2, &[])));
        assert!(!r.allows_names(&names("/ns/payments/sa/x", &[], &[ip("11.0.0.1")])));
        assert!(!r.allows_names(&names("/ns/payments/sa/x", &[], &[ip("fd00::2")])));
        assert!(!r.allows_names(&names("/ns/web/sa/x", &[], &[])));
        // An entry without SAN lists admits no SANs.
        assert!(r.allows_names(&names("/bare", &[], &[])));
        assert!(!r.allows_names(&names("/bare", &dns, &[])));
        // No entries: no limit.
        assert!(role("{}").allows_names(&names("/anything", &dns, &[ip("1.1.1.1")])));
    }

    #[test]
    fn deny_entries_catch_any_listed_san() {
        let r = role(
            r#"
deny:
  spiffe:
    - {path: "/admin/*"}
    - {path: "*", dnsSans: ["*.internal"]}
    - {path: "/ns/*", ipSans: ["192.168.0.0/16"]}
"#,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ok = vec!["a.svc".to_owned()];
        let bad = vec!["a.svc".to_owned(), "db.internal".to_owned()];
        assert!(r.denies_names(&names("/admin/x", &[], &[])));
        assert!(r.denies_names(&names("/x", &bad, &[])));
        assert!(!r.denies_names(&names("/x", &ok, &[])));
        assert!(r.denies_names(&names("/ns/a", &[], &[ip("10.0.0.1"), ip("192.168.1.1")])));
        assert!(!r.denies_names(&names("/other", &[], &[ip("192.168.1.1")])));
        assert!(!role("{}").denies_names(&names("/admin/x", &[], &[])));
    }

    #[test]
    fn malformed_spiffe_entries_are_reported() {
        let errs = role_errors(
            "allow: {spiffe: [{path: 'ns/x', ipSans: ['10.0.0.0/33', '10.0.0.1', 'nope']}]}",
        );
        assert_eq!(
            errs,
            [
                "spec.allow.spiffe[0].path: path \"ns/x\" must start with '/' or '*'",
                "spec.allow.spiffe[0].ipSans[0]: \"10.0.0.0/33\" is not an IP address or CIDR range",
                "spec.allow.spiffe[0].ipSans[2]: \"nope\" is not an IP address or CIDR range",
            ]
        );
    }
}
