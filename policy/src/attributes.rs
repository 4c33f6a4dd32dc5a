//! The attestation attribute namespace shared by rule conditions and templates.
//!
//! Every attribute has one dotted name. Scalar attributes are fixed names such as
//! `workload.kubernetes.namespace`; label maps are flattened, so the pod label
//! `app` is `workload.kubernetes.labels.app`. Names are checked against this
//! schema when policy is compiled, so a typo is a compile error instead of a
//! condition that silently never matches.
//!
//! Attribute values are strings (a uid is `"1000"`). An attribute the workload
//! lacks is absent from [`Attributes`]; it is never represented as `""`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors from naming or collecting attributes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttributeError {
    /// The name is not part of the attribute schema.
    #[error("unknown attribute {0:?}")]
    Unknown(String),
    /// A label-map attribute was named without a key (`workload.kubernetes.labels.`).
    #[error("attribute {0:?} names a label map but no label key")]
    MissingKey(String),
    /// A label key contains characters that cannot appear in an attribute name.
    #[error(
        "label key {key:?} of attribute {name:?} contains whitespace, braces or control characters"
    )]
    InvalidKey {
        /// The full attribute name.
        name: String,
        /// The offending key.
        key: String,
    },
}

/// A scalar (non-map) attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    /// `workload.unix.pid`: the calling process id, in the agent's pid namespace.
    UnixPid,
    /// `workload.unix.uid`: the effective user id of the caller.
    UnixUid,
    /// `workload.unix.gid`: the effective group id of the caller.
    UnixGid,
    /// `workload.unix.binary_path`: the executable path of the caller.
    UnixBinaryPath,
    /// `workload.unix.binary_hash`: hex SHA-256 of the executable.
    UnixBinaryHash,
    /// `workload.kubernetes.namespace`.
    KubernetesNamespace,
    /// `workload.kubernetes.pod_name`.
    KubernetesPodName,
    /// `workload.kubernetes.pod_uid`.
    KubernetesPodUid,
    /// `workload.kubernetes.service_account`.
    KubernetesServiceAccount,
    /// `workload.kubernetes.node_name`.
    KubernetesNodeName,
    /// `workload.kubernetes.container_name`.
    KubernetesContainerName,
    /// `workload.kubernetes.container_image`.
    KubernetesContainerImage,
    /// `workload.docker.container_id`.
    DockerContainerId,
    /// `workload.docker.container_name`.
    DockerContainerName,
    /// `workload.docker.image`.
    DockerImage,
    /// `workload.podman.container_id`.
    PodmanContainerId,
    /// `workload.podman.container_name`.
    PodmanContainerName,
    /// `workload.podman.image`.
    PodmanImage,
    /// `workload.podman.pod_name`.
    PodmanPodName,
    /// `agent.name`: the agent's join name (standalone) or its node's name.
    AgentName,
    /// `agent.node_name`: the node the agent runs on.
    AgentNodeName,
}

impl Field {
    /// Every scalar attribute, in schema order.
    pub const ALL: [Field; 21] = [
        Field::UnixPid,
        Field::UnixUid,
        Field::UnixGid,
        Field::UnixBinaryPath,
        Field::UnixBinaryHash,
        Field::KubernetesNamespace,
        Field::KubernetesPodName,
        Field::KubernetesPodUid,
        Field::KubernetesServiceAccount,
        Field::KubernetesNodeName,
        Field::KubernetesContainerName,
        Field::KubernetesContainerImage,
        Field::DockerContainerId,
        Field::DockerContainerName,
        Field::DockerImage,
        Field::PodmanContainerId,
        Field::PodmanContainerName,
        Field::PodmanImage,
        Field::PodmanPodName,
        Field::AgentName,
        Field::AgentNodeName,
    ];

