//! The agent's SVID cache: one background worker behind a cheap handle.
//!
//! Each *workload* is the set of attributes a caller was attested with (see
//! [`WorkloadKey`]). Each workload holds one entry per WorkloadIdentity the
//! local policy says applies to it; an entry owns its private key
//! (generated here, never sent anywhere) and its current SVID.
//!
//! The worker signs missing SVIDs in batches, renews each at half its
//! lifetime with jitter, retries failures with per-entry backoff while the
//! old SVID stays in use, re-evaluates every workload when the policy or the
//! trust bundle changes, and publishes a full-state [`WorkloadView`] (SVIDs
//! and their bundles together) on a per-workload `watch` channel that the
//! Workload API, SDS and delegated streams follow.
//!
//! When the policy names a tainted X.509 authority, every SVID it signed is
//! renewed early, each at a random point of `taint_reissue_window` so the
//! issuer is not asked for them all at once, through the same dispatch,
//! batching and backoff as any renewal.
//!
//! SVIDs can be signed *ahead* for a pod bound to the node
//! ([`SvidCache::prepare_pod`]), from its pod-level attributes, before any
//! of its processes exists. The pod-level workload is what signet-csi's
//! files mode subscribes, so it is served as is; the first process of the
//! pod to call gets the SVIDs moved to it (never shared with a second
//! caller) where its own evaluation wants the very same identity. Nothing
//! signed ahead reaches a workload its own attributes do not entitle.
//!
//! A wake-up costs what it touches, not the number of workloads: due
//! renewals, expiries and evictions come off a timer heap, and only the
//! workloads that changed get their views rebuilt and their timers pushed.
//! (With a re-issue window every SVID has its own due time, so a scan of
//! everything per wake-up made the work grow with the square of the
//! workloads.)

use std::cmp::Ordering as Order;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use signet_identity::SpiffeId;
use signet_policy::{Attributes, Field};
use signet_runtime::clock::Clock;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::error::CacheError;
use super::jwt::JwtCache;
use super::key::WorkloadKey;
use super::seams::{
    Denial, DesiredIdentity, KeyFactory, SharedPolicy, SignError, SignOutcome, SignedJwt,
    SignedX509, Signer, TaintedAuthorities, WorkloadBundles, X509SignRequest,
};
use super::taint::x509_authority;
use super::view::{IssuedX509, ViewStatus, WorkloadView};
use crate::backoff::{Backoff, jitter, uniform};

// === configuration ===

#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Requests per SignX509Svids call (SPIRE uses 500).
    pub batch_size: usize,
    /// Signing calls in flight at once.
    pub max_in_flight: usize,
    /// How long an unused workload's SVIDs are kept (and renewed) after its
    /// last stream closed.
    pub idle_ttl: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Retry delay for a retryable denial.
    pub denial_retry: Duration,
    /// JWT-SVIDs kept, across workloads.
    pub jwt_cache_size: usize,
    /// SVIDs signed by a tainted authority are re-issued at a random point
    /// within this long of learning of the taint (zero: at once).
    pub taint_reissue_window: Duration,
    /// Told when the SVIDs signed ahead for a pod are all there.
    pub on_pod_ready: Option<PodReadyHook>,
}

/// A pod's SVIDs signed ahead are all there.
#[derive(Clone, Debug)]
pub struct PodReady {
    pub pod_uid: Arc<str>,
    /// When the operator saw the pod bound, if it knows.
    pub bound_at: Option<SystemTime>,
    pub ready_at: SystemTime,
    pub svids: usize,
}

/// Called by the cache worker for each [`PodReady`]; keep it quick.
#[derive(Clone)]
pub struct PodReadyHook(pub Arc<dyn Fn(&PodReady) + Send + Sync>);

impl std::fmt::Debug for PodReadyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodReadyHook")
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            max_in_flight: 4,
            idle_ttl: Duration::from_secs(300),
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            denial_retry: Duration::from_secs(2),
            jwt_cache_size: 1000,
            taint_reissue_window: Duration::from_secs(30),
            on_pod_ready: None,
        }
    }
}

// === handle ===

enum Command {
    Subscribe {
        key: WorkloadKey,
        reply: oneshot::Sender<watch::Receiver<WorkloadView>>,
    },
    Unsubscribe {
        key: WorkloadKey,
    },
    Prepare {
        key: WorkloadKey,
        pod_uid: Arc<str>,
        bound_at: Option<SystemTime>,
    },
    ForgetPod {
        pod_uid: Arc<str>,
    },
}

/// Keeps a workload's SVIDs wanted; dropping it releases them (they are
/// kept for `idle_ttl` in case the workload comes back).
pub struct Subscription {
    key: WorkloadKey,
    view: watch::Receiver<WorkloadView>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Subscription {
    pub fn view(&mut self) -> &mut watch::Receiver<WorkloadView> {
        &mut self.view
    }

    /// Waits until the view is no longer pending, or `timeout` passes.
    pub async fn first_settled(&mut self, timeout: Duration) -> WorkloadView {
        self.first_matching(timeout, |view| !matches!(view.status, ViewStatus::Pending))
            .await
    }

    /// Waits until `ready` holds for the view, or `timeout` passes; returns
    /// the view either way.
    pub async fn first_matching(
        &mut self,
        timeout: Duration,
        ready: impl FnMut(&WorkloadView) -> bool,
    ) -> WorkloadView {
        let settled = tokio::time::timeout(timeout, self.view.wait_for(ready))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|view| view.clone());
        settled.unwrap_or_else(|| self.view.borrow().clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe {
            key: self.key.clone(),
        });
    }
}

