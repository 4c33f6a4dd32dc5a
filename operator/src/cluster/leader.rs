//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves the issuer API; only the leader writes: object
//! status, the bundle ConfigMap and CA rotations. The leader renews the
//! Lease every `retry_period`; when renewals keep failing for
//! `renew_deadline` (shorter than the lease duration) it steps down before
//! anyone else may take over, so two replicas never write at once.
//!
//! Expiry is judged by when this replica last saw the Lease record change,
//! on its own monotonic clock, never by the holder's timestamps: clocks of
//! different machines need not agree.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use signet_runtime::clock::Clock;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct ElectionSettings {
    pub lease_name: String,
    /// This replica's name (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(lease_name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Scales all three from the lease duration (2/3 and 2/15 of it).
    pub fn with_lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renew_deadline = lease_duration * 2 / 3;
        self.retry_period = (lease_duration * 2 / 15).max(Duration::from_millis(200));
        self
    }
}

/// What to do with the Lease as last read.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// No Lease yet: create it holding it.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it and renews it.
    Follow,
}

fn decide(lease: Option<&Lease>, identity: &str, expired: bool) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .unwrap_or("");
    if holder == identity {
        Step::Renew
    } else if holder.is_empty() || expired {
        Step::Acquire
    } else {
        Step::Follow
    }
}

