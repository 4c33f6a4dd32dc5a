//! FederatedTrustDomain objects: every replica follows them into its
//! federation (fetching each endpoint itself, so any replica can serve an
//! agent), and the leader writes each object's status: Ready while a
//! bundle is in force (the last refresh error in the message), the bundle's
//! sequence, last refresh and earliest expiry; Ready=False with reason
//! InvalidSpec or Conflict for an object that cannot be used.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use signet_identity::{TrustBundle, TrustDomain};
use signet_policy::crd::{FederatedTrustDomain, FederationStatus, READY_CONDITION};
use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::cluster::reconciler::is_complete;
use crate::federation::{FederatedDomain, FederationSet, from_object};

/// How often the leader compares each object's status with what it knows.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Per object name: the trust domain it makes followed, or the reason
/// (a condition reason) and message why not.
type Verdicts = BTreeMap<String, Result<TrustDomain, (&'static str, String)>>;

/// What the objects mean: the domains to follow, and a verdict per object.
fn interpret(
    objects: &[Arc<FederatedTrustDomain>],
    own: &TrustDomain,
    set: &FederationSet,
) -> (BTreeMap<TrustDomain, FederatedDomain>, Verdicts) {
    let mut domains = BTreeMap::new();
    let mut claimed: BTreeMap<TrustDomain, String> = BTreeMap::new();
    let mut verdicts = BTreeMap::new();
    let mut sorted: Vec<&Arc<FederatedTrustDomain>> = objects.iter().collect();
    sorted.sort_by_key(|o| o.name_any());
    for object in sorted {
        let name = object.name_any();
        let verdict = match from_object(&object.spec, own) {
            Err(message) => Err(("InvalidSpec", message)),
            Ok((td, _)) if set.is_fixed(&td) => Err((
                "Conflict",
                format!("{td} is configured in the operator's own federation settings"),
            )),
            Ok((td, _)) if claimed.contains_key(&td) => Err((
                "Conflict",
                format!("FederatedTrustDomain {} already names {td}", claimed[&td]),
            )),
            Ok((td, domain)) => {
                claimed.insert(td.clone(), name.clone());
                domains.insert(td.clone(), domain);
                Ok(td)
            }
        };
        verdicts.insert(name, verdict);
    }
    (domains, verdicts)
}

/// Follows the objects until the task is dropped.
pub async fn follow(
    api: Api<FederatedTrustDomain>,
    own: TrustDomain,
    set: Arc<FederationSet>,
    leading: watch::Receiver<bool>,
    clock: Clock,
) {
    let (store, writer) = reflector::store::<FederatedTrustDomain>();
    let events = reflector::reflector(writer, watcher(api.clone(), watcher::Config::default()))
        .default_backoff();
    futures::pin_mut!(events);
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching FederatedTrustDomains failed; retrying");
                    continue;
                }
                None => return,
            },
            _ = tick.tick() => {}
        }
        // Only a complete list: a partial one would drop domains.
        if !is_complete(&store) {
            continue;
        }
        let objects = store.state();
        let (domains, verdicts) = interpret(&objects, &own, &set);
        set.replace_dynamic(&domains, &kept_bundles(&objects, &verdicts));
        if *leading.borrow() {
            write_statuses(&api, &store, &verdicts, &set, clock).await;
        }
    }
}

/// The bundles the leader kept in the objects' status, by trust domain
/// (a status that does not parse for its domain is ignored).
fn kept_bundles(
    objects: &[Arc<FederatedTrustDomain>],
    verdicts: &Verdicts,
) -> BTreeMap<TrustDomain, TrustBundle> {
    objects
        .iter()
        .filter_map(|object| {
            let Some(Ok(td)) = verdicts.get(&object.name_any()) else {
                return None;
            };
            let json = object.status.as_ref()?.bundle.as_ref()?;
            TrustBundle::from_spiffe_json(td.clone(), json.as_bytes())
                .ok()
                .map(|bundle| (td.clone(), bundle))
        })
        .collect()
}

fn rfc3339(time: SystemTime) -> String {
    crate::audit::rfc3339(time)
}

