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
    /// An agent reported an attribute only the issuer may set (`agent.*`,
    /// `node.*`).
    #[error("attribute {0:?} is not the agent's to report: only workload.* attributes are")]
    NotTestimony(String),
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

/// Who vouches for an attribute, and so who may set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// `workload.*`: the node agent's testimony about the caller, from its
    /// attestors. In a cluster the issuer replaces `workload.kubernetes.*`
    /// with what its own pod watch says.
    Attestation,
    /// `agent.*`: taken from the calling agent's own SVID, never from what
    /// the agent reports.
    AgentCredential,
    /// `node.*`: the operator's view of the agent's Node in the API server.
    Cluster,
    /// `user.*`: the Kubernetes API server's authentication of a person or
    /// pipeline asking for an SVID with `signet issue`; never an agent's.
    Authentication,
}

/// The component that produces an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Producer {
    /// The agent's unix attestor (`SO_PEERCRED` and `/proc`).
    Unix,
    /// The agent's Kubernetes attestor (the kubelet), and in a cluster the
    /// issuer's pod watch, which overrides it.
    Kubernetes,
    /// The agent's Docker attestor (the Docker Engine API).
    Docker,
    /// The agent's Podman attestor (the Podman API).
    Podman,
    /// The issuer, from the calling agent's SVID.
    AgentSvid,
    /// The operator, from the Node object in the API server.
    ApiServer,
    /// The API server's authentication of whoever calls `signet issue`,
    /// passed to the operator by the API server's front proxy.
    UserAuthentication,
}

impl Producer {
    /// Who vouches for what this producer sets.
    pub const fn origin(self) -> Origin {
        match self {
            Producer::Unix | Producer::Kubernetes | Producer::Docker | Producer::Podman => {
                Origin::Attestation
            }
            Producer::AgentSvid => Origin::AgentCredential,
            Producer::ApiServer => Origin::Cluster,
            Producer::UserAuthentication => Origin::Authentication,
        }
    }

    /// A short description for the attribute reference.
    pub const fn describe(self) -> &'static str {
        match self {
            Producer::Unix => "unix attestor (SO_PEERCRED, /proc; PID reuse detected)",
            Producer::Kubernetes => {
                "Kubernetes attestor (the kubelet); in a cluster the issuer's own pod watch"
            }
            Producer::Docker => "Docker attestor (Docker Engine API)",
            Producer::Podman => "Podman attestor (Podman API)",
            Producer::AgentSvid => "the issuer, from the calling agent's SVID",
            Producer::ApiServer => "the operator, from the agent's Node in the API server",
            Producer::UserAuthentication => {
                "the API server's authentication of the `signet issue` caller (front proxy)"
            }
        }
    }
}

/// Declares the scalar attributes once: variant, dotted name, producer and
/// description, from which `ALL`, `as_str`, `producer` and `description`
/// follow, so the schema cannot disagree with itself.
macro_rules! fields {
    ($($variant:ident => $name:literal, $producer:ident, $description:literal;)*) => {
        /// A scalar (non-map) attribute.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Field {
            $(
                #[doc = concat!("`", $name, "`: ", $description)]
                $variant,
            )*
        }

        impl Field {
            /// Every scalar attribute, in schema order.
            pub const ALL: [Field; [$($name),*].len()] = [$(Field::$variant),*];

            /// The dotted attribute name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Field::$variant => $name,)*
                }
            }

            /// What produces the attribute.
            pub const fn producer(self) -> Producer {
                match self {
                    $(Field::$variant => Producer::$producer,)*
                }
            }

            /// What the attribute means, for the attribute reference.
            pub const fn description(self) -> &'static str {
                match self {
                    $(Field::$variant => $description,)*
                }
            }
        }
    };
}

