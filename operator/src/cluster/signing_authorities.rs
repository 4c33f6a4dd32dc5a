//! SigningAuthority objects: the trust domain's authorities as `kubectl`
//! sees and drives them.
//!
//! Every replica reports on each object how many live SVIDs it signed with
//! that authority: its own entry of `status.replicas`, written by
//! server-side apply under a field manager of its own, so replicas never
//! overwrite each other's counts. The leader keeps one object per
//! authority in the keyset, sums the replicas' entries into
//! `status.liveSvids` (an entry that stopped being refreshed still counts
//! until the SVIDs it counted expire: they are still out there), and
//! carries out each spec: an object without an id prepares a new
//! authority; `activate`, `taint` and `revoke` act on the keyset, which is
//! saved to the Secret before use (other replicas adopt it within 10 s).
//!
//! Requests are level-triggered: one that cannot be carried out yet
//! (tainting the active authority, a second prepared key, a revocation
//! while SVIDs it signed are live) waits with `Ready=False` saying why,
//! and is carried out once it can.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use signet_identity::authority::MAX_AUTHORITIES_PER_KIND;
use signet_identity::{AuthorityKind, AuthorityState, AuthorityStatus, RotationEvent};
use signet_policy::crd::{
    API_VERSION, READY_CONDITION, ReplicaCount, RevokePolicy, SigningAuthority,
    SigningAuthorityKind, SigningAuthoritySpec, SigningAuthorityStatus,
};
use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::ca::{Authority, AuthorityAction};
use crate::cluster::reconciler::is_complete;
use crate::ledger::{AuthorityRef, LiveSvids, SvidLedger};

/// How often each replica looks at the objects without being woken by a
/// change (counts move without one).
const PASS_INTERVAL: Duration = Duration::from_secs(5);
/// A replica rewrites an unchanged entry this often, so the leader can
/// tell a replica that stopped from one with nothing new to say.
const HEARTBEAT: Duration = Duration::from_secs(60);
/// An entry not rewritten for this long belongs to a replica that stopped.
const STALE_AFTER: Duration = Duration::from_secs(180);
/// The field manager of the leader's part of the status.
const LEADER_MANAGER: &str = "signet-operator";

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Authority(#[from] crate::ca::AuthorityServiceError),
    #[error("the keyset prepared nothing")]
    NothingPrepared,
}

/// Follows the SigningAuthority objects until the task is dropped.
pub struct SigningAuthorities {
    pub api: Api<SigningAuthority>,
    pub authority: Arc<Authority>,
    pub ledger: Arc<SvidLedger>,
    pub leading: watch::Receiver<bool>,
    /// This replica's name in `status.replicas`: its pod and a suffix
    /// that is new at every start (a restarted replica's ledger is empty,
    /// so its old entry must keep counting until those SVIDs expire).
    pub replica: String,
    pub clock: Clock,
}