/// Cheap-to-clone handle to the cache worker.
#[derive(Clone)]
pub struct SvidCache {
    commands: mpsc::UnboundedSender<Command>,
    policy: watch::Receiver<SharedPolicy>,
    signer: Arc<dyn Signer>,
    clock: Clock,
    jwts: Arc<JwtCache>,
    svid_count: Arc<AtomicUsize>,
    tainted_count: Arc<AtomicUsize>,
    taint_reissues: Arc<AtomicU64>,
}

impl SvidCache {
    /// Starts the worker on the current tokio runtime.
    pub fn spawn(
        config: CacheConfig,
        clock: Clock,
        policy: watch::Receiver<SharedPolicy>,
        signer: Arc<dyn Signer>,
        keys: Arc<dyn KeyFactory>,
    ) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let svid_count = Arc::new(AtomicUsize::new(0));
        let tainted_count = Arc::new(AtomicUsize::new(0));
        let taint_reissues = Arc::new(AtomicU64::new(0));
        // The first policy may already name tainted authorities; later ones
        // arrive through `reevaluate_all`.
        let tainted = policy
            .borrow()
            .as_ref()
            .map(|policy| policy.tainted().clone())
            .unwrap_or_default();
        let worker = Worker {
            svid_count: svid_count.clone(),
            tainted_count: tainted_count.clone(),
            taint_reissues: taint_reissues.clone(),
            tainted,
            warned_tainted: BTreeSet::new(),
            config: config.clone(),
            clock,
            signer: signer.clone(),
            keys,
            policy: policy.clone(),
            commands: receiver,
            workloads: HashMap::new(),
            in_flight: FuturesUnordered::new(),
            last_error: None,
            timers: Timers::default(),
            backlog: VecDeque::new(),
            touched: HashSet::new(),
            held: (0, 0),
            offers: HashMap::new(),
            claimed_pods: HashSet::new(),
        };
        tokio::spawn(worker.run());
        Self {
            commands,
            policy,
            signer,
            clock,
            jwts: Arc::new(JwtCache::new(config.jwt_cache_size)),
            svid_count,
            tainted_count,
            taint_reissues,
        }
    }

    /// X.509-SVIDs currently held, across workloads (for metrics).
    pub fn cached_svids(&self) -> usize {
        self.svid_count.load(Ordering::Relaxed)
    }

    /// X.509-SVIDs currently held that a tainted CA signed (for metrics).
    pub fn svids_on_tainted_authority(&self) -> usize {
        self.tainted_count.load(Ordering::Relaxed)
    }

    /// Re-issues scheduled because of a taint since the cache started (for
    /// metrics).
    pub fn taint_reissues(&self) -> u64 {
        self.taint_reissues.load(Ordering::Relaxed)
    }

    /// Registers interest in `workload`'s X.509-SVIDs.
    pub async fn subscribe(&self, workload: &Attributes) -> Result<Subscription, CacheError> {
        let key = WorkloadKey::of(workload);
        let (reply, receive) = oneshot::channel();
        self.commands
            .send(Command::Subscribe {
                key: key.clone(),
                reply,
            })
            .map_err(|_| CacheError::Stopped)?;
        let view = receive.await.map_err(|_| CacheError::Stopped)?;
        Ok(Subscription {
            key,
            view,
            commands: self.commands.clone(),
        })
    }

    /// Has the SVIDs of the pod whose pod-level attributes are `pod` signed
    /// ahead of its first caller (see the module notes). Again for the same
    /// pod with other attributes (relabelled) replaces what was prepared;
    /// nothing is prepared again for a pod once a caller of it came.
    pub fn prepare_pod(
        &self,
        pod: &Attributes,
        bound_at: Option<SystemTime>,
    ) -> Result<(), CacheError> {
        let Some(pod_uid) = pod.field(Field::KubernetesPodUid) else {
            return Err(CacheError::NoIdentity("a pod without a UID".into()));
        };
        self.commands
            .send(Command::Prepare {
                key: WorkloadKey::of(pod),
                pod_uid: Arc::from(pod_uid),
                bound_at,
            })
            .map_err(|_| CacheError::Stopped)
    }

    /// The pod is gone: what was signed ahead for it is dropped.
    pub fn forget_pod(&self, pod_uid: &str) {
        let _ = self.commands.send(Command::ForgetPod {
            pod_uid: Arc::from(pod_uid),
        });
    }

    /// The identities the current policy gives `workload`.
    pub fn desired_identities(
        &self,
        workload: &Attributes,
    ) -> Result<Vec<DesiredIdentity>, CacheError> {
        let policy = self.policy.borrow().clone().ok_or(CacheError::NoPolicy)?;
        Ok(policy.desired_identities(workload))
    }

    /// Why `workload` has no identity: the policy's reason when it withheld
    /// one, else that nothing applies.
    fn no_identity(&self, workload: &Attributes) -> CacheError {
        let withheld = self
            .policy
            .borrow()
            .as_ref()
            .and_then(|policy| policy.withheld(workload));
        CacheError::NoIdentity(
            withheld.unwrap_or_else(|| "no WorkloadIdentity applies to the workload".into()),
        )
    }

    /// JWT-SVIDs for `audiences`, one per identity (or only `only`).
    ///
    /// Tokens are reused until half their lifetime has passed; when the
    /// issuer cannot be reached, a cached token that has not expired is
    /// served instead of an error.
    pub async fn fetch_jwt(
        &self,
        workload: &Attributes,
        audiences: &[String],
        only: Option<&SpiffeId>,
    ) -> Result<Vec<Arc<SignedJwt>>, CacheError> {
        let policy = self.policy.borrow().clone().ok_or(CacheError::NoPolicy)?;
        let mut desired = policy.desired_identities(workload);
        if let Some(only) = only {
            desired.retain(|identity| &identity.spiffe_id == only);
        }
        if desired.is_empty() {
            return Err(match only {
                Some(id) => CacheError::NoIdentity(format!("the workload is not entitled to {id}")),
                None => self.no_identity(workload),
            });
        }
        self.jwts
            .fetch(
                self.signer.as_ref(),
                &WorkloadKey::of(workload),
                &desired,
                audiences,
                &policy.tainted().jwt,
                self.clock.now(),
            )
            .await
    }

    /// The bundles a workload would receive, without subscribing it (for
    /// validating tokens): its identities' bundles, or `NoIdentity`.
    pub fn bundles_for(&self, workload: &Attributes) -> Result<Arc<WorkloadBundles>, CacheError> {
        let policy = self.policy.borrow().clone().ok_or(CacheError::NoPolicy)?;
        let desired = policy.desired_identities(workload);
        if desired.is_empty() {
            return Err(self.no_identity(workload));
        }
        Ok(policy.bundles_for(&desired))
    }

    /// Waits up to `timeout` for the first policy.
    pub async fn wait_for_policy(&self, timeout: Duration) -> Result<(), CacheError> {
        let mut policy = self.policy.clone();
        match tokio::time::timeout(timeout, policy.wait_for(Option::is_some)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(CacheError::NoPolicy),
        }
    }
}