fields! {
    UnixPid => "workload.unix.pid", Unix,
        "the calling process ID, in the agent's PID namespace (never part of the cache key)";
    UnixUid => "workload.unix.uid", Unix,
        "the caller's effective user ID";
    UnixGid => "workload.unix.gid", Unix,
        "the caller's effective group ID";
    UnixBinaryPath => "workload.unix.binary_path", Unix,
        "the caller's executable (a replaced binary reads `<path> (deleted)`)";
    UnixBinaryHash => "workload.unix.binary_hash", Unix,
        "hex SHA-256 of the caller's executable";
    KubernetesNamespace => "workload.kubernetes.namespace", Kubernetes,
        "the pod's namespace";
    KubernetesPodName => "workload.kubernetes.pod_name", Kubernetes,
        "the pod's name";
    KubernetesPodUid => "workload.kubernetes.pod_uid", Kubernetes,
        "the pod's UID";
    KubernetesServiceAccount => "workload.kubernetes.service_account", Kubernetes,
        "the pod's service account";
    KubernetesNodeName => "workload.kubernetes.node_name", Kubernetes,
        "the node the pod is bound to";
    KubernetesContainerName => "workload.kubernetes.container_name", Kubernetes,
        "the name of the caller's container in the pod spec";
    KubernetesContainerImage => "workload.kubernetes.container_image", Kubernetes,
        "the image of the caller's container, as the pod spec names it";
    KubernetesContainerImageId => "workload.kubernetes.container_image_id", Kubernetes,
        "the image the caller's container runs, by digest, as the kubelet reports it (`imageID`)";
    DockerContainerId => "workload.docker.container_id", Docker,
        "the container's 64-hex-digit ID";
    DockerContainerName => "workload.docker.container_name", Docker,
        "the container's name, without Docker's leading `/`";
    DockerImage => "workload.docker.image", Docker,
        "the image the container was created from, as named then (`Config.Image`)";
    DockerImageId => "workload.docker.image_id", Docker,
        "the image's content-addressed ID (`sha256:...`), which retagging cannot re-point";
    PodmanContainerId => "workload.podman.container_id", Podman,
        "the container's 64-hex-digit ID";
    PodmanContainerName => "workload.podman.container_name", Podman,
        "the container's name";
    PodmanImage => "workload.podman.image", Podman,
        "the image the container was created from, as named then";
    PodmanImageId => "workload.podman.image_id", Podman,
        "the image's content-addressed ID, which retagging cannot re-point";
    PodmanPodName => "workload.podman.pod_name", Podman,
        "the name of the Podman pod the container belongs to";
    AgentName => "agent.name", AgentSvid,
        "the agent's join name (standalone) or its node's name (cluster)";
    AgentNodeName => "agent.node_name", AgentSvid,
        "the node the agent runs on, when it has one";
    NodeName => "node.name", ApiServer,
        "the agent's Kubernetes Node, present only when the operator knows the Node; Role `Node` subjects apply only then";
    UserName => "user.name", UserAuthentication,
        "the Kubernetes user name of a person or pipeline asking with `signet issue` (a service account is `system:serviceaccount:<namespace>:<name>`); never set for workloads";
    UserUid => "user.uid", UserAuthentication,
        "the user's UID, when the API server's authenticator gives one";
}

impl Field {
    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Who vouches for the attribute.
    pub const fn origin(self) -> Origin {
        self.producer().origin()
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
    /// `node.labels.<k>`: labels of the Kubernetes node the agent runs on,
    /// as the operator knows them (used by Role `Node` subjects).
    NodeLabels,
    /// `user.groups.<group>`: `"true"` for each Kubernetes group of a
    /// `signet issue` caller (used by Role `Group` subjects).
    UserGroups,
}

impl LabelMap {
    /// Every label map.
    pub const ALL: [LabelMap; 6] = [
        LabelMap::KubernetesLabels,
        LabelMap::DockerLabels,
        LabelMap::PodmanLabels,
        LabelMap::PodmanPodLabels,
        LabelMap::NodeLabels,
        LabelMap::UserGroups,
    ];

    /// The prefix including the trailing dot, e.g. `"workload.kubernetes.labels."`.
    pub const fn prefix(self) -> &'static str {
        match self {
            LabelMap::KubernetesLabels => "workload.kubernetes.labels.",
            LabelMap::DockerLabels => "workload.docker.labels.",
            LabelMap::PodmanLabels => "workload.podman.labels.",
            LabelMap::PodmanPodLabels => "workload.podman.pod_labels.",
            LabelMap::NodeLabels => "node.labels.",
            LabelMap::UserGroups => "user.groups.",
        }
    }

