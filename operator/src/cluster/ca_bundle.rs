//! Keeping a `caBundle` field in the API server equal to the trust bundle:
//! the API server verifies the operator's serving certificate (issued by
//! Signet's own CA) with it when calling the admission webhook or the
//! aggregated API, so it must follow every CA rotation.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::ca::PublishedBundle;

/// Pause before retrying a failed write.
const RETRY: Duration = Duration::from_secs(5);

/// An object with `caBundle` fields.
pub trait CaBundleHolder: Send + Sync + 'static {
    /// For logs: kind and name.
    fn describe(&self) -> String;
    /// Sets every `caBundle` of the object to `pem`; `Ok(true)` when it
    /// changed anything.
    fn write<'a>(&'a self, pem: &'a ByteString) -> BoxFuture<'a, Result<bool, String>>;
}

/// Keeps `holder`'s `caBundle` equal to the trust bundle's X.509
/// authorities while this replica leads, until the task is dropped. A
/// missing object is waited for (the chart may install it after the
/// operator starts).
pub async fn keep(
    holder: impl CaBundleHolder,
    mut bundles: watch::Receiver<Arc<PublishedBundle>>,
    mut leading: watch::Receiver<bool>,
) {
    loop {
        let published = bundles.borrow_and_update().clone();
        let is_leader = *leading.borrow_and_update();
        if is_leader {
            let wanted = ByteString(published.pem.as_bytes().to_vec());
            match holder.write(&wanted).await {
                Ok(true) => {
                    tracing::info!(object = %holder.describe(), sequence = published.bundle.sequence, "caBundle set to the trust bundle");
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, object = %holder.describe(), "setting the caBundle failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        tokio::select! {
            changed = bundles.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
        }
    }
}

/// The object as it is now; its absence is an error to retry on.
async fn existing<K>(api: &Api<K>, name: &str) -> Result<K, String>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "it does not exist (yet)".to_owned())
}

/// Every webhook of a ValidatingWebhookConfiguration.
pub struct WebhookConfiguration {
    pub api: Api<ValidatingWebhookConfiguration>,
    pub name: String,
}

impl CaBundleHolder for WebhookConfiguration {
    fn describe(&self) -> String {
        format!("ValidatingWebhookConfiguration {}", self.name)
    }

    fn write<'a>(&'a self, pem: &'a ByteString) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut object = existing(&self.api, &self.name).await?;
            let mut changed = false;
            for webhook in object.webhooks.iter_mut().flatten() {
                if webhook.client_config.ca_bundle.as_ref() != Some(pem) {
                    webhook.client_config.ca_bundle = Some(pem.clone());
                    changed = true;
                }
            }
            if changed {
                // The resourceVersion from the get makes a concurrent edit a
                // conflict, retried with a fresh read.
                self.api
                    .replace(&self.name, &PostParams::default(), &object)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(changed)
        })
    }
}

/// The APIService routing an aggregated API to the operator.
pub struct ApiServiceRegistration {
    pub api: Api<APIService>,
    pub name: String,
}

impl CaBundleHolder for ApiServiceRegistration {
    fn describe(&self) -> String {
        format!("APIService {}", self.name)
    }

    fn write<'a>(&'a self, pem: &'a ByteString) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let mut object = existing(&self.api, &self.name).await?;
            let Some(spec) = object.spec.as_mut() else {
                return Err("it has no spec".into());
            };
            if spec.ca_bundle.as_ref() == Some(pem) {
                return Ok(false);
            }
            spec.ca_bundle = Some(pem.clone());
            // The API server refuses a caBundle beside insecureSkipTLSVerify.
            spec.insecure_skip_tls_verify = None;
            self.api
                .replace(&self.name, &PostParams::default(), &object)
                .await
                .map_err(|e| e.to_string())?;
            Ok(true)
        })
    }
}