// === worker ===

#[derive(Debug)]
enum EntryState {
    Idle,
    InFlight,
}

struct Entry {
    desired: DesiredIdentity,
    svid: Option<Arc<IssuedX509>>,
    state: EntryState,
    /// When to (re)request a signature; `None` while denied.
    next_attempt: Option<Instant>,
    backoff: Backoff,
    denial: Option<Denial>,
    failed_since_last_success: bool,
    /// Bumped when the desired identity changes, so late answers for an
    /// outdated request are discarded.
    generation: u64,
    /// Key identifier (lowercase hex) of the CA that signed `svid`.
    svid_authority: Option<String>,
    /// A taint of `svid`'s CA was acted on (its re-issue scheduled, or it
    /// arrived already signed by a tainted CA): acting again on the same
    /// taint would re-issue it twice, or forever while the issuer still
    /// signs with that CA.
    taint_handled: bool,
    /// The attempt and expiry times on the timer heap, so an unchanged one
    /// is not pushed again.
    attempt_timer: Option<Instant>,
    expiry_timer: Option<Instant>,
}

struct Workload {
    attributes: Arc<Attributes>,
    subscribers: usize,
    idle_since: Option<Instant>,
    /// Identity names in policy order (default first).
    order: Vec<String>,
    entries: HashMap<String, Entry>,
    view: watch::Sender<WorkloadView>,
    policy_version: Option<u64>,
    /// The bundles for the current identities; `None` without any.
    bundles: Option<Arc<WorkloadBundles>>,
    /// Why the policy withheld identities for want of an attribute, when
    /// none are desired.
    withheld: Option<String>,
    /// Its SVIDs, and those a tainted CA signed, as last counted.
    counted: (usize, usize),
    /// The eviction time on the timer heap.
    evict_timer: Option<Instant>,
    /// Set when the workload was prepared for a pod ahead of its callers.
    ahead: Option<Ahead>,
}

/// A workload prepared for a pod (see the module notes).
struct Ahead {
    pod_uid: Arc<str>,
    bound_at: Option<SystemTime>,
    /// Still offered to the pod's first caller (in `Worker::offers`).
    offered: bool,
    /// Readiness was reported, or never will be.
    reported: bool,
}

impl Workload {
    fn new(key: &WorkloadKey, ahead: Option<Ahead>) -> Self {
        let (view, _) = watch::channel(WorkloadView::pending());
        Self {
            attributes: key.0.clone(),
            subscribers: 0,
            idle_since: None,
            order: Vec::new(),
            entries: HashMap::new(),
            view,
            policy_version: None,
            bundles: None,
            withheld: None,
            counted: (0, 0),
            evict_timer: None,
            ahead,
        }
    }

    fn any_in_flight(&self) -> bool {
        self.entries
            .values()
            .any(|e| matches!(e.state, EntryState::InFlight))
    }

    /// A prepared workload whose SVIDs went to a caller, kept only until
    /// its requests in flight land.
    fn leftover(&self) -> bool {
        self.ahead.as_ref().is_some_and(|a| !a.offered)
            && self.subscribers == 0
            && self.idle_since.is_none()
    }
}

/// Something to look at when its time comes; checked against the state
/// then (a timer whose reason went away does nothing).
#[derive(Debug)]
enum Timer {
    Attempt { workload: WorkloadKey, name: String },
    Expiry { workload: WorkloadKey, name: String },
    Evict { workload: WorkloadKey },
}