    /// What produces the map's entries.
    pub const fn producer(self) -> Producer {
        match self {
            LabelMap::KubernetesLabels => Producer::Kubernetes,
            LabelMap::DockerLabels => Producer::Docker,
            LabelMap::PodmanLabels | LabelMap::PodmanPodLabels => Producer::Podman,
            LabelMap::NodeLabels => Producer::ApiServer,
            LabelMap::UserGroups => Producer::UserAuthentication,
        }
    }

    /// What the map holds, for the attribute reference.
    pub const fn description(self) -> &'static str {
        match self {
            LabelMap::KubernetesLabels => "the pod's labels",
            LabelMap::DockerLabels => "the container's labels",
            LabelMap::PodmanLabels => "the container's labels",
            LabelMap::PodmanPodLabels => "the Podman pod's labels",
            LabelMap::NodeLabels => "the labels of the agent's Node, from the API server",
            LabelMap::UserGroups => {
                "`\"true\"` for each of the `signet issue` caller's Kubernetes groups (groups containing whitespace or braces are left out)"
            }
        }
    }

    /// Who vouches for the map's entries.
    pub const fn origin(self) -> Origin {
        self.producer().origin()
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

    /// Who vouches for the attribute.
    pub fn origin(&self) -> Origin {
        origin_of(&self.0)
    }
}