    /// The dotted attribute name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Field::UnixPid => "workload.unix.pid",
            Field::UnixUid => "workload.unix.uid",
            Field::UnixGid => "workload.unix.gid",
            Field::UnixBinaryPath => "workload.unix.binary_path",
            Field::UnixBinaryHash => "workload.unix.binary_hash",
            Field::KubernetesNamespace => "workload.kubernetes.namespace",
            Field::KubernetesPodName => "workload.kubernetes.pod_name",
            Field::KubernetesPodUid => "workload.kubernetes.pod_uid",
            Field::KubernetesServiceAccount => "workload.kubernetes.service_account",
            Field::KubernetesNodeName => "workload.kubernetes.node_name",
            Field::KubernetesContainerName => "workload.kubernetes.container_name",
            Field::KubernetesContainerImage => "workload.kubernetes.container_image",
            Field::DockerContainerId => "workload.docker.container_id",
            Field::DockerContainerName => "workload.docker.container_name",
            Field::DockerImage => "workload.docker.image",
            Field::PodmanContainerId => "workload.podman.container_id",
            Field::PodmanContainerName => "workload.podman.container_name",
            Field::PodmanImage => "workload.podman.image",
            Field::PodmanPodName => "workload.podman.pod_name",
            Field::AgentName => "agent.name",
            Field::AgentNodeName => "agent.node_name",
        }
    }

    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string map flattened into the attribute namespace as `<prefix>.<key>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LabelMap {
    /// `workload.kubernetes.labels.<k>`: the pod's labels.
    KubernetesLabels,
    /// `workload.docker.labels.<k>`: the container's labels.
    DockerLabels,
    /// `workload.podman.labels.<k>`: the container's labels.
    PodmanLabels,
    /// `workload.podman.pod_labels.<k>`: the podman pod's labels.
    PodmanPodLabels,
    /// `node.labels.<k>`: labels of the Kubernetes node the workload runs on,
    /// as the operator knows them (used by Role `Node` subjects).
    NodeLabels,
}

impl LabelMap {
    /// Every label map.
    pub const ALL: [LabelMap; 5] = [
        LabelMap::KubernetesLabels,
        LabelMap::DockerLabels,
        LabelMap::PodmanLabels,
        LabelMap::PodmanPodLabels,
        LabelMap::NodeLabels,
    ];

    /// The prefix including the trailing dot, e.g. `"workload.kubernetes.labels."`.
    pub const fn prefix(self) -> &'static str {
        match self {
            LabelMap::KubernetesLabels => "workload.kubernetes.labels.",
            LabelMap::DockerLabels => "workload.docker.labels.",
            LabelMap::PodmanLabels => "workload.podman.labels.",
            LabelMap::PodmanPodLabels => "workload.podman.pod_labels.",
            LabelMap::NodeLabels => "node.labels.",
        }
    }
}

/// A validated attribute name: either a [`Field`] or a key in a [`LabelMap`].
///
/// Ordering and equality follow the dotted string form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttributeName(String);

impl AttributeName {
    /// Parses and validates a dotted attribute name.
    pub fn parse(name: &str) -> Result<Self, AttributeError> {
        if Field::from_name(name).is_some() {
            return Ok(AttributeName(name.to_owned()));
        }
        for map in LabelMap::ALL {
            if let Some(key) = name.strip_prefix(map.prefix()) {
                return Self::label(map, key);
            }
            // `workload.kubernetes.labels` without a key is a likely mistake worth
            // a precise message.
            if name == map.prefix().trim_end_matches('.') {
                return Err(AttributeError::MissingKey(name.to_owned()));
            }
        }
        Err(AttributeError::Unknown(name.to_owned()))
    }

    /// The attribute for `key` in a label map.
    pub fn label(map: LabelMap, key: &str) -> Result<Self, AttributeError> {
        let name = format!("{}{key}", map.prefix());
        if key.is_empty() {
            return Err(AttributeError::MissingKey(name));
        }
        // Keys are otherwise free-form (Docker labels use dots and slashes), but
        // must survive being written inside a `{{ }}` template.
        if key
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '{' || c == '}')
        {
            return Err(AttributeError::InvalidKey {
                name,
                key: key.to_owned(),
            });
        }
        Ok(AttributeName(name))
    }

    /// The dotted name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The scalar field this name denotes, if it is not a label-map entry.
    pub fn field(&self) -> Option<Field> {
        Field::from_name(&self.0)
    }

    /// The label map and key this name denotes, if it is a label-map entry.
    pub fn label_key(&self) -> Option<(LabelMap, &str)> {
        LabelMap::ALL
            .into_iter()
            .find_map(|m| self.0.strip_prefix(m.prefix()).map(|k| (m, k)))
    }
}

impl From<Field> for AttributeName {
    fn from(field: Field) -> Self {
        AttributeName(field.as_str().to_owned())
    }
}

impl FromStr for AttributeName {
    type Err = AttributeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for AttributeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for AttributeName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AttributeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The attested attributes of one workload.
///
/// Serialized as a flat string map (`{"workload.kubernetes.namespace": "payments"}`),
/// the same shape the issuer API carries. Keys are validated on every way in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Attributes {
    values: BTreeMap<String, String>,
}

impl Attributes {
    /// No attributes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a scalar attribute, replacing any previous value.
    pub fn set(&mut self, field: Field, value: impl Into<String>) -> &mut Self {
        self.values.insert(field.as_str().to_owned(), value.into());
        self
    }

    /// Sets an attribute by validated name, replacing any previous value.
    pub fn insert(&mut self, name: AttributeName, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.0, value.into());
        self
    }

    /// Sets every entry of a label map (e.g. all pod labels). Entries already
    /// present under other keys are kept.
    pub fn set_labels<K, V>(
        &mut self,
        map: LabelMap,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Result<&mut Self, AttributeError>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        for (k, v) in labels {
            let name = AttributeName::label(map, k.as_ref())?;
            self.values.insert(name.0, v.into());
        }
        Ok(self)
    }

    /// Removes an attribute, returning its value.
    pub fn remove(&mut self, name: &AttributeName) -> Option<String> {
        self.values.remove(name.as_str())
    }

    /// The value of an attribute, or `None` when the workload lacks it.
    pub fn get(&self, name: &AttributeName) -> Option<&str> {
        self.values.get(name.as_str()).map(String::as_str)
    }

    /// The value of a scalar attribute.
    pub fn field(&self, field: Field) -> Option<&str> {
        self.values.get(field.as_str()).map(String::as_str)
    }

    /// The entries of one label map, as `(key, value)`, sorted by key.
    pub fn labels(&self, map: LabelMap) -> impl Iterator<Item = (&str, &str)> {
        let prefix = map.prefix();
        self.values
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .map_while(move |(k, v)| k.strip_prefix(prefix).map(|key| (key, v.as_str())))
    }

    /// The value of one key of a label map.
    pub fn label(&self, map: LabelMap, key: &str) -> Option<&str> {
        // Avoids building the full name for the common lookup.
        let prefix = map.prefix();
        let mut name = String::with_capacity(prefix.len() + key.len());
        name.push_str(prefix);
        name.push_str(key);
        self.values.get(&name).map(String::as_str)
    }

    /// All attributes as `(name, value)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of attributes present.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no attribute is present.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl TryFrom<BTreeMap<String, String>> for Attributes {
    type Error = AttributeError;
    fn try_from(values: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        for name in values.keys() {
            AttributeName::parse(name)?;
        }
        Ok(Attributes { values })
    }
}