/// A timer on the heap, earliest first (ties in push order).
struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer,
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Order {
        // Reversed: BinaryHeap pops the greatest.
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Order> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Order::Equal
    }
}

impl Eq for Scheduled {}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Scheduled>,
    seq: u64,
}

impl Timers {
    fn push(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            timer,
        });
    }

    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.at)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Scheduled> {
        if self.heap.peek().is_some_and(|s| s.at <= now) {
            self.heap.pop()
        } else {
            None
        }
    }
}

struct InFlightRequest {
    workload: WorkloadKey,
    name: String,
    generation: u64,
    private_key: Zeroizing<Vec<u8>>,
}

struct BatchResult {
    requests: Vec<InFlightRequest>,
    outcome: Result<Vec<SignOutcome<SignedX509>>, SignError>,
}

struct Worker {
    config: CacheConfig,
    clock: Clock,
    signer: Arc<dyn Signer>,
    keys: Arc<dyn KeyFactory>,
    policy: watch::Receiver<SharedPolicy>,
    commands: mpsc::UnboundedReceiver<Command>,
    workloads: HashMap<WorkloadKey, Workload>,
    in_flight: FuturesUnordered<BoxFuture<'static, BatchResult>>,
    last_error: Option<String>,
    svid_count: Arc<AtomicUsize>,
    tainted_count: Arc<AtomicUsize>,
    taint_reissues: Arc<AtomicU64>,
    /// The tainted authorities of the policy in force.
    tainted: TaintedAuthorities,
    /// Tainted CAs the issuer was seen still signing with (warned once).
    warned_tainted: BTreeSet<String>,
    timers: Timers,
    /// Entries whose attempt came due, waiting for room in flight.
    backlog: VecDeque<(WorkloadKey, String)>,
    /// Workloads changed since their view was last published.
    touched: HashSet<WorkloadKey>,
    /// SVIDs held, and those a tainted CA signed, over all workloads.
    held: (usize, usize),
    /// Prepared workloads still offered, by pod UID.
    offers: HashMap<Arc<str>, WorkloadKey>,
    /// Pods a caller came for: not prepared again until they are gone.
    claimed_pods: HashSet<Arc<str>>,
}

