//! Policy as data: the JSON document shipped to agents, and the loader for
//! multi-document YAML files as users `kubectl apply` them (standalone mode
//! reads a directory of these).

use serde::{Deserialize, Serialize};

use crate::crd::{API_VERSION, ObjectKind, Role, WorkloadIdentity};

/// The objects in force: `{"workloadIdentities": [...], "roles": [...]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDocument {
    /// WorkloadIdentity objects.
    #[serde(default)]
    pub workload_identities: Vec<WorkloadIdentity>,
    /// Role objects.
    #[serde(default)]
    pub roles: Vec<Role>,
}

impl PolicyDocument {
    /// Collects loaded objects into a document, keeping their order.
    pub fn from_objects(objects: impl IntoIterator<Item = PolicyObject>) -> Self {
        let mut doc = PolicyDocument::default();
        for o in objects {
            match o {
                PolicyObject::WorkloadIdentity(w) => doc.workload_identities.push(*w),
                PolicyObject::Role(r) => doc.roles.push(*r),
            }
        }
        doc
    }
}

/// One policy object read from YAML.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyObject {
    /// A WorkloadIdentity.
    WorkloadIdentity(Box<WorkloadIdentity>),
    /// A Role.
    Role(Box<Role>),
}

impl PolicyObject {
    /// The object's kind.
    pub fn kind(&self) -> ObjectKind {
        match self {
            PolicyObject::WorkloadIdentity(_) => ObjectKind::WorkloadIdentity,
            PolicyObject::Role(_) => ObjectKind::Role,
        }
    }

    /// `metadata.name`, if set.
    pub fn name(&self) -> Option<&str> {
        match self {
            PolicyObject::WorkloadIdentity(w) => w.metadata.name.as_deref(),
            PolicyObject::Role(r) => r.metadata.name.as_deref(),
        }
    }
}

/// What was wrong with one YAML document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadProblem {
    /// The YAML itself is malformed; later documents in the stream are not read.
    #[error("YAML syntax: {0}")]
    Syntax(String),
    /// The document is not a mapping with `apiVersion` and `kind`.
    #[error("not a Kubernetes object (expected a mapping with apiVersion and kind)")]
    NotAnObject,
    /// `apiVersion` is not `signet.dev/v1alpha1`.
    #[error("unsupported apiVersion {0:?} (expected \"signet.dev/v1alpha1\")")]
    UnsupportedApiVersion(String),
    /// `kind` is neither WorkloadIdentity nor Role.
    #[error("unknown kind {0:?} (expected WorkloadIdentity or Role)")]
    UnknownKind(String),
    /// The object does not fit the resource schema (wrong type, missing field).
    #[error("{0}")]
    Schema(String),
    /// Fields that are not part of the resource (likely typos), by path.
    #[error("unknown fields: {}", .0.join(", "))]
    UnknownFields(Vec<String>),
}

/// A document that could not be loaded, with where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {} ({}{}): {problem}", .index + 1, .kind.as_deref().unwrap_or("no kind"), .name.as_ref().map(|n| format!(" {n:?}")).unwrap_or_default())]
pub struct LoadError {
    /// 0-based position of the document in the stream.
    pub index: usize,
    /// The `kind` field, when readable.
    pub kind: Option<String>,
    /// `metadata.name`, when readable.
    pub name: Option<String>,
    /// What was wrong.
    pub problem: LoadProblem,
}

/// Parses a `---`-separated YAML stream of WorkloadIdentity and Role objects.
///
/// Each non-empty document yields one entry, in order: the object, or an
/// error naming its position, kind and name. Unknown kinds and invalid
/// objects are reported and do not stop the rest; a YAML syntax error ends
/// the stream (the parser cannot resynchronise). Fields the resource does not
/// define are reported as errors rather than silently dropped, since in
/// hand-written policy they are almost always typos.
pub fn parse_yaml_documents(text: &str) -> Vec<Result<PolicyObject, LoadError>> {
    let mut out = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                out.push(Err(LoadError {
                    index,
                    kind: None,
                    name: None,
                    problem: LoadProblem::Syntax(e.to_string()),
                }));
                break;
            }
        };
        if value.is_null() {
            // An empty document, e.g. a leading or trailing `---`.
            continue;
        }
        out.push(load_one(index, value));
    }
    out
}