/// The origin of a name already known to be valid.
fn origin_of(name: &str) -> Origin {
    if let Some(field) = Field::from_name(name) {
        return field.origin();
    }
    LabelMap::ALL
        .into_iter()
        .find(|m| name.starts_with(m.prefix()))
        .map_or(Origin::Attestation, LabelMap::origin)
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Attributes {
    values: BTreeMap<String, String>,
    /// Attributes the attestor should have produced but could not read (an
    /// executable the agent may not inspect, one too large to hash), with
    /// why. Never serialized: only the agent that attested knows it, and it
    /// withholds identities whose deny rules would need them.
    unavailable: BTreeMap<Field, String>,
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

    /// Sets the entries of a label map whose keys can be attribute names,
    /// and returns the keys that cannot (whitespace, braces, control
    /// characters). No policy can name such a key, so leaving it out cannot
    /// make a rule miss; the caller logs what was left out.
    pub fn set_representable_labels<'k, V>(
        &mut self,
        map: LabelMap,
        labels: impl IntoIterator<Item = (&'k String, V)>,
    ) -> Vec<&'k str>
    where
        V: Into<String>,
    {
        let mut skipped = Vec::new();
        for (key, value) in labels {
            match AttributeName::label(map, key) {
                Ok(name) => {
                    self.values.insert(name.0, value.into());
                }
                Err(_) => skipped.push(key.as_str()),
            }
        }
        skipped
    }

    /// Removes an attribute, returning its value.
    pub fn remove(&mut self, name: &AttributeName) -> Option<String> {
        self.values.remove(name.as_str())
    }

    /// Removes a scalar attribute, returning its value.
    pub fn remove_field(&mut self, field: Field) -> Option<String> {
        self.values.remove(field.as_str())
    }

    /// Removes every attribute of one origin.
    pub fn remove_origin(&mut self, origin: Origin) {
        self.values.retain(|name, _| origin_of(name) != origin);
    }

    /// Removes every attribute `producer` sets (e.g. all
    /// `workload.kubernetes.*`, before the issuer puts in its own).
    pub fn remove_produced_by(&mut self, producer: Producer) {
        self.values
            .retain(|name, _| producer_of(name) != Some(producer));
    }

    /// Only the attributes an agent may report about a workload
    /// (`workload.*`): what it sends the issuer.
    pub fn testimony(&self) -> Attributes {
        Attributes {
            values: self
                .values
                .iter()
                .filter(|(name, _)| origin_of(name) == Origin::Attestation)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            unavailable: BTreeMap::new(),
        }
    }

    /// Records that `field` applies to this workload but could not be read,
    /// and why (no process ID or other per-call detail: the reason is part
    /// of the workload's identity in caches). Removes any value it had.
    pub fn mark_unavailable(&mut self, field: Field, reason: impl Into<String>) -> &mut Self {
        self.values.remove(field.as_str());
        self.unavailable.insert(field, reason.into());
        self
    }

    /// Attributes that could not be read, with why.
    pub fn unavailable(&self) -> impl Iterator<Item = (Field, &str)> {
        self.unavailable.iter().map(|(f, why)| (*f, why.as_str()))
    }

    /// Why `field` could not be read, if it could not.
    pub fn unavailable_reason(&self, field: Field) -> Option<&str> {
        self.unavailable.get(&field).map(String::as_str)
    }

    /// Accepts what an agent reported about a workload: every name must be
    /// in the schema and of [`Origin::Attestation`].
    pub fn from_testimony(values: BTreeMap<String, String>) -> Result<Self, AttributeError> {
        for name in values.keys() {
            if AttributeName::parse(name)?.origin() != Origin::Attestation {
                return Err(AttributeError::NotTestimony(name.clone()));
            }
        }
        Ok(Attributes {
            values,
            unavailable: BTreeMap::new(),
        })
    }

    /// The attributes policy decides on: these, minus anything claiming to
    /// be `agent.*` or `node.*`, plus those the context vouches for. The one
    /// place where agent and node attributes enter, for the issuer and the
    /// agent's local evaluation alike.
    pub fn with_context(mut self, context: &AgentContext) -> Attributes {
        self.values
            .retain(|name, _| origin_of(name) == Origin::Attestation);
        self.set(Field::AgentName, context.name.clone());
        if let Some(node) = &context.node_name {
            self.set(Field::AgentNodeName, node.clone());
        }
        if let Some(node) = &context.node {
            self.set(Field::NodeName, node.name.clone());
            for (key, value) in &node.labels {
                // Keys were validated when the context was built.
                if let Ok(name) = AttributeName::label(LabelMap::NodeLabels, key) {
                    self.values.insert(name.0, value.clone());
                }
            }
        }
        self
    }

    /// The attributes of a person or pipeline the API server authenticated
    /// (`user.*` only). Groups no attribute name can hold are left out.
    pub fn of_user(user: &UserFacts) -> Attributes {
        let mut attributes = Attributes::new();
        attributes.set(Field::UserName, user.name.clone());
        if let Some(uid) = user.uid.as_deref().filter(|uid| !uid.is_empty()) {
            attributes.set(Field::UserUid, uid);
        }
        for group in &user.groups {
            if let Ok(name) = AttributeName::label(LabelMap::UserGroups, group) {
                attributes.values.insert(name.0, "true".to_owned());
            }
        }
        attributes
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

/// What the issuer knows about the agent a request comes through: the
/// source of `agent.*` and `node.*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentContext {
    /// `agent.name`.
    pub name: String,
    /// `agent.node_name`.
    pub node_name: Option<String>,
    /// The agent's Node as the API server has it; `None` in standalone mode
    /// or before the operator has seen the Node.
    pub node: Option<NodeFacts>,
}

/// Who the API server authenticated for a `signet issue` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFacts {
    /// The user name; never empty.
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
}

/// The facts policy may use about a Kubernetes Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// `node.name`.
    pub name: String,
    /// `node.labels.<k>`, only keys that can be attribute names.
    pub labels: BTreeMap<String, String>,
}

impl NodeFacts {
    /// Facts for a node, leaving out label keys no policy could name.
    pub fn new(
        name: impl Into<String>,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        NodeFacts {
            name: name.into(),
            labels: labels
                .into_iter()
                .filter(|(k, _)| AttributeName::label(LabelMap::NodeLabels, k).is_ok())
                .collect(),
        }
    }
}