impl From<Attributes> for BTreeMap<String, String> {
    fn from(attrs: Attributes) -> Self {
        attrs.values
    }
}

impl FromIterator<(Field, String)> for Attributes {
    fn from_iter<T: IntoIterator<Item = (Field, String)>>(iter: T) -> Self {
        let mut attrs = Attributes::new();
        for (f, v) in iter {
            attrs.set(f, v);
        }
        attrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_parses_back() {
        for f in Field::ALL {
            let n = AttributeName::parse(f.as_str()).unwrap();
            assert_eq!(n.field(), Some(f));
            assert_eq!(n.label_key(), None);
        }
    }

    #[test]
    fn label_names_keep_dots_and_slashes_in_key() {
        let n = AttributeName::parse("workload.kubernetes.labels.app.kubernetes.io/name").unwrap();
        assert_eq!(
            n.label_key(),
            Some((LabelMap::KubernetesLabels, "app.kubernetes.io/name"))
        );
        let n = AttributeName::parse("node.labels.pool").unwrap();
        assert_eq!(n.label_key(), Some((LabelMap::NodeLabels, "pool")));
        let n = AttributeName::parse("workload.podman.pod_labels.tier").unwrap();
        assert_eq!(n.label_key(), Some((LabelMap::PodmanPodLabels, "tier")));
    }

    #[test]
    fn unknown_and_malformed_names_are_rejected() {
        assert_eq!(
            AttributeName::parse("workload.kubernets.namespace"),
            Err(AttributeError::Unknown(
                "workload.kubernets.namespace".into()
            ))
        );
        assert!(matches!(
            AttributeName::parse("workload.kubernetes.labels."),
            Err(AttributeError::MissingKey(_))
        ));
        assert!(matches!(
            AttributeName::parse("workload.kubernetes.labels"),
            Err(AttributeError::MissingKey(_))
        ));
        assert!(matches!(
            AttributeName::parse("workload.docker.labels.a b"),
            Err(AttributeError::InvalidKey { .. })
        ));
        assert!(matches!(
            AttributeName::parse("workload.docker.labels.a}}"),
            Err(AttributeError::InvalidKey { .. })
        ));
        // A prefix of a real name is not a name.
        assert!(AttributeName::parse("workload.unix").is_err());
        assert!(AttributeName::parse("").is_err());
    }

    #[test]
    fn absent_is_none_not_empty() {
        let mut a = Attributes::new();
        a.set(Field::KubernetesNamespace, "payments");
        assert_eq!(a.field(Field::KubernetesNamespace), Some("payments"));
        assert_eq!(a.field(Field::KubernetesPodName), None);
    }

    #[test]
    fn label_iteration_is_scoped_to_one_map() {
        let mut a = Attributes::new();
        a.set_labels(
            LabelMap::KubernetesLabels,
            [("app", "web"), ("tier", "front")],
        )
        .unwrap();
        a.set_labels(LabelMap::NodeLabels, [("pool", "pci")])
            .unwrap();
        a.set(Field::KubernetesNamespace, "ns");
        let pod: Vec<_> = a.labels(LabelMap::KubernetesLabels).collect();
        assert_eq!(pod, vec![("app", "web"), ("tier", "front")]);
        let node: Vec<_> = a.labels(LabelMap::NodeLabels).collect();
        assert_eq!(node, vec![("pool", "pci")]);
        assert_eq!(a.labels(LabelMap::DockerLabels).count(), 0);
        assert_eq!(a.label(LabelMap::KubernetesLabels, "tier"), Some("front"));
    }

    #[test]
    fn string_map_round_trip_validates_keys() {
        let mut m = BTreeMap::new();
        m.insert("workload.unix.uid".to_owned(), "1000".to_owned());
        m.insert(
            "workload.kubernetes.labels.app".to_owned(),
            "web".to_owned(),
        );
        let a = Attributes::try_from(m.clone()).unwrap();
        assert_eq!(BTreeMap::from(a.clone()), m);

        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(
            json,
            r#"{"workload.kubernetes.labels.app":"web","workload.unix.uid":"1000"}"#
        );
        let back: Attributes = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);

        m.insert("workload.unix.euid".to_owned(), "0".to_owned());
        assert!(Attributes::try_from(m).is_err());
        assert!(serde_json::from_str::<Attributes>(r#"{"bogus":"x"}"#).is_err());
    }
}
