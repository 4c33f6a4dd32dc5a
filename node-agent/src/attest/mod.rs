//! Workload attestation: turning a connected peer into attributes.

pub mod cgroup;
pub mod procfs;
pub mod unix;

use std::collections::BTreeMap;

/// Attested attributes, dotted names as in the policy language
/// (`workload.unix.uid`, `workload.kubernetes.namespace`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attributes(BTreeMap<String, String>);

impl Attributes {
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.insert(name.into(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}
