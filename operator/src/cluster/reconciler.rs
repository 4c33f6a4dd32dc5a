//! The reconciler: WorkloadIdentity and Role objects from the API server,
//! compiled into the policy every replica serves, with a `Ready` condition
//! and `observedGeneration` on each object (written by the leader with
//! server-side apply) and an Event when an object's readiness changes.
//!
//! An object that does not compile is not in force: its condition says
//! why, the rest of the policy keeps working.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use signet_identity::TrustDomain;
use signet_policy::snapshot::{ObjectKind, ObjectReport};
use signet_policy::{PolicyDocument, Role, WorkloadIdentity};
use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::policy_state::{PolicyState, next_version};

/// Changes arriving together are compiled once.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Field manager of the status the operator applies.
pub const FIELD_MANAGER: &str = "signet-operator";

pub struct PolicyReconciler {
    client: Client,
    clock: Clock,
    trust_domain: TrustDomain,
    sender: watch::Sender<Arc<PolicyState>>,
    synced: watch::Sender<bool>,
    leading: watch::Receiver<bool>,
    recorder: Recorder,
}

/// The compiled policy, and whether the first complete list was compiled.
pub struct PolicyChannels {
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub synced: watch::Receiver<bool>,
}

impl PolicyReconciler {
    pub fn new(
        client: Client,
        trust_domain: TrustDomain,
        leading: watch::Receiver<bool>,
        identity: String,
        clock: Clock,
    ) -> (Self, PolicyChannels) {
        let empty = PolicyState::compile(
            next_version(0, clock.now()),
            &trust_domain,
            &PolicyDocument::default(),
        );
        let (sender, policy) = watch::channel(Arc::new(empty));
        let (synced_tx, synced) = watch::channel(false);
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "signet-operator".into(),
                instance: Some(identity),
            },
        );
        (
            Self {
                client,
                clock,
                trust_domain,
                sender,
                synced: synced_tx,
                leading,
                recorder,
            },
            PolicyChannels { policy, synced },
        )
    }

    /// Watches both kinds until the task is dropped.
    pub async fn run(mut self) {
        let (identities, identity_writer) = reflector::store::<WorkloadIdentity>();
        let (roles, role_writer) = reflector::store::<Role>();
        let identity_events = reflector::reflector(
            identity_writer,
            watcher(
                Api::<WorkloadIdentity>::all(self.client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|event| event.map(|_| ()));
        let role_events = reflector::reflector(
            role_writer,
            watcher(
                Api::<Role>::all(self.client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|event| event.map(|_| ()));
        let events = futures::stream::select(identity_events, role_events);
        futures::pin_mut!(events);
        let mut leading = self.leading.clone();

        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(())) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "watching policy objects failed; retrying");
                        continue;
                    }
                    None => return,
                },
                changed = leading.changed() => {
                    // A new leader rewrites every status it disagrees with.
                    if changed.is_err() {
                        return;
                    }
                }
            }
            // Let a burst of changes (kubectl apply -f dir/) settle.
            let settle = tokio::time::sleep(DEBOUNCE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    event = events.next() => if event.is_none() { return },
                }
            }
            // Compile only complete lists: a partial one would revoke.
            if !is_complete(&identities) || !is_complete(&roles) {
                continue;
            }
            self.reconcile(&identities, &roles).await;
        }
    }

    async fn reconcile(&mut self, identities: &Store<WorkloadIdentity>, roles: &Store<Role>) {
        let document = policy_document(
            identities.state().iter().map(AsRef::as_ref),
            roles.state().iter().map(AsRef::as_ref),
        );

        let previous = self.sender.borrow().clone();
        let state = PolicyState::compile_after(
            next_version(previous.version, self.clock.now()),
            &self.trust_domain,
            &document,
            &previous,
        );
        let invalid = state.reports.iter().filter(|r| r.result.is_err()).count();
        if state.document_json != previous.document_json || !*self.synced.borrow() {
            tracing::info!(
                version = state.version,
                identities = state.snapshot.identity_names().count(),
                roles = state.snapshot.role_names().count(),
                invalid,
                "policy compiled"
            );
            self.sender.send_replace(Arc::new(state));
            self.synced.send_replace(true);
        }
        if *self.leading.borrow() {
            let reports = self.sender.borrow().reports.clone();
            for report in &reports {
                match report.kind {
                    ObjectKind::WorkloadIdentity => {
                        let object = identities.get(&ObjectRef::new(&report.name));
                        self.write_status(object, report).await;
                    }
                    ObjectKind::Role => {
                        let object = roles.get(&ObjectRef::new(&report.name));
                        self.write_status(object, report).await;
                    }
                }
            }
        }
    }

    /// Applies the object's Ready condition if it differs from what the
    /// object says now, and records an Event when readiness changed.
    async fn write_status<K>(&mut self, object: Option<Arc<K>>, report: &ObjectReport)
    where
        K: Resource<DynamicType = ()>
            + HasPolicyStatus
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let Some(object) = object else { return };
        let previous = object.ready_condition();
        let now = Timestamp::try_from(self.clock.now()).unwrap_or(Timestamp::UNIX_EPOCH);
        let condition = report.ready_condition(Time(now), previous.as_ref());
        let generation = object.meta().generation;
        let unchanged = previous.as_ref().is_some_and(|p| {
            p.status == condition.status
                && p.reason == condition.reason
                && p.message == condition.message
                && p.observed_generation == condition.observed_generation
        }) && object.observed_generation() == generation;
        if unchanged {
            return;
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": {
                "conditions": [condition],
                "observedGeneration": generation,
            }
        });
        let api: Api<K> = Api::all(self.client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if let Err(error) = api
            .patch_status(&report.name, &params, &Patch::Apply(&patch))
            .await
        {
            tracing::warn!(%error, kind = report.kind.as_str(), name = %report.name, "writing status failed");
            return;
        }
        // An Event when what the condition says changed, not for every
        // generation that compiles the same way.
        let news = previous.as_ref().is_none_or(|p| {
            p.status != condition.status
                || p.reason != condition.reason
                || p.message != condition.message
        });
        if !news {
            return;
        }
        let (type_, reason) = match condition.status.as_str() {
            "True" => (EventType::Normal, "Compiled".to_owned()),
            _ => (EventType::Warning, condition.reason.clone()),
        };
        let event = Event {
            type_,
            reason,
            note: Some(condition.message.chars().take(1000).collect()),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, name = %report.name, "recording an event failed");
        }
    }
}

