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
use kube::api::{Api, ObjectMeta, PostParams};
use zeroize::Zeroizing;

use crate::authority::{KeysetStore, StoreError};

/// Key of the keyset's JSON state in the Secret's data.
pub const KEYSET_KEY: &str = "ca-keyset.json";

pub struct SecretKeysetStore {
    api: Api<Secret>,
    name: String,
    /// resourceVersion of the Secret as last read or written.
    resource_version: Mutex<Option<String>>,
}

impl SecretKeysetStore {
    pub fn new(api: Api<Secret>, name: impl Into<String>) -> Self {
        Self {
            api,
            name: name.into(),
            resource_version: Mutex::new(None),
        }
    }

    fn remember(&self, version: Option<String>) {
        if let Ok(mut slot) = self.resource_version.lock() {
            *slot = version;
        }
    }

    fn remembered(&self) -> Option<String> {
        self.resource_version.lock().ok().and_then(|v| v.clone())
    }

    fn secret(&self, state: &str, resource_version: Option<String>) -> Secret {
        let mut labels = BTreeMap::new();
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            "signet-operator".to_owned(),
        );
        labels.insert("app.kubernetes.io/part-of".to_owned(), "signet".to_owned());
        let mut data = BTreeMap::new();
        data.insert(KEYSET_KEY.to_owned(), ByteString(state.as_bytes().to_vec()));
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
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
            self.remember(secret.metadata.resource_version.clone());
            let bytes = secret
                .data
                .as_mut()
                .and_then(|data| data.remove(KEYSET_KEY))
                .ok_or_else(|| {
                    StoreError::Read(format!("Secret {} has no {KEYSET_KEY} key", self.name))
                })?;
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
                Some(version) => {
                    self.api
                        .replace(&self.name, &params, &self.secret(&state, Some(version)))
                        .await
                }
            };
            match result {
                Ok(written) => {
                    self.remember(written.metadata.resource_version);
                    Ok(())
                }
                Err(error) if is_conflict(&error) => Err(StoreError::Conflict),
                Err(error) => Err(StoreError::Write(format!("Secret {}: {error}", self.name))),
            }
        })
    }
}