impl SigningAuthorities {
    pub async fn keep(self) {
        let (store, writer) = reflector::store::<SigningAuthority>();
        let events = reflector::reflector(
            writer,
            watcher(self.api.clone(), watcher::Config::default()),
        )
        .default_backoff();
        futures::pin_mut!(events);
        let mut tick = tokio::time::interval(PASS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "watching SigningAuthorities failed; retrying");
                        continue;
                    }
                    None => return,
                },
                _ = tick.tick() => {}
            }
            if !is_complete(&store) {
                continue;
            }
            self.report(&store).await;
            if *self.leading.borrow() {
                self.lead(&store).await;
            }
        }
    }

    /// Writes this replica's count on each object whose count changed or
    /// whose entry is due for a heartbeat.
    async fn report(&self, store: &Store<SigningAuthority>) {
        let now = self.clock.now();
        let live = self.ledger.live_until(now);
        let incomplete = self.ledger.incomplete();
        for object in store.state() {
            let Some(entry) = replica_entry(&object, &live, incomplete, &self.replica, now) else {
                continue;
            };
            let name = object.name_any();
            let patch = serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "SigningAuthority",
                "metadata": { "name": name },
                "status": { "replicas": [entry] },
            });
            let params = PatchParams::apply(&replica_manager(&self.replica)).force();
            if let Err(error) = self
                .api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                tracing::warn!(%error, %name, "could not report live SVID counts");
            }
        }
    }

    async fn lead(&self, store: &Store<SigningAuthority>) {
        let now = self.clock.now();
        let objects = store.state();
        let mut steps = plan(&objects, &self.authority.authorities(), now);
        if steps.iter().any(|s| matches!(s, Step::Delete { .. })) {
            // Another replica may have prepared through its admin socket:
            // delete an object only for what the stored keyset lacks.
            if let Err(error) = self.authority.reload(now).await {
                tracing::warn!(%error, "could not re-read the keyset");
                return;
            }
            steps = plan(&objects, &self.authority.authorities(), now);
        }
        for step in steps {
            if let Err(error) = self.carry_out(&step, now).await {
                tracing::warn!(%error, ?step, "SigningAuthority step failed; retrying");
            }
        }
    }

    async fn carry_out(&self, step: &Step, now: SystemTime) -> Result<(), SyncError> {
        match step {
            Step::Create { name, kind, id } => {
                let object = SigningAuthority::new(
                    name,
                    SigningAuthoritySpec {
                        kind: object_kind(*kind),
                        id: Some(id.clone()),
                        ..SigningAuthoritySpec::default()
                    },
                );
                match self.api.create(&PostParams::default(), &object).await {
                    Ok(_) => tracing::info!(%name, %kind, %id, "SigningAuthority created"),
                    // A replica that led a moment ago made it.
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(error) => return Err(error.into()),
                }
            }
            Step::Delete { name } => match self.api.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(%name, "SigningAuthority of a removed authority deleted"),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            },
            Step::Prepare { name, kind } => {
                let events = self
                    .authority
                    .act(&AuthorityAction::Prepare { kind: *kind }, now)
                    .await?;
                let id = events
                    .iter()
                    .find_map(|e| match e {
                        RotationEvent::Prepared { id, .. } => Some(id.clone()),
                        _ => None,
                    })
                    .ok_or(SyncError::NothingPrepared)?;
                tracing::warn!(%name, %kind, %id, "authority prepared as a SigningAuthority asked");
                // Should this fail, the next pass makes an object of its own
                // for the new authority, and this request prepares again
                // once the new one is activated.
                let patch = serde_json::json!({ "spec": { "id": id } });
                self.api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            Step::Act { name, action } => {
                self.authority.act(action, now).await?;
                tracing::warn!(%name, ?action, "authority action as a SigningAuthority asked");
                if matches!(action, AuthorityAction::Revoke { .. }) {
                    // Should this fail, the next pass deletes it (its
                    // authority is gone).
                    self.api.delete(name, &DeleteParams::default()).await?;
                }
            }
            Step::Status { name, status } => {
                let patch = serde_json::json!({
                    "apiVersion": API_VERSION,
                    "kind": "SigningAuthority",
                    "metadata": { "name": name },
                    "status": status,
                });
                self.api
                    .patch_status(
                        name,
                        &PatchParams::apply(LEADER_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await?;
            }
            Step::Forget { name, replica } => {
                // Applying nothing under the stopped replica's own field
                // manager removes what it wrote, and only that.
                let patch = serde_json::json!({
                    "apiVersion": API_VERSION,
                    "kind": "SigningAuthority",
                    "metadata": { "name": name },
                    "status": { "replicas": [] },
                });
                self.api
                    .patch_status(
                        name,
                        &PatchParams::apply(&replica_manager(replica)),
                        &Patch::Apply(&patch),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// What the leader does for the objects and the keyset as they are.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    /// An object for an authority that has none.
    Create {
        name: String,
        kind: AuthorityKind,
        id: String,
    },
    /// The object of an authority no longer in the keyset.
    Delete { name: String },
    /// Prepare a new authority for the object without an id.
    Prepare { name: String, kind: AuthorityKind },
    /// Activate, taint or revoke (the object is deleted after a revoke).
    Act {
        name: String,
        action: AuthorityAction,
    },
    /// The leader's part of the status, when it differs.
    Status {
        name: String,
        status: SigningAuthorityStatus,
    },
    /// Drop a stopped replica's entry whose SVIDs have all expired.
    Forget { name: String, replica: String },
}

/// This start's name in `status.replicas`: the pod and a random suffix.
pub fn replica_name(pod: &str) -> String {
    let mut suffix = [0u8; 3];
    // A fixed suffix only costs telling two starts of one pod apart.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut suffix);
    format!("{pod}-{}", hex::encode(suffix))
}

/// The field manager of a replica's entries.
fn replica_manager(replica: &str) -> String {
    format!("signet-replica-{replica}")
}

fn authority_kind(kind: SigningAuthorityKind) -> AuthorityKind {
    match kind {
        SigningAuthorityKind::X509 => AuthorityKind::X509,
        SigningAuthorityKind::Jwt => AuthorityKind::Jwt,
    }
}

fn object_kind(kind: AuthorityKind) -> SigningAuthorityKind {
    match kind {
        AuthorityKind::X509 => SigningAuthorityKind::X509,
        AuthorityKind::Jwt => SigningAuthorityKind::Jwt,
    }
}

/// X.509 ids are hex, matched in any case; JWT `kid`s exactly.
fn same_id(kind: AuthorityKind, a: &str, b: &str) -> bool {
    match kind {
        AuthorityKind::X509 => a.eq_ignore_ascii_case(b),
        AuthorityKind::Jwt => a == b,
    }
}

/// The name of the object the leader makes for an authority: the CA's
/// key id, or a digest of the `kid` (base64url is not a valid name).
fn object_name(kind: AuthorityKind, id: &str) -> String {
    match kind {
        AuthorityKind::X509 => format!("x509-{}", id.to_ascii_lowercase()),
        AuthorityKind::Jwt => {
            let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
            format!("jwt-{}", hex::encode(&digest.as_ref()[..10]))
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    crate::audit::rfc3339(time)
}

fn parse_time(text: &str) -> Option<SystemTime> {
    text.parse::<Timestamp>().ok().map(SystemTime::from)
}

fn state_name(state: AuthorityState) -> &'static str {
    match state {
        AuthorityState::Prepared => "prepared",
        AuthorityState::Active => "active",
        AuthorityState::Retired => "retired",
    }
}

/// This replica's entry for `object`, when it is to be written: its count
/// changed, or the entry is due for a heartbeat. A replica that never
/// signed with the authority writes nothing.
fn replica_entry(
    object: &SigningAuthority,
    live: &BTreeMap<AuthorityRef, LiveSvids>,
    incomplete: bool,
    replica: &str,
    now: SystemTime,
) -> Option<ReplicaCount> {
    let id = object.spec.id.as_deref()?;
    let kind = authority_kind(object.spec.kind);
    let counted = live
        .iter()
        .find(|(key, _)| key.kind == kind && same_id(kind, &key.id, id))
        .map(|(_, live)| *live);
    let previous = object
        .status
        .as_ref()
        .and_then(|s| s.replicas.iter().find(|r| r.replica == replica));
    let entry = ReplicaCount {
        replica: replica.to_owned(),
        live_svids: counted.map_or(0, |c| c.count),
        live_until: counted.map(|c| rfc3339(c.until)),
        reported_at: rfc3339(now),
        incomplete,
    };
    match previous {
        None if entry.live_svids == 0 && !incomplete => None,
        None => Some(entry),
        Some(previous) => {
            let unchanged = previous.live_svids == entry.live_svids
                && previous.live_until == entry.live_until
                && previous.incomplete == entry.incomplete;
            let fresh = parse_time(&previous.reported_at)
                .and_then(|at| now.duration_since(at).ok())
                .is_some_and(|age| age < HEARTBEAT);
            (!unchanged || !fresh).then_some(entry)
        }
    }
}

/// The replicas' entries summed: live SVIDs, whether some count is
/// incomplete, and the entries to forget (stopped, all their SVIDs
/// expired). A stopped replica's count stands until its `liveUntil`.
fn sum_replicas(replicas: &[ReplicaCount], now: SystemTime) -> (u64, bool, Vec<String>) {
    let mut total = 0u64;
    let mut incomplete = false;
    let mut forget = Vec::new();
    for entry in replicas {
        let reported = parse_time(&entry.reported_at);
        let stopped = reported
            .and_then(|at| now.duration_since(at).ok())
            .is_some_and(|age| age > STALE_AFTER);
        let expired = match &entry.live_until {
            None => true,
            Some(until) => parse_time(until).is_some_and(|until| until <= now),
        };
        if stopped && expired {
            forget.push(entry.replica.clone());
            continue;
        }
        total = total.saturating_add(entry.live_svids);
        incomplete |= entry.incomplete;
    }
    (total, incomplete, forget)
}

/// The leader's steps: objects for authorities without one, each object's
/// request carried out when it can be, its status, and stopped replicas'
/// spent entries dropped.
fn plan(
    objects: &[Arc<SigningAuthority>],
    authorities: &[AuthorityStatus],
    now: SystemTime,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut sorted: Vec<&Arc<SigningAuthority>> = objects.iter().collect();
    sorted.sort_by_key(|o| o.name_any());
    let mut named: BTreeSet<(AuthorityKind, String)> = BTreeSet::new();
    let mut preparing: BTreeSet<AuthorityKind> = BTreeSet::new();
    for object in sorted {
        let name = object.name_any();
        let kind = authority_kind(object.spec.kind);
        let current = object.status.clone().unwrap_or_default();
        let (live, incomplete, forget) = sum_replicas(&current.replicas, now);
        for replica in forget {
            steps.push(Step::Forget {
                name: name.clone(),
                replica,
            });
        }
        let mut status = SigningAuthorityStatus {
            observed_generation: object.metadata.generation,
            live_svids: Some(live),
            counts_incomplete: incomplete.then_some(true),
            ..SigningAuthorityStatus::default()
        };
        let condition = match object.spec.id.as_deref() {
            None => {
                let of_kind = authorities.iter().filter(|a| a.kind == kind);
                let prepared = authorities
                    .iter()
                    .find(|a| a.kind == kind && a.state == AuthorityState::Prepared);
                if let Some(prepared) = prepared {
                    (
                        "Waiting",
                        format!(
                            "{kind} authority {} is already prepared; this request prepares another once it is activated",
                            prepared.id
                        ),
                    )
                } else if of_kind.count() >= MAX_AUTHORITIES_PER_KIND {
                    (
                        "Waiting",
                        format!(
                            "the trust domain holds {MAX_AUTHORITIES_PER_KIND} {kind} authorities, the most it keeps; revoke one or wait for one to expire"
                        ),
                    )
                } else if !preparing.insert(kind) {
                    (
                        "Waiting",
                        format!("another request prepares a {kind} authority first"),
                    )
                } else {
                    steps.push(Step::Prepare {
                        name: name.clone(),
                        kind,
                    });
                    ("Preparing", format!("preparing a new {kind} authority"))
                }
            }
            Some(id) => {
                let found = authorities
                    .iter()
                    .find(|a| a.kind == kind && same_id(kind, &a.id, id));
                let Some(found) = found else {
                    if current.state.is_some() {
                        // It was in the keyset: revoked or expired since.
                        steps.push(Step::Delete { name });
                        continue;
                    }
                    status.conditions = vec![ready_condition(
                        &current,
                        object,
                        "False",
                        "Refused",
                        format!("the trust domain has no {kind} authority {id}"),
                        now,
                    )];
                    push_status(&mut steps, name, &current, status);
                    continue;
                };
                named.insert((kind, found.id.clone()));
                status.state = Some(state_name(found.state).to_owned());
                status.tainted = Some(found.tainted);
                status.not_before = Some(rfc3339(found.not_before));
                status.not_after = Some(rfc3339(found.not_after));
                status.upstream_signed = found.upstream_signed;
                request_for(&mut steps, &name, object, found, live, incomplete)
            }
        };
        let ready = if matches!(condition.0, "InForce") {
            "True"
        } else {
            "False"
        };
        status.conditions = vec![ready_condition(
            &current,
            object,
            ready,
            condition.0,
            condition.1,
            now,
        )];
        push_status(&mut steps, name, &current, status);
    }
    for authority in authorities {
        if !named.contains(&(authority.kind, authority.id.clone())) {
            steps.push(Step::Create {
                name: object_name(authority.kind, &authority.id),
                kind: authority.kind,
                id: authority.id.clone(),
            });
        }
    }
    steps
}

/// What the spec of an object with a known authority asks, as a step (if
/// it can be done now) and the condition (reason, message) to show.
fn request_for(
    steps: &mut Vec<Step>,
    name: &str,
    object: &SigningAuthority,
    found: &AuthorityStatus,
    live: u64,
    incomplete: bool,
) -> (&'static str, String) {
    let kind = found.kind;
    let id = found.id.clone();
    let spec = &object.spec;
    let mut act = |action: AuthorityAction| {
        steps.push(Step::Act {
            name: name.to_owned(),
            action,
        })
    };
    if spec.activate == Some(true) && found.state == AuthorityState::Prepared {
        act(AuthorityAction::Activate { kind });
        return ("Activating", format!("activating {kind} authority {id}"));
    }
    if spec.taint == Some(true) && !found.tainted {
        if found.state != AuthorityState::Retired {
            return (
                "Waiting",
                format!(
                    "only a retired authority can be tainted and this one is {}; activate its successor first",
                    state_name(found.state)
                ),
            );
        }
        act(AuthorityAction::Taint {
            kind,
            id: id.clone(),
        });
        return ("Tainting", format!("tainting {kind} authority {id}"));
    }
    match spec.revoke {
        None => ("InForce", describe(found, live)),
        Some(_) if !found.tainted => (
            "Waiting",
            "only a tainted authority can be revoked; set spec.taint too".to_owned(),
        ),
        Some(RevokePolicy::Now) => {
            act(AuthorityAction::Revoke { kind, id: id.clone() });
            ("Revoking", format!("revoking {kind} authority {id}"))
        }
        Some(RevokePolicy::WhenUnused) if live > 0 => (
            "RevokePending",
            format!("{live} live SVIDs signed by it are still in use; agents are re-issuing them"),
        ),
        Some(RevokePolicy::WhenUnused) if incomplete => (
            "RevokePending",
            "some replica's count is incomplete (its ledger was full), so revoking cannot be shown safe; use revoke: Now".to_owned(),
        ),
        Some(RevokePolicy::WhenUnused) => {
            act(AuthorityAction::Revoke { kind, id: id.clone() });
            ("Revoking", format!("revoking {kind} authority {id}: no live SVID signed by it is left"))
        }
    }
}

fn describe(found: &AuthorityStatus, live: u64) -> String {
    let state = state_name(found.state);
    if found.tainted {
        format!("{state} and tainted; {live} live SVIDs signed by it")
    } else {
        format!("{state}; {live} live SVIDs signed by it")
    }
}

/// The Ready condition, keeping its transition time while its status holds.
fn ready_condition(
    current: &SigningAuthorityStatus,
    object: &SigningAuthority,
    ready: &str,
    reason: &str,
    message: String,
    now: SystemTime,
) -> Condition {
    let previous = current
        .conditions
        .iter()
        .find(|c| c.type_ == READY_CONDITION);
    let transition = match previous {
        Some(p) if p.status == ready => p.last_transition_time.clone(),
        _ => Time(Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH)),
    };
    Condition {
        type_: READY_CONDITION.to_owned(),
        status: ready.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: object.metadata.generation,
        last_transition_time: transition,
    }
}

/// A status step when the leader's part differs from what is there.
fn push_status(
    steps: &mut Vec<Step>,
    name: String,
    current: &SigningAuthorityStatus,
    status: SigningAuthorityStatus,
) {
    let leader_part = SigningAuthorityStatus {
        replicas: Vec::new(),
        ..current.clone()
    };
    if leader_part != status {
        steps.push(Step::Status { name, status });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn authority(kind: AuthorityKind, id: &str, state: AuthorityState) -> AuthorityStatus {
        AuthorityStatus {
            kind,
            id: id.to_owned(),
            state,
            tainted: false,
            not_before: at(0),
            not_after: at(86_400),
            upstream_signed: (kind == AuthorityKind::X509).then_some(false),
        }
    }

    fn object(
        name: &str,
        spec: SigningAuthoritySpec,
        replicas: Vec<ReplicaCount>,
    ) -> Arc<SigningAuthority> {
        let mut object = SigningAuthority::new(name, spec);
        object.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        if !replicas.is_empty() {
            object.status = Some(SigningAuthorityStatus {
                state: Some("retired".into()),
                replicas,
                ..SigningAuthorityStatus::default()
            });
        }
        Arc::new(object)
    }

    fn spec(kind: SigningAuthorityKind, id: Option<&str>) -> SigningAuthoritySpec {
        SigningAuthoritySpec {
            kind,
            id: id.map(str::to_owned),
            ..SigningAuthoritySpec::default()
        }
    }

    fn count(replica: &str, live: u64, until: u64, reported: u64) -> ReplicaCount {
        ReplicaCount {
            replica: replica.to_owned(),
            live_svids: live,
            live_until: (live > 0).then(|| rfc3339(at(until))),
            reported_at: rfc3339(at(reported)),
            incomplete: false,
        }
    }

    fn acts(steps: &[Step]) -> Vec<&AuthorityAction> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Act { action, .. } => Some(action),
                _ => None,
            })
            .collect()
    }

    fn condition(steps: &[Step], name: &str) -> (String, String) {
        steps
            .iter()
            .find_map(|s| match s {
                Step::Status { name: n, status } if n == name => status
                    .conditions
                    .first()
                    .map(|c| (c.reason.clone(), c.message.clone())),
                _ => None,
            })
            .unwrap()
    }

    #[test]
    fn replicas_counts_add_up_and_a_stopped_replica_counts_until_its_svids_expire() {
        let now = at(1_000);
        let replicas = [
            count("a-1", 3, 2_000, 990),
            count("b-1", 2, 2_000, 995),
            // Stopped (not reported for 500 s) but its SVIDs live on.
            count("c-1", 4, 1_500, 500),
            // Stopped and spent: forgotten, not counted.
            count("d-1", 5, 900, 100),
            // A fresh zero.
            count("e-1", 0, 0, 999),
        ];
        let (live, incomplete, forget) = sum_replicas(&replicas, now);
        assert_eq!(live, 9);
        assert!(!incomplete);
        assert_eq!(forget, vec!["d-1".to_owned()]);
        let mut partial = replicas.to_vec();
        partial[1].incomplete = true;
        assert!(sum_replicas(&partial, now).1);
    }

    #[test]
    fn a_replica_writes_when_its_count_moves_or_a_heartbeat_is_due() {
        let now = at(1_000);
        let id = "ab12";
        let key = AuthorityRef {
            kind: AuthorityKind::X509,
            id: id.to_owned(),
        };
        let live = BTreeMap::from([(
            key,
            LiveSvids {
                count: 2,
                until: at(2_000),
            },
        )]);
        // Never counted anything: nothing to say.
        let other = object(
            "x509-ff",
            spec(SigningAuthorityKind::X509, Some("ff")),
            vec![],
        );
        assert_eq!(replica_entry(&other, &live, false, "r-1", now), None);
        // First count; the object's id matches in any case.
        let fresh = object(
            "x509-ab12",
            spec(SigningAuthorityKind::X509, Some("AB12")),
            vec![],
        );
        let entry = replica_entry(&fresh, &live, false, "r-1", now).unwrap();
        assert_eq!(
            (entry.live_svids, entry.live_until.clone()),
            (2, Some(rfc3339(at(2_000))))
        );
        // Same count written 10 s ago: quiet; 70 s ago: heartbeat.
        let written = |reported| {
            object(
                "x509-ab12",
                spec(SigningAuthorityKind::X509, Some(id)),
                vec![count("r-1", 2, 2_000, reported)],
            )
        };
        assert_eq!(replica_entry(&written(990), &live, false, "r-1", now), None);
        assert!(replica_entry(&written(930), &live, false, "r-1", now).is_some());
        // Fell to zero: written, so the leader's sum falls.
        let dropped = replica_entry(&written(990), &BTreeMap::new(), false, "r-1", now).unwrap();
        assert_eq!((dropped.live_svids, dropped.live_until), (0, None));
    }

    #[test]
    fn the_leader_mirrors_the_keyset_and_deletes_objects_of_removed_authorities() {
        let now = at(1_000);
        let authorities = [
            authority(AuthorityKind::X509, "aa11", AuthorityState::Active),
            authority(AuthorityKind::Jwt, "Kid_-X", AuthorityState::Active),
        ];
        let mut gone = object(
            "x509-bb22",
            spec(SigningAuthorityKind::X509, Some("bb22")),
            vec![],
        );
        Arc::make_mut(&mut gone).status = Some(SigningAuthorityStatus {
            state: Some("retired".into()),
            ..SigningAuthorityStatus::default()
        });
        let typo = object(
            "mine",
            spec(SigningAuthorityKind::X509, Some("cc33")),
            vec![],
        );
        let steps = plan(&[gone, typo], &authorities, now);
        assert!(steps.contains(&Step::Delete {
            name: "x509-bb22".into()
        }));
        // Never seen: refused, not deleted.
        assert_eq!(condition(&steps, "mine").0, "Refused");
        let created: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Create { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 2);
        assert_eq!(created[0], "x509-aa11");
        assert!(created[1].starts_with("jwt-") && created[1].len() == 24);
        assert!(
            created[1]
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn requests_wait_until_they_can_be_carried_out() {
        let now = at(1_000);
        let x = SigningAuthorityKind::X509;
        let mut authorities = vec![
            authority(AuthorityKind::X509, "aa11", AuthorityState::Active),
            authority(AuthorityKind::X509, "bb22", AuthorityState::Prepared),
        ];
        // A prepare request waits while a key is prepared.
        let request = object("next", spec(x, None), vec![]);
        let steps = plan(&[request], &authorities, now);
        assert!(!steps.iter().any(|s| matches!(s, Step::Prepare { .. })));
        assert_eq!(condition(&steps, "next").0, "Waiting");
        // Tainting the active CA waits for it to retire.
        let taint = SigningAuthoritySpec {
            taint: Some(true),
            revoke: Some(RevokePolicy::WhenUnused),
            ..spec(x, Some("aa11"))
        };
        let steps = plan(
            &[object("x509-aa11", taint.clone(), vec![])],
            &authorities,
            now,
        );
        assert!(acts(&steps).is_empty());
        assert!(
            condition(&steps, "x509-aa11")
                .1
                .contains("activate its successor")
        );
        // Activation asked on the prepared one.
        let activate = SigningAuthoritySpec {
            activate: Some(true),
            ..spec(x, Some("bb22"))
        };
        let steps = plan(&[object("x509-bb22", activate, vec![])], &authorities, now);
        assert_eq!(
            acts(&steps),
            [&AuthorityAction::Activate {
                kind: AuthorityKind::X509
            }]
        );
        // Once aa11 is retired: tainted; once tainted: revoke waits for the
        // replicas' counts to reach zero.
        authorities[0].state = AuthorityState::Retired;
        authorities[1].state = AuthorityState::Active;
        let steps = plan(
            &[object("x509-aa11", taint.clone(), vec![])],
            &authorities,
            now,
        );
        assert_eq!(
            acts(&steps),
            [&AuthorityAction::Taint {
                kind: AuthorityKind::X509,
                id: "aa11".into()
            }]
        );
        authorities[0].tainted = true;
        let counted = |live| vec![count("a-1", live, 2_000, 995), count("b-1", 1, 2_000, 995)];
        let steps = plan(
            &[object("x509-aa11", taint.clone(), counted(2))],
            &authorities,
            now,
        );
        assert!(acts(&steps).is_empty());
        let (reason, message) = condition(&steps, "x509-aa11");
        assert_eq!(reason, "RevokePending");
        assert!(message.starts_with("3 live SVIDs"), "{message}");
        let mut zeros = counted(0);
        zeros[1].live_svids = 0;
        let steps = plan(
            &[object("x509-aa11", taint.clone(), zeros)],
            &authorities,
            now,
        );
        assert_eq!(
            acts(&steps),
            [&AuthorityAction::Revoke {
                kind: AuthorityKind::X509,
                id: "aa11".into()
            }]
        );
        // An incomplete count never revokes on WhenUnused; Now does.
        let mut partial = vec![count("a-1", 0, 0, 995)];
        partial[0].incomplete = true;
        let steps = plan(
            &[object("x509-aa11", taint.clone(), partial.clone())],
            &authorities,
            now,
        );
        assert!(acts(&steps).is_empty());
        let now_spec = SigningAuthoritySpec {
            revoke: Some(RevokePolicy::Now),
            ..taint
        };
        let steps = plan(
            &[object("x509-aa11", now_spec, counted(5))],
            &authorities,
            now,
        );
        assert_eq!(acts(&steps).len(), 1);
        // With nothing prepared, the first of two requests prepares.
        let steps = plan(
            &[
                object("b", spec(x, None), vec![]),
                object("a", spec(x, None), vec![]),
            ],
            &authorities,
            now,
        );
        let prepares: Vec<_> = steps
            .iter()
            .filter(|s| matches!(s, Step::Prepare { .. }))
            .collect();
        assert_eq!(
            prepares,
            [&Step::Prepare {
                name: "a".into(),
                kind: AuthorityKind::X509
            }]
        );
        assert_eq!(condition(&steps, "b").0, "Waiting");
    }

    #[test]
    fn an_unchanged_status_is_not_rewritten() {
        let now = at(1_000);
        let authorities = [authority(
            AuthorityKind::X509,
            "aa11",
            AuthorityState::Active,
        )];
        let first = plan(
            &[object(
                "x509-aa11",
                spec(SigningAuthorityKind::X509, Some("aa11")),
                vec![],
            )],
            &authorities,
            now,
        );
        let Some(Step::Status { status, .. }) =
            first.iter().find(|s| matches!(s, Step::Status { .. }))
        else {
            panic!("no status step: {first:?}");
        };
        assert_eq!(status.state.as_deref(), Some("active"));
        assert_eq!(status.live_svids, Some(0));
        let mut written =
            SigningAuthority::new("x509-aa11", spec(SigningAuthorityKind::X509, Some("aa11")));
        written.metadata.generation = Some(1);
        written.status = Some(SigningAuthorityStatus {
            replicas: vec![count("a-1", 0, 0, 995)],
            ..status.clone()
        });
        let again = plan(&[Arc::new(written)], &authorities, at(1_030));
        assert!(again.is_empty(), "{again:?}");
    }
}
