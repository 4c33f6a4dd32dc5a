//! Identity feedback on the pod itself, so `kubectl describe pod` shows it:
//! a Normal `IdentityIssued` Event the first time this replica issues a
//! WorkloadIdentity to a pod, and a Warning `IdentityRefused` when the
//! issuer refuses one (at most once per pod and identity every
//! [`REFUSAL_INTERVAL`]).
//!
//! The pod is looked up by UID in the operator's own pod cache, so an Event
//! only ever lands on a pod that exists, under its real name, whatever an
//! agent claimed. Publishing is off the signing path: decisions are queued
//! (dropped, and counted in the log, when the queue is full) and one task
//! writes the Events.
//!
//! Refusals the agent makes alone (no WorkloadIdentity applies) never reach
//! the issuer; they are in the agent's audit log, not in Events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use signet_identity::SpiffeId;
use signet_policy::Field;
use signet_proto::issuer::v1 as pb;
use signet_runtime::clock::Clock;
use tokio::sync::mpsc;

use super::pods::{PodCache, PodFacts};
use crate::issuer::signing::IssuanceObserver;

/// A refusal of one identity to one pod is reported at most this often.
pub const REFUSAL_INTERVAL: Duration = Duration::from_secs(600);
/// Decisions waiting to become Events; beyond it they are dropped.
const QUEUE: usize = 1024;
/// (pod, identity) pairs remembered; the memory is cleared when full (at
/// worst an Event is repeated).
const REMEMBERED: usize = 65_536;
/// Event notes are limited to 1 KiB by the API server.
const MAX_NOTE: usize = 1000;

enum Decision {
    Issued {
        pod: Arc<PodFacts>,
        identity: String,
        spiffe_id: String,
        /// For the pod as a whole, no container named: signed ahead when
        /// the pod was bound, or for signet-csi's files mode, either way
        /// before its containers started.
        for_pod: bool,
        /// When it was signed (publishing may lag behind).
        at: SystemTime,
    },
    Refused {
        pod: Arc<PodFacts>,
        identity: String,
        reason: String,
        message: String,
    },
}

/// The issuer's [`IssuanceObserver`] in a cluster.
pub struct PodEvents {
    pods: Arc<PodCache>,
    queue: mpsc::Sender<Decision>,
    clock: Clock,
}

impl PodEvents {
    /// Starts the publishing task; `instance` names this replica in Events.
    pub fn start(client: Client, pods: Arc<PodCache>, instance: String, clock: Clock) -> Arc<Self> {
        let (queue, decisions) = mpsc::channel(QUEUE);
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "signet-operator".into(),
                instance: Some(instance),
            },
        );
        tokio::spawn(publish(recorder, decisions, clock));
        Arc::new(Self { pods, queue, clock })
    }

    fn pod_of(&self, workload: &BTreeMap<String, String>) -> Option<Arc<PodFacts>> {
        let uid = workload.get(Field::KubernetesPodUid.as_str())?;
        self.pods.get(uid)
    }

    fn send(&self, decision: Decision) {
        if self.queue.try_send(decision).is_err() {
            tracing::debug!("pod Event dropped: the queue is full");
        }
    }
}

impl IssuanceObserver for PodEvents {
    fn issued(&self, workload: &BTreeMap<String, String>, identity: &str, spiffe_id: &SpiffeId) {
        if let Some(pod) = self.pod_of(workload) {
            self.send(Decision::Issued {
                pod,
                identity: identity.to_owned(),
                spiffe_id: spiffe_id.to_string(),
                for_pod: !workload.contains_key(Field::KubernetesContainerName.as_str()),
                at: self.clock.now(),
            });
        }
    }

    fn refused(&self, workload: &BTreeMap<String, String>, identity: &str, denial: &pb::Denial) {
        if let Some(pod) = self.pod_of(workload) {
            self.send(Decision::Refused {
                pod,
                identity: identity.to_owned(),
                reason: denial.reason.clone(),
                message: denial.message.clone(),
            });
        }
    }
}

fn issued_note(
    identity: &str,
    spiffe_id: &str,
    for_pod: bool,
    pod: &PodFacts,
    signed_at: SystemTime,
) -> String {
    let issued = format!("WorkloadIdentity {identity} issued {spiffe_id}");
    if !for_pod {
        return issued;
    }
    match pod
        .bound_at
        .and_then(|at| signed_at.duration_since(at).ok())
    {
        Some(since) => format!(
            "{issued} before the pod's containers started, {} ms after it was bound",
            since.as_millis()
        ),
        None => format!("{issued} before the pod's containers started"),
    }
}

fn pod_reference(pod: &PodFacts) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.namespace.to_string()),
        name: Some(pod.name.to_string()),
        uid: Some(pod.uid.to_string()),
        ..ObjectReference::default()
    }
}

fn bounded(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

async fn publish(recorder: Recorder, mut decisions: mpsc::Receiver<Decision>, clock: Clock) {
    let mut issued: HashSet<(Box<str>, String)> = HashSet::new();
    let mut refused: HashMap<(Box<str>, String), SystemTime> = HashMap::new();
    while let Some(decision) = decisions.recv().await {
        let (pod, event) = match decision {
            Decision::Issued {
                pod,
                identity,
                spiffe_id,
                for_pod,
                at,
            } => {
                if issued.len() >= REMEMBERED {
                    issued.clear();
                }
                if !issued.insert((pod.uid.clone(), identity.clone())) {
                    continue;
                }
                let event = Event {
                    type_: EventType::Normal,
                    reason: "IdentityIssued".into(),
                    note: Some(bounded(issued_note(
                        &identity, &spiffe_id, for_pod, &pod, at,
                    ))),
                    action: "Issue".into(),
                    secondary: None,
                };
                (pod, event)
            }
            Decision::Refused {
                pod,
                identity,
                reason,
                message,
            } => {
                let now = clock.now();
                if refused.len() >= REMEMBERED {
                    refused.clear();
                }
                let key = (pod.uid.clone(), identity.clone());
                let recent = refused.get(&key).is_some_and(|at| {
                    now.duration_since(*at)
                        .is_ok_and(|since| since < REFUSAL_INTERVAL)
                });
                if recent {
                    continue;
                }
                refused.insert(key, now);
                let named = if identity.is_empty() {
                    "an unknown WorkloadIdentity".to_owned()
                } else {
                    format!("WorkloadIdentity {identity}")
                };
                let event = Event {
                    type_: EventType::Warning,
                    reason: "IdentityRefused".into(),
                    note: Some(bounded(format!("{named} refused ({reason}): {message}"))),
                    action: "Issue".into(),
                    secondary: None,
                };
                (pod, event)
            }
        };
        if let Err(error) = recorder.publish(&event, &pod_reference(&pod)).await {
            tracing::warn!(%error, pod = %pod.name, namespace = %pod.namespace, "publishing a pod Event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Pod;
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn an_identity_for_the_whole_pod_says_it_came_before_the_start() {
        let mut pod = PodFacts::from_pod(Pod {
            metadata: ObjectMeta {
                uid: Some("u1".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
        .unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let id = "spiffe://example.org/web";
        assert_eq!(
            issued_note("web", id, false, &pod, now),
            "WorkloadIdentity web issued spiffe://example.org/web"
        );
        assert_eq!(
            issued_note("web", id, true, &pod, now),
            "WorkloadIdentity web issued spiffe://example.org/web before the pod's containers started"
        );
        pod.bound_at = Some(now - Duration::from_millis(250));
        assert!(issued_note("web", id, true, &pod, now).ends_with(", 250 ms after it was bound"));
    }
}
