//! Cache behaviour under paused tokio time, with a scripted issuer.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use signet_identity::{KeyType, PrivateKey, PublicKey, SpiffeId, TrustBundle, TrustDomain};
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
}

impl PolicyView for FakePolicy {
    fn version(&self) -> u64 {
        self.version
    }

    fn desired_identities(&self, workload: &Attributes) -> Vec<DesiredIdentity> {
        if workload.field(Field::UnixUid) != Some("1000") {
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
    jwt_calls: StdMutex<usize>,
    serial: StdMutex<u64>,
}

impl FakeSigner {
    fn new(clock: Clock, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            clock,
            ttl,
            mode: StdMutex::new(Mode::Issue),
            x509_calls: StdMutex::new(Vec::new()),
            jwt_calls: StdMutex::new(0),
            serial: StdMutex::new(0),
        })
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
        let mode = *self.mode.lock().unwrap();
        let now = self.clock.now();
        let ttl = self.ttl;
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
                    SignOutcome::Issued(SignedX509 {
                        spiffe_id: id(&Self::path_for(&r.workload_identity)),
                        cert_chain: vec![serial.to_be_bytes().to_vec()],
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
        let outcomes: Result<Vec<_>, _> = match mode {
            Mode::Issue => Ok(requests
                .iter()
                .map(|r| {
                    SignOutcome::Issued(SignedJwt {
                        workload_identity: r.workload_identity.clone(),
                        spiffe_id: id(&Self::path_for(&r.workload_identity)),
                        token: format!("jwt-{}-{:?}", r.workload_identity, now),
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
    let clock = Clock::starting_at(start());
    let signer = FakeSigner::new(clock, Duration::from_secs(3600));
    let policy: SharedPolicy = Some(Arc::new(FakePolicy {
        version: 1,
        identities,
    }));
    let (policy_tx, policy_rx) = watch::channel(policy);
    let cache = SvidCache::spawn(
        CacheConfig::default(),
        clock,
        policy_rx,
        signer.clone(),
        Arc::new(FakeKeys),
    );
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
        .send(Some(Arc::new(FakePolicy {
            version: 2,
            identities: vec![("admin", "/admin")],
        })))
        .unwrap();
    let view = next_change(&mut subscription).await;
    let ids: Vec<_> = view
        .svids
        .iter()
        .map(|s| s.workload_identity.clone())
        .collect();
    assert_eq!(ids, ["admin"]);
    assert_eq!(view.policy_version, Some(2));

    h.policy
        .send(Some(Arc::new(FakePolicy {
            version: 3,
            identities: vec![],
        })))
        .unwrap();
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
