//! Reading policy and test files the way the standalone operator reads its
//! policy directory: `*.yaml`, `*.yml`, `*.json`, multi-document, each
//! object checked by the policy crate's own loader.

use std::path::{Path, PathBuf};

use signet_identity::TrustDomain;
use signet_policy::{
    ObjectReport, PolicyDocument, PolicyObject, PolicySnapshot, parse_yaml_documents,
};

use crate::policy_test::PolicyTest;

/// The `kind` of test documents, which live beside (or apart from) policy.
pub const POLICY_TEST_KIND: &str = "PolicyTest";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Everything read from the given paths.
#[derive(Debug, Default)]
pub struct Loaded {
    pub objects: Vec<PolicyObject>,
    pub tests: Vec<(PathBuf, PolicyTest)>,
}

impl Loaded {
    /// Compiles the objects as the operator does; the reports say which
    /// objects are not in force and why.
    pub fn compile(&self, trust_domain: &TrustDomain) -> (PolicySnapshot, Vec<ObjectReport>) {
        let document = PolicyDocument::from_objects(self.objects.clone());
        document.compile(1, trust_domain)
    }
}

/// Files under `paths` (directories are read one level deep, as the
/// operator's `policy_dir`), sorted.
fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, LoadError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|source| LoadError::Read {
                path: path.clone(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_policy_file(p))
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads policy objects and `PolicyTest` documents. A policy object the
/// loader refuses is an error here (in CI a typo must fail the build),
/// unlike in the operator, which logs it and goes on.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for path in files(paths)? {
        let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let invalid = |message: String| LoadError::Invalid {
            path: path.clone(),
            message,
        };
        for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document)
                .map_err(|e| invalid(format!("document {index}: {e}")))?;
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(|k| k.as_str()) == Some(POLICY_TEST_KIND) {
                let test: PolicyTest = serde_yaml::from_value(value)
                    .map_err(|e| invalid(format!("document {index} ({POLICY_TEST_KIND}): {e}")))?;
                loaded.tests.push((path.clone(), test));
                continue;
            }
            let yaml = serde_yaml::to_string(&value)
                .map_err(|e| invalid(format!("document {index}: {e}")))?;
            for object in parse_yaml_documents(&yaml) {
                loaded
                    .objects
                    .push(object.map_err(|e| invalid(format!("document {index}: {e}")))?);
            }
        }
    }
    Ok(loaded)
}