/// Whether a reflector store holds the complete list now (never waits).
pub fn is_complete<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
}

/// The objects as the policy to compile, in name order.
pub fn policy_document<'a>(
    identities: impl Iterator<Item = &'a WorkloadIdentity>,
    roles: impl Iterator<Item = &'a Role>,
) -> PolicyDocument {
    let mut document = PolicyDocument {
        workload_identities: identities.map(as_policy).collect(),
        roles: roles.map(as_policy).collect(),
    };
    document.workload_identities.sort_by_key(|o| o.name_any());
    document.roles.sort_by_key(|o| o.name_any());
    document
}

/// The object as policy: without the status we write and the bookkeeping
/// the API server adds, so writing status does not make a new policy
/// version for every agent.
fn as_policy<K: Resource + HasPolicyStatus + Clone>(object: &K) -> K {
    let mut object = object.clone();
    object.clear_status();
    let metadata = object.meta_mut();
    metadata.managed_fields = None;
    metadata.resource_version = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    object
}

/// Read access to the status both kinds share.
pub trait HasPolicyStatus {
    fn ready_condition(&self) -> Option<Condition>;
    fn observed_generation(&self) -> Option<i64>;
    fn clear_status(&mut self);
}

macro_rules! has_policy_status {
    ($kind:ty) => {
        impl HasPolicyStatus for $kind {
            fn ready_condition(&self) -> Option<Condition> {
                self.status.as_ref().and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == signet_policy::crd::READY_CONDITION)
                        .cloned()
                })
            }
            fn observed_generation(&self) -> Option<i64> {
                self.status.as_ref().and_then(|s| s.observed_generation)
            }
            fn clear_status(&mut self) {
                self.status = None;
            }
        }
    };
}

has_policy_status!(WorkloadIdentity);
has_policy_status!(Role);
