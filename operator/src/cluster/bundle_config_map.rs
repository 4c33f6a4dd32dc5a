//! The trust bundle as a ConfigMap (`bundle.pem`, `bundle.spiffe.json`,
//! `jwks.json`) that workloads and tools mount, and agents bootstrap from.
//! Written by the leader only, with server-side apply.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

use signet_runtime::clock::Clock;

use crate::ca::{Authority, PublishedBundle};
use crate::cluster::reconciler::FIELD_MANAGER;

pub const BUNDLE_PEM_KEY: &str = "bundle.pem";
pub const BUNDLE_JSON_KEY: &str = "bundle.spiffe.json";
pub const JWKS_KEY: &str = "jwks.json";

/// Retry interval after a failed write.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

fn manifest(
    name: &str,
    owner: Option<&OwnerReference>,
    published: &PublishedBundle,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "signet-operator",
                "app.kubernetes.io/part-of": "signet",
            },
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "data": {
            BUNDLE_PEM_KEY: published.pem,
            BUNDLE_JSON_KEY: published.spiffe_json,
            JWKS_KEY: published.jwks_json,
        },
    })
}

/// Applies the ConfigMap whenever the bundle changes or this replica
/// becomes the leader, until the task is dropped.
///
/// A replica that has just become the leader re-reads the keyset before its
/// first write: as a follower it last read the Secret up to one schedule
/// step ago, and publishing that copy would take a successor CA its
/// predecessor had already published (and agents already trust) back out of
/// the bundle.
pub async fn publish(
    api: Api<ConfigMap>,
    name: String,
    owner: Option<OwnerReference>,
    authority: Arc<Authority>,
    clock: Clock,
    mut leading: watch::Receiver<bool>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut bundles = authority.bundle();
    let mut written: Option<String> = None;
    let mut reloaded_as_leader = false;
    loop {
        let is_leader = *leading.borrow_and_update();
        if !is_leader {
            written = None;
            reloaded_as_leader = false;
            bundles.borrow_and_update();
        } else {
            if !reloaded_as_leader {
                if let Err(error) = authority.reload(clock.now()).await {
                    tracing::warn!(%error, configmap = %name, "re-reading the CA keyset before publishing failed; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                reloaded_as_leader = true;
            }
            let published = bundles.borrow_and_update().clone();
            if written.as_deref() != Some(published.spiffe_json.as_str()) {
                match api
                    .patch(
                        &name,
                        &params,
                        &Patch::Apply(manifest(&name, owner.as_ref(), &published)),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(configmap = %name, sequence = published.bundle.sequence, "published the trust bundle");
                        written = Some(published.spiffe_json.clone());
                    }
                    Err(error) => {
                        tracing::warn!(%error, configmap = %name, "publishing the trust bundle failed; retrying");
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            }
        }
        tokio::select! {
            changed = bundles.changed() => if changed.is_err() { return },
            changed = leading.changed() => if changed.is_err() { return },
        }
    }
}
