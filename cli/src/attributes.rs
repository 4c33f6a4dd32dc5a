//! A workload's attributes from a file: a flat map of dotted names (the
//! attribute reference in the README), YAML or JSON. Every name is checked
//! against the schema, so a typo is an error rather than an attribute that
//! silently matches nothing.

use std::collections::BTreeMap;
use std::path::Path;

use signet_policy::Attributes;

#[derive(Debug, thiserror::Error)]
pub enum AttributesError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected a map of attribute names to string values: {message}")]
    Shape { path: String, message: String },
    #[error("{path}: {source}")]
    Name {
        path: String,
        #[source]
        source: signet_policy::AttributeError,
    },
}

/// Values may be written as numbers or booleans (`uid: 1000`); attributes
/// are strings, so they are read as the text YAML shows.
pub fn from_map(
    origin: &str,
    map: BTreeMap<String, serde_yaml::Value>,
) -> Result<Attributes, AttributesError> {
    let mut strings = BTreeMap::new();
    for (name, value) in map {
        let text = match value {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            other => {
                return Err(AttributesError::Shape {
                    path: origin.to_owned(),
                    message: format!("{name}: {other:?} is not a string"),
                });
            }
        };
        strings.insert(name, text);
    }
    Attributes::try_from(strings).map_err(|source| AttributesError::Name {
        path: origin.to_owned(),
        source,
    })
}

/// Reads an attributes file.
pub fn read(path: &Path) -> Result<Attributes, AttributesError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| AttributesError::Read {
        path: origin.clone(),
        source,
    })?;
    let map: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|e| AttributesError::Shape {
            path: origin.clone(),
            message: e.to_string(),
        })?;
    from_map(&origin, map)
}
