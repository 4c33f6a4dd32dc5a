//! The CA keyset in a Secret of the operator's namespace.
//!
//! Every replica loads it; only one may create it and only the leader
//! rotates it. Both writes carry preconditions (create fails if the Secret
//! exists, replace fails if its resourceVersion moved), so two replicas
//! racing at first start end up with one CA, and a deposed leader cannot
//! overwrite its successor's rotation.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, PostParams};
use zeroize::Zeroizing;

use crate::ca::{KeysetStore, StoreError};

/// Key of the keyset's JSON state in the Secret's data.
pub const KEYSET_KEY: &str = "ca-keyset.json";

pub struct SecretKeysetStore {
    api: Api<Secret>,
    name: String,
    /// The Secret as last read or written, without its data.
    seen: Mutex<Option<SeenSecret>>,
}

#[derive(Clone, Debug)]
struct SeenSecret {
    resource_version: String,
    uid: String,
    /// Kept on every write: Helm's ownership labels and annotations on a
    /// chart-made Secret must survive the operator filling it in.
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl SecretKeysetStore {
    pub fn new(api: Api<Secret>, name: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
            seen: Mutex::new(None),
        }
    }

    fn remember(&self, secret: Option<&Secret>) {
        let seen = secret.and_then(|s| {
            Some(SeenSecret {
                resource_version: s.metadata.resource_version.clone()?,
                uid: s.metadata.uid.clone()?,
                labels: s.metadata.labels.clone().unwrap_or_default(),
                annotations: s.metadata.annotations.clone().unwrap_or_default(),
            })
        });
        if let Ok(mut slot) = self.seen.lock() {
            *slot = seen;
        }
    }

    fn remembered(&self) -> Option<SeenSecret> {
        self.seen.lock().ok().and_then(|v| v.clone())
    }

    /// An owner reference to the Secret, for the objects that exist only
    /// because of it (bundle ConfigMap, Lease): when the Secret goes (as on
    /// `helm uninstall`, whose chart creates it), they go too.
    pub fn owner_reference(&self) -> Option<OwnerReference> {
        let uid = self.remembered()?.uid;
        Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Secret".into(),
            name: self.name.clone(),
            uid,
            ..OwnerReference::default()
        })
    }

    fn secret(&self, state: &str, seen: Option<SeenSecret>) -> Secret {
        let (resource_version, mut labels, annotations) = match seen {
            Some(seen) => (
                Some(seen.resource_version),
                seen.labels,
                Some(seen.annotations),
            ),
            None => (None, BTreeMap::new(), None),
        };
        // A chart-made Secret stays managed by Helm.
        labels
            .entry("app.kubernetes.io/managed-by".to_owned())
            .or_insert_with(|| "signet-operator".to_owned());
        labels.insert("app.kubernetes.io/part-of".to_owned(), "signet".to_owned());
        let mut data = BTreeMap::new();
        data.insert(KEYSET_KEY.to_owned(), ByteString(state.as_bytes().to_vec()));
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations,
                resource_version,
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }
}

impl std::fmt::Debug for SecretKeysetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeysetStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn is_conflict(error: &kube::Error) -> bool {
    // 409: AlreadyExists on create, Conflict on a stale resourceVersion.
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl KeysetStore for SecretKeysetStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Zeroizing<String>>, StoreError>> {
        Box::pin(async move {
            let secret = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| StoreError::Read(format!("Secret {}: {e}", self.name)))?;
            let Some(mut secret) = secret else {
                self.remember(None);
                return Ok(None);
            };
            self.remember(Some(&secret));
            // An empty Secret (the Helm chart creates one so that uninstall
            // removes the CA) is filled in by the first save.
            let Some(bytes) = secret
                .data
                .as_mut()
                .and_then(|data| data.remove(KEYSET_KEY))
            else {
                return Ok(None);
            };
            // Keep private key material out of non-zeroed buffers.
            let bytes = Zeroizing::new(bytes.0);
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                StoreError::Read(format!("Secret {}: {KEYSET_KEY} is not UTF-8", self.name))
            })?;
            Ok(Some(Zeroizing::new(text.to_owned())))
        })
    }

    fn save(&self, state: Zeroizing<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let params = PostParams {
                field_manager: Some("signet-operator".to_owned()),
                ..PostParams::default()
            };
            let result = match self.remembered() {
                None => self.api.create(&params, &self.secret(&state, None)).await,
                Some(seen) => {
                    self.api
                        .replace(&self.name, &params, &self.secret(&state, Some(seen)))
                        .await
                }
            };
            match result {
                Ok(written) => {
                    self.remember(Some(&written));
                    Ok(())
                }
                Err(error) if is_conflict(&error) => Err(StoreError::Conflict),
                Err(error) => Err(StoreError::Write(format!("Secret {}: {error}", self.name))),
            }
        })
    }
}
