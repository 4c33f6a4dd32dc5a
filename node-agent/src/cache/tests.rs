//! Cache behaviour under paused tokio time, with a scripted issuer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use signet_identity::{
    KeyType, PrivateKey, PublicKey, SpiffeId, TrustBundle, TrustDomain, X509Ca, X509SvidParams,
};
use signet_policy::{Attributes, Field};
use signet_runtime::clock::Clock;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::*;

const TD: &str = "example.org";

fn start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).unwrap()
}

fn workload(uid: &str, pid: &str) -> Attributes {
    let mut attributes = Attributes::default();
    attributes.set(Field::UnixUid, uid);
    attributes.set(Field::UnixPid, pid);
    attributes
}

/// Gives every workload with uid 1000 the identities listed, in order.
struct FakePolicy {
    version: u64,
    identities: Vec<(&'static str, &'static str)>,
    tainted: TaintedAuthorities,
}

fn fake_policy(version: u64, identities: Vec<(&'static str, &'static str)>) -> SharedPolicy {
    tainted_policy(version, identities, TaintedAuthorities::default())
}

fn tainted_policy(
    version: u64,
    identities: Vec<(&'static str, &'static str)>,
    tainted: TaintedAuthorities,
) -> SharedPolicy {
    Some(Arc::new(FakePolicy {
        version,
        identities,
        tainted,
    }))
}

impl PolicyView for FakePolicy {
    fn version(&self) -> u64 {
        self.version
    }

    fn desired_identities(&self, workload: &Attributes) -> Vec<DesiredIdentity> {
        // uid 1000 anywhere; in the "shop" namespace any caller but root
        // (and the pod itself, with no process yet).
        let entitled = workload.field(Field::UnixUid) == Some("1000")
            || (workload.field(Field::KubernetesNamespace) == Some("shop")
                && workload.field(Field::UnixUid) != Some("0"));
        if !entitled {
            return Vec::new();
        }
        self.identities
            .iter()
            .map(|(name, path)| DesiredIdentity {
                name: (*name).into(),
                spiffe_id: id(path),
                fingerprint: 1,
                federates_with: Vec::new(),
            })
            .collect()
    }

    fn bundles_for(&self, _identities: &[DesiredIdentity]) -> Arc<WorkloadBundles> {
        Arc::new(WorkloadBundles {
            own: TrustBundle::new(TrustDomain::new(TD).unwrap()),
            federated: Vec::new(),
        })
    }

    fn tainted(&self) -> &TaintedAuthorities {
        &self.tainted
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Issue,
    Unavailable,
    Deny { retryable: bool },
}

struct FakeSigner {
    clock: Clock,
    ttl: Duration,
    mode: StdMutex<Mode>,
    x509_calls: StdMutex<Vec<Vec<String>>>,
    /// When each of `x509_calls` was made.
    x509_call_times: StdMutex<Vec<SystemTime>>,
    jwt_calls: StdMutex<usize>,
    serial: StdMutex<u64>,
    /// Signs real certificates with this CA when set (else placeholder
    /// bytes, which name no authority).
    ca: StdMutex<Option<Arc<X509Ca>>>,
    /// The `kid` JWT-SVID headers name.
    jwt_kid: StdMutex<String>,
}

impl FakeSigner {
    fn new(clock: Clock, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            clock,
            ttl,
            mode: StdMutex::new(Mode::Issue),
            x509_calls: StdMutex::new(Vec::new()),
            x509_call_times: StdMutex::new(Vec::new()),
            jwt_calls: StdMutex::new(0),
            serial: StdMutex::new(0),
            ca: StdMutex::new(None),
            jwt_kid: StdMutex::new("k1".into()),
        })
    }

    fn sign_with(&self, ca: &Arc<X509Ca>) {
        *self.ca.lock().unwrap() = Some(ca.clone());
    }

    fn set_jwt_kid(&self, kid: &str) {
        *self.jwt_kid.lock().unwrap() = kid.into();
    }

    /// (when, identity) of every X.509 request from call `from` on.
    fn x509_requests_since(&self, from: usize) -> Vec<(SystemTime, String)> {
        let calls = self.x509_calls.lock().unwrap();
        let times = self.x509_call_times.lock().unwrap();
        calls
            .iter()
            .zip(times.iter())
            .skip(from)
            .flat_map(|(names, at)| names.iter().map(|name| (*at, name.clone())))
            .collect()
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn x509_calls(&self) -> Vec<Vec<String>> {
        self.x509_calls.lock().unwrap().clone()
    }

    fn path_for(name: &str) -> String {
        format!("/{name}")
    }
}