async fn write_statuses(
    api: &Api<FederatedTrustDomain>,
    store: &Store<FederatedTrustDomain>,
    verdicts: &Verdicts,
    set: &FederationSet,
    clock: Clock,
) {
    for object in store.state() {
        let name = object.name_any();
        let Some(verdict) = verdicts.get(&name) else {
            continue;
        };
        let mut status = FederationStatus {
            observed_generation: object.metadata.generation,
            ..FederationStatus::default()
        };
        let (ready, reason, message) = match verdict {
            Err((reason, message)) => ("False", *reason, message.clone()),
            Ok(td) => {
                let state = set.state(td).unwrap_or_default();
                status.bundle_sequence = state.sequence;
                status.last_refresh = state.last_refresh.map(rfc3339);
                status.earliest_expiry = state.earliest_expiry.map(rfc3339);
                status.bundle = set.bundle(td).and_then(|b| b.to_spiffe_json().ok());
                match (state.sequence, state.last_error) {
                    (Some(_), None) => (
                        "True",
                        "BundleInForce",
                        format!("the bundle of {td} is in force"),
                    ),
                    (Some(_), Some(error)) => (
                        "True",
                        "RefreshFailing",
                        format!(
                            "the last good bundle of {td} is in force; refreshing failed: {error}"
                        ),
                    ),
                    (None, error) => (
                        "False",
                        "NoBundle",
                        error.unwrap_or_else(|| format!("no bundle of {td} yet")),
                    ),
                }
            }
        };
        let current = object.status.as_ref();
        let previous =
            current.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY_CONDITION));
        let unchanged_condition = previous
            .is_some_and(|p| p.status == ready && p.reason == reason && p.message == message);
        let transition = match previous {
            Some(p) if p.status == ready => p.last_transition_time.clone(),
            _ => Time(Timestamp::try_from(clock.now()).unwrap_or(Timestamp::UNIX_EPOCH)),
        };
        status.conditions = vec![Condition {
            type_: READY_CONDITION.to_owned(),
            status: ready.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: object.metadata.generation,
            last_transition_time: transition,
        }];
        let same = unchanged_condition
            && current.is_some_and(|c| {
                c.bundle_sequence == status.bundle_sequence
                    && c.last_refresh == status.last_refresh
                    && c.earliest_expiry == status.earliest_expiry
                    && c.observed_generation == status.observed_generation
                    && c.bundle == status.bundle
            });
        if same {
            continue;
        }
        let patch = serde_json::json!({ "status": status });
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%error, %name, "writing FederatedTrustDomain status failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::BundleSource;
    use kube::api::ObjectMeta;
    use signet_policy::crd::FederatedTrustDomainSpec;

    fn object(name: &str, trust_domain: &str, bundle: Option<&str>) -> Arc<FederatedTrustDomain> {
        Arc::new(FederatedTrustDomain {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: FederatedTrustDomainSpec {
                trust_domain: trust_domain.into(),
                trust_domain_bundle: bundle.map(str::to_owned),
                ..FederatedTrustDomainSpec::default()
            },
            status: None,
        })
    }

    #[tokio::test]
    async fn objects_that_cannot_be_followed_get_a_reason() {
        let own = TrustDomain::new("example.org").unwrap();
        let td = |name: &str| TrustDomain::new(name).unwrap();
        let json = r#"{"keys": [], "spiffe_sequence": 3}"#;
        let fixed = BTreeMap::from([(
            td("configured.org"),
            FederatedDomain {
                initial: Some(signet_identity::TrustBundle::new(td("configured.org"))),
                source: BundleSource::Fixed,
            },
        )]);
        let (set, federation) = FederationSet::start(
            &fixed,
            None,
            Arc::new(crate::metrics::Metrics::default()),
            Clock::new(),
        );
        let objects = [
            object("a", "partner.org", Some(json)),
            object("b", "partner.org", Some(json)),
            object("c", "configured.org", Some(json)),
            object("d", "broken.org", Some("not a bundle")),
            object("e", "example.org", Some(json)),
        ];
        let (domains, verdicts) = interpret(&objects, &own, &set);
        assert_eq!(domains.keys().collect::<Vec<_>>(), [&td("partner.org")]);
        assert_eq!(verdicts["a"], Ok(td("partner.org")));
        let reason = |name: &str| verdicts[name].as_ref().unwrap_err().0;
        assert_eq!(
            ["b", "c", "d", "e"].map(reason),
            ["Conflict", "Conflict", "InvalidSpec", "InvalidSpec"]
        );
        set.replace_dynamic(&domains, &BTreeMap::new());
        assert_eq!(
            federation
                .bundles
                .borrow()
                .get(&td("partner.org"))
                .map(|b| b.sequence),
            Some(3)
        );
        assert_eq!(set.state(&td("partner.org")).unwrap().sequence, Some(3));
        // Deleting the object takes the trust domain out again; the
        // configured one stays.
        set.replace_dynamic(&BTreeMap::new(), &BTreeMap::new());
        let bundles = federation.bundles.borrow().clone();
        assert!(!bundles.contains_key(&td("partner.org")));
        assert!(bundles.contains_key(&td("configured.org")));
    }

    /// A restarted replica starts from the bundle the leader kept in the
    /// status when it is newer than the spec's (the other domain rotated
    /// since the object was written), and never from an older one.
    #[tokio::test]
    async fn a_newer_bundle_kept_in_the_status_is_the_starting_point() {
        let own = TrustDomain::new("example.org").unwrap();
        let partner = TrustDomain::new("partner.org").unwrap();
        let (set, federation) = FederationSet::start(
            &BTreeMap::new(),
            None,
            Arc::new(crate::metrics::Metrics::default()),
            Clock::new(),
        );
        let with_status = |spec_sequence: u64, kept_sequence: u64| {
            let spec = format!(r#"{{"keys": [], "spiffe_sequence": {spec_sequence}}}"#);
            let mut object = (*object("p", "partner.org", Some(&spec))).clone();
            object.status = Some(FederationStatus {
                bundle: Some(format!(
                    r#"{{"keys": [], "spiffe_sequence": {kept_sequence}}}"#
                )),
                ..FederationStatus::default()
            });
            vec![Arc::new(object)]
        };
        let sequence = |federation: &crate::federation::Federation| {
            federation
                .bundles
                .borrow()
                .get(&partner)
                .map(|b| b.sequence)
        };
        let objects = with_status(3, 9);
        let (domains, verdicts) = interpret(&objects, &own, &set);
        set.replace_dynamic(&domains, &kept_bundles(&objects, &verdicts));
        assert_eq!(sequence(&federation), Some(9));

        // A spec newer than what was kept (an administrator updated it) wins.
        set.replace_dynamic(&BTreeMap::new(), &BTreeMap::new());
        let objects = with_status(12, 9);
        let (domains, verdicts) = interpret(&objects, &own, &set);
        set.replace_dynamic(&domains, &kept_bundles(&objects, &verdicts));
        assert_eq!(sequence(&federation), Some(12));
    }
}
