//! Agent-side filter choosing which WorkloadIdentities a Workload API endpoint
//! serves, like tbot's `selector`: either one identity by name, or identities
//! by labels.
//!
//! Written `{name: payments-processor}` or `{labels: {team: [payments]}}`;
//! exactly one of the two. For labels, every key must be present on the
//! identity with one of the listed values (`"*"` globs allowed in values).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::glob::Glob;

/// Why a selector is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Both or neither of `name` and `labels`.
    #[error("a selector needs exactly one of name or labels")]
    NameXorLabels,
    /// `name: ""`.
    #[error("selector name is empty")]
    EmptyName,
    /// `labels: {}`.
    #[error("selector labels are empty")]
    EmptyLabels,
    /// A label key with no values.
    #[error("selector label {0:?} needs at least one value")]
    EmptyValues(String),
}

/// Which WorkloadIdentities to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySelector {
    /// Exactly the identity with this name.
    Name(String),
    /// Identities whose labels match: key → accepted value globs.
    Labels(BTreeMap<String, Vec<String>>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<String, Vec<String>>>,
}

impl IdentitySelector {
    /// Selects one identity by name.
    pub fn name(name: impl Into<String>) -> Result<Self, SelectorError> {
        let name = name.into();
        if name.is_empty() {
            return Err(SelectorError::EmptyName);
        }
        Ok(IdentitySelector::Name(name))
    }

    /// Selects identities by labels.
    pub fn labels(labels: BTreeMap<String, Vec<String>>) -> Result<Self, SelectorError> {
        if labels.is_empty() {
            return Err(SelectorError::EmptyLabels);
        }
        if let Some((k, _)) = labels.iter().find(|(_, v)| v.is_empty()) {
            return Err(SelectorError::EmptyValues(k.clone()));
        }
        Ok(IdentitySelector::Labels(labels))
    }

    /// Whether the identity with this name and these labels is selected.
    pub fn matches(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match self {
            IdentitySelector::Name(n) => n == name,
            IdentitySelector::Labels(want) => want.iter().all(|(k, globs)| {
                labels
                    .get(k)
                    .is_some_and(|v| globs.iter().any(|g| Glob::new(g).matches(v)))
            }),
        }
    }
}

impl Serialize for IdentitySelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let wire = match self {
            IdentitySelector::Name(n) => Wire {
                name: Some(n.clone()),
                labels: None,
            },
            IdentitySelector::Labels(l) => Wire {
                name: None,
                labels: Some(l.clone()),
            },
        };
        wire.serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdentitySelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let sel = match (wire.name, wire.labels) {
            (Some(n), None) => IdentitySelector::name(n),
            (None, Some(l)) => IdentitySelector::labels(l),
            _ => Err(SelectorError::NameXorLabels),
        };
        sel.map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn by_name() {
        let s: IdentitySelector = serde_yaml::from_str("name: web").unwrap();
        assert!(s.matches("web", &labels(&[])));
        assert!(!s.matches("web2", &labels(&[])));
    }

    #[test]
    fn by_labels_all_keys_any_value() {
        let s: IdentitySelector =
            serde_yaml::from_str("labels: {team: [payments, ledger], env: ['prod-*']}").unwrap();
        assert!(s.matches("x", &labels(&[("team", "ledger"), ("env", "prod-eu")])));
        assert!(!s.matches("x", &labels(&[("team", "ledger")])));
        assert!(!s.matches("x", &labels(&[("team", "web"), ("env", "prod-eu")])));
    }

    #[test]
    fn exactly_one_form() {
        for bad in [
            "{}",
            "{name: a, labels: {b: [c]}}",
            "name: ''",
            "labels: {}",
            "labels: {a: []}",
            "nmae: a",
        ] {
            assert!(
                serde_yaml::from_str::<IdentitySelector>(bad).is_err(),
                "{bad}"
            );
        }
        let s = IdentitySelector::labels([("a".to_owned(), vec!["b".to_owned()])].into()).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"labels":{"a":["b"]}}"#);
        assert_eq!(serde_json::from_str::<IdentitySelector>(&json).unwrap(), s);
    }
}
