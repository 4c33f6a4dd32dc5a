//! The certificate authority as a running service: the CA keyset, where it
//! is persisted, its rotation schedule, the trust bundle it publishes and
//! the issuer's own serving certificate.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use signet_identity::authority::AuthorityState;
use signet_identity::x509::{UpstreamCa, X509SvidParams};
use signet_identity::{
    AuthorityError, CaConfig, CaKeyset, JwtSvid, KeyType, PrivateKey, PublicKey, RotationEvent,
    SpiffeId, TrustBundle, X509Svid,
};
use signet_identity::{AuthorityKind, AuthorityStatus};
use signet_proto::issuer_protocol::ISSUER_PATH;
use signet_runtime::clock::Clock;
use signet_tls::SvidResolver;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::upstream::UpstreamFollower;

/// Lifetime of the issuer's serving certificate; renewed at half-life.
const ISSUER_SVID_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading the CA state: {0}")]
    Read(String),
    #[error("writing the CA state: {0}")]
    Write(String),
    /// Another writer changed the state since it was read (Kubernetes
    /// resourceVersion precondition); re-read and retry.
    #[error("the CA state was changed concurrently")]
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keyset(#[from] AuthorityError),
    #[error("the stored CA state is for trust domain {stored}, not {configured}")]
    TrustDomainMismatch { stored: String, configured: String },
    #[error("issuer certificate: {0}")]
    IssuerCertificate(String),
    #[error("the CA state changed meanwhile (another replica or command); try again")]
    Changed,
}

/// An administrator's action on the trust domain's authorities (SPIRE's
/// `localauthority`): see [`Authority::act`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum AuthorityAction {
    /// Make and publish a successor now.
    Prepare { kind: AuthorityKind },
    /// The prepared successor signs from now on; the active one retires.
    Activate { kind: AuthorityKind },
    /// Distrust a retired authority: agents re-issue what it signed.
    Taint { kind: AuthorityKind, id: String },
    /// Remove a tainted authority from the bundle.
    Revoke { kind: AuthorityKind, id: String },
}

/// Where the keyset's serialized state lives. The state holds private keys.
pub trait KeysetStore: Send + Sync + 'static {
    fn load(&self) -> BoxFuture<'_, Result<Option<Zeroizing<String>>, StoreError>>;
    /// Replaces the state. A store that supports it refuses with
    /// [`StoreError::Conflict`] when the state changed since it was loaded.
    fn save(&self, state: Zeroizing<String>) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The trust bundle as published: the value and its encodings.
#[derive(Clone, Debug)]
pub struct PublishedBundle {
    pub bundle: TrustBundle,
    /// Tainted authorities (X.509 subject key ids, JWT kids), still in the
    /// bundle: agents re-issue what they signed.
    pub tainted_x509: Vec<String>,
    pub tainted_jwt: Vec<String>,
    /// SPIFFE bundle (JWKS with `spiffe_sequence`), for agents and federation.
    pub spiffe_json: String,
    /// X.509 authorities as PEM, for tools that want a CA file.
    pub pem: String,
    /// JWT authorities as a plain JWKS, for OIDC consumers.
    pub jwks_json: String,
}

impl PublishedBundle {
    fn of(keyset: &CaKeyset, now: SystemTime) -> Result<Self, AuthorityServiceError> {
        let mut published = Self::new(keyset.bundle(now))?;
        published.tainted_x509 = keyset.tainted_ids(AuthorityKind::X509);
        published.tainted_jwt = keyset.tainted_ids(AuthorityKind::Jwt);
        Ok(published)
    }

    /// A bundle with no tainted authorities.
    pub fn new(bundle: TrustBundle) -> Result<Self, AuthorityServiceError> {
        let spiffe_json = bundle
            .to_spiffe_json()
            .map_err(|e| AuthorityServiceError::IssuerCertificate(e.to_string()))?;
        let jwks_json = bundle
            .to_jwks_json()
            .map_err(|e| AuthorityServiceError::IssuerCertificate(e.to_string()))?;
        let pem = bundle.to_x509_pem();
        Ok(Self {
            bundle,
            tainted_x509: Vec::new(),
            tainted_jwt: Vec::new(),
            spiffe_json,
            pem,
            jwks_json,
        })
    }
}