/// The producer of a name already known to be valid.
fn producer_of(name: &str) -> Option<Producer> {
    if let Some(field) = Field::from_name(name) {
        return Some(field.producer());
    }
    LabelMap::ALL
        .into_iter()
        .find(|m| name.starts_with(m.prefix()))
        .map(LabelMap::producer)
}

impl TryFrom<BTreeMap<String, String>> for Attributes {
    type Error = AttributeError;
    fn try_from(values: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        for name in values.keys() {
            AttributeName::parse(name)?;
        }
        Ok(Attributes {
            values,
            unavailable: BTreeMap::new(),
        })
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

/// The attribute reference as a Markdown table, generated from the schema
/// (README.md carries it between markers; a test fails when it is stale).
pub fn reference_markdown() -> String {
    let mut out = String::from("| attribute | meaning | set by |\n|---|---|---|\n");
    let row = |out: &mut String, name: &str, description: &str, producer: Producer| {
        out.push_str(&format!(
            "| `{name}` | {description} | {} |\n",
            producer.describe()
        ));
    };
    for field in Field::ALL {
        row(
            &mut out,
            field.as_str(),
            field.description(),
            field.producer(),
        );
        // Label maps follow the scalars they belong with.
        for map in LabelMap::ALL {
            if map_follows(map) == Some(field) {
                row(
                    &mut out,
                    &format!("{}<key>", map.prefix()),
                    map.description(),
                    map.producer(),
                );
            }
        }
    }
    out
}

/// Marks the start of the generated attribute reference in README.md.
pub const REFERENCE_BEGIN: &str =
    "<!-- attribute reference: generated from policy/src/attributes.rs by `make crds` -->";
/// Marks its end.
pub const REFERENCE_END: &str = "<!-- end of attribute reference -->";

/// `document` with the text between [`REFERENCE_BEGIN`] and
/// [`REFERENCE_END`] replaced by [`reference_markdown`]; `None` when the
/// markers are missing.
pub fn with_reference(document: &str) -> Option<String> {
    let start = document.find(REFERENCE_BEGIN)? + REFERENCE_BEGIN.len();
    let end = start + document[start..].find(REFERENCE_END)?;
    Some(format!(
        "{}\n{}{}",
        &document[..start],
        reference_markdown(),
        &document[end..]
    ))
}

/// The scalar attribute a label map is listed after in the reference.
fn map_follows(map: LabelMap) -> Option<Field> {
    Some(match map {
        LabelMap::KubernetesLabels => Field::KubernetesServiceAccount,
        LabelMap::DockerLabels => Field::DockerImageId,
        LabelMap::PodmanLabels => Field::PodmanImageId,
        LabelMap::PodmanPodLabels => Field::PodmanPodName,
        LabelMap::NodeLabels => Field::NodeName,
        LabelMap::UserGroups => Field::UserUid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_map_is_in_the_reference() {
        let reference = reference_markdown();
        for map in LabelMap::ALL {
            assert!(reference.contains(map.prefix()), "{map:?}");
            assert!(map_follows(map).is_some());
        }
        for field in Field::ALL {
            assert!(reference.contains(&format!("`{}`", field.as_str())));
        }
    }

    #[test]
    fn origins_follow_the_namespace() {
        for field in Field::ALL {
            let expected = if field.as_str().starts_with("workload.") {
                Origin::Attestation
            } else if field.as_str().starts_with("agent.") {
                Origin::AgentCredential
            } else if field.as_str().starts_with("user.") {
                Origin::Authentication
            } else {
                assert!(field.as_str().starts_with("node."));
                Origin::Cluster
            };
            assert_eq!(field.origin(), expected, "{field}");
        }
        for map in LabelMap::ALL {
            let expected = if map.prefix().starts_with("workload.") {
                Origin::Attestation
            } else if map.prefix().starts_with("user.") {
                Origin::Authentication
            } else {
                Origin::Cluster
            };
            assert_eq!(map.origin(), expected, "{map:?}");
        }
    }

    #[test]
    fn a_users_attributes_are_user_only_and_never_survive_an_agent_context() {
        let user = UserFacts {
            name: "system:serviceaccount:ci:deployer".into(),
            uid: Some("42".into()),
            groups: vec![
                "system:serviceaccounts".into(),
                "Domain Admins".into(),
                "{evil}".into(),
            ],
        };
        let attributes = Attributes::of_user(&user);
        assert_eq!(
            attributes.iter().collect::<Vec<_>>(),
            vec![
                ("user.groups.system:serviceaccounts", "true"),
                ("user.name", "system:serviceaccount:ci:deployer"),
                ("user.uid", "42"),
            ]
        );
        // A workload's attributes can never carry user.*, whatever came in.
        let mut forged = Attributes::new();
        forged
            .set(Field::UnixUid, "0")
            .set(Field::UserName, "admin");
        let decided = forged.with_context(&AgentContext {
            name: "vm".into(),
            ..AgentContext::default()
        });
        assert_eq!(decided.field(Field::UserName), None);
        assert_eq!(decided.testimony().field(Field::UserName), None);
    }

    #[test]
    fn testimony_cannot_carry_agent_or_node_attributes() {
        let mut m = BTreeMap::new();
        m.insert("workload.unix.uid".to_owned(), "1000".to_owned());
        assert!(Attributes::from_testimony(m.clone()).is_ok());
        for forged in [
            "agent.name",
            "node.name",
            "node.labels.pool",
            "user.name",
            "user.groups.system:masters",
        ] {
            let mut bad = m.clone();
            bad.insert(forged.to_owned(), "x".to_owned());
            assert_eq!(
                Attributes::from_testimony(bad),
                Err(AttributeError::NotTestimony(forged.to_owned()))
            );
        }
        let mut bad = m.clone();
        bad.insert("workload.unix.euid".to_owned(), "0".to_owned());
        assert!(matches!(
            Attributes::from_testimony(bad),
            Err(AttributeError::Unknown(_))
        ));
    }

    #[test]
    fn context_replaces_whatever_claims_to_be_agent_or_node() {
        let mut a = Attributes::new();
        a.set(Field::UnixUid, "1000");
        a.set(Field::AgentName, "forged");
        a.set(Field::NodeName, "forged");
        a.set_labels(LabelMap::NodeLabels, [("pool", "forged")])
            .unwrap();
        let standalone = a.clone().with_context(&AgentContext {
            name: "vm-1".into(),
            node_name: None,
            node: None,
        });
        assert_eq!(standalone.field(Field::AgentName), Some("vm-1"));
        assert_eq!(standalone.field(Field::NodeName), None);
        assert_eq!(standalone.labels(LabelMap::NodeLabels).count(), 0);
        assert_eq!(standalone.field(Field::UnixUid), Some("1000"));

        let cluster = a.with_context(&AgentContext {
            name: "n1".into(),
            node_name: Some("n1".into()),
            node: Some(NodeFacts::new(
                "n1",
                [
                    ("pool".to_owned(), "pci".to_owned()),
                    ("bad key".to_owned(), "x".to_owned()),
                ],
            )),
        });
        assert_eq!(cluster.field(Field::NodeName), Some("n1"));
        assert_eq!(cluster.field(Field::AgentNodeName), Some("n1"));
        let labels: Vec<_> = cluster.labels(LabelMap::NodeLabels).collect();
        assert_eq!(labels, vec![("pool", "pci")]);
        assert_eq!(cluster.testimony().len(), 1);
    }

    #[test]
    fn unrepresentable_label_keys_are_left_out_and_reported() {
        let labels: BTreeMap<String, String> = [
            ("app".to_owned(), "web".to_owned()),
            ("has space".to_owned(), "x".to_owned()),
        ]
        .into();
        let mut a = Attributes::new();
        let skipped = a.set_representable_labels(LabelMap::DockerLabels, &labels);
        assert_eq!(skipped, vec!["has space"]);
        assert_eq!(a.label(LabelMap::DockerLabels, "app"), Some("web"));
        assert_eq!(a.len(), 1);
        a.set(Field::DockerImage, "busybox");
        a.remove_produced_by(Producer::Docker);
        assert!(a.is_empty());
    }

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
