//! Follows the issuer's `WatchNodePods` stream and has the SVIDs of every
//! pod bound to this node signed ahead, before its containers start (see
//! the cache's module notes for how they reach the pod's callers). In
//! standalone mode the issuer knows no pods and this stops at once.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use signet_policy::Attributes;
use signet_proto::issuer::v1 as pb;
use tokio::sync::watch;

use super::client::{IssuerClient, IssuerError};
use crate::api::delegated::{PodRef, pod_level_attributes};
use crate::backoff::Backoff;
use crate::cache::SvidCache;

/// The pods of the node as last told, by UID, with what was prepared.
#[derive(Default)]
pub struct NodePods {
    prepared: HashMap<String, Attributes>,
}

impl NodePods {
    /// Prepares new and changed pods, forgets deleted ones (and, on a
    /// snapshot, those it no longer lists).
    pub fn apply(&mut self, cache: &SvidCache, node_name: &str, update: pb::NodePodsUpdate) {
        if update.snapshot {
            let listed: std::collections::HashSet<&str> =
                update.pods.iter().map(|pod| pod.uid.as_str()).collect();
            self.prepared.retain(|uid, _| {
                let keep = listed.contains(uid.as_str());
                if !keep {
                    cache.forget_pod(uid);
                }
                keep
            });
        }
        for uid in &update.removed_pod_uids {
            self.forget(cache, uid);
        }
        for pod in &update.pods {
            if pod.terminating {
                self.forget(cache, &pod.uid);
                continue;
            }
            let pod_ref = match PodRef::from_bound(pod) {
                Ok(pod_ref) => pod_ref,
                Err(error) => {
                    tracing::warn!(pod = %pod.uid, %error, "ignoring a pod the issuer described");
                    continue;
                }
            };
            let labels: BTreeMap<String, String> = pod
                .labels
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let attributes = pod_level_attributes(&pod_ref, node_name, &labels);
            if self.prepared.get(&pod_ref.uid) == Some(&attributes) {
                continue;
            }
            let bound_at = u64::try_from(pod.bound_at_unix_ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
            if cache.prepare_pod(&attributes, bound_at).is_ok() {
                self.prepared.insert(pod_ref.uid, attributes);
            }
        }
    }

    fn forget(&mut self, cache: &SvidCache, uid: &str) {
        let uid = uid.to_ascii_lowercase();
        if self.prepared.remove(&uid).is_some() {
            cache.forget_pod(&uid);
        }
    }
}

/// Follows the stream until `shutdown`, reconnecting with backoff; returns
/// when the issuer says it tells no pods.
pub async fn run_node_pods_watch(
    client: IssuerClient,
    cache: SvidCache,
    node_name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut renewed = client.credential_changes();
    let mut pods = NodePods::default();
    loop {
        renewed.mark_unchanged();
        let stream = tokio::select! {
            stream = client.watch_node_pods() => stream,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match stream {
            Ok(mut stream) => loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    _ = renewed.changed() => {
                        backoff.reset();
                        break;
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                };
                match message {
                    Ok(Some(update)) => {
                        backoff.reset();
                        pods.apply(&cache, &node_name, update);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = %status.message(), "node pod stream failed");
                        break;
                    }
                }
            },
            Err(IssuerError::Call {
                code: tonic::Code::Unimplemented | tonic::Code::FailedPrecondition,
                message,
                ..
            }) => {
                tracing::info!(%message, "the issuer tells no pods: SVIDs are signed on first call only");
                return;
            }
            Err(error) => tracing::warn!(%error, "cannot watch the node's pods"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