impl Worker {
    async fn run(mut self) {
        let mut policy_open = true;
        loop {
            // Timers of what changed first, so an SVID that is due now is
            // asked for before the view without it goes out.
            self.schedule_touched();
            self.fire_due_timers();
            self.dispatch();
            self.publish_touched();
            let deadline = self.timers.next();
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(command) => self.handle(command),
                    // Every handle is gone: nobody can read our state.
                    None => return,
                },
                changed = self.policy.changed(), if policy_open => {
                    if changed.is_err() {
                        policy_open = false;
                    } else {
                        self.reevaluate_all();
                    }
                }
                Some(result) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.apply(result);
                }
                () = sleep_until_or_forever(deadline) => {}
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe { key, reply } => {
                if !self.workloads.contains_key(&key) {
                    let mut fresh = Workload::new(&key, None);
                    let policy = self.policy.borrow().clone();
                    evaluate(&mut fresh, policy.as_deref(), &self.config);
                    self.adopt_offer(&mut fresh);
                    self.workloads.insert(key.clone(), fresh);
                }
                if let Some(workload) = self.workloads.get_mut(&key) {
                    if let Some(ahead) = workload.ahead.as_mut()
                        && ahead.offered
                    {
                        // The prepared workload itself (signet-csi files
                        // mode): it is the caller's now.
                        ahead.offered = false;
                        self.offers.remove(&ahead.pod_uid);
                        self.claimed_pods.insert(ahead.pod_uid.clone());
                    }
                    workload.subscribers += 1;
                    if workload.idle_since.take().is_some() {
                        // Attempts that came due while it was idle were
                        // dropped: put them back.
                        for entry in workload.entries.values_mut() {
                            entry.attempt_timer = None;
                        }
                    }
                    let receiver = workload.view.subscribe();
                    let _ = reply.send(receiver);
                    self.touched.insert(key);
                }
            }
            Command::Unsubscribe { key } => {
                if let Some(workload) = self.workloads.get_mut(&key) {
                    workload.subscribers = workload.subscribers.saturating_sub(1);
                    if workload.subscribers == 0 {
                        workload.idle_since = Some(Instant::now());
                        self.touched.insert(key);
                    }
                }
            }
            Command::Prepare {
                key,
                pod_uid,
                bound_at,
            } => self.prepare(key, pod_uid, bound_at),
            Command::ForgetPod { pod_uid } => {
                self.claimed_pods.remove(&pod_uid);
                if let Some(key) = self.offers.remove(&pod_uid) {
                    self.remove_workload(&key);
                }
            }
        }
    }

    fn prepare(&mut self, key: WorkloadKey, pod_uid: Arc<str>, bound_at: Option<SystemTime>) {
        if self.claimed_pods.contains(&pod_uid) {
            return;
        }
        if let Some(offered) = self.offers.get(&pod_uid) {
            if *offered == key {
                return;
            }
            // The pod changed (relabelled): the old offer goes.
            let offered = offered.clone();
            self.offers.remove(&pod_uid);
            self.remove_workload(&offered);
        }
        if self.workloads.contains_key(&key) {
            // A caller holds exactly this already.
            self.claimed_pods.insert(pod_uid);
            return;
        }
        let mut workload = Workload::new(
            &key,
            Some(Ahead {
                pod_uid: pod_uid.clone(),
                bound_at,
                offered: true,
                reported: false,
            }),
        );
        let policy = self.policy.borrow().clone();
        evaluate(&mut workload, policy.as_deref(), &self.config);
        self.workloads.insert(key.clone(), workload);
        self.offers.insert(pod_uid, key.clone());
        self.touched.insert(key);
    }

    /// Moves to `fresh`, a new caller of a pod with an offer, the SVIDs
    /// signed ahead for exactly the identities its own evaluation wants.
    /// The first caller that takes any ends the offer: a second caller
    /// signs its own. One that wants none of them (a probe, a root shell)
    /// leaves it for the next.
    fn adopt_offer(&mut self, fresh: &mut Workload) {
        let Some(pod_uid) = fresh.attributes.field(Field::KubernetesPodUid) else {
            return;
        };
        let Some(offered) = self.offers.get(pod_uid).cloned() else {
            return;
        };
        // The identities the caller wants exactly as they were signed
        // ahead (same name, SPIFFE ID and fingerprint), with SVIDs in hand.
        let Some(donor) = self.workloads.get(&offered) else {
            return;
        };
        let taken: Vec<String> = fresh
            .entries
            .iter()
            .filter(|(name, entry)| {
                donor.entries.get(*name).is_some_and(|o| {
                    o.desired == entry.desired
                        && o.svid.is_some()
                        && matches!(o.state, EntryState::Idle)
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        if taken.is_empty() {
            return;
        }
        self.offers.remove(pod_uid);
        let Some(mut donor) = self.remove_workload(&offered) else {
            return;
        };
        let mut moved = 0;
        for name in &taken {
            if let (Some(entry), Some(offered)) =
                (fresh.entries.get_mut(name), donor.entries.remove(name))
            {
                entry.svid = offered.svid;
                entry.svid_authority = offered.svid_authority;
                entry.taint_handled = offered.taint_handled;
                entry.next_attempt = offered.next_attempt;
                moved += 1;
            }
        }
        if let Some(ahead) = donor.ahead.as_mut() {
            ahead.offered = false;
            self.claimed_pods.insert(ahead.pod_uid.clone());
            tracing::debug!(pod = %ahead.pod_uid, moved, "SVIDs signed ahead went to the pod's first caller");
        }
        if donor.any_in_flight() {
            // Kept until its answers land, for the readiness report.
            donor.counted = (0, 0);
            self.touched.insert(offered.clone());
            self.workloads.insert(offered, donor);
        }
    }

    /// Removes a workload and its share of the counts.
    fn remove_workload(&mut self, key: &WorkloadKey) -> Option<Workload> {
        let removed = self.workloads.remove(key)?;
        self.held.0 -= removed.counted.0;
        self.held.1 -= removed.counted.1;
        self.touched.remove(key);
        Some(removed)
    }

    fn reevaluate_all(&mut self) {
        let policy = self.policy.borrow_and_update().clone();
        for (key, workload) in &mut self.workloads {
            evaluate(workload, policy.as_deref(), &self.config);
            self.touched.insert(key.clone());
        }
        let tainted = policy
            .as_deref()
            .map(|policy| policy.tainted().clone())
            .unwrap_or_default();
        if tainted != self.tainted {
            self.warned_tainted.retain(|id| tainted.x509.contains(id));
            self.tainted = tainted;
            self.schedule_taint_reissues();
        }
    }

    /// Schedules the re-issue of every held SVID signed by a tainted CA
    /// whose taint was not acted on yet, each at a random point of the
    /// window (never later than its normal renewal).
    fn schedule_taint_reissues(&mut self) {
        if self.tainted.x509.is_empty() {
            return;
        }
        let now = Instant::now();
        let window = self.config.taint_reissue_window;
        let mut scheduled = 0u64;
        for (key, workload) in &mut self.workloads {
            for (name, entry) in &mut workload.entries {
                if entry.taint_handled
                    || entry.svid.is_none()
                    || !entry
                        .svid_authority
                        .as_deref()
                        .is_some_and(|id| self.tainted.x509_tainted(id))
                {
                    continue;
                }
                entry.taint_handled = true;
                // Already being replaced (in flight, or retrying under its
                // own backoff or denial delay): that attempt is the re-issue,
                // and hurrying it would undo the backoff.
                if matches!(entry.state, EntryState::InFlight)
                    || entry.failed_since_last_success
                    || entry.denial.is_some()
                {
                    continue;
                }
                let due = now + uniform(window);
                entry.next_attempt = Some(entry.next_attempt.map_or(due, |at| at.min(due)));
                self.touched.insert(key.clone());
                scheduled += 1;
                tracing::debug!(
                    identity = %name,
                    authority = entry.svid_authority.as_deref().unwrap_or_default(),
                    after = ?due.saturating_duration_since(now),
                    "re-issuing an SVID signed by a tainted authority"
                );
            }
        }
        if scheduled > 0 {
            self.taint_reissues.fetch_add(scheduled, Ordering::Relaxed);
            tracing::info!(
                svids = scheduled,
                window = ?window,
                "re-issuing SVIDs signed by a tainted X.509 authority"
            );
        }
    }

    /// Takes the timers that are due: attempts go to the backlog, expired
    /// SVIDs are dropped, workloads idle for `idle_ttl` are evicted.
    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        let now_wall = self.clock.now();
        while let Some(due) = self.timers.pop_due(now) {
            match due.timer {
                Timer::Attempt { workload, name } => {
                    let Some(entry) = entry_mut(&mut self.workloads, &workload, &name) else {
                        continue;
                    };
                    if entry.attempt_timer == Some(due.at) {
                        entry.attempt_timer = None;
                    }
                    self.backlog.push_back((workload, name));
                }
                Timer::Expiry { workload, name } => {
                    let Some(entry) = entry_mut(&mut self.workloads, &workload, &name) else {
                        continue;
                    };
                    if entry.expiry_timer == Some(due.at) {
                        entry.expiry_timer = None;
                    }
                    let Some(not_after) = entry.svid.as_ref().map(|svid| svid.not_after) else {
                        continue;
                    };
                    if not_after <= now_wall {
                        entry.svid = None;
                        if entry.next_attempt.is_none() && entry.denial.is_none() {
                            entry.next_attempt = Some(now);
                        }
                    }
                    // Not yet (the two clocks disagree by a hair): the
                    // publish below pushes it again.
                    self.touched.insert(workload);
                }
                Timer::Evict { workload } => {
                    let idle_ttl = self.config.idle_ttl;
                    let Some(state) = self.workloads.get_mut(&workload) else {
                        continue;
                    };
                    if state.evict_timer == Some(due.at) {
                        state.evict_timer = None;
                    }
                    let expired = state.subscribers == 0
                        && state
                            .idle_since
                            .is_some_and(|since| now.duration_since(since) >= idle_ttl);
                    if expired {
                        self.remove_workload(&workload);
                    }
                }
            }
        }
    }

    /// Starts signing for the backlog's entries that are still due, in
    /// batches, as far as there is room in flight.
    fn dispatch(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while self.in_flight.len() < self.config.max_in_flight
            && due.len() < self.config.batch_size * self.config.max_in_flight
        {
            let Some((key, name)) = self.backlog.pop_front() else {
                break;
            };
            let Some(workload) = self.workloads.get(&key) else {
                continue;
            };
            // Idle workloads are not renewed: they will be evicted unless a
            // caller comes back, which makes them due again at once.
            if workload.idle_since.is_some() {
                continue;
            }
            let Some(entry) = workload.entries.get(&name) else {
                continue;
            };
            if matches!(entry.state, EntryState::Idle)
                && entry.next_attempt.is_some_and(|at| at <= now)
            {
                due.push((key.clone(), workload.attributes.clone(), name));
            }
        }
        if due.is_empty() {
            return;
        }
        let mut batch: Vec<(X509SignRequest, InFlightRequest)> = Vec::new();
        for (key, attributes, name) in due {
            if self.in_flight.len() >= self.config.max_in_flight {
                // No room after all: back in line, first.
                self.backlog.push_front((key, name));
                continue;
            }
            let Some(entry) = self
                .workloads
                .get_mut(&key)
                .and_then(|w| w.entries.get_mut(&name))
            else {
                continue;
            };
            let material = match self.keys.generate() {
                Ok(material) => material,
                Err(error) => {
                    tracing::error!(%error, "generating a workload key failed");
                    entry.next_attempt = Some(now + entry.backoff.next_delay());
                    self.touched.insert(key);
                    continue;
                }
            };
            entry.state = EntryState::InFlight;
            batch.push((
                X509SignRequest {
                    workload: attributes,
                    workload_identity: name.clone(),
                    csr_der: material.csr_der,
                    public_key: material.public_key,
                },
                InFlightRequest {
                    workload: key,
                    name,
                    generation: entry.generation,
                    private_key: material.private_key,
                },
            ));
            if batch.len() >= self.config.batch_size {
                self.send_batch(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            self.send_batch(batch);
        }
    }

    fn send_batch(&mut self, batch: Vec<(X509SignRequest, InFlightRequest)>) {
        let (requests, tracking): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let call = self.signer.sign_x509(requests);
        self.in_flight.push(Box::pin(async move {
            BatchResult {
                requests: tracking,
                outcome: call.await,
            }
        }));
    }

    fn apply(&mut self, result: BatchResult) {
        let now = Instant::now();
        let outcomes: Vec<Result<SignOutcome<SignedX509>, SignError>> = match result.outcome {
            Ok(outcomes) if outcomes.len() == result.requests.len() => {
                if self.last_error.take().is_some() {
                    self.touched.extend(self.workloads.keys().cloned());
                }
                outcomes.into_iter().map(Ok).collect()
            }
            Ok(outcomes) => {
                let error = SignError::Unavailable(format!(
                    "issuer answered {} results for {} requests",
                    outcomes.len(),
                    result.requests.len()
                ));
                vec![Err(error); result.requests.len()]
            }
            Err(error) => {
                let message = error.to_string();
                if self.last_error.as_deref() != Some(message.as_str()) {
                    // Views of workloads without an SVID carry it.
                    self.touched.extend(self.workloads.keys().cloned());
                }
                self.last_error = Some(message);
                vec![Err(error); result.requests.len()]
            }
        };
        for (request, outcome) in result.requests.into_iter().zip(outcomes) {
            let Some(entry) = self
                .workloads
                .get_mut(&request.workload)
                .and_then(|w| w.entries.get_mut(&request.name))
            else {
                continue;
            };
            self.touched.insert(request.workload.clone());
            entry.state = EntryState::Idle;
            if entry.generation != request.generation {
                // The desired identity changed while this was in flight.
                entry.next_attempt = Some(now);
                continue;
            }
            match outcome {
                Ok(SignOutcome::Issued(signed)) => {
                    let refresh_at = refresh_time(signed.not_before, signed.not_after);
                    let authority = signed
                        .cert_chain
                        .first()
                        .and_then(|leaf| x509_authority(leaf));
                    let tainted = authority
                        .as_deref()
                        .is_some_and(|id| self.tainted.x509_tainted(id));
                    if tainted
                        && let Some(id) = &authority
                        && self.warned_tainted.insert(id.clone())
                    {
                        // Re-issuing again now would only bring another one
                        // like it: it is renewed at its normal time.
                        tracing::warn!(
                            identity = %request.name,
                            authority = %id,
                            "the issuer still signs with a tainted X.509 authority"
                        );
                    }
                    entry.svid_authority = authority;
                    entry.taint_handled = tainted;
                    entry.svid = Some(Arc::new(IssuedX509 {
                        workload_identity: request.name.clone(),
                        spiffe_id: signed.spiffe_id,
                        cert_chain: signed.cert_chain,
                        private_key: request.private_key,
                        hint: signed.hint,
                        not_before: signed.not_before,
                        not_after: signed.not_after,
                        federates_with: signed.federates_with,
                    }));
                    entry.denial = None;
                    entry.backoff.reset();
                    entry.failed_since_last_success = false;
                    entry.next_attempt = Some(self.clock.instant_at(refresh_at));
                }
                Ok(SignOutcome::Denied(denial)) => {
                    tracing::info!(
                        identity = %request.name,
                        reason = %denial.reason,
                        message = %denial.message,
                        "issuer denied the identity"
                    );
                    if denial.retryable {
                        entry.next_attempt = Some(
                            now + jitter(self.config.denial_retry, 0.2)
                                .max(entry.backoff.next_delay()),
                        );
                    } else {
                        // The issuer's word is final: stop serving the identity.
                        entry.svid = None;
                        entry.next_attempt = None;
                    }
                    entry.denial = Some(denial);
                }
                Err(error) => {
                    let delay = entry.backoff.next_delay();
                    tracing::warn!(identity = %request.name, %error, retry_in = ?delay, "signing failed");
                    entry.failed_since_last_success = true;
                    entry.next_attempt = Some(now + delay);
                }
            }
        }
    }

    /// Puts the new times of the workloads that changed on the timer heap.
    fn schedule_touched(&mut self) {
        for key in &self.touched {
            if let Some(workload) = self.workloads.get_mut(key) {
                schedule(&mut self.timers, key, workload, &self.clock, &self.config);
            }
        }
    }

    /// Publishes the views of the workloads that changed, keeps the SVID
    /// counts, and puts their new times on the timer heap.
    fn publish_touched(&mut self) {
        let last_error = self.last_error.clone();
        for key in std::mem::take(&mut self.touched) {
            let Some(workload) = self.workloads.get_mut(&key) else {
                continue;
            };
            report_ready(workload, &self.clock, self.config.on_pod_ready.as_ref());
            if workload.leftover() && !workload.any_in_flight() {
                self.remove_workload(&key);
                continue;
            }
            let counted = count_svids(workload, &self.tainted);
            self.held.0 = self.held.0 + counted.0 - workload.counted.0;
            self.held.1 = self.held.1 + counted.1 - workload.counted.1;
            workload.counted = counted;
            let view = build_view(workload, last_error.as_deref());
            workload.view.send_if_modified(|current| {
                if current.same_content(&view) {
                    false
                } else {
                    *current = view;
                    true
                }
            });
            schedule(&mut self.timers, &key, workload, &self.clock, &self.config);
        }
        self.svid_count.store(self.held.0, Ordering::Relaxed);
        self.tainted_count.store(self.held.1, Ordering::Relaxed);
    }
}

/// Tells the hook once when every SVID signed ahead for a pod is there (a
/// prepared workload that wants none is never reported).
fn report_ready(workload: &mut Workload, clock: &Clock, hook: Option<&PodReadyHook>) {
    let Some(ahead) = workload.ahead.as_mut() else {
        return;
    };
    if ahead.reported || workload.policy_version.is_none() {
        return;
    }
    if workload.entries.is_empty() {
        ahead.reported = true;
        return;
    }
    // Settled: signed, or refused for good (the issuer may know better
    // than the local policy).
    let settled = workload.entries.values().all(|e| {
        matches!(e.state, EntryState::Idle)
            && (e.svid.is_some() || e.denial.as_ref().is_some_and(|d| !d.retryable))
    });
    if !settled {
        return;
    }
    ahead.reported = true;
    let svids = workload
        .entries
        .values()
        .filter(|e| e.svid.is_some())
        .count();
    let ready = PodReady {
        pod_uid: ahead.pod_uid.clone(),
        bound_at: ahead.bound_at,
        ready_at: clock.now(),
        svids,
    };
    if svids > 0
        && let Some(hook) = hook
    {
        (hook.0)(&ready);
    }
}

/// The entry `name` of `workload`, if both are still there.
fn entry_mut<'a>(
    workloads: &'a mut HashMap<WorkloadKey, Workload>,
    workload: &WorkloadKey,
    name: &str,
) -> Option<&'a mut Entry> {
    workloads.get_mut(workload)?.entries.get_mut(name)
}

/// SVIDs `workload` holds, and how many of them a tainted CA signed.
fn count_svids(workload: &Workload, tainted: &TaintedAuthorities) -> (usize, usize) {
    let mut counted = (0, 0);
    for entry in workload.entries.values().filter(|e| e.svid.is_some()) {
        counted.0 += 1;
        if entry
            .svid_authority
            .as_deref()
            .is_some_and(|id| tainted.x509_tainted(id))
        {
            counted.1 += 1;
        }
    }
    counted
}

/// Pushes `workload`'s attempt, expiry and eviction times that are not on
/// the heap yet.
fn schedule(
    timers: &mut Timers,
    key: &WorkloadKey,
    workload: &mut Workload,
    clock: &Clock,
    config: &CacheConfig,
) {
    let evict_at = workload.idle_since.map(|since| since + config.idle_ttl);
    if evict_at.is_some() && workload.evict_timer != evict_at {
        workload.evict_timer = evict_at;
        if let Some(at) = evict_at {
            timers.push(
                at,
                Timer::Evict {
                    workload: key.clone(),
                },
            );
        }
    }
    // In policy order, so a workload's identities are asked for in it.
    for name in &workload.order {
        let Some(entry) = workload.entries.get_mut(name) else {
            continue;
        };
        let attempt_at = match entry.state {
            EntryState::Idle => entry.next_attempt,
            EntryState::InFlight => None,
        };
        if let Some(at) = attempt_at
            && entry.attempt_timer != Some(at)
        {
            entry.attempt_timer = Some(at);
            timers.push(
                at,
                Timer::Attempt {
                    workload: key.clone(),
                    name: name.clone(),
                },
            );
        }
        if let Some(svid) = &entry.svid {
            let at = clock.instant_at(svid.not_after);
            if entry.expiry_timer != Some(at) {
                entry.expiry_timer = Some(at);
                timers.push(
                    at,
                    Timer::Expiry {
                        workload: key.clone(),
                        name: name.clone(),
                    },
                );
            }
        }
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Half-life with ±10 % jitter, as SPIRE rotates.
fn refresh_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + jitter(lifetime / 2, 0.2)
}

/// Aligns a workload's entries with what the policy wants now.
fn evaluate(
    workload: &mut Workload,
    policy: Option<&dyn super::seams::PolicyView>,
    config: &CacheConfig,
) {
    let Some(policy) = policy else {
        return;
    };
    let desired = policy.desired_identities(&workload.attributes);
    workload.withheld = if desired.is_empty() {
        policy.withheld(&workload.attributes)
    } else {
        None
    };
    workload.policy_version = Some(policy.version());
    workload.bundles = (!desired.is_empty()).then(|| policy.bundles_for(&desired));
    let now = Instant::now();
    let mut order = Vec::with_capacity(desired.len());
    let mut entries = std::mem::take(&mut workload.entries);
    for identity in desired {
        order.push(identity.name.clone());
        match entries.remove(&identity.name) {
            Some(mut entry) => {
                if entry.desired != identity {
                    if entry.desired.spiffe_id != identity.spiffe_id {
                        // A different identity now: the old one must go.
                        entry.svid = None;
                    }
                    entry.desired = identity.clone();
                    entry.generation += 1;
                    entry.next_attempt = Some(now);
                }
                if entry.denial.take().is_some() {
                    // A new policy may allow what the old one refused.
                    entry.next_attempt = Some(now);
                }
                workload.entries.insert(identity.name, entry);
            }
            None => {
                workload.entries.insert(
                    identity.name.clone(),
                    Entry {
                        desired: identity,
                        svid: None,
                        state: EntryState::Idle,
                        next_attempt: Some(now),
                        backoff: Backoff::new(config.initial_backoff, config.max_backoff),
                        denial: None,
                        failed_since_last_success: false,
                        generation: 0,
                        svid_authority: None,
                        taint_handled: false,
                        attempt_timer: None,
                        expiry_timer: None,
                    },
                );
            }
        }
    }
    workload.order = order;
}

fn build_view(workload: &Workload, last_error: Option<&str>) -> WorkloadView {
    let Some(policy_version) = workload.policy_version else {
        return WorkloadView::pending();
    };
    let svids: Vec<Arc<IssuedX509>> = workload
        .order
        .iter()
        .filter_map(|name| workload.entries.get(name)?.svid.clone())
        .collect();
    let entries: Vec<&Entry> = workload
        .order
        .iter()
        .filter_map(|name| workload.entries.get(name))
        .collect();
    let status = if !svids.is_empty() {
        ViewStatus::Ready
    } else if entries.is_empty() {
        ViewStatus::NoIdentity {
            reason: workload
                .withheld
                .clone()
                .unwrap_or_else(|| "no WorkloadIdentity applies to the workload".into()),
        }
    } else if entries
        .iter()
        .all(|e| e.denial.as_ref().is_some_and(|d| !d.retryable))
    {
        let message = entries
            .iter()
            .find_map(|e| e.denial.as_ref())
            .map(|d| format!("{}: {}", d.reason, d.message))
            .unwrap_or_default();
        ViewStatus::NoIdentity { reason: message }
    } else if entries.iter().any(|e| e.failed_since_last_success) {
        ViewStatus::Unavailable {
            message: last_error
                .unwrap_or("the issuer could not be reached")
                .to_owned(),
        }
    } else {
        ViewStatus::Pending
    };
    WorkloadView {
        status,
        svids,
        bundles: workload.bundles.clone(),
        policy_version: Some(policy_version),
    }
}