fn load_one(index: usize, value: serde_yaml::Value) -> Result<PolicyObject, LoadError> {
    let str_at =
        |v: &serde_yaml::Value, key: &str| v.get(key).and_then(|k| k.as_str()).map(str::to_owned);
    let kind = str_at(&value, "kind");
    let name = value.get("metadata").and_then(|m| str_at(m, "name"));
    let err = |problem| LoadError {
        index,
        kind: kind.clone(),
        name: name.clone(),
        problem,
    };
    let (Some(api_version), Some(k)) = (str_at(&value, "apiVersion"), kind.as_deref()) else {
        return Err(err(LoadProblem::NotAnObject));
    };
    if api_version != API_VERSION {
        return Err(err(LoadProblem::UnsupportedApiVersion(api_version)));
    }
    // Go through JSON so YAML-only forms (non-string keys, tags) are refused
    // the way the API server would refuse them.
    let json = serde_json::to_value(&value).map_err(|e| err(LoadProblem::Schema(e.to_string())))?;
    let object = match k {
        "WorkloadIdentity" => serde_json::from_value::<WorkloadIdentity>(json.clone())
            .map(|w| PolicyObject::WorkloadIdentity(Box::new(w))),
        "Role" => {
            serde_json::from_value::<Role>(json.clone()).map(|r| PolicyObject::Role(Box::new(r)))
        }
        other => return Err(err(LoadProblem::UnknownKind(other.to_owned()))),
    }
    .map_err(|e| err(LoadProblem::Schema(e.to_string())))?;
    let reparsed = match &object {
        PolicyObject::WorkloadIdentity(w) => serde_json::to_value(w),
        PolicyObject::Role(r) => serde_json::to_value(r),
    }
    .map_err(|e| err(LoadProblem::Schema(e.to_string())))?;
    let mut unknown = Vec::new();
    dropped_fields(&json, &reparsed, "", &mut unknown);
    if !unknown.is_empty() {
        return Err(err(LoadProblem::UnknownFields(unknown)));
    }
    Ok(object)
}

/// Lists non-empty input fields that did not survive a deserialize/serialize
/// round trip, i.e. fields the types do not know.
fn dropped_fields(
    input: &serde_json::Value,
    kept: &serde_json::Value,
    path: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (input, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(kv) => dropped_fields(v, kv, &here, out),
                    None if is_empty(v) => {}
                    None => out.push(here),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, kv)) in a.iter().zip(b).enumerate() {
                dropped_fields(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => true,
        serde_json::Value::String(s) => s.is_empty(),
        serde_json::Value::Array(a) => a.is_empty(),
        serde_json::Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_stream_reports_bad_documents_individually() {
        let text = r#"
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: a}
spec: {spiffe: {id: /a}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: signet.dev/v1alpha1
kind: Gadget
metadata: {name: g}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: r}
spec: {subjects: [{kind: Agent, name: "*"}]}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: typo}
spec: {subject: [], allow: {workloadIdentityLabel: {a: [b]}}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: wrongtype}
spec: {spiffe: {id: 5, x509: {dnsSans: "notalist"}}}
---
- just a list
---
"#;
        let results = parse_yaml_documents(text);
        assert_eq!(results.len(), 7, "{results:#?}");
        assert_eq!(results[0].as_ref().unwrap().name(), Some("a"));
        let e = results[1].as_ref().unwrap_err();
        assert_eq!(e.index, 1);
        assert_eq!(e.problem, LoadProblem::UnsupportedApiVersion("v1".into()));
        assert_eq!(e.kind.as_deref(), Some("ConfigMap"));
        let e = results[2].as_ref().unwrap_err();
        assert_eq!(e.problem, LoadProblem::UnknownKind("Gadget".into()));
        assert_eq!(
            e.to_string(),
            "document 3 (Gadget \"g\"): unknown kind \"Gadget\" (expected WorkloadIdentity or Role)"
        );
        assert_eq!(results[3].as_ref().unwrap().kind(), ObjectKind::Role);
        let e = results[4].as_ref().unwrap_err();
        assert_eq!(
            e.problem,
            LoadProblem::UnknownFields(vec!["spec.allow.workloadIdentityLabel".into()]),
            "an empty misspelled field is harmless and not reported"
        );
        let e = results[5].as_ref().unwrap_err();
        assert!(matches!(e.problem, LoadProblem::Schema(_)), "{e}");
        assert_eq!(e.name.as_deref(), Some("wrongtype"));
        assert_eq!(
            results[6].as_ref().unwrap_err().problem,
            LoadProblem::NotAnObject
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        let text = "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {name: [unclosed\n";
        let results = parse_yaml_documents(text);
        assert_eq!(results.len(), 1);
        assert!(matches!(
            results[0].as_ref().unwrap_err().problem,
            LoadProblem::Syntax(_)
        ));
        assert!(parse_yaml_documents("").is_empty());
        assert!(parse_yaml_documents("---\n---\n").is_empty());
    }

    #[test]
    fn document_json_round_trip() {
        let objs: Vec<PolicyObject> = parse_yaml_documents(
            r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: a, labels: {team: x}}
spec:
  spiffe:
    id: /a
    jwt: {extraClaims: {nested: {list: [1, "two", true, null]}}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: r}
spec: {subjects: [{kind: Agent, name: "*"}], allow: {workloadIdentityLabels: {team: [x]}}}
"#,
        )
        .into_iter()
        .map(Result::unwrap)
        .collect();
        let doc = PolicyDocument::from_objects(objs);
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.starts_with(r#"{"workloadIdentities":[{"apiVersion":"signet.dev/v1alpha1","kind":"WorkloadIdentity""#), "{json}");
        let back: PolicyDocument = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }
}