impl Signer for FakeSigner {
    fn sign_x509(
        &self,
        requests: Vec<X509SignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedX509>>, SignError>> {
        self.x509_calls.lock().unwrap().push(
            requests
                .iter()
                .map(|r| r.workload_identity.clone())
                .collect(),
        );
        self.x509_call_times.lock().unwrap().push(self.clock.now());
        let mode = *self.mode.lock().unwrap();
        let now = self.clock.now();
        let ttl = self.ttl;
        let ca = self.ca.lock().unwrap().clone();
        let mut serial = self.serial.lock().unwrap();
        let outcomes: Result<Vec<_>, _> = match mode {
            Mode::Unavailable => Err(SignError::Unavailable("connection refused".into())),
            Mode::Deny { retryable } => Ok(requests
                .iter()
                .map(|_| {
                    SignOutcome::Denied(Denial {
                        reason: "role_denied".into(),
                        message: "no role allows it".into(),
                        retryable,
                    })
                })
                .collect()),
            Mode::Issue => Ok(requests
                .iter()
                .map(|r| {
                    *serial += 1;
                    let spiffe_id = id(&Self::path_for(&r.workload_identity));
                    let leaf = match &ca {
                        Some(ca) => ca
                            .mint_svid(
                                &X509SvidParams::new(spiffe_id.clone(), ttl),
                                &r.public_key,
                                now,
                            )
                            .unwrap()
                            .cert_chain[0]
                            .to_vec(),
                        None => serial.to_be_bytes().to_vec(),
                    };
                    SignOutcome::Issued(SignedX509 {
                        spiffe_id,
                        cert_chain: vec![leaf],
                        hint: None,
                        not_before: now,
                        not_after: now + ttl,
                        federates_with: Vec::new(),
                    })
                })
                .collect()),
        };
        Box::pin(async move { outcomes })
    }

    fn sign_jwt(
        &self,
        requests: Vec<JwtSignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedJwt>>, SignError>> {
        *self.jwt_calls.lock().unwrap() += 1;
        let mode = *self.mode.lock().unwrap();
        let now = self.clock.now();
        let kid = self.jwt_kid.lock().unwrap().clone();
        let header = URL_SAFE_NO_PAD
            .encode(serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"}).to_string());
        let outcomes: Result<Vec<_>, _> = match mode {
            Mode::Issue => Ok(requests
                .iter()
                .map(|r| {
                    SignOutcome::Issued(SignedJwt {
                        workload_identity: r.workload_identity.clone(),
                        spiffe_id: id(&Self::path_for(&r.workload_identity)),
                        token: format!(
                            "{header}.{}.c2ln",
                            URL_SAFE_NO_PAD.encode(format!("{}-{now:?}", r.workload_identity))
                        ),
                        hint: None,
                        issued_at: now,
                        expires_at: now + Duration::from_secs(300),
                    })
                })
                .collect()),
            Mode::Unavailable => Err(SignError::Unavailable("down".into())),
            Mode::Deny { retryable } => Ok(requests
                .iter()
                .map(|_| {
                    SignOutcome::Denied(Denial {
                        reason: "role_denied".into(),
                        message: "denied".into(),
                        retryable,
                    })
                })
                .collect()),
        };
        Box::pin(async move { outcomes })
    }
}

struct FakeKeys;

impl KeyFactory for FakeKeys {
    fn generate(&self) -> Result<KeyMaterial, String> {
        // The scripted issuer never looks at keys: one real public key will do.
        static KEY: std::sync::OnceLock<PublicKey> = std::sync::OnceLock::new();
        let public_key = KEY
            .get_or_init(|| {
                PrivateKey::generate(KeyType::EcP256)
                    .unwrap()
                    .public_key()
                    .clone()
            })
            .clone();
        Ok(KeyMaterial {
            private_key: Zeroizing::new(vec![7; 32]),
            public_key,
            csr_der: vec![1, 2, 3],
        })
    }
}

struct Harness {
    cache: SvidCache,
    signer: Arc<FakeSigner>,
    policy: watch::Sender<SharedPolicy>,
}

fn harness(identities: Vec<(&'static str, &'static str)>) -> Harness {
    harness_with(CacheConfig::default(), identities)
}

fn harness_with(config: CacheConfig, identities: Vec<(&'static str, &'static str)>) -> Harness {
    let clock = Clock::starting_at(start());
    let signer = FakeSigner::new(clock, Duration::from_secs(3600));
    let (policy_tx, policy_rx) = watch::channel(fake_policy(1, identities));
    let cache = SvidCache::spawn(config, clock, policy_rx, signer.clone(), Arc::new(FakeKeys));
    Harness {
        cache,
        signer,
        policy: policy_tx,
    }
}

async fn settled(subscription: &mut Subscription) -> WorkloadView {
    subscription.first_settled(Duration::from_secs(60)).await
}

async fn next_change(subscription: &mut Subscription) -> WorkloadView {
    subscription.view().changed().await.unwrap();
    subscription.view().borrow_and_update().clone()
}

#[tokio::test(start_paused = true)]
async fn issues_in_policy_order_and_shares_between_processes() {
    let h = harness(vec![("web", "/web"), ("admin", "/admin")]);
    let mut first = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let view = settled(&mut first).await;
    assert_eq!(view.status, ViewStatus::Ready);
    let ids: Vec<_> = view.svids.iter().map(|s| s.spiffe_id.to_string()).collect();
    assert_eq!(
        ids,
        ["spiffe://example.org/web", "spiffe://example.org/admin"]
    );
    assert_eq!(
        h.signer.x509_calls(),
        vec![vec!["web".to_string(), "admin".to_string()]]
    );

    // Another process with the same attributes (but another PID) is served
    // from the cache.
    let mut second = h.cache.subscribe(&workload("1000", "11")).await.unwrap();
    let again = settled(&mut second).await;
    assert!(Arc::ptr_eq(&again.svids[0], &view.svids[0]));
    assert_eq!(h.signer.x509_calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn workload_without_identity_is_told_so() {
    let h = harness(vec![("web", "/web")]);
    let mut subscription = h.cache.subscribe(&workload("0", "1")).await.unwrap();
    let view = settled(&mut subscription).await;
    assert!(matches!(view.status, ViewStatus::NoIdentity { .. }));
    assert!(h.signer.x509_calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_and_pushes_the_new_svid() {
    let h = harness(vec![("web", "/web")]);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let first = settled(&mut subscription).await;
    let first_not_after = first.svids[0].not_after;
    let renewed = next_change(&mut subscription).await;
    // Renewed between 40 % and 60 % of the one-hour lifetime.
    let renewed_at = renewed.svids[0].not_before;
    let elapsed = renewed_at
        .duration_since(first.svids[0].not_before)
        .unwrap();
    assert!(
        elapsed >= Duration::from_secs(1440) && elapsed <= Duration::from_secs(2160),
        "renewed after {elapsed:?}"
    );
    assert!(renewed.svids[0].not_after > first_not_after);
    assert_eq!(h.signer.x509_calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn keeps_serving_while_the_issuer_is_down_then_reports_unavailable() {
    let h = harness(vec![("web", "/web")]);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let first = settled(&mut subscription).await;
    h.signer.set_mode(Mode::Unavailable);

    // Renewal attempts fail, but the SVID stays until it expires.
    let next = next_change(&mut subscription).await;
    assert_eq!(
        next.status,
        ViewStatus::Unavailable {
            message: "issuer unavailable: connection refused".into()
        }
    );
    assert!(next.svids.is_empty());
    let now = h.signer.clock.now();
    assert!(now >= first.svids[0].not_after, "dropped only at expiry");
    assert!(
        h.signer.x509_calls().len() > 3,
        "retried with backoff meanwhile"
    );

    // The issuer comes back: the next retry succeeds.
    h.signer.set_mode(Mode::Issue);
    let back = next_change(&mut subscription).await;
    assert_eq!(back.status, ViewStatus::Ready);
}

#[tokio::test(start_paused = true)]
async fn policy_change_revokes_and_grants() {
    let h = harness(vec![("web", "/web"), ("admin", "/admin")]);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    assert_eq!(settled(&mut subscription).await.svids.len(), 2);

    h.policy
        .send(fake_policy(2, vec![("admin", "/admin")]))
        .unwrap();
    let view = next_change(&mut subscription).await;
    let ids: Vec<_> = view
        .svids
        .iter()
        .map(|s| s.workload_identity.clone())
        .collect();
    assert_eq!(ids, ["admin"]);
    assert_eq!(view.policy_version, Some(2));

    h.policy.send(fake_policy(3, vec![])).unwrap();
    let view = next_change(&mut subscription).await;
    assert!(view.svids.is_empty());
    assert!(matches!(view.status, ViewStatus::NoIdentity { .. }));
}

#[tokio::test(start_paused = true)]
async fn final_denial_means_no_identity_and_retryable_denial_is_retried() {
    let h = harness(vec![("web", "/web")]);
    h.signer.set_mode(Mode::Deny { retryable: false });
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let view = settled(&mut subscription).await;
    assert!(
        matches!(view.status, ViewStatus::NoIdentity { ref reason } if reason.contains("role_denied"))
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        h.signer.x509_calls().len(),
        1,
        "a final denial is not retried"
    );

    let h = harness(vec![("web", "/web")]);
    h.signer.set_mode(Mode::Deny { retryable: true });
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.signer.set_mode(Mode::Issue);
    let view = settled(&mut subscription).await;
    assert_eq!(view.status, ViewStatus::Ready);
    assert!(h.signer.x509_calls().len() >= 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_workloads_are_signed_in_one_batch() {
    let h = harness(vec![("web", "/web")]);
    let mut a = workload("1000", "1");
    a.set(Field::UnixBinaryPath, "/bin/a");
    let mut b = workload("1000", "2");
    b.set(Field::UnixBinaryPath, "/bin/b");
    let mut sub_a = h.cache.subscribe(&a).await.unwrap();
    let mut sub_b = h.cache.subscribe(&b).await.unwrap();
    let (view_a, view_b) = tokio::join!(settled(&mut sub_a), settled(&mut sub_b));
    assert_eq!(view_a.status, ViewStatus::Ready);
    assert_eq!(view_b.status, ViewStatus::Ready);
    // Distinct workloads get distinct SVIDs (and keys)...
    assert!(!Arc::ptr_eq(&view_a.svids[0], &view_b.svids[0]));
    // ...requested together.
    let calls = h.signer.x509_calls();
    assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 2);
    assert!(calls.len() <= 2);
}

#[tokio::test(start_paused = true)]
async fn idle_workloads_are_evicted() {
    let h = harness(vec![("web", "/web")]);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    settled(&mut subscription).await;
    drop(subscription);
    // Within the idle period the cache answers without the issuer.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut back = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    settled(&mut back).await;
    assert_eq!(h.signer.x509_calls().len(), 1);
    drop(back);
    // After it, the workload is forgotten and re-issued on its next call.
    tokio::time::sleep(Duration::from_secs(301)).await;
    let mut later = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    settled(&mut later).await;
    assert_eq!(h.signer.x509_calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn jwt_svids_are_cached_until_half_life_and_served_while_issuer_is_down() {
    let h = harness(vec![("web", "/web")]);
    let attrs = workload("1000", "10");
    let audiences = vec!["vault".to_string()];
    let first = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    let again = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_eq!(first[0].token, again[0].token);
    assert_eq!(*h.signer.jwt_calls.lock().unwrap(), 1);

    // Past half-life a fresh token is minted.
    tokio::time::advance(Duration::from_secs(151)).await;
    let fresh = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_ne!(fresh[0].token, first[0].token);

    // Issuer down: the cached, unexpired token is served.
    tokio::time::advance(Duration::from_secs(151)).await;
    h.signer.set_mode(Mode::Unavailable);
    let cached = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_eq!(cached[0].token, fresh[0].token);
    // Once it expires, the error surfaces.
    tokio::time::advance(Duration::from_secs(300)).await;
    assert!(matches!(
        h.cache.fetch_jwt(&attrs, &audiences, None).await,
        Err(CacheError::Sign(SignError::Unavailable(_)))
    ));
}

#[tokio::test(start_paused = true)]
async fn jwt_filter_by_spiffe_id_and_entitlement() {
    let h = harness(vec![("web", "/web"), ("admin", "/admin")]);
    let attrs = workload("1000", "10");
    let audiences = vec!["a".to_string()];
    let only_admin = h
        .cache
        .fetch_jwt(&attrs, &audiences, Some(&id("/admin")))
        .await
        .unwrap();
    assert_eq!(only_admin.len(), 1);
    assert_eq!(only_admin[0].spiffe_id, id("/admin"));
    assert!(matches!(
        h.cache
            .fetch_jwt(&attrs, &audiences, Some(&id("/other")))
            .await,
        Err(CacheError::NoIdentity(_))
    ));
    assert!(matches!(
        h.cache
            .fetch_jwt(&workload("0", "1"), &audiences, None)
            .await,
        Err(CacheError::NoIdentity(_))
    ));
}

// === tainted authorities ===

fn ca() -> Arc<X509Ca> {
    let td = TrustDomain::new(TD).unwrap();
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    Arc::new(X509Ca::self_signed(&td, key, Duration::from_secs(30 * 86_400), start()).unwrap())
}

fn x509_taint(cas: &[&Arc<X509Ca>]) -> TaintedAuthorities {
    TaintedAuthorities::new(cas.iter().map(|ca| ca.key_id_hex()), Vec::<String>::new())
}

/// The key identifier of the CA that signed each SVID of the view.
fn authorities(view: &WorkloadView) -> Vec<Option<String>> {
    view.svids
        .iter()
        .map(|svid| x509_authority(&svid.cert_chain[0]))
        .collect()
}

fn all_signed_by(view: &WorkloadView, ca: &X509Ca, count: usize) -> bool {
    view.svids.len() == count
        && authorities(view)
            .iter()
            .all(|id| id.as_deref() == Some(ca.key_id_hex().as_str()))
}

const EIGHT: [(&str, &str); 8] = [
    ("a", "/a"),
    ("b", "/b"),
    ("c", "/c"),
    ("d", "/d"),
    ("e", "/e"),
    ("f", "/f"),
    ("g", "/g"),
    ("h", "/h"),
];

fn window_config(window: Duration) -> CacheConfig {
    CacheConfig {
        taint_reissue_window: window,
        ..CacheConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn svids_of_a_tainted_ca_are_reissued_spread_over_the_window() {
    let window = Duration::from_secs(30);
    let h = harness_with(window_config(window), EIGHT.to_vec());
    let (old, new) = (ca(), ca());
    h.signer.sign_with(&old);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let first = settled(&mut subscription).await;
    assert!(all_signed_by(&first, &old, 8), "{:?}", authorities(&first));
    assert_eq!(h.cache.svids_on_tainted_authority(), 0);

    // The operator rotated to `new` and taints `old` (named in upper case:
    // hex compares case-insensitively).
    h.signer.sign_with(&new);
    let before = h.signer.x509_calls().len();
    let tainted_at = h.signer.clock.now();
    let taint = TaintedAuthorities::new([old.key_id_hex().to_uppercase()], Vec::<String>::new());
    h.policy
        .send(tainted_policy(2, EIGHT.to_vec(), taint.clone()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Known at once, but not all re-issued at once: each waits its jitter.
    assert!(h.cache.svids_on_tainted_authority() > 0);
    assert!(h.signer.x509_requests_since(before).len() < 8);

    // The same taint again (the stream resends its state) reschedules
    // nothing.
    h.policy
        .send(tainted_policy(3, EIGHT.to_vec(), taint.clone()))
        .unwrap();

    let done = subscription
        .first_matching(window * 2, |view| all_signed_by(view, &new, 8))
        .await;
    assert!(all_signed_by(&done, &new, 8), "{:?}", authorities(&done));
    assert!(
        h.signer.clock.now() < tainted_at + window,
        "all re-issued within the window"
    );
    let reissued = h.signer.x509_requests_since(before);
    let by_name: BTreeMap<&str, SystemTime> = reissued
        .iter()
        .map(|(at, name)| (name.as_str(), *at))
        .collect();
    assert_eq!(reissued.len(), 8, "each once: {reissued:?}");
    assert_eq!(by_name.len(), 8, "{reissued:?}");
    assert!(
        by_name
            .values()
            .all(|at| *at >= tainted_at && *at < tainted_at + window),
        "{reissued:?}"
    );
    let distinct: BTreeSet<&SystemTime> = by_name.values().collect();
    assert!(distinct.len() >= 2, "spread out: {reissued:?}");
    assert_eq!(h.cache.taint_reissues(), 8);
    assert_eq!(h.cache.svids_on_tainted_authority(), 0);

    // Once more, after the re-issue: nothing is due before half-life.
    h.policy
        .send(tainted_policy(4, EIGHT.to_vec(), taint))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(h.signer.x509_requests_since(before).len(), 8);
    assert_eq!(h.cache.taint_reissues(), 8);
}

#[tokio::test(start_paused = true)]
async fn with_no_window_reissue_is_immediate_and_a_still_tainted_issuer_is_not_looped_on() {
    let h = harness_with(
        window_config(Duration::ZERO),
        vec![("web", "/web"), ("db", "/db")],
    );
    let old = ca();
    h.signer.sign_with(&old);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let first = settled(&mut subscription).await;
    assert!(all_signed_by(&first, &old, 2));

    // The issuer has not rotated yet: it keeps signing with `old`.
    let before = h.signer.x509_calls().len();
    let tainted_at = h.signer.clock.now();
    h.policy
        .send(tainted_policy(
            2,
            vec![("web", "/web"), ("db", "/db")],
            x509_taint(&[&old]),
        ))
        .unwrap();
    let next = next_change(&mut subscription).await;
    assert!(all_signed_by(&next, &old, 2));
    assert!(!Arc::ptr_eq(&next.svids[0], &first.svids[0]));
    let reissued = h.signer.x509_requests_since(before);
    assert_eq!(reissued.len(), 2);
    assert!(
        reissued.iter().all(|(at, _)| *at == tainted_at),
        "{reissued:?}"
    );
    assert_eq!(h.signer.x509_calls().len(), before + 1, "in one batch");

    // Re-issuing would only bring another SVID of the tainted CA: they wait
    // for their normal renewal, even when another id is tainted later.
    tokio::time::sleep(Duration::from_secs(600)).await;
    h.policy
        .send(tainted_policy(
            3,
            vec![("web", "/web"), ("db", "/db")],
            x509_taint(&[&old, &ca()]),
        ))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(h.signer.x509_requests_since(before).len(), 2);
    assert_eq!(h.cache.taint_reissues(), 2);
    assert_eq!(h.cache.svids_on_tainted_authority(), 2);
}

#[tokio::test(start_paused = true)]
async fn only_svids_of_a_newly_tainted_ca_are_reissued() {
    let window = Duration::from_secs(30);
    let h = harness_with(window_config(window), vec![("web", "/web")]);
    let (first_ca, second_ca, third_ca) = (ca(), ca(), ca());
    let mut a = workload("1000", "1");
    a.set(Field::UnixBinaryPath, "/bin/a");
    let mut b = workload("1000", "2");
    b.set(Field::UnixBinaryPath, "/bin/b");
    h.signer.sign_with(&first_ca);
    let mut sub_a = h.cache.subscribe(&a).await.unwrap();
    let view_a = settled(&mut sub_a).await;
    h.signer.sign_with(&second_ca);
    let mut sub_b = h.cache.subscribe(&b).await.unwrap();
    let view_b = settled(&mut sub_b).await;
    assert!(all_signed_by(&view_a, &first_ca, 1));
    assert!(all_signed_by(&view_b, &second_ca, 1));
    h.signer.sign_with(&third_ca);
    let identities = || vec![("web", "/web")];

    // Tainting the first CA re-issues a's SVID only.
    h.policy
        .send(tainted_policy(2, identities(), x509_taint(&[&first_ca])))
        .unwrap();
    tokio::time::sleep(window).await;
    let now_a = sub_a.view().borrow().clone();
    let now_b = sub_b.view().borrow().clone();
    assert!(all_signed_by(&now_a, &third_ca, 1));
    assert!(
        Arc::ptr_eq(&now_b.svids[0], &view_b.svids[0]),
        "b untouched"
    );
    assert_eq!(h.cache.taint_reissues(), 1);

    // The second CA is tainted too: b's SVID follows; a's (now from the
    // third CA) stays.
    h.policy
        .send(tainted_policy(
            3,
            identities(),
            x509_taint(&[&first_ca, &second_ca]),
        ))
        .unwrap();
    tokio::time::sleep(window).await;
    let later_a = sub_a.view().borrow().clone();
    let later_b = sub_b.view().borrow().clone();
    assert!(all_signed_by(&later_b, &third_ca, 1));
    assert!(
        Arc::ptr_eq(&later_a.svids[0], &now_a.svids[0]),
        "a untouched"
    );
    assert_eq!(h.cache.taint_reissues(), 2);

    // A taint lifted (the authority revoked) needs nothing.
    h.policy
        .send(tainted_policy(4, identities(), x509_taint(&[&second_ca])))
        .unwrap();
    tokio::time::sleep(window).await;
    assert_eq!(h.signer.x509_calls().len(), 4);
    assert_eq!(h.cache.svids_on_tainted_authority(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_long_window_never_delays_the_normal_renewal() {
    // One-hour SVIDs renew at most 36 minutes in; a two-hour window must
    // not push any re-issue past that.
    let h = harness_with(
        window_config(Duration::from_secs(7200)),
        EIGHT[..4].to_vec(),
    );
    let (old, new) = (ca(), ca());
    h.signer.sign_with(&old);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let first = settled(&mut subscription).await;
    let issued = first.svids[0].not_before;
    h.signer.sign_with(&new);
    h.policy
        .send(tainted_policy(2, EIGHT[..4].to_vec(), x509_taint(&[&old])))
        .unwrap();
    let done = subscription
        .first_matching(Duration::from_secs(7200), |view| {
            all_signed_by(view, &new, 4)
        })
        .await;
    assert!(all_signed_by(&done, &new, 4));
    let elapsed = h.signer.clock.now().duration_since(issued).unwrap();
    assert!(elapsed <= Duration::from_secs(2160), "after {elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_jwt_svid_of_a_tainted_key_is_not_served_from_the_cache() {
    let h = harness(vec![("web", "/web")]);
    let attrs = workload("1000", "10");
    let audiences = vec!["vault".to_string()];
    let kid = |jwt: &SignedJwt| super::taint::jwt_key_id(&jwt.token);
    let first = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_eq!(kid(&first[0]).as_deref(), Some("k1"));
    let again = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_eq!(again[0].token, first[0].token);
    assert_eq!(*h.signer.jwt_calls.lock().unwrap(), 1);

    // k1 is tainted; the issuer signs with k2 now.
    h.signer.set_jwt_kid("k2");
    let jwt_taint =
        |kids: &[&str]| TaintedAuthorities::new(Vec::<String>::new(), kids.iter().copied());
    h.policy
        .send(tainted_policy(2, vec![("web", "/web")], jwt_taint(&["k1"])))
        .unwrap();
    tokio::task::yield_now().await;
    let fresh = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_ne!(fresh[0].token, first[0].token);
    assert_eq!(kid(&fresh[0]).as_deref(), Some("k2"));
    assert_eq!(*h.signer.jwt_calls.lock().unwrap(), 2);
    // A token of an untainted key is still reused.
    let reused = h.cache.fetch_jwt(&attrs, &audiences, None).await.unwrap();
    assert_eq!(reused[0].token, fresh[0].token);
    assert_eq!(*h.signer.jwt_calls.lock().unwrap(), 2);

    // With the issuer down, a token of a tainted key is not served in its
    // stead either.
    h.policy
        .send(tainted_policy(
            3,
            vec![("web", "/web")],
            jwt_taint(&["k1", "k2"]),
        ))
        .unwrap();
    h.signer.set_mode(Mode::Unavailable);
    assert!(matches!(
        h.cache.fetch_jwt(&attrs, &audiences, None).await,
        Err(CacheError::Sign(SignError::Unavailable(_)))
    ));
}

/// Another workload of uid 1000 (so it gets identities): another gid.
fn with_gid(gid: u32) -> Attributes {
    let mut attributes = workload("1000", "10");
    attributes.set(Field::UnixGid, gid.to_string());
    attributes
}

#[tokio::test(start_paused = true)]
async fn a_workload_idle_past_its_renewal_is_renewed_when_a_caller_returns() {
    let config = CacheConfig {
        idle_ttl: Duration::from_secs(3000),
        ..CacheConfig::default()
    };
    let h = harness_with(config, vec![("web", "/web")]);
    let mut subscription = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let first = settled(&mut subscription).await;
    drop(subscription);
    // Idle across the renewal time (half of the hour, ±10 %): not renewed.
    tokio::time::sleep(Duration::from_secs(2400)).await;
    assert_eq!(h.signer.x509_calls().len(), 1);
    // A caller comes back: the missed renewal is due at once.
    let mut back = h.cache.subscribe(&workload("1000", "10")).await.unwrap();
    let renewed = back
        .first_matching(Duration::from_secs(5), |view| {
            view.svids
                .first()
                .is_some_and(|svid| !Arc::ptr_eq(svid, &first.svids[0]))
        })
        .await;
    assert!(!Arc::ptr_eq(&renewed.svids[0], &first.svids[0]));
    assert_eq!(h.signer.x509_calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn svid_counts_follow_issuance_expiry_and_eviction() {
    let config = CacheConfig {
        idle_ttl: Duration::from_secs(60),
        ..CacheConfig::default()
    };
    let h = harness_with(config, vec![("web", "/web"), ("admin", "/admin")]);
    let mut a = h.cache.subscribe(&with_gid(1)).await.unwrap();
    let mut b = h.cache.subscribe(&with_gid(2)).await.unwrap();
    settled(&mut a).await;
    settled(&mut b).await;
    assert_eq!(h.cache.cached_svids(), 4);
    // One workload leaves and is evicted after idle_ttl.
    drop(b);
    tokio::time::sleep(Duration::from_secs(61)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.cache.cached_svids(), 2);
    // The issuer goes away: the remaining SVIDs are renewed in vain and
    // dropped when they expire.
    h.signer.set_mode(Mode::Unavailable);
    tokio::time::sleep(Duration::from_secs(3601)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.cache.cached_svids(), 0);
    let view = a.view().borrow().clone();
    assert!(view.svids.is_empty());
    assert!(
        matches!(view.status, ViewStatus::Unavailable { .. }),
        "{view:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn more_due_than_fit_in_flight_are_all_signed_in_turn() {
    let config = CacheConfig {
        batch_size: 2,
        max_in_flight: 1,
        ..CacheConfig::default()
    };
    let h = harness_with(config, vec![("web", "/web")]);
    let mut subscriptions = Vec::new();
    for uid in 0..7u32 {
        subscriptions.push(h.cache.subscribe(&with_gid(uid)).await.unwrap());
    }
    for subscription in &mut subscriptions {
        assert_eq!(settled(subscription).await.status, ViewStatus::Ready);
    }
    let calls = h.signer.x509_calls();
    assert!(calls.iter().all(|batch| batch.len() <= 2), "{calls:?}");
    assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 7);
}

// === signed ahead for a pod ===

/// The pod-level attributes the agent prepares a bound pod with.
fn shop_pod(uid: &str, label: &str) -> Attributes {
    let mut attributes = Attributes::default();
    attributes
        .set(Field::KubernetesPodUid, uid)
        .set(Field::KubernetesNamespace, "shop")
        .set(Field::KubernetesPodName, "cart")
        .set(Field::KubernetesServiceAccount, "cart")
        .set(Field::KubernetesNodeName, "node-1");
    attributes.set_representable_labels(
        signet_policy::LabelMap::KubernetesLabels,
        &BTreeMap::from([("app".to_string(), label.to_string())]),
    );
    attributes
}

/// A process of that pod's container `app` running as `uid`.
fn shop_caller(pod: &Attributes, uid: &str, pid: &str) -> Attributes {
    let mut attributes = pod.clone();
    attributes
        .set(Field::UnixUid, uid)
        .set(Field::UnixPid, pid)
        .set(Field::KubernetesContainerName, "app");
    attributes
}

/// A harness whose pod readiness reports arrive on the returned channel.
fn ahead_harness() -> (Harness, tokio::sync::mpsc::UnboundedReceiver<PodReady>) {
    let (sender, ready) = tokio::sync::mpsc::unbounded_channel();
    let config = CacheConfig {
        on_pod_ready: Some(PodReadyHook(Arc::new(move |r: &PodReady| {
            let _ = sender.send(r.clone());
        }))),
        ..CacheConfig::default()
    };
    (harness_with(config, vec![("cart", "/cart")]), ready)
}

fn leaf(view: &WorkloadView) -> Vec<u8> {
    view.svids[0].cert_chain[0].clone()
}

#[tokio::test(start_paused = true)]
async fn svids_signed_ahead_go_to_the_pods_first_entitled_caller_only() {
    let (h, mut ready) = ahead_harness();
    let pod = shop_pod("p-1", "v1");
    let bound_at = start() - Duration::from_millis(300);
    h.cache.prepare_pod(&pod, Some(bound_at)).unwrap();
    let report = ready.recv().await.unwrap();
    assert_eq!(&*report.pod_uid, "p-1");
    assert_eq!((report.bound_at, report.svids), (Some(bound_at), 1));
    assert_eq!(h.signer.x509_calls(), vec![vec!["cart".to_string()]]);
    assert_eq!(h.cache.cached_svids(), 1);

    // Root in the pod is not entitled: it gets nothing, and the offer stays.
    let mut root = h
        .cache
        .subscribe(&shop_caller(&pod, "0", "5"))
        .await
        .unwrap();
    assert!(matches!(
        settled(&mut root).await.status,
        ViewStatus::NoIdentity { .. }
    ));

    // The first entitled process is served what was signed ahead.
    let mut first = h
        .cache
        .subscribe(&shop_caller(&pod, "1000", "7"))
        .await
        .unwrap();
    let served = settled(&mut first).await;
    assert_eq!(served.status, ViewStatus::Ready);
    assert_eq!(
        h.signer.x509_calls().len(),
        1,
        "nothing signed for the caller"
    );

    // A second process of the pod never shares that key: it gets its own.
    let mut second = h
        .cache
        .subscribe(&shop_caller(&pod, "1001", "8"))
        .await
        .unwrap();
    let own = settled(&mut second).await;
    assert_eq!(own.status, ViewStatus::Ready);
    assert_ne!(leaf(&own), leaf(&served));
    assert_eq!(h.signer.x509_calls().len(), 2);
    // The prepared workload is gone: two SVIDs held, not three.
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    assert_eq!(h.cache.cached_svids(), 2);

    // Told of the same pod again (a snapshot after a reconnect): nothing is
    // prepared again for a pod that has its callers.
    h.cache.prepare_pod(&pod, Some(bound_at)).unwrap();
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.signer.x509_calls().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn files_mode_subscribes_the_prepared_workload_itself() {
    let (h, mut ready) = ahead_harness();
    let pod = shop_pod("p-2", "v1");
    h.cache.prepare_pod(&pod, None).unwrap();
    assert_eq!(ready.recv().await.unwrap().bound_at, None);
    let mut files = h.cache.subscribe(&pod).await.unwrap();
    assert_eq!(settled(&mut files).await.status, ViewStatus::Ready);
    assert_eq!(h.signer.x509_calls().len(), 1);
    // The pod's deletion does not take SVIDs from a subscriber.
    h.cache.forget_pod("p-2");
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    assert_eq!(h.cache.cached_svids(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_relabelled_pod_is_prepared_again_and_a_deleted_one_dropped() {
    let (h, mut ready) = ahead_harness();
    h.cache.prepare_pod(&shop_pod("p-3", "v1"), None).unwrap();
    ready.recv().await.unwrap();
    // The same attributes again change nothing.
    h.cache.prepare_pod(&shop_pod("p-3", "v1"), None).unwrap();
    h.cache.prepare_pod(&shop_pod("p-3", "v2"), None).unwrap();
    ready.recv().await.unwrap();
    assert_eq!(h.signer.x509_calls().len(), 2);
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    assert_eq!(h.cache.cached_svids(), 1, "the first offer was dropped");

    h.cache.forget_pod("p-3");
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    h.cache.subscribe(&workload("0", "9")).await.unwrap();
    assert_eq!(h.cache.cached_svids(), 0);
    // A caller of the relabelled pod after that signs its own.
    let mut caller = h
        .cache
        .subscribe(&shop_caller(&shop_pod("p-3", "v2"), "1000", "7"))
        .await
        .unwrap();
    assert_eq!(settled(&mut caller).await.status, ViewStatus::Ready);
    assert_eq!(h.signer.x509_calls().len(), 3);
}