/// The running authority. Cheap to share behind an `Arc`.
pub struct Authority {
    keyset: RwLock<CaKeyset>,
    store: Arc<dyn KeysetStore>,
    bundle: watch::Sender<Arc<PublishedBundle>>,
    issuer_names: IssuerNames,
    issuer_resolver: Arc<SvidResolver>,
    issuer_svid: RwLock<Option<X509Svid>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// DNS names and IPs the issuer's certificate carries, so clients that also
/// check hostnames (or humans with openssl) see sensible names.
#[derive(Clone, Debug, Default)]
pub struct IssuerNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Authority {
    /// Loads the keyset from `store`, or creates and saves a new one.
    pub async fn load_or_create(
        config: CaConfig,
        store: Arc<dyn KeysetStore>,
        issuer_names: IssuerNames,
        now: SystemTime,
    ) -> Result<Arc<Self>, AuthorityServiceError> {
        let keyset = match store.load().await? {
            Some(state) => {
                let keyset = CaKeyset::from_state_json(config.clone(), &state)?;
                tracing::info!(
                    trust_domain = %config.trust_domain,
                    sequence = keyset.sequence(),
                    "loaded the CA keyset"
                );
                keyset
            }
            None => {
                let keyset = CaKeyset::new(config.clone(), now)?;
                match store.save(keyset.to_state_json()?).await {
                    Ok(()) => {
                        tracing::info!(trust_domain = %config.trust_domain, "created a new CA keyset");
                        keyset
                    }
                    // Another replica created it first: use theirs, so the
                    // trust domain has exactly one CA.
                    Err(StoreError::Conflict) => {
                        let state = store.load().await?.ok_or(StoreError::Conflict)?;
                        tracing::info!(
                            trust_domain = %config.trust_domain,
                            "another replica created the CA keyset first; using it"
                        );
                        CaKeyset::from_state_json(config.clone(), &state)?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        let published = PublishedBundle::of(&keyset, now)?;
        let (bundle, _) = watch::channel(Arc::new(published));
        let authority = Arc::new(Self {
            keyset: RwLock::new(keyset),
            store,
            bundle,
            issuer_names,
            issuer_resolver: Arc::new(SvidResolver::new()),
            issuer_svid: RwLock::new(None),
        });
        // A restarted operator may find a keyset whose rotation fell due
        // while it was down.
        authority.rotate(now).await?;
        authority.refresh_issuer_svid(now, true)?;
        Ok(authority)
    }

    pub fn trust_domain(&self) -> signet_identity::TrustDomain {
        self.read().config().trust_domain.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CaKeyset> {
        match self.keyset.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CaKeyset> {
        match self.keyset.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The bundle as it changes.
    pub fn bundle(&self) -> watch::Receiver<Arc<PublishedBundle>> {
        self.bundle.subscribe()
    }

    pub fn current_bundle(&self) -> Arc<PublishedBundle> {
        self.bundle.borrow().clone()
    }

    /// The issuer's serving certificate (kept current by [`Self::tick`]).
    pub fn issuer_resolver(&self) -> Arc<SvidResolver> {
        self.issuer_resolver.clone()
    }

    /// Advances the rotation schedule; the new state is saved before it is
    /// used or published, so a crash never loses an authority that signed.
    pub async fn rotate(
        &self,
        now: SystemTime,
    ) -> Result<Vec<RotationEvent>, AuthorityServiceError> {
        let mut candidate = self.candidate()?;
        let events = candidate.rotate(now)?;
        if !events.is_empty() {
            match self.store.save(candidate.to_state_json()?).await {
                Ok(()) => {
                    for event in &events {
                        tracing::info!(?event, "CA rotation");
                    }
                }
                // Someone else (a former leader) rotated meanwhile: theirs
                // is the state agents may already trust.
                Err(StoreError::Conflict) => {
                    self.reload(now).await?;
                    return Ok(Vec::new());
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.install(candidate, now)?;
        Ok(events)
    }

    /// A copy of the keyset in use to change: saved before it replaces the
    /// one in use (the keyset holds keys, so it is copied through its state).
    fn candidate(&self) -> Result<CaKeyset, AuthorityServiceError> {
        let keyset = self.read();
        Ok(CaKeyset::from_state_json(
            keyset.config().clone(),
            &keyset.to_state_json()?,
        )?)
    }

    /// Replaces the keyset in use and publishes its bundle if it changed.
    fn install(&self, keyset: CaKeyset, now: SystemTime) -> Result<(), AuthorityServiceError> {
        *self.write() = keyset;
        self.publish_bundle(now)
    }

    /// Publishes the keyset's bundle as of `now` if it changed (expired
    /// authorities leave it on schedule).
    fn publish_bundle(&self, now: SystemTime) -> Result<(), AuthorityServiceError> {
        let published = PublishedBundle::of(&self.read(), now)?;
        let current = self.bundle.borrow().clone();
        if published.bundle != current.bundle
            || published.tainted_x509 != current.tainted_x509
            || published.tainted_jwt != current.tainted_jwt
        {
            self.bundle.send_replace(Arc::new(published));
        }
        Ok(())
    }

    /// Carries out an administrator's action: saved before it is used or
    /// published (like a scheduled rotation), so agents and other replicas
    /// see it through the usual paths. A taint reaches agents on their
    /// policy streams; the issuer's own SVID is re-minted at once when its
    /// CA is tainted or replaced. Refused with the keyset's reason (e.g.
    /// tainting the active CA), or [`AuthorityServiceError::Changed`] when
    /// the stored state moved under it (the caller retries).
    pub async fn act(
        &self,
        action: &AuthorityAction,
        now: SystemTime,
    ) -> Result<Vec<RotationEvent>, AuthorityServiceError> {
        let mut candidate = self.candidate()?;
        let events = match action {
            AuthorityAction::Prepare { kind } => vec![candidate.prepare_now(*kind, now)?],
            AuthorityAction::Activate { kind } => candidate.activate_now(*kind, now)?,
            AuthorityAction::Taint { kind, id } => vec![candidate.taint(*kind, id)?],
            AuthorityAction::Revoke { kind, id } => vec![candidate.revoke(*kind, id)?],
        };
        match self.store.save(candidate.to_state_json()?).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                self.reload(now).await?;
                return Err(AuthorityServiceError::Changed);
            }
            Err(error) => return Err(error.into()),
        }
        for event in &events {
            tracing::warn!(?event, "authority action");
        }
        let issuer_ca = self
            .issuer_svid
            .read()
            .ok()
            .and_then(|svid| svid.as_ref().map(|s| s.issuer_key_id.clone()));
        self.install(candidate, now)?;
        let issuer_ca_distrusted =
            issuer_ca.is_some_and(|id| self.read().tainted_ids(AuthorityKind::X509).contains(&id));
        let activated = events.iter().any(|e| {
            matches!(
                e,
                RotationEvent::Activated {
                    kind: AuthorityKind::X509,
                    ..
                }
            )
        });
        self.refresh_issuer_svid(now, activated || issuer_ca_distrusted)?;
        Ok(events)
    }

    /// Each authority's state (for `authority show`, status and metrics).
    pub fn authorities(&self) -> Vec<AuthorityStatus> {
        self.read().authorities()
    }

    /// Adopts the stored state when another writer changed it (replicas
    /// that do not rotate follow the leader this way). Returns true when
    /// the keyset changed.
    pub async fn reload(&self, now: SystemTime) -> Result<bool, AuthorityServiceError> {
        let Some(state) = self.store.load().await? else {
            return Ok(false);
        };
        let (config, current) = {
            let keyset = self.read();
            (keyset.config().clone(), keyset.to_state_json()?)
        };
        if *state == *current {
            self.publish_bundle(now)?;
            return Ok(false);
        }
        let keyset = CaKeyset::from_state_json(config, &state)?;
        let active_changed = keyset.active_x509().map(|ca| ca.key_id_hex())
            != self.read().active_x509().map(|ca| ca.key_id_hex());
        tracing::info!(sequence = keyset.sequence(), "adopted the stored CA keyset");
        self.install(keyset, now)?;
        self.refresh_issuer_svid(now, active_changed)?;
        Ok(true)
    }

    /// Mints the issuer's SVID again when it passed half-life or the active
    /// CA changed (`force` for the first one).
    pub fn refresh_issuer_svid(
        &self,
        now: SystemTime,
        force: bool,
    ) -> Result<(), AuthorityServiceError> {
        let keyset = self.read();
        let active_ca_not_after = keyset.active_x509().map(|ca| ca.not_after());
        let due = match &*self
            .issuer_svid
            .read()
            .map_err(|_| AuthorityServiceError::IssuerCertificate("lock poisoned".into()))?
        {
            None => true,
            Some(svid) => {
                let lifetime = svid
                    .not_after
                    .duration_since(svid.not_before)
                    .unwrap_or_default();
                let half_life = svid.not_before + lifetime / 2;
                now >= half_life || Some(svid.not_after) > active_ca_not_after
            }
        };
        if !(due || force) {
            return Ok(());
        }
        let trust_domain = keyset.config().trust_domain.clone();
        let id = SpiffeId::from_path(&trust_domain, ISSUER_PATH)
            .map_err(|e| AuthorityServiceError::IssuerCertificate(e.to_string()))?;
        let key = PrivateKey::generate(KeyType::EcP256)
            .map_err(|e| AuthorityServiceError::IssuerCertificate(e.to_string()))?;
        let mut params = X509SvidParams::new(id, ISSUER_SVID_TTL);
        params.dns_sans = self.issuer_names.dns.clone();
        params.ip_sans = self.issuer_names.ips.clone();
        let svid = keyset.mint_x509_svid(&params, key.public_key(), now)?;
        self.issuer_resolver
            .set(svid.cert_chain.clone(), &key.to_pkcs8_der())
            .map_err(|e| AuthorityServiceError::IssuerCertificate(e.to_string()))?;
        if let Ok(mut slot) = self.issuer_svid.write() {
            *slot = Some(svid);
        }
        Ok(())
    }

    /// One step of the background schedule.
    pub async fn tick(&self, now: SystemTime) -> Result<(), AuthorityServiceError> {
        let events = self.rotate(now).await?;
        let activated = events
            .iter()
            .any(|e| matches!(e, RotationEvent::Activated { .. }));
        self.refresh_issuer_svid(now, activated)
    }

    /// Runs the schedule every `interval` until the task is dropped.
    pub async fn run(
        self: Arc<Self>,
        clock: Clock,
        interval: Duration,
        upstream: Option<UpstreamFollower>,
    ) {
        let (_always, leading) = watch::channel(true);
        self.run_with_leader(clock, interval, leading, upstream)
            .await
    }

    /// Runs the schedule while `leading` is true; otherwise follows the
    /// store, where the leader saves every rotation before using it. Every
    /// replica follows the upstream CA's files (they all publish its roots).
    pub async fn run_with_leader(
        self: Arc<Self>,
        clock: Clock,
        interval: Duration,
        leading: watch::Receiver<bool>,
        upstream: Option<UpstreamFollower>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = clock.now();
            let leader = *leading.borrow();
            if let Some(upstream) = &upstream {
                self.follow_upstream(upstream, now, leader).await;
            }
            let result = if leader {
                // A new leader first adopts what the previous one saved.
                match self.reload(now).await {
                    Ok(_) => self.tick(now).await,
                    Err(error) => Err(error),
                }
            } else {
                self.reload(now)
                    .await
                    .and_then(|_| self.refresh_issuer_svid(now, false))
            };
            if let Err(error) = result {
                tracing::error!(%error, "CA rotation step failed; retrying next tick");
            }
        }
    }

    /// Takes the upstream CA's files again if they changed: the next CA is
    /// signed by the new upstream, and a change of roots is published (the
    /// leader saves the keyset so its bundle sequence grows once for all).
    async fn follow_upstream(&self, upstream: &UpstreamFollower, now: SystemTime, leader: bool) {
        match upstream.changed(now) {
            Ok(None) => {}
            Ok(Some(next)) => match self.set_upstream(next, now, leader).await {
                Ok(roots_changed) => {
                    tracing::info!(
                        roots_changed,
                        "upstream CA files changed; the next CA is signed by the new upstream"
                    );
                }
                Err(error) => tracing::error!(%error, "applying the new upstream CA failed"),
            },
            Err(error) => {
                tracing::error!(%error, "the upstream CA files changed but do not load; keeping the last good upstream");
            }
        }
    }

    /// Replaces the upstream CA; returns whether the bundle's roots changed.
    pub async fn set_upstream(
        &self,
        upstream: Arc<UpstreamCa>,
        now: SystemTime,
        persist: bool,
    ) -> Result<bool, AuthorityServiceError> {
        let mut candidate = self.candidate()?;
        let roots_changed = candidate.set_upstream(Some(upstream));
        if roots_changed && persist {
            match self.store.save(candidate.to_state_json()?).await {
                Ok(()) => {}
                Err(StoreError::Conflict) => {
                    // Adopt the other writer's state, under the new upstream.
                    let config = candidate.config().clone();
                    let stored = self.store.load().await?.ok_or(StoreError::Conflict)?;
                    candidate = CaKeyset::from_state_json(config, &stored)?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        self.install(candidate, now)?;
        Ok(roots_changed)
    }

    /// Mints an X.509-SVID for `subject_key` (from a CSR the issuer checked
    /// at its edge) with the active CA.
    pub fn mint_x509(
        &self,
        params: &X509SvidParams,
        subject_key: &PublicKey,
        now: SystemTime,
    ) -> Result<X509Svid, AuthorityError> {
        self.read().mint_x509_svid(params, subject_key, now)
    }

    pub fn mint_jwt(
        &self,
        sub: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        extra_claims: &serde_json::Map<String, serde_json::Value>,
        now: SystemTime,
    ) -> Result<JwtSvid, AuthorityError> {
        self.read()
            .mint_jwt_svid(sub, audiences, ttl, extra_claims, now)
    }

    /// Authorities and their states, for status output.
    pub fn describe(&self) -> Vec<(String, AuthorityState, SystemTime)> {
        let keyset = self.read();
        let mut out: Vec<_> = keyset
            .x509_authorities()
            .map(|(state, ca)| (format!("x509:{}", ca.key_id_hex()), state, ca.not_after()))
            .collect();
        out.extend(
            keyset
                .jwt_authorities()
                .map(|(state, key)| (format!("jwt:{}", key.key_id()), state, key.not_after())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_identity::TrustDomain;

    fn config() -> CaConfig {
        let mut config = CaConfig::new(TrustDomain::new("example.org").unwrap());
        config.x509_ttl = Duration::from_secs(6 * 3600);
        config.jwt_ttl = Duration::from_secs(6 * 3600);
        config
    }

    #[tokio::test]
    async fn rotation_persists_and_publishes_before_activation() {
        let shared = Arc::new(std::sync::Mutex::new((None, 0)));
        let start = Clock::new().now();
        let authority = Authority::load_or_create(
            config(),
            SharedStore::handle(&shared),
            IssuerNames::default(),
            start,
        )
        .await
        .unwrap();
        let mut bundles = authority.bundle();
        assert_eq!(bundles.borrow().bundle.x509_authorities.len(), 1);

        // Past half-life a successor is prepared: published, and saved.
        authority
            .tick(start + Duration::from_secs(3 * 3600 + 60))
            .await
            .unwrap();
        assert!(bundles.has_changed().unwrap());
        assert_eq!(bundles.borrow_and_update().bundle.x509_authorities.len(), 2);
        let reloaded = Authority::load_or_create(
            config(),
            SharedStore::handle(&shared),
            IssuerNames::default(),
            start + Duration::from_secs(3 * 3600 + 60),
        )
        .await
        .unwrap();
        assert_eq!(reloaded.current_bundle().bundle.x509_authorities.len(), 2);

        // At a sixth of life left the successor activates; SVIDs then chain to it.
        let later = start + Duration::from_secs(5 * 3600 + 60);
        authority.tick(later).await.unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let svid = authority
            .mint_x509(
                &X509SvidParams::new(id, Duration::from_secs(3600)),
                key.public_key(),
                later,
            )
            .unwrap();
        assert!(
            svid.not_after > start + Duration::from_secs(6 * 3600),
            "issued by the new CA"
        );
        signet_identity::verify_x509_svid(
            &svid.cert_chain,
            &authority.current_bundle().bundle,
            later,
        )
        .unwrap();
    }

    /// A store with Kubernetes semantics: each handle remembers the version
    /// it last read or wrote, and a write from a stale handle conflicts.
    struct SharedStore {
        shared: Arc<std::sync::Mutex<(Option<String>, u64)>>,
        seen: std::sync::Mutex<u64>,
    }

    impl SharedStore {
        fn handle(shared: &Arc<std::sync::Mutex<(Option<String>, u64)>>) -> Arc<dyn KeysetStore> {
            Arc::new(Self {
                shared: shared.clone(),
                seen: std::sync::Mutex::new(0),
            })
        }
    }

    impl KeysetStore for SharedStore {
        fn load(&self) -> BoxFuture<'_, Result<Option<Zeroizing<String>>, StoreError>> {
            Box::pin(async move {
                let shared = self.shared.lock().unwrap();
                *self.seen.lock().unwrap() = shared.1;
                Ok(shared.0.clone().map(Zeroizing::new))
            })
        }

        fn save(&self, state: Zeroizing<String>) -> BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(async move {
                let mut shared = self.shared.lock().unwrap();
                let mut seen = self.seen.lock().unwrap();
                if shared.1 != *seen {
                    return Err(StoreError::Conflict);
                }
                shared.0 = Some(state.to_string());
                shared.1 += 1;
                *seen = shared.1;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn replicas_share_one_ca_and_follow_the_leaders_rotation() {
        let shared = Arc::new(std::sync::Mutex::new((None, 0)));
        let start = Clock::new().now();
        // Both start before either saved: the second one's create conflicts
        // and it adopts the first one's CA.
        let store_a = SharedStore::handle(&shared);
        let store_b = SharedStore::handle(&shared);
        assert!(store_a.load().await.unwrap().is_none());
        assert!(store_b.load().await.unwrap().is_none());
        let a = Authority::load_or_create(config(), store_a, IssuerNames::default(), start)
            .await
            .unwrap();
        let b = Authority::load_or_create(config(), store_b, IssuerNames::default(), start)
            .await
            .unwrap();
        assert_eq!(
            a.current_bundle().bundle.x509_authorities,
            b.current_bundle().bundle.x509_authorities,
            "one CA for both replicas"
        );

        // The leader rotates; the follower adopts it on its next reload.
        let later = start + Duration::from_secs(3 * 3600 + 60);
        a.tick(later).await.unwrap();
        assert_eq!(a.current_bundle().bundle.x509_authorities.len(), 2);
        assert!(b.reload(later).await.unwrap());
        assert_eq!(
            a.current_bundle().bundle.x509_authorities,
            b.current_bundle().bundle.x509_authorities
        );

        // A deposed leader rotating from stale state loses the race and
        // takes the stored keyset instead of overwriting it.
        let c_store = SharedStore::handle(&shared);
        let stale = Authority::load_or_create(config(), c_store, IssuerNames::default(), later)
            .await
            .unwrap();
        let even_later = start + Duration::from_secs(5 * 3600 + 60);
        a.tick(even_later).await.unwrap();
        let events = stale.rotate(even_later).await.unwrap();
        assert!(events.is_empty(), "the stale rotation was not saved");
        assert_eq!(
            stale.current_bundle().bundle.x509_authorities,
            a.current_bundle().bundle.x509_authorities
        );
    }

    #[tokio::test]
    async fn a_new_upstream_signs_the_next_ca_and_its_roots_are_published_and_saved() {
        use signet_identity::x509::{UpstreamCa, X509Ca, certs_to_pem};
        let shared = Arc::new(std::sync::Mutex::new((None, 0)));
        let start = Clock::new().now();
        let corp_root = |name: &str| {
            let ca = X509Ca::self_signed(
                &TrustDomain::new(name).unwrap(),
                PrivateKey::generate(KeyType::EcP256).unwrap(),
                Duration::from_secs(30 * 24 * 3600),
                start,
            )
            .unwrap();
            let upstream = UpstreamCa::from_pem(
                &certs_to_pem(std::slice::from_ref(ca.certificate())),
                &ca.key().to_pkcs8_pem(),
                None,
                start,
            )
            .unwrap();
            (ca, Arc::new(upstream))
        };
        let (first_root, first) = corp_root("corp.example");
        let mut with_upstream = config();
        with_upstream.upstream = Some(first);
        let authority = Authority::load_or_create(
            with_upstream,
            SharedStore::handle(&shared),
            IssuerNames::default(),
            start,
        )
        .await
        .unwrap();
        assert_eq!(
            authority.current_bundle().bundle.x509_authorities,
            vec![first_root.certificate().clone()]
        );
        let sequence = authority.current_bundle().bundle.sequence;

        // The upstream is replaced by one under another root.
        let (second_root, second) = corp_root("corp2.example");
        assert!(authority.set_upstream(second, start, true).await.unwrap());
        let bundle = authority.current_bundle().bundle.clone();
        // The CA in force still chains to the first root: both are published.
        assert_eq!(
            bundle.x509_authorities,
            vec![
                second_root.certificate().clone(),
                first_root.certificate().clone()
            ]
        );
        assert_eq!(bundle.sequence, sequence + 1);
        // Saved: another replica loading the store publishes the same sequence.
        let saved = shared.lock().unwrap().0.clone().unwrap();
        assert!(
            saved.contains(&format!("\"sequence\": {}", sequence + 1)),
            "{saved}"
        );
        // The next CA (after the scheduled rotation) chains to the new root.
        authority
            .tick(start + Duration::from_secs(5 * 3600 + 60))
            .await
            .unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        let now = start + Duration::from_secs(5 * 3600 + 60);
        let svid = authority
            .mint_x509(
                &X509SvidParams::new(id, Duration::from_secs(60)),
                key.public_key(),
                now,
            )
            .unwrap();
        let bundle = authority.current_bundle().bundle.clone();
        assert!(signet_identity::x509::verify_x509_svid(&svid.cert_chain, &bundle, now).is_ok());
        let mut only_new =
            signet_identity::TrustBundle::new(TrustDomain::new("example.org").unwrap());
        only_new.x509_authorities = vec![second_root.certificate().clone()];
        assert!(signet_identity::x509::verify_x509_svid(&svid.cert_chain, &only_new, now).is_ok());
        // Once the first upstream's CA expired, its root leaves the bundle.
        authority
            .tick(start + Duration::from_secs(6 * 3600 + 60))
            .await
            .unwrap();
        assert_eq!(
            authority.current_bundle().bundle.x509_authorities,
            vec![second_root.certificate().clone()]
        );
    }
}