/// The wall clock as the Lease records it (informational: expiry is judged
/// on the monotonic clock, see the module documentation).
fn micro_time(clock: &Clock) -> MicroTime {
    MicroTime(Timestamp::try_from(clock.now()).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub struct LeaderElector {
    api: Api<Lease>,
    clock: Clock,
    settings: ElectionSettings,
    /// Set on the Lease when this replica creates it.
    owner: Option<OwnerReference>,
    leading: watch::Sender<bool>,
    /// The Lease record as last seen (holder, renew time, transitions) and
    /// when it was seen to change.
    observed: Option<(String, Instant)>,
    last_renewal: Option<Instant>,
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        settings: ElectionSettings,
        owner: Option<OwnerReference>,
        clock: Clock,
    ) -> (Self, watch::Receiver<bool>) {
        let (leading, receiver) = watch::channel(false);
        (
            Self {
                api,
                clock,
                settings,
                owner,
                leading,
                observed: None,
                last_renewal: None,
            },
            receiver,
        )
    }

    fn lease_spec(&self, previous: Option<&LeaseSpec>, taking_over: bool) -> LeaseSpec {
        let duration = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(duration.max(1)),
            acquire_time: if taking_over {
                Some(micro_time(&self.clock))
            } else {
                previous.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(micro_time(&self.clock)),
            lease_transitions: Some(if taking_over && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// Notes the Lease record; returns whether it has gone unchanged for a
    /// whole lease duration.
    fn observe(&mut self, lease: &Lease) -> bool {
        let record = serde_json::to_string(&lease.spec).unwrap_or_default();
        let now = Instant::now();
        match &self.observed {
            Some((seen, since)) if *seen == record => {
                now.duration_since(*since) >= self.settings.lease_duration
            }
            _ => {
                self.observed = Some((record, now));
                false
            }
        }
    }

    /// One election round; returns whether this replica holds the Lease.
    async fn round(&mut self) -> Result<bool, kube::Error> {
        let lease = self.api.get_opt(&self.settings.lease_name).await?;
        let expired = lease.as_ref().is_some_and(|lease| self.observe(lease));
        let params = PostParams {
            field_manager: Some("signet-operator".to_owned()),
            ..PostParams::default()
        };
        match decide(lease.as_ref(), &self.settings.identity, expired) {
            Step::Follow => Ok(false),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.lease_name.clone()),
                        owner_references: self.owner.clone().map(|o| vec![o]),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.lease_spec(None, true)),
                };
                match self.api.create(&params, &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(error) => Err(error),
                }
            }
            step @ (Step::Renew | Step::Acquire) => {
                let Some(mut lease) = lease else {
                    return Ok(false);
                };
                lease.spec = Some(self.lease_spec(lease.spec.as_ref(), step == Step::Acquire));
                // The resourceVersion read above makes this a compare-and-swap.
                match self
                    .api
                    .replace(&self.settings.lease_name, &params, &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(error) => Err(error),
                }
            }
        }
    }

    fn set_leading(&self, leading: bool) {
        if *self.leading.borrow() != leading {
            if leading {
                tracing::info!(identity = %self.settings.identity, lease = %self.settings.lease_name, "became the leader");
            } else {
                tracing::warn!(identity = %self.settings.identity, lease = %self.settings.lease_name, "no longer the leader");
            }
            self.leading.send_replace(leading);
        }
    }

    /// Campaigns and renews until `shutdown` resolves, then gives the Lease
    /// up so a successor need not wait for it to expire.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            // A call to the API server can hang far longer than the lease
            // (the client's read timeout is minutes): a leader gives each
            // round only until its renew deadline, so it steps down on time
            // even while a request is stuck, before anyone may take over.
            let deadline = match self.last_renewal {
                Some(at) if *self.leading.borrow() => at + self.settings.renew_deadline,
                _ => Instant::now() + self.settings.renew_deadline,
            };
            match tokio::time::timeout_at(deadline, self.round()).await {
                Ok(Ok(true)) => {
                    self.last_renewal = Some(Instant::now());
                    self.set_leading(true);
                }
                Ok(Ok(false)) => {
                    self.last_renewal = None;
                    self.set_leading(false);
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "leader election round failed");
                    self.step_down_if_stale();
                }
                Err(_) => {
                    tracing::warn!(
                        timeout = ?self.settings.renew_deadline,
                        "leader election round timed out: the API server did not answer"
                    );
                    self.step_down_if_stale();
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
        if *self.leading.borrow() {
            self.set_leading(false);
            self.release().await;
        }
    }

    /// Keeps leading only while the last renewal is recent enough that
    /// nobody else can have taken over.
    fn step_down_if_stale(&self) {
        let fresh = self
            .last_renewal
            .is_some_and(|at| at.elapsed() < self.settings.renew_deadline);
        if !fresh {
            self.set_leading(false);
        }
    }

    /// Hands the Lease back, giving up after a renew deadline: shutting
    /// down must not wait on a hung API server.
    async fn release(&self) {
        let released = tokio::time::timeout(self.settings.renew_deadline, self.try_release());
        if released.await.is_err() {
            tracing::warn!("releasing the leader lease timed out; it expires on its own");
        }
    }

    async fn try_release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.lease_name).await else {
            return;
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|spec| spec.holder_identity.as_deref())
            == Some(self.settings.identity.as_str());
        if !ours {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(micro_time(&self.clock));
        }
        match self
            .api
            .replace(&self.settings.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!("released the leader lease"),
            Err(error) => tracing::warn!(%error, "releasing the leader lease failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", false), Step::Create);
        assert_eq!(decide(Some(&lease(Some("a"))), "a", false), Step::Renew);
        assert_eq!(decide(Some(&lease(Some("b"))), "a", false), Step::Follow);
        assert_eq!(decide(Some(&lease(Some("b"))), "a", true), Step::Acquire);
        assert_eq!(decide(Some(&lease(None)), "a", false), Step::Acquire);
        assert_eq!(decide(Some(&lease(Some(""))), "a", false), Step::Acquire);
    }

    #[test]
    fn timings_scale_with_the_lease() {
        let s = ElectionSettings::new("l", "a").with_lease_duration(Duration::from_secs(6));
        assert_eq!(s.renew_deadline, Duration::from_secs(4));
        assert!(s.retry_period < s.renew_deadline);
        assert!(s.renew_deadline < s.lease_duration);
    }
}
