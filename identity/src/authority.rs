//! The CA keyset: the trust domain's X.509 CAs and JWT signing keys, and
//! their rotation.
//!
//! X.509 and JWT authorities rotate independently, each through the states
//! Prepared → Active → Retired:
//! - a successor is **prepared** once the active authority has
//!   `prepare_fraction` of its lifetime left (default 1/2), and is published
//!   in the bundle from then on, so every peer trusts it before it signs;
//! - it is **activated** once the active authority has `activate_fraction`
//!   left (default 1/6); the old one is retired;
//! - a retired authority stays in the bundle until its notAfter, because
//!   SVIDs it signed may live that long, and is then pruned.
//!
//! [`CaKeyset::rotate`] applies this schedule for a given `now`; it is
//! idempotent and its decisions depend only on the state and `now`. The
//! operator calls it periodically (e.g. every 10 s, as SPIRE does) and
//! republishes the bundle when it returns events.
//!
//! The operator can also step in, like SPIRE's `localauthority` commands:
//! [`CaKeyset::prepare_now`] and [`CaKeyset::activate_now`] run the schedule
//! early (e.g. a suspected key compromise); [`CaKeyset::taint`] marks a
//! retired authority as no longer to be relied on, so callers re-issue the
//! SVIDs it signed; [`CaKeyset::revoke`] then drops it from the bundle. The
//! schedule carries on from whatever these leave behind: it only ever
//! activates a prepared authority, and only the active one's lifetime
//! decides when the next is prepared.
//!
//! The state serializes to JSON ([`CaKeyset::to_state_json`]) for a file or a
//! Kubernetes Secret. **That JSON contains the CA private keys.**

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::bundle::{JwtAuthority, TrustBundle};
use crate::id::{SpiffeId, TrustDomain};
use crate::jwt::{self, JwtError, JwtSvid};
use crate::keys::{KeyError, KeyType, PrivateKey, PublicKey};
use crate::x509::{self, CertificateDer, UpstreamCa, X509Ca, X509Error, X509Svid, X509SvidParams};

/// Default CA and JWT key lifetime (SPIRE's `ca_ttl`).
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default share of the active authority's life left when a successor is prepared.
pub const DEFAULT_PREPARE_FRACTION: f64 = 1.0 / 2.0;
/// Default share of the active authority's life left when the successor activates.
pub const DEFAULT_ACTIVATE_FRACTION: f64 = 1.0 / 6.0;
/// Default `spiffe_refresh_hint` of published bundles.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

/// Most authorities of one kind [`CaKeyset::prepare_now`] lets the keyset
/// hold. Repeated manual rotations leave retired authorities in the bundle
/// until they expire; this keeps the bundle (and the JWKS that cloud IAM
/// federation reads, which accepts at most 100 keys) small. The schedule
/// itself is not capped: it keeps at most three live authorities per kind,
/// and refusing it a successor would let the active one lapse.
pub const MAX_AUTHORITIES_PER_KIND: usize = 10;

const STATE_VERSION: u32 = 1;

/// Why the keyset could not be created, restored, rotated or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// The configuration is inconsistent.
    #[error("invalid CA configuration: {0}")]
    InvalidConfig(String),
    /// A key could not be generated or loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// X.509 minting failed.
    #[error(transparent)]
    X509(#[from] X509Error),
    /// JWT minting failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The SVID's SPIFFE ID is not in the keyset's trust domain.
    #[error("SPIFFE ID {id} is not in trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: SpiffeId,
        /// The keyset's trust domain.
        trust_domain: TrustDomain,
    },
    /// No active authority of this kind (e.g. the state was emptied).
    #[error("no active {0} authority")]
    NoActiveAuthority(AuthorityKind),
    /// The serialized state is unreadable or inconsistent.
    #[error("invalid keyset state: {0}")]
    InvalidState(String),
    /// [`CaKeyset::prepare_now`]: this kind already has a prepared
    /// authority; a second would have no place in the schedule.
    #[error("the {kind} authority {id} is already prepared; activate it first")]
    AlreadyPrepared {
        /// Slot.
        kind: AuthorityKind,
        /// The prepared authority.
        id: String,
    },
    /// [`CaKeyset::prepare_now`]: this kind holds
    /// [`MAX_AUTHORITIES_PER_KIND`] authorities already.
    #[error(
        "the keyset already holds {max} {kind} authorities; taint and revoke old ones, or let them expire, first"
    )]
    TooManyAuthorities {
        /// Slot.
        kind: AuthorityKind,
        /// The limit, [`MAX_AUTHORITIES_PER_KIND`].
        max: usize,
    },
    /// [`CaKeyset::activate_now`]: there is no prepared authority of this kind.
    #[error("no prepared {0} authority to activate; prepare one first")]
    NothingPrepared(AuthorityKind),
    /// [`CaKeyset::activate_now`]: the prepared authority is not valid at
    /// the given time (expired, or not yet valid), so it cannot sign.
    #[error("the prepared {kind} authority {id} is not valid at this time; prepare a new one")]
    PreparedNotValid {
        /// Slot.
        kind: AuthorityKind,
        /// The prepared authority.
        id: String,
    },
    /// No authority of this kind has this id.
    #[error("no {kind} authority with id {id}")]
    UnknownAuthority {
        /// Slot.
        kind: AuthorityKind,
        /// The id asked for.
        id: String,
    },
    /// [`CaKeyset::taint`]: only retired authorities can be tainted; the
    /// active one still signs, and the prepared one is about to.
    #[error(
        "the {kind} authority {id} is {state}; only a retired authority can be tainted (activate its successor first)"
    )]
    NotRetired {
        /// Slot.
        kind: AuthorityKind,
        /// The authority.
        id: String,
        /// Its state (active or prepared).
        state: AuthorityState,
    },
    /// [`CaKeyset::taint`]: the authority is tainted already.
    #[error("the {kind} authority {id} is already tainted")]
    AlreadyTainted {
        /// Slot.
        kind: AuthorityKind,
        /// The authority.
        id: String,
    },
    /// [`CaKeyset::revoke`]: only a tainted authority can be revoked, so
    /// that SVIDs it signed were flagged for re-issue first.
    #[error("the {kind} authority {id} is not tainted; taint it first")]
    NotTainted {
        /// Slot.
        kind: AuthorityKind,
        /// The authority.
        id: String,
    },
}

/// Which authority slot an event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityKind {
    /// X.509 CA certificates.
    X509,
    /// JWT signing keys.
    Jwt,
}

impl fmt::Display for AuthorityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthorityKind::X509 => "X.509",
            AuthorityKind::Jwt => "JWT",
        })
    }
}

/// Life-cycle state of one authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityState {
    /// Published in the bundle, not yet signing.
    Prepared,
    /// Signing new SVIDs.
    Active,
    /// No longer signing; published until its notAfter.
    Retired,
}

impl fmt::Display for AuthorityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthorityState::Prepared => "prepared",
            AuthorityState::Active => "active",
            AuthorityState::Retired => "retired",
        })
    }
}

/// Something [`CaKeyset::rotate`] or an operator action did. `id` is the
/// X.509 CA's subject key identifier (hex) or the JWT key's `kid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationEvent {
    /// A new authority was generated and added to the bundle.
    Prepared {
        /// Slot.
        kind: AuthorityKind,
        /// Authority id.
        id: String,
        /// Its notAfter.
        not_after: SystemTime,
    },
    /// An authority started signing.
    Activated {
        /// Slot.
        kind: AuthorityKind,
        /// Authority id.
        id: String,
    },
    /// An authority stopped signing (it stays in the bundle until it expires).
    Retired {
        /// Slot.
        kind: AuthorityKind,
        /// Authority id.
        id: String,
    },
    /// An expired authority was removed from the bundle.
    Pruned {
        /// Slot.
        kind: AuthorityKind,
        /// Authority id.
        id: String,
    },
    /// A retired authority was marked as not to be relied on: it stays in
    /// the bundle, but SVIDs it signed should be re-issued.
    Tainted {
        /// Slot.
        kind: AuthorityKind,
        /// Authority id.
        id: String,
    },
    /// A tainted authority was removed from the bundle before it expired.
    Revoked {
        /// Slot.
        kind: AuthorityKind,
        /// Authority id.
        id: String,
    },
}

/// One authority as [`CaKeyset::authorities`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorityStatus {
    /// Slot.
    pub kind: AuthorityKind,
    /// X.509 subject key identifier (hex) or JWT `kid`.
    pub id: String,
    /// Life-cycle state.
    pub state: AuthorityState,
    /// Marked by [`CaKeyset::taint`]; still in the bundle until revoked or expired.
    pub tainted: bool,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity; it leaves the bundle then.
    pub not_after: SystemTime,
    /// X.509 CAs: whether it was signed by an upstream CA (not self-signed).
    /// `None` for JWT keys.
    pub upstream_signed: Option<bool>,
}

/// Keyset configuration. Build with [`CaConfig::new`] and adjust fields.
#[derive(Clone, Debug, PartialEq)]
pub struct CaConfig {
    /// The trust domain the authorities serve.
    pub trust_domain: TrustDomain,
    /// Key type of X.509 CAs (default EC P-256).
    pub x509_key_type: KeyType,
    /// Key type of JWT signing keys (default EC P-256).
    pub jwt_key_type: KeyType,
    /// Lifetime of each X.509 CA (default 24 h).
    pub x509_ttl: Duration,
    /// Lifetime of each JWT key (default 24 h).
    pub jwt_ttl: Duration,
    /// Share of the active authority's lifetime left when a successor is
    /// prepared (default 1/2). Must be in (activate_fraction, 1).
    pub prepare_fraction: f64,
    /// Share left when the successor activates (default 1/6). Must be in (0, prepare_fraction).
    pub activate_fraction: f64,
    /// `spiffe_refresh_hint` of the bundle (default 5 min).
    pub refresh_hint: Option<Duration>,
    /// `iss` claim of JWT-SVIDs (default none); set it to the OIDC issuer
    /// URL when JWT-SVIDs are consumed through OIDC discovery.
    pub jwt_issuer: Option<String>,
    /// The organisation's CA that signs each new X.509 CA (default none:
    /// self-signed). With it, the bundle publishes the upstream roots
    /// instead of the trust domain's own CAs; JWT keys are unaffected.
    pub upstream: Option<Arc<UpstreamCa>>,
}

impl CaConfig {
    /// SPIRE-like defaults for `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            x509_ttl: DEFAULT_CA_TTL,
            jwt_ttl: DEFAULT_CA_TTL,
            prepare_fraction: DEFAULT_PREPARE_FRACTION,
            activate_fraction: DEFAULT_ACTIVATE_FRACTION,
            refresh_hint: Some(DEFAULT_REFRESH_HINT),
            jwt_issuer: None,
            upstream: None,
        }
    }

    fn validate(&self) -> Result<(), AuthorityError> {
        let bad = |m: &str| Err(AuthorityError::InvalidConfig(m.to_owned()));
        if self.x509_ttl < Duration::from_secs(60) || self.jwt_ttl < Duration::from_secs(60) {
            return bad("CA and JWT key TTLs must be at least one minute");
        }
        let (p, a) = (self.prepare_fraction, self.activate_fraction);
        if !(a > 0.0 && a < p && p < 1.0) {
            return bad("fractions must satisfy 0 < activate_fraction < prepare_fraction < 1");
        }
        Ok(())
    }

    fn ttl(&self, kind: AuthorityKind) -> Duration {
        match kind {
            AuthorityKind::X509 => self.x509_ttl,
            AuthorityKind::Jwt => self.jwt_ttl,
        }
    }
}

/// A JWT signing key of the keyset.
pub struct JwtKey {
    kid: String,
    key: PrivateKey,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl JwtKey {
    /// The `kid` published in the bundle and put in token headers.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// The signing key. Secret.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The verification key.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// When the key was created.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the key stops being trusted; no token it signs outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}

/// The operations rotation needs from either kind of authority.
trait Authority {
    fn id(&self) -> String;
    fn not_before(&self) -> SystemTime;
    fn not_after(&self) -> SystemTime;
    /// Whether an operator-supplied id names this authority.
    fn has_id(&self, id: &str) -> bool {
        self.id() == id
    }
    /// X.509 only: signed by an upstream CA.
    fn upstream_signed(&self) -> Option<bool> {
        None
    }
}

impl Authority for X509Ca {
    fn id(&self) -> String {
        self.key_id_hex()
    }
    // Hex, so the case an operator copied it in does not matter.
    fn has_id(&self, id: &str) -> bool {
        self.key_id_hex().eq_ignore_ascii_case(id)
    }
    fn upstream_signed(&self) -> Option<bool> {
        Some(!self.is_self_signed())
    }
    fn not_before(&self) -> SystemTime {
        X509Ca::not_before(self)
    }
    fn not_after(&self) -> SystemTime {
        X509Ca::not_after(self)
    }
}

impl Authority for JwtKey {
    fn id(&self) -> String {
        self.kid.clone()
    }
    fn not_before(&self) -> SystemTime {
        self.not_before
    }
    fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

#[derive(Debug)]
struct Slot<A> {
    state: AuthorityState,
    /// Set by [`CaKeyset::taint`]; only ever on a retired authority.
    tainted: bool,
    authority: A,
}

/// One kind's authorities, oldest first.
#[derive(Debug)]
struct Slots<A> {
    kind: AuthorityKind,
    entries: Vec<Slot<A>>,
}

impl<A: Authority> Slots<A> {
    fn find(&self, state: AuthorityState) -> Option<usize> {
        self.entries.iter().position(|s| s.state == state)
    }

    fn active(&self) -> Option<&A> {
        self.find(AuthorityState::Active)
            .map(|i| &self.entries[i].authority)
    }

    /// Applies the schedule at `now`; `create` makes a new authority.
    fn rotate(
        &mut self,
        config: &CaConfig,
        now: SystemTime,
        create: &dyn Fn(SystemTime) -> Result<A, AuthorityError>,
        events: &mut Vec<RotationEvent>,
    ) -> Result<(), AuthorityError> {
        let kind = self.kind;
        // Expired authorities leave the bundle, whatever their state.
        let mut kept = Vec::with_capacity(self.entries.len());
        for slot in self.entries.drain(..) {
            if slot.authority.not_after() <= now {
                if slot.state == AuthorityState::Active {
                    events.push(RotationEvent::Retired {
                        kind,
                        id: slot.authority.id(),
                    });
                }
                events.push(RotationEvent::Pruned {
                    kind,
                    id: slot.authority.id(),
                });
            } else {
                kept.push(slot);
            }
        }
        self.entries = kept;

        // Each pass either finishes or moves the schedule forward; two
        // passes cover the worst case (activate, then prepare the next).
        for _ in 0..3 {
            let Some(active) = self.find(AuthorityState::Active) else {
                let index = match self.find(AuthorityState::Prepared) {
                    Some(i) => i,
                    None => self.prepare(now, create, events)?,
                };
                self.activate(index, events);
                continue;
            };
            let (prepare_at, activate_at) = {
                let a = &self.entries[active].authority;
                let life = a
                    .not_after()
                    .duration_since(a.not_before())
                    .unwrap_or(Duration::ZERO);
                (
                    a.not_after() - life.mul_f64(config.prepare_fraction),
                    a.not_after() - life.mul_f64(config.activate_fraction),
                )
            };
            let prepared = match self.find(AuthorityState::Prepared) {
                Some(i) => i,
                None if now >= prepare_at => self.prepare(now, create, events)?,
                None => return Ok(()),
            };
            if now < activate_at {
                return Ok(());
            }
            self.activate(prepared, events);
        }
        Ok(())
    }

    /// Makes entry `index` (the prepared one) active, retiring the active
    /// one if any. Tainted authorities are never prepared or active, so
    /// this never brings one back into service.
    fn activate(&mut self, index: usize, events: &mut Vec<RotationEvent>) {
        let kind = self.kind;
        if let Some(active) = self.find(AuthorityState::Active) {
            self.entries[active].state = AuthorityState::Retired;
            events.push(RotationEvent::Retired {
                kind,
                id: self.entries[active].authority.id(),
            });
        }
        self.entries[index].state = AuthorityState::Active;
        events.push(RotationEvent::Activated {
            kind,
            id: self.entries[index].authority.id(),
        });
    }

    fn prepare(
        &mut self,
        now: SystemTime,
        create: &dyn Fn(SystemTime) -> Result<A, AuthorityError>,
        events: &mut Vec<RotationEvent>,
    ) -> Result<usize, AuthorityError> {
        let index = self.add_prepared(now, create)?;
        events.push(self.prepared_event(index));
        Ok(index)
    }

    /// Adds a new prepared authority made by `create` at `now`.
    fn add_prepared(
        &mut self,
        now: SystemTime,
        create: &dyn Fn(SystemTime) -> Result<A, AuthorityError>,
    ) -> Result<usize, AuthorityError> {
        self.entries.push(Slot {
            state: AuthorityState::Prepared,
            tainted: false,
            authority: create(now)?,
        });
        Ok(self.entries.len() - 1)
    }

    fn prepared_event(&self, index: usize) -> RotationEvent {
        let authority = &self.entries[index].authority;
        RotationEvent::Prepared {
            kind: self.kind,
            id: authority.id(),
            not_after: authority.not_after(),
        }
    }

    /// [`CaKeyset::prepare_now`] for this kind.
    fn prepare_now(
        &mut self,
        now: SystemTime,
        create: &dyn Fn(SystemTime) -> Result<A, AuthorityError>,
    ) -> Result<RotationEvent, AuthorityError> {
        if let Some(i) = self.find(AuthorityState::Prepared) {
            return Err(AuthorityError::AlreadyPrepared {
                kind: self.kind,
                id: self.entries[i].authority.id(),
            });
        }
        if self.entries.len() >= MAX_AUTHORITIES_PER_KIND {
            return Err(AuthorityError::TooManyAuthorities {
                kind: self.kind,
                max: MAX_AUTHORITIES_PER_KIND,
            });
        }
        let index = self.add_prepared(now, create)?;
        Ok(self.prepared_event(index))
    }

    /// [`CaKeyset::activate_now`] for this kind.
    fn activate_now(&mut self, now: SystemTime) -> Result<Vec<RotationEvent>, AuthorityError> {
        let index = self
            .find(AuthorityState::Prepared)
            .ok_or(AuthorityError::NothingPrepared(self.kind))?;
        let a = &self.entries[index].authority;
        // An authority outside its validity would sign SVIDs no peer accepts.
        if now < a.not_before() || now >= a.not_after() {
            return Err(AuthorityError::PreparedNotValid {
                kind: self.kind,
                id: a.id(),
            });
        }
        let mut events = Vec::with_capacity(2);
        self.activate(index, &mut events);
        Ok(events)
    }

    /// The entry an operator-supplied id names.
    fn lookup(&self, id: &str) -> Result<usize, AuthorityError> {
        self.entries
            .iter()
            .position(|s| s.authority.has_id(id))
            .ok_or_else(|| AuthorityError::UnknownAuthority {
                kind: self.kind,
                id: id.to_owned(),
            })
    }

    /// [`CaKeyset::taint`] for this kind.
    fn taint(&mut self, id: &str) -> Result<RotationEvent, AuthorityError> {
        let kind = self.kind;
        let index = self.lookup(id)?;
        let slot = &mut self.entries[index];
        let id = slot.authority.id();
        if slot.state != AuthorityState::Retired {
            return Err(AuthorityError::NotRetired {
                kind,
                id,
                state: slot.state,
            });
        }
        if slot.tainted {
            return Err(AuthorityError::AlreadyTainted { kind, id });
        }
        slot.tainted = true;
        Ok(RotationEvent::Tainted { kind, id })
    }

    /// [`CaKeyset::revoke`] for this kind.
    fn revoke(&mut self, id: &str) -> Result<RotationEvent, AuthorityError> {
        let kind = self.kind;
        let index = self.lookup(id)?;
        let id = self.entries[index].authority.id();
        if !self.entries[index].tainted {
            return Err(AuthorityError::NotTainted { kind, id });
        }
        self.entries.remove(index);
        Ok(RotationEvent::Revoked { kind, id })
    }

    fn statuses(&self) -> impl Iterator<Item = AuthorityStatus> + '_ {
        self.entries.iter().map(|s| AuthorityStatus {
            kind: self.kind,
            id: s.authority.id(),
            state: s.state,
            tainted: s.tainted,
            not_before: s.authority.not_before(),
            not_after: s.authority.not_after(),
            upstream_signed: s.authority.upstream_signed(),
        })
    }

    fn check_states(&self) -> Result<(), AuthorityError> {
        for state in [AuthorityState::Active, AuthorityState::Prepared] {
            if self.entries.iter().filter(|s| s.state == state).count() > 1 {
                return Err(AuthorityError::InvalidState(format!(
                    "more than one {state} {} authority",
                    self.kind
                )));
            }
        }
        // Tainting is only allowed on retired authorities; a state saying
        // otherwise was edited by hand and would sign with a distrusted key.
        if let Some(s) = self
            .entries
            .iter()
            .find(|s| s.tainted && s.state != AuthorityState::Retired)
        {
            return Err(AuthorityError::InvalidState(format!(
                "the {} authority {} is {} and tainted",
                self.kind,
                s.authority.id(),
                s.state
            )));
        }
        Ok(())
    }
}

/// The trust domain's signing authorities with their rotation state.
///
/// Not `Clone` (it holds private keys); share it behind a lock.
#[derive(Debug)]
pub struct CaKeyset {
    config: CaConfig,
    x509: Slots<X509Ca>,
    jwt: Slots<JwtKey>,
    sequence: u64,
}

impl CaKeyset {
    /// Creates a keyset with a fresh active X.509 CA and JWT key.
    pub fn new(config: CaConfig, now: SystemTime) -> Result<Self, AuthorityError> {
        config.validate()?;
        let mut keyset = Self {
            config,
            x509: Slots {
                kind: AuthorityKind::X509,
                entries: Vec::new(),
            },
            jwt: Slots {
                kind: AuthorityKind::Jwt,
                entries: Vec::new(),
            },
            sequence: 0,
        };
        keyset.rotate(now)?;
        Ok(keyset)
    }

    /// The configuration in force.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// Applies the rotation schedule at `now` and reports what changed.
    /// Calling it again with the same `now` changes nothing. Every call that
    /// changes something increments the bundle sequence once.
    pub fn rotate(&mut self, now: SystemTime) -> Result<Vec<RotationEvent>, AuthorityError> {
        let mut events = Vec::new();
        let config = &self.config;
        self.x509
            .rotate(config, now, &|at| new_x509_ca(config, at), &mut events)?;
        self.jwt
            .rotate(config, now, &|at| new_jwt_key(config, at), &mut events)?;
        if !events.is_empty() {
            self.sequence += 1;
        }
        Ok(events)
    }

    /// Generates a new authority of `kind` now and publishes it as
    /// prepared, ahead of the schedule (SPIRE's `localauthority prepare`).
    /// [`Self::rotate`] activates it at the active authority's activation
    /// point unless [`Self::activate_now`] does first.
    ///
    /// Refused when `kind` already has a prepared authority, or holds
    /// [`MAX_AUTHORITIES_PER_KIND`] authorities.
    pub fn prepare_now(
        &mut self,
        kind: AuthorityKind,
        now: SystemTime,
    ) -> Result<RotationEvent, AuthorityError> {
        let config = &self.config;
        let event = match kind {
            AuthorityKind::X509 => self.x509.prepare_now(now, &|at| new_x509_ca(config, at))?,
            AuthorityKind::Jwt => self.jwt.prepare_now(now, &|at| new_jwt_key(config, at))?,
        };
        self.sequence += 1;
        Ok(event)
    }

    /// Makes the prepared authority of `kind` active and retires the active
    /// one (SPIRE's `localauthority activate`); returns the `Retired` (if
    /// there was an active authority) and `Activated` events. The schedule
    /// continues from the new active authority's lifetime.
    ///
    /// Refused when there is no prepared authority, or it is not valid at
    /// `now`. Publish the bundle before calling this, so that peers trust
    /// the new authority before it signs: a fresh [`Self::prepare_now`]
    /// followed at once by this leaves them no time to.
    pub fn activate_now(
        &mut self,
        kind: AuthorityKind,
        now: SystemTime,
    ) -> Result<Vec<RotationEvent>, AuthorityError> {
        let events = match kind {
            AuthorityKind::X509 => self.x509.activate_now(now)?,
            AuthorityKind::Jwt => self.jwt.activate_now(now)?,
        };
        self.sequence += 1;
        Ok(events)
    }

    /// Marks the retired authority `id` (X.509 subject key identifier in
    /// hex, or JWT `kid`) as tainted (SPIRE's `localauthority taint`). It
    /// stays in the bundle, so SVIDs it signed keep verifying while the
    /// caller re-issues them; [`Self::revoke`] removes it afterwards.
    ///
    /// Refused when `id` is unknown, already tainted, or not retired (the
    /// active authority still signs: activate its successor first).
    pub fn taint(
        &mut self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<RotationEvent, AuthorityError> {
        let event = match kind {
            AuthorityKind::X509 => self.x509.taint(id)?,
            AuthorityKind::Jwt => self.jwt.taint(id)?,
        };
        self.sequence += 1;
        Ok(event)
    }

    /// Removes the tainted authority `id` from the keyset and so from the
    /// bundle (SPIRE's `localauthority revoke`). SVIDs it signed stop
    /// verifying once peers get the new bundle; checking that none is still
    /// in use is the caller's job.
    ///
    /// Refused when `id` is unknown or not tainted.
    pub fn revoke(
        &mut self,
        kind: AuthorityKind,
        id: &str,
    ) -> Result<RotationEvent, AuthorityError> {
        let event = match kind {
            AuthorityKind::X509 => self.x509.revoke(id)?,
            AuthorityKind::Jwt => self.jwt.revoke(id)?,
        };
        self.sequence += 1;
        Ok(event)
    }

    /// Every authority with its state: X.509 first, then JWT, each oldest
    /// first.
    pub fn authorities(&self) -> Vec<AuthorityStatus> {
        self.x509.statuses().chain(self.jwt.statuses()).collect()
    }

    /// The ids of the tainted authorities of `kind`, oldest first.
    pub fn tainted_ids(&self, kind: AuthorityKind) -> Vec<String> {
        let ids = |statuses: &mut dyn Iterator<Item = AuthorityStatus>| {
            statuses.filter(|s| s.tainted).map(|s| s.id).collect()
        };
        match kind {
            AuthorityKind::X509 => ids(&mut self.x509.statuses()),
            AuthorityKind::Jwt => ids(&mut self.jwt.statuses()),
        }
    }

    /// The X.509 CA that signs new SVIDs.
    pub fn active_x509(&self) -> Option<&X509Ca> {
        self.x509.active()
    }

    /// The key that signs new JWT-SVIDs.
    pub fn active_jwt(&self) -> Option<&JwtKey> {
        self.jwt.active()
    }

    /// Every X.509 authority with its state, oldest first.
    pub fn x509_authorities(&self) -> impl Iterator<Item = (AuthorityState, &X509Ca)> {
        self.x509.entries.iter().map(|s| (s.state, &s.authority))
    }

    /// Every JWT key with its state, oldest first.
    pub fn jwt_authorities(&self) -> impl Iterator<Item = (AuthorityState, &JwtKey)> {
        self.jwt.entries.iter().map(|s| (s.state, &s.authority))
    }

    /// The bundle sequence number; grows with every change.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The trust domain's bundle: every authority (prepared, active or
    /// retired, tainted or not) whose notAfter is after `now`.
    pub fn bundle(&self, now: SystemTime) -> TrustBundle {
        TrustBundle {
            trust_domain: self.config.trust_domain.clone(),
            x509_authorities: self.x509_anchors(now),
            jwt_authorities: self
                .jwt
                .entries
                .iter()
                .filter(|s| s.authority.not_after > now)
                .map(|s| JwtAuthority {
                    key_id: s.authority.kid.clone(),
                    public_key: s.authority.public_key().clone(),
                    not_after: Some(s.authority.not_after),
                })
                .collect(),
            sequence: self.sequence,
            refresh_hint: self.config.refresh_hint,
        }
    }

    /// The bundle's X.509 authorities: the upstream's roots, if any, and
    /// the anchors of every CA still valid (each self-signed CA itself; the
    /// roots an upstream-signed CA was signed under). So a move to an
    /// upstream, or to another upstream root, keeps the SVIDs of the CAs
    /// before it verifying until those CAs expire.
    fn x509_anchors(&self, now: SystemTime) -> Vec<CertificateDer<'static>> {
        let mut anchors: Vec<CertificateDer<'static>> = self
            .config
            .upstream
            .as_ref()
            .map(|u| u.roots().to_vec())
            .unwrap_or_default();
        for slot in &self.x509.entries {
            if slot.authority.not_after() <= now {
                continue;
            }
            for anchor in slot.authority.anchors() {
                if !anchors.contains(anchor) {
                    anchors.push(anchor.clone());
                }
            }
        }
        anchors
    }

    /// Replaces the upstream CA (re-read after its files changed): the next
    /// CA prepared is signed by it. Returns whether the bundle's roots
    /// changed, in which case the bundle sequence grows.
    pub fn set_upstream(&mut self, upstream: Option<Arc<UpstreamCa>>) -> bool {
        let roots = |u: &Option<Arc<UpstreamCa>>| u.as_ref().map(|u| u.roots().to_vec());
        let changed = roots(&self.config.upstream) != roots(&upstream);
        self.config.upstream = upstream;
        if changed {
            self.sequence += 1;
        }
        changed
    }

    /// Mints an X.509-SVID with the active CA (notAfter capped at the CA's).
    pub fn mint_x509_svid(
        &self,
        params: &X509SvidParams,
        subject_key: &PublicKey,
        now: SystemTime,
    ) -> Result<X509Svid, AuthorityError> {
        let ca = self
            .active_x509()
            .ok_or(AuthorityError::NoActiveAuthority(AuthorityKind::X509))?;
        Ok(ca.mint_svid(params, subject_key, now)?)
    }

    /// Mints an X.509-SVID for the public key of a DER CSR with the active
    /// CA. For issuers that see each CSR once; one that checks CSRs at its
    /// edge parses them with [`x509::public_key_from_csr`] and calls
    /// [`Self::mint_x509_svid`] (the operator does).
    pub fn mint_x509_svid_from_csr(
        &self,
        params: &X509SvidParams,
        csr_der: &[u8],
        now: SystemTime,
    ) -> Result<X509Svid, AuthorityError> {
        let key = x509::public_key_from_csr(csr_der)?;
        self.mint_x509_svid(params, &key, now)
    }

    /// Mints a JWT-SVID with the active JWT key; `exp` is capped at the
    /// key's notAfter.
    pub fn mint_jwt_svid(
        &self,
        sub: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        extra_claims: &Map<String, Value>,
        now: SystemTime,
    ) -> Result<JwtSvid, AuthorityError> {
        let key = self
            .active_jwt()
            .ok_or(AuthorityError::NoActiveAuthority(AuthorityKind::Jwt))?;
        if !sub.is_member_of(&self.config.trust_domain) {
            return Err(AuthorityError::ForeignTrustDomain {
                id: sub.clone(),
                trust_domain: self.config.trust_domain.clone(),
            });
        }
        let left = key.not_after.duration_since(now).unwrap_or(Duration::ZERO);
        if left < Duration::from_secs(1) {
            return Err(AuthorityError::NoActiveAuthority(AuthorityKind::Jwt));
        }
        let ttl = ttl.min(Duration::from_secs(left.as_secs()));
        Ok(jwt::mint_jwt_svid_with_issuer(
            &key.key,
            &key.kid,
            self.config.jwt_issuer.as_deref(),
            sub,
            audiences,
            ttl,
            extra_claims,
            now,
        )?)
    }

    /// Serializes the whole state as JSON. **Contains the CA and JWT private
    /// keys** (PKCS#8 PEM): store it like a secret (0600 file, Kubernetes
    /// Secret), never log it.
    pub fn to_state_json(&self) -> Result<Zeroizing<String>, AuthorityError> {
        let state = State {
            version: STATE_VERSION,
            trust_domain: self.config.trust_domain.clone(),
            sequence: self.sequence,
            x509_authorities: self
                .x509
                .entries
                .iter()
                .map(|s| StateX509 {
                    state: s.state,
                    tainted: s.tainted,
                    // The CA first, then the upstream chain its SVIDs carry.
                    certificate: x509::certs_to_pem(
                        &std::iter::once(s.authority.certificate().clone())
                            .chain(s.authority.chain().iter().cloned())
                            .collect::<Vec<_>>(),
                    ),
                    roots: if s.authority.is_self_signed() {
                        String::new()
                    } else {
                        x509::certs_to_pem(s.authority.anchors())
                    },
                    private_key: Secret(s.authority.key().to_pkcs8_pem().to_string()),
                })
                .collect(),
            jwt_authorities: self
                .jwt
                .entries
                .iter()
                .map(|s| StateJwt {
                    state: s.state,
                    tainted: s.tainted,
                    key_id: s.authority.kid.clone(),
                    not_before: unix_secs(s.authority.not_before),
                    not_after: unix_secs(s.authority.not_after),
                    private_key: Secret(s.authority.key.to_pkcs8_pem().to_string()),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&state)
            .map(Zeroizing::new)
            .map_err(|e| AuthorityError::InvalidState(e.to_string()))
    }

    /// Restores a keyset saved with [`CaKeyset::to_state_json`] under
    /// `config` (which may differ from the one it was saved with, e.g. a new
    /// TTL or key type takes effect at the next rotation). Call
    /// [`CaKeyset::rotate`] right after, to catch up on time spent down.
    pub fn from_state_json(config: CaConfig, json: &str) -> Result<Self, AuthorityError> {
        config.validate()?;
        let invalid = |m: String| AuthorityError::InvalidState(m);
        let state: State = serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(invalid(format!(
                "unsupported state version {}",
                state.version
            )));
        }
        if state.trust_domain != config.trust_domain {
            return Err(invalid(format!(
                "state is for trust domain {}, configuration for {}",
                state.trust_domain, config.trust_domain
            )));
        }
        let mut x509 = Slots {
            kind: AuthorityKind::X509,
            entries: Vec::new(),
        };
        for entry in &state.x509_authorities {
            // The CA's certificate, then the upstream chain (if any).
            let mut certs = x509::certs_from_pem(&entry.certificate)?.into_iter();
            let Some(cert) = certs.next() else {
                return Err(invalid("an X.509 authority without a certificate".into()));
            };
            let key = PrivateKey::from_pkcs8_pem(&entry.private_key.0)?;
            let roots = x509::certs_from_pem(&entry.roots)?;
            let ca = X509Ca::from_parts_with_chain(cert, certs.collect(), roots, key)?;
            if ca.trust_domain() != &config.trust_domain {
                return Err(invalid("X.509 authority of another trust domain".into()));
            }
            x509.entries.push(Slot {
                state: entry.state,
                tainted: entry.tainted,
                authority: ca,
            });
        }
        let mut jwt = Slots {
            kind: AuthorityKind::Jwt,
            entries: Vec::new(),
        };
        for entry in &state.jwt_authorities {
            if entry.key_id.is_empty() || entry.not_after <= entry.not_before {
                return Err(invalid(
                    "JWT authority with empty kid or bad lifetime".into(),
                ));
            }
            jwt.entries.push(Slot {
                state: entry.state,
                tainted: entry.tainted,
                authority: JwtKey {
                    kid: entry.key_id.clone(),
                    key: PrivateKey::from_pkcs8_pem(&entry.private_key.0)?,
                    not_before: UNIX_EPOCH + Duration::from_secs(entry.not_before),
                    not_after: UNIX_EPOCH + Duration::from_secs(entry.not_after),
                },
            });
        }
        x509.check_states()?;
        jwt.check_states()?;
        Ok(Self {
            config,
            x509,
            jwt,
            sequence: state.sequence,
        })
    }
}

/// The persisted form. Field names are part of the on-disk format.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct State {
    version: u32,
    trust_domain: TrustDomain,
    sequence: u64,
    x509_authorities: Vec<StateX509>,
    jwt_authorities: Vec<StateJwt>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StateX509 {
    state: AuthorityState,
    // Absent (false) in states saved before tainting existed, and left out
    // when false so older versions can still read the state.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tainted: bool,
    /// The CA's certificate, then the upstream chain its SVIDs carry.
    certificate: String,
    /// For a CA signed by an upstream: the roots its SVIDs verify against
    /// (absent for self-signed CAs, as in states saved before upstreams).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    roots: String,
    private_key: Secret,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StateJwt {
    state: AuthorityState,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    tainted: bool,
    key_id: String,
    not_before: u64,
    not_after: u64,
    private_key: Secret,
}

/// A PEM private key on its way to or from JSON, wiped on drop.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// A new X.509 CA per `config`, valid from `at`: the one way the schedule
/// and [`CaKeyset::prepare_now`] make CAs.
fn new_x509_ca(config: &CaConfig, at: SystemTime) -> Result<X509Ca, AuthorityError> {
    let key = PrivateKey::generate(config.x509_key_type)?;
    let ttl = config.ttl(AuthorityKind::X509);
    Ok(match &config.upstream {
        Some(upstream) => X509Ca::signed_by(upstream, &config.trust_domain, key, ttl, at)?,
        None => X509Ca::self_signed(&config.trust_domain, key, ttl, at)?,
    })
}

/// A new JWT signing key per `config`, valid from `at` (whole seconds, as
/// the state and the bundle store them).
fn new_jwt_key(config: &CaConfig, at: SystemTime) -> Result<JwtKey, AuthorityError> {
    let at = truncate_to_secs(at);
    Ok(JwtKey {
        kid: random_kid()?,
        key: PrivateKey::generate(config.jwt_key_type)?,
        not_before: at,
        not_after: at + config.ttl(AuthorityKind::Jwt),
    })
}

/// A random 32-character key ID (24 random bytes, base64url).
fn random_kid() -> Result<String, AuthorityError> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| KeyError::Generation("random kid".to_owned()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::verify_x509_svid;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn workload() -> SpiffeId {
        SpiffeId::parse("spiffe://example.org/ns/web").unwrap()
    }

    fn mint_x509(ks: &CaKeyset, ttl: Duration, now: SystemTime) -> X509Svid {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        ks.mint_x509_svid(&X509SvidParams::new(workload(), ttl), key.public_key(), now)
            .unwrap()
    }

    fn mint_jwt(ks: &CaKeyset, now: SystemTime) -> JwtSvid {
        ks.mint_jwt_svid(
            &workload(),
            &["svc".to_owned()],
            5 * 60 * Duration::from_secs(1),
            &Map::new(),
            now,
        )
        .unwrap()
    }

    fn kinds(events: &[RotationEvent]) -> Vec<(&'static str, AuthorityKind)> {
        events
            .iter()
            .map(|e| match e {
                RotationEvent::Prepared { kind, .. } => ("prepared", *kind),
                RotationEvent::Activated { kind, .. } => ("activated", *kind),
                RotationEvent::Retired { kind, .. } => ("retired", *kind),
                RotationEvent::Pruned { kind, .. } => ("pruned", *kind),
                RotationEvent::Tainted { kind, .. } => ("tainted", *kind),
                RotationEvent::Revoked { kind, .. } => ("revoked", *kind),
            })
            .collect()
    }

    fn states<A>(it: impl Iterator<Item = (AuthorityState, A)>) -> Vec<AuthorityState> {
        it.map(|(s, _)| s).collect()
    }

    /// When the active X.509 CA's schedule says to prepare and to activate.
    fn x509_schedule(ks: &CaKeyset) -> (SystemTime, SystemTime) {
        let ca = ks.active_x509().unwrap();
        let life = ca.not_after().duration_since(ca.not_before()).unwrap();
        (
            ca.not_after() - life.mul_f64(DEFAULT_PREPARE_FRACTION),
            ca.not_after() - life.mul_f64(DEFAULT_ACTIVATE_FRACTION),
        )
    }

    #[test]
    fn config_is_validated() {
        let mut c = CaConfig::new(td());
        c.activate_fraction = 0.6;
        assert!(matches!(
            CaKeyset::new(c.clone(), t0()),
            Err(AuthorityError::InvalidConfig(_))
        ));
        c.activate_fraction = 0.0;
        assert!(matches!(
            CaKeyset::new(c.clone(), t0()),
            Err(AuthorityError::InvalidConfig(_))
        ));
        c = CaConfig::new(td());
        c.prepare_fraction = 1.0;
        assert!(matches!(
            CaKeyset::new(c.clone(), t0()),
            Err(AuthorityError::InvalidConfig(_))
        ));
        c = CaConfig::new(td());
        c.jwt_ttl = Duration::from_secs(1);
        assert!(matches!(
            CaKeyset::new(c, t0()),
            Err(AuthorityError::InvalidConfig(_))
        ));
    }

    #[test]
    fn new_keyset_has_active_authorities() {
        let ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        assert_eq!(ks.sequence(), 1);
        let ca = ks.active_x509().unwrap();
        assert_eq!(ca.not_after(), t0() + DEFAULT_CA_TTL);
        let jwt = ks.active_jwt().unwrap();
        assert_eq!(jwt.key_id().len(), 32);
        assert_eq!(jwt.not_after(), t0() + DEFAULT_CA_TTL);
        let b = ks.bundle(t0());
        assert_eq!(b.x509_authorities.len(), 1);
        assert_eq!(b.jwt_authorities.len(), 1);
        assert_eq!(b.jwt_authorities[0].not_after, Some(jwt.not_after()));
        assert_eq!(b.refresh_hint, Some(DEFAULT_REFRESH_HINT));
        assert_eq!(b.sequence, 1);
    }

    #[test]
    fn full_rotation_schedule() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        let first_ca = ks.active_x509().unwrap().key_id_hex();
        let (prepare_at, activate_at) = x509_schedule(&ks);
        // The JWT key was created at t0 exactly: prepare at 12 h, activate at 20 h.
        assert_eq!(prepare_at, t0() + 12 * HOUR - Duration::from_secs(5));

        // Before the prepare point nothing happens.
        assert!(
            ks.rotate(prepare_at - Duration::from_secs(1))
                .unwrap()
                .is_empty()
        );
        assert_eq!(ks.sequence(), 1);
        let svid_old = mint_x509(&ks, HOUR, prepare_at - Duration::from_secs(1));
        let jwt_old = mint_jwt(&ks, t0() + HOUR);

        // X.509 successor prepared; JWT (created 10 s later in life terms) not yet.
        let events = ks.rotate(prepare_at).unwrap();
        assert_eq!(kinds(&events), [("prepared", AuthorityKind::X509)]);
        assert_eq!(ks.sequence(), 2);
        assert!(ks.rotate(prepare_at).unwrap().is_empty(), "idempotent");
        assert_eq!(ks.sequence(), 2);
        assert_eq!(
            ks.active_x509().unwrap().key_id_hex(),
            first_ca,
            "prepared is not active yet"
        );
        let early_bundle = ks.bundle(prepare_at);
        assert_eq!(early_bundle.x509_authorities.len(), 2);
        assert_eq!(
            states(ks.x509_authorities()),
            [AuthorityState::Active, AuthorityState::Prepared]
        );

        let events = ks.rotate(t0() + 12 * HOUR).unwrap();
        assert_eq!(kinds(&events), [("prepared", AuthorityKind::Jwt)]);
        assert_eq!(ks.bundle(t0() + 12 * HOUR).jwt_authorities.len(), 2);

        // Activation.
        assert!(
            ks.rotate(activate_at - Duration::from_secs(1))
                .unwrap()
                .is_empty()
        );
        let events = ks.rotate(activate_at).unwrap();
        assert_eq!(
            kinds(&events),
            [
                ("retired", AuthorityKind::X509),
                ("activated", AuthorityKind::X509)
            ]
        );
        let second_ca = ks.active_x509().unwrap().key_id_hex();
        assert_ne!(second_ca, first_ca);
        assert_eq!(
            states(ks.x509_authorities()),
            [AuthorityState::Retired, AuthorityState::Active]
        );
        let events = ks.rotate(t0() + 20 * HOUR).unwrap();
        assert_eq!(
            kinds(&events),
            [
                ("retired", AuthorityKind::Jwt),
                ("activated", AuthorityKind::Jwt)
            ]
        );

        // SVIDs from before and after activation verify against the current bundle,
        // and the new CA's SVIDs verify against the bundle published at prepare time.
        let now = t0() + 20 * HOUR + Duration::from_secs(60);
        let svid_new = mint_x509(&ks, HOUR, now);
        let current = ks.bundle(now);
        assert!(verify_x509_svid(&svid_new.cert_chain, &current, now).is_ok());
        assert!(verify_x509_svid(&svid_new.cert_chain, &early_bundle, now).is_ok());
        assert!(verify_x509_svid(&svid_old.cert_chain, &current, prepare_at).is_ok());
        let svid_late_old = {
            // An SVID the old CA signed just before activation outlives it in the bundle.
            let mut before =
                CaKeyset::from_state_json(CaConfig::new(td()), &ks.to_state_json().unwrap())
                    .unwrap();
            before.x509.entries[0].state = AuthorityState::Active;
            before.x509.entries[1].state = AuthorityState::Prepared;
            mint_x509(&before, 10 * HOUR, activate_at - Duration::from_secs(1))
        };
        assert_eq!(
            svid_late_old.not_after,
            t0() + 24 * HOUR,
            "capped at the old CA's notAfter"
        );
        assert!(
            verify_x509_svid(&svid_late_old.cert_chain, &ks.bundle(now), t0() + 23 * HOUR).is_ok()
        );

        // JWTs signed by the retired key still validate while it is in the bundle.
        let jwt_new = mint_jwt(&ks, now);
        assert_ne!(
            jwt_new.token.split('.').next(),
            jwt_old.token.split('.').next()
        );
        let v = jwt::validate_jwt_svid(&jwt_new.token, "svc", &ks.bundle(now), now).unwrap();
        assert_eq!(v.key_id, ks.active_jwt().unwrap().key_id());
        assert!(
            jwt::validate_jwt_svid(&jwt_old.token, "svc", &ks.bundle(t0() + HOUR), t0() + HOUR)
                .is_ok()
        );

        // The old authorities leave the bundle at their notAfter; the next cycle starts.
        let at_expiry = t0() + 24 * HOUR;
        let events = ks.rotate(at_expiry).unwrap();
        assert_eq!(
            kinds(&events),
            [
                ("pruned", AuthorityKind::X509),
                ("prepared", AuthorityKind::X509),
                ("pruned", AuthorityKind::Jwt),
                ("prepared", AuthorityKind::Jwt),
            ]
        );
        let b = ks.bundle(at_expiry);
        assert_eq!(b.x509_authorities.len(), 2, "second CA and its successor");
        assert!(
            b.x509_authorities
                .iter()
                .all(|c| c != &early_bundle.x509_authorities[0])
        );
        assert_eq!(
            verify_x509_svid(
                &svid_late_old.cert_chain,
                &b,
                at_expiry - Duration::from_secs(1)
            ),
            Err(X509Error::UntrustedIssuer)
        );
        assert_eq!(ks.active_x509().unwrap().key_id_hex(), second_ca);
        assert_eq!(
            ks.sequence(),
            6,
            "one increment per rotate() call that changed something"
        );
    }

    #[test]
    fn jwt_keys_rotate_independently() {
        let mut config = CaConfig::new(td());
        config.jwt_ttl = 6 * HOUR;
        let mut ks = CaKeyset::new(config, t0()).unwrap();
        let ca = ks.active_x509().unwrap().key_id_hex();
        let mut jwt_ids = vec![ks.active_jwt().unwrap().key_id().to_owned()];
        // Walk a day in 10-minute steps, as a periodic rotator would.
        let mut now = t0();
        let mut x509_events = 0;
        // Stop before the X.509 CA's own prepare point (12 h - 5 s).
        while now < t0() + 11 * HOUR + Duration::from_secs(50 * 60) {
            now += Duration::from_secs(600);
            for e in ks.rotate(now).unwrap() {
                match e {
                    RotationEvent::Activated {
                        kind: AuthorityKind::Jwt,
                        id,
                    } => jwt_ids.push(id),
                    RotationEvent::Prepared {
                        kind: AuthorityKind::X509,
                        ..
                    } => x509_events += 1,
                    RotationEvent::Activated {
                        kind: AuthorityKind::X509,
                        ..
                    } => x509_events += 1,
                    _ => {}
                }
            }
            // A token minted now validates now, whatever rotation just did.
            let token = mint_jwt(&ks, now);
            assert!(jwt::validate_jwt_svid(&token.token, "svc", &ks.bundle(now), now).is_ok());
            assert!(ks.bundle(now).jwt_authorities.len() <= 3);
        }
        // A 6 h key's successor is made at 3 h and takes over at 5 h; each
        // successor started 3 h later than its predecessor, so activations
        // come at 5 h, 8 h and 11 h.
        assert_eq!(jwt_ids.len(), 4, "{jwt_ids:?}");
        assert_eq!(ks.active_x509().unwrap().key_id_hex(), ca);
        assert_eq!(x509_events, 0);
    }

    #[test]
    fn jwt_expiry_is_capped_by_the_key() {
        let mut config = CaConfig::new(td());
        config.jwt_ttl = HOUR;
        let ks = CaKeyset::new(config, t0()).unwrap();
        let late = t0() + HOUR - Duration::from_secs(30);
        let svid = ks
            .mint_jwt_svid(&workload(), &["a".to_owned()], HOUR, &Map::new(), late)
            .unwrap();
        assert_eq!(svid.expiry, t0() + HOUR);
        assert_eq!(
            ks.mint_jwt_svid(
                &workload(),
                &["a".to_owned()],
                HOUR,
                &Map::new(),
                t0() + HOUR
            ),
            Err(AuthorityError::NoActiveAuthority(AuthorityKind::Jwt))
        );
        let mut with_issuer = ks.config().clone();
        with_issuer.jwt_issuer = Some("https://oidc.example.org".to_owned());
        let ks2 = CaKeyset::new(with_issuer, t0()).unwrap();
        let token = ks2
            .mint_jwt_svid(&workload(), &["a".to_owned()], HOUR, &Map::new(), t0())
            .unwrap();
        let v = jwt::validate_jwt_svid(&token.token, "a", &ks2.bundle(t0()), t0()).unwrap();
        assert_eq!(v.claims["iss"], "https://oidc.example.org");
        let foreign = SpiffeId::parse("spiffe://other.org/x").unwrap();
        assert!(matches!(
            ks.mint_jwt_svid(&foreign, &["a".to_owned()], HOUR, &Map::new(), t0()),
            Err(AuthorityError::ForeignTrustDomain { .. })
        ));
    }

    #[test]
    fn restart_from_serialized_state_continues_the_schedule() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        ks.rotate(t0() + 12 * HOUR).unwrap();
        let json = ks.to_state_json().unwrap();
        assert!(
            json.contains("BEGIN PRIVATE KEY"),
            "the state carries the keys"
        );
        assert!(!format!("{ks:?}").contains("BEGIN PRIVATE KEY"));

        let mut restored = CaKeyset::from_state_json(CaConfig::new(td()), &json).unwrap();
        assert_eq!(restored.sequence(), ks.sequence());
        assert_eq!(
            restored.bundle(t0() + 12 * HOUR),
            ks.bundle(t0() + 12 * HOUR)
        );
        assert!(restored.rotate(t0() + 12 * HOUR).unwrap().is_empty());

        // Both continue identically.
        let later = t0() + 20 * HOUR;
        let a = ks.rotate(later).unwrap();
        let b = restored.rotate(later).unwrap();
        assert_eq!(a, b);
        assert_eq!(restored.bundle(later), ks.bundle(later));
        let svid = mint_x509(&restored, HOUR, later);
        assert!(verify_x509_svid(&svid.cert_chain, &ks.bundle(later), later).is_ok());
        let token = mint_jwt(&restored, later);
        assert!(jwt::validate_jwt_svid(&token.token, "svc", &ks.bundle(later), later).is_ok());
    }

    #[test]
    fn catches_up_after_long_downtime() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        ks.rotate(t0() + 12 * HOUR).unwrap();
        let prepared_x509 = ks
            .x509_authorities()
            .nth(1)
            .map(|(_, ca)| ca.key_id_hex())
            .unwrap();
        let json = ks.to_state_json().unwrap();

        // Down from 12 h to 30 h: the first authorities expired meanwhile.
        let mut restored = CaKeyset::from_state_json(CaConfig::new(td()), &json).unwrap();
        let now = t0() + 30 * HOUR;
        let events = restored.rotate(now).unwrap();
        assert_eq!(
            kinds(&events),
            [
                ("retired", AuthorityKind::X509),
                ("pruned", AuthorityKind::X509),
                ("activated", AuthorityKind::X509),
                ("prepared", AuthorityKind::X509),
                ("retired", AuthorityKind::Jwt),
                ("pruned", AuthorityKind::Jwt),
                ("activated", AuthorityKind::Jwt),
                ("prepared", AuthorityKind::Jwt),
            ]
        );
        assert_eq!(restored.active_x509().unwrap().key_id_hex(), prepared_x509);
        assert!(restored.rotate(now).unwrap().is_empty());
        let svid = mint_x509(&restored, HOUR, now);
        assert!(verify_x509_svid(&svid.cert_chain, &restored.bundle(now), now).is_ok());

        // Down for longer than every authority's life: fresh ones are made.
        let mut restored = CaKeyset::from_state_json(CaConfig::new(td()), &json).unwrap();
        let now = t0() + 100 * HOUR;
        restored.rotate(now).unwrap();
        assert_eq!(
            states(restored.x509_authorities()),
            [AuthorityState::Active]
        );
        assert_eq!(states(restored.jwt_authorities()), [AuthorityState::Active]);
        assert_eq!(
            restored.active_x509().unwrap().not_after(),
            now + DEFAULT_CA_TTL
        );
    }

    #[test]
    fn state_json_is_validated() {
        let ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        let json = ks.to_state_json().unwrap();
        let other = CaConfig::new(TrustDomain::new("other.org").unwrap());
        assert!(matches!(
            CaKeyset::from_state_json(other, &json),
            Err(AuthorityError::InvalidState(_))
        ));
        assert!(matches!(
            CaKeyset::from_state_json(CaConfig::new(td()), "{}"),
            Err(AuthorityError::InvalidState(_))
        ));
        let mut doc: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["x509Authorities"][0]["state"], "active");
        assert_eq!(
            doc["jwtAuthorities"][0]["notAfter"],
            unix_secs(t0() + DEFAULT_CA_TTL)
        );

        // Two active JWT keys are refused.
        let entry = doc["jwtAuthorities"][0].clone();
        doc["jwtAuthorities"].as_array_mut().unwrap().push(entry);
        assert!(matches!(
            CaKeyset::from_state_json(CaConfig::new(td()), &doc.to_string()),
            Err(AuthorityError::InvalidState(_))
        ));
        // A key that does not match its certificate is refused.
        let mut doc: Value = serde_json::from_str(&json).unwrap();
        let stranger = PrivateKey::generate(KeyType::EcP256).unwrap();
        doc["x509Authorities"][0]["privateKey"] = Value::from(stranger.to_pkcs8_pem().as_str());
        assert!(matches!(
            CaKeyset::from_state_json(CaConfig::new(td()), &doc.to_string()),
            Err(AuthorityError::X509(X509Error::InvalidCa(_)))
        ));
    }

    #[test]
    fn rsa_and_p384_keysets_rotate() {
        for (x509_type, jwt_type) in [
            (KeyType::EcP384, KeyType::Rsa2048),
            (KeyType::Rsa2048, KeyType::EcP384),
        ] {
            let mut config = CaConfig::new(td());
            config.x509_key_type = x509_type;
            config.jwt_key_type = jwt_type;
            let mut ks = CaKeyset::new(config.clone(), t0()).unwrap();
            assert_eq!(ks.active_x509().unwrap().key().key_type(), x509_type);
            assert_eq!(ks.active_jwt().unwrap().key().key_type(), jwt_type);
            ks.rotate(t0() + 12 * HOUR).unwrap();
            ks.rotate(t0() + 20 * HOUR).unwrap();
            let now = t0() + 21 * HOUR;
            let b = ks.bundle(now);
            assert_eq!((b.x509_authorities.len(), b.jwt_authorities.len()), (2, 2));
            let svid = mint_x509(&ks, HOUR, now);
            assert!(verify_x509_svid(&svid.cert_chain, &b, now).is_ok());
            let token = mint_jwt(&ks, now);
            assert!(jwt::validate_jwt_svid(&token.token, "svc", &b, now).is_ok());
            // Round trip through JSON bundle and state keeps everything usable.
            let parsed =
                TrustBundle::from_spiffe_json(td(), b.to_spiffe_json().unwrap().as_bytes())
                    .unwrap();
            assert!(verify_x509_svid(&svid.cert_chain, &parsed, now).is_ok());
            assert!(jwt::validate_jwt_svid(&token.token, "svc", &parsed, now).is_ok());
            let restored = CaKeyset::from_state_json(config, &ks.to_state_json().unwrap()).unwrap();
            assert_eq!(restored.bundle(now), b);
        }
    }

    // ---- Operator-driven authority operations ----

    const KINDS: [AuthorityKind; 2] = [AuthorityKind::X509, AuthorityKind::Jwt];

    fn other(kind: AuthorityKind) -> AuthorityKind {
        match kind {
            AuthorityKind::X509 => AuthorityKind::Jwt,
            AuthorityKind::Jwt => AuthorityKind::X509,
        }
    }

    fn statuses(ks: &CaKeyset, kind: AuthorityKind) -> Vec<AuthorityStatus> {
        ks.authorities()
            .into_iter()
            .filter(|s| s.kind == kind)
            .collect()
    }

    fn active_id(ks: &CaKeyset, kind: AuthorityKind) -> String {
        match kind {
            AuthorityKind::X509 => ks.active_x509().unwrap().key_id_hex(),
            AuthorityKind::Jwt => ks.active_jwt().unwrap().key_id().to_owned(),
        }
    }

    /// How authority `id` appears in a bundle: its certificate or its kid.
    fn marker(ks: &CaKeyset, kind: AuthorityKind, id: &str) -> Vec<u8> {
        match kind {
            AuthorityKind::X509 => ks
                .x509_authorities()
                .find(|(_, ca)| ca.key_id_hex() == id)
                .map(|(_, ca)| ca.certificate().to_vec())
                .unwrap(),
            AuthorityKind::Jwt => id.as_bytes().to_vec(),
        }
    }

    /// The markers of `kind` in the bundle published at `now`.
    fn published(ks: &CaKeyset, kind: AuthorityKind, now: SystemTime) -> Vec<Vec<u8>> {
        let b = ks.bundle(now);
        match kind {
            AuthorityKind::X509 => b.x509_authorities.iter().map(|c| c.to_vec()).collect(),
            AuthorityKind::Jwt => b
                .jwt_authorities
                .iter()
                .map(|a| a.key_id.as_bytes().to_vec())
                .collect(),
        }
    }

    enum Minted {
        X509(X509Svid),
        Jwt(JwtSvid),
    }

    fn mint(ks: &CaKeyset, kind: AuthorityKind, now: SystemTime) -> Minted {
        match kind {
            AuthorityKind::X509 => Minted::X509(mint_x509(ks, HOUR, now)),
            AuthorityKind::Jwt => Minted::Jwt(mint_jwt(ks, now)),
        }
    }

    fn verifies(svid: &Minted, bundle: &TrustBundle, now: SystemTime) -> bool {
        match svid {
            Minted::X509(s) => verify_x509_svid(&s.cert_chain, bundle, now).is_ok(),
            Minted::Jwt(s) => jwt::validate_jwt_svid(&s.token, "svc", bundle, now).is_ok(),
        }
    }

    /// The id of the one authority of the keyset that verifies `svid` on its own.
    fn signer(ks: &CaKeyset, svid: &Minted, now: SystemTime) -> String {
        let full = ks.bundle(now);
        let signers: Vec<String> = match svid {
            Minted::X509(_) => ks
                .x509_authorities()
                .filter(|(_, ca)| {
                    let alone = TrustBundle {
                        x509_authorities: vec![ca.certificate().clone()],
                        jwt_authorities: Vec::new(),
                        ..full.clone()
                    };
                    verifies(svid, &alone, now)
                })
                .map(|(_, ca)| ca.key_id_hex())
                .collect(),
            Minted::Jwt(_) => ks
                .jwt_authorities()
                .filter(|(_, key)| {
                    let alone = TrustBundle {
                        x509_authorities: Vec::new(),
                        jwt_authorities: full
                            .jwt_authorities
                            .iter()
                            .filter(|a| a.key_id == key.key_id())
                            .cloned()
                            .collect(),
                        ..full.clone()
                    };
                    verifies(svid, &alone, now)
                })
                .map(|(_, key)| key.key_id().to_owned())
                .collect(),
        };
        assert_eq!(signers.len(), 1, "{signers:?}");
        signers.into_iter().next().unwrap()
    }

    /// When the active authority of `kind` is due to be succeeded.
    fn schedule(ks: &CaKeyset, kind: AuthorityKind) -> (SystemTime, SystemTime) {
        let a = statuses(ks, kind)
            .into_iter()
            .find(|s| s.state == AuthorityState::Active)
            .unwrap();
        let life = a.not_after.duration_since(a.not_before).unwrap();
        (
            a.not_after - life.mul_f64(DEFAULT_PREPARE_FRACTION),
            a.not_after - life.mul_f64(DEFAULT_ACTIVATE_FRACTION),
        )
    }

    fn of_kind(events: &[RotationEvent], kind: AuthorityKind) -> Vec<&'static str> {
        kinds(events)
            .into_iter()
            .filter(|(_, k)| *k == kind)
            .map(|(e, _)| e)
            .collect()
    }

    #[test]
    fn prepare_activate_taint_revoke() {
        for kind in KINDS {
            let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
            let untouched = statuses(&ks, other(kind));
            let old = active_id(&ks, kind);
            let now = t0() + HOUR;
            let svid_old = mint(&ks, kind, now);
            assert_eq!(signer(&ks, &svid_old, now), old);

            // Prepare: published, not signing.
            let event = ks.prepare_now(kind, now).unwrap();
            let RotationEvent::Prepared {
                kind: k,
                id: new,
                not_after,
            } = event
            else {
                panic!("{event:?}")
            };
            assert_eq!(k, kind);
            assert_eq!(not_after, truncate_to_secs(now) + DEFAULT_CA_TTL);
            assert_eq!(ks.sequence(), 2);
            assert_eq!(ks.bundle(now).sequence, 2);
            assert_eq!(
                published(&ks, kind, now),
                [marker(&ks, kind, &old), marker(&ks, kind, &new)]
            );
            assert_eq!(active_id(&ks, kind), old);
            assert_eq!(signer(&ks, &mint(&ks, kind, now), now), old);
            let s = statuses(&ks, kind);
            assert_eq!(
                s.iter()
                    .map(|s| (s.id.as_str(), s.state))
                    .collect::<Vec<_>>(),
                [
                    (old.as_str(), AuthorityState::Active),
                    (new.as_str(), AuthorityState::Prepared)
                ]
            );
            assert_eq!(s[1].not_after, not_after);
            assert!(s[1].not_before <= now);

            // Activate: the new one signs, the old one is retired but published.
            let events = ks.activate_now(kind, now).unwrap();
            assert_eq!(
                events,
                [
                    RotationEvent::Retired {
                        kind,
                        id: old.clone()
                    },
                    RotationEvent::Activated {
                        kind,
                        id: new.clone()
                    },
                ]
            );
            assert_eq!(ks.sequence(), 3);
            assert_eq!(active_id(&ks, kind), new);
            let svid_new = mint(&ks, kind, now);
            assert_eq!(signer(&ks, &svid_new, now), new);
            assert!(verifies(&svid_new, &ks.bundle(now), now));
            assert!(verifies(&svid_old, &ks.bundle(now), now));
            assert_eq!(
                states(statuses(&ks, kind).into_iter().map(|s| (s.state, ()))),
                [AuthorityState::Retired, AuthorityState::Active]
            );

            // Taint: still published, so its SVIDs verify until re-issued.
            let old_marker = marker(&ks, kind, &old);
            assert_eq!(
                ks.taint(kind, &old).unwrap(),
                RotationEvent::Tainted {
                    kind,
                    id: old.clone()
                }
            );
            assert_eq!(ks.sequence(), 4);
            assert_eq!(ks.tainted_ids(kind), std::slice::from_ref(&old));
            assert!(ks.tainted_ids(other(kind)).is_empty());
            assert!(published(&ks, kind, now).contains(&old_marker));
            assert_eq!(published(&ks, kind, now).len(), 2);
            assert!(verifies(&svid_old, &ks.bundle(now), now));
            assert_eq!(
                statuses(&ks, kind)
                    .iter()
                    .map(|s| s.tainted)
                    .collect::<Vec<_>>(),
                [true, false]
            );

            // Revoke: gone from the keyset and the bundle.
            assert_eq!(
                ks.revoke(kind, &old).unwrap(),
                RotationEvent::Revoked {
                    kind,
                    id: old.clone()
                }
            );
            assert_eq!(ks.sequence(), 5);
            assert_eq!(ks.bundle(now).sequence, 5);
            assert_eq!(published(&ks, kind, now), [marker(&ks, kind, &new)]);
            assert!(!published(&ks, kind, now).contains(&old_marker));
            assert!(!verifies(&svid_old, &ks.bundle(now), now));
            assert!(verifies(&svid_new, &ks.bundle(now), now));
            assert!(ks.tainted_ids(kind).is_empty());
            assert_eq!(statuses(&ks, kind).len(), 1);

            // The other kind was left alone, and the schedule has nothing to do.
            assert_eq!(statuses(&ks, other(kind)), untouched);
            assert!(ks.rotate(now).unwrap().is_empty());
            assert_eq!(ks.sequence(), 5);
        }
    }

    #[test]
    fn authorities_lists_x509_then_jwt_oldest_first() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        let now = t0() + HOUR;
        ks.prepare_now(AuthorityKind::Jwt, now).unwrap();
        ks.prepare_now(AuthorityKind::X509, now).unwrap();
        let all = ks.authorities();
        assert_eq!(
            all.iter().map(|s| (s.kind, s.state)).collect::<Vec<_>>(),
            [
                (AuthorityKind::X509, AuthorityState::Active),
                (AuthorityKind::X509, AuthorityState::Prepared),
                (AuthorityKind::Jwt, AuthorityState::Active),
                (AuthorityKind::Jwt, AuthorityState::Prepared),
            ]
        );
        let ca = ks.active_x509().unwrap();
        assert_eq!(
            all[0],
            AuthorityStatus {
                kind: AuthorityKind::X509,
                id: ca.key_id_hex(),
                state: AuthorityState::Active,
                tainted: false,
                not_before: ca.not_before(),
                not_after: ca.not_after(),
                upstream_signed: Some(false),
            }
        );
        assert_eq!(all[2].upstream_signed, None, "a JWT key");
        let key = ks.active_jwt().unwrap();
        assert_eq!(
            (all[2].id.as_str(), all[2].not_before, all[2].not_after),
            (key.key_id(), key.not_before(), key.not_after())
        );
    }

    #[test]
    fn operator_actions_refuse_what_does_not_fit() {
        for kind in KINDS {
            let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
            let now = t0() + HOUR;
            let old = active_id(&ks, kind);
            let seq = ks.sequence();

            assert_eq!(
                ks.activate_now(kind, now),
                Err(AuthorityError::NothingPrepared(kind))
            );
            let err = ks.taint(kind, &old).unwrap_err();
            assert_eq!(
                err,
                AuthorityError::NotRetired {
                    kind,
                    id: old.clone(),
                    state: AuthorityState::Active
                }
            );
            assert!(
                err.to_string().contains("activate its successor first"),
                "{err}"
            );
            let unknown = AuthorityError::UnknownAuthority {
                kind,
                id: "nope".to_owned(),
            };
            assert_eq!(ks.taint(kind, "nope"), Err(unknown.clone()));
            assert_eq!(ks.revoke(kind, "nope"), Err(unknown));
            // An id of the other kind is unknown to this one.
            let foreign = active_id(&ks, other(kind));
            assert!(matches!(
                ks.taint(kind, &foreign),
                Err(AuthorityError::UnknownAuthority { .. })
            ));
            assert_eq!(ks.sequence(), seq, "refusals change nothing");

            let RotationEvent::Prepared { id: new, .. } = ks.prepare_now(kind, now).unwrap() else {
                panic!()
            };
            let seq = ks.sequence();
            assert_eq!(
                ks.prepare_now(kind, now),
                Err(AuthorityError::AlreadyPrepared {
                    kind,
                    id: new.clone()
                })
            );
            assert_eq!(
                ks.taint(kind, &new),
                Err(AuthorityError::NotRetired {
                    kind,
                    id: new.clone(),
                    state: AuthorityState::Prepared
                })
            );
            // The prepared authority cannot sign outside its validity.
            let expired = now + DEFAULT_CA_TTL;
            assert_eq!(
                ks.activate_now(kind, expired),
                Err(AuthorityError::PreparedNotValid {
                    kind,
                    id: new.clone()
                })
            );
            assert_eq!(
                ks.activate_now(kind, now - HOUR),
                Err(AuthorityError::PreparedNotValid {
                    kind,
                    id: new.clone()
                })
            );
            assert_eq!(ks.sequence(), seq);
            assert_eq!(active_id(&ks, kind), old);

            ks.activate_now(kind, now).unwrap();
            let seq = ks.sequence();
            assert_eq!(
                ks.revoke(kind, &old),
                Err(AuthorityError::NotTainted {
                    kind,
                    id: old.clone()
                })
            );
            assert_eq!(
                ks.taint(kind, &new),
                Err(AuthorityError::NotRetired {
                    kind,
                    id: new.clone(),
                    state: AuthorityState::Active
                })
            );
            assert_eq!(ks.sequence(), seq);
            ks.taint(kind, &old).unwrap();
            assert_eq!(
                ks.taint(kind, &old),
                Err(AuthorityError::AlreadyTainted {
                    kind,
                    id: old.clone()
                })
            );
            assert_eq!(ks.sequence(), seq + 1);
            ks.revoke(kind, &old).unwrap();
            assert_eq!(
                ks.revoke(kind, &old),
                Err(AuthorityError::UnknownAuthority {
                    kind,
                    id: old.clone()
                })
            );
            assert_eq!(ks.sequence(), seq + 2);
        }
    }

    #[test]
    fn x509_ids_match_in_any_case() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        let now = t0() + HOUR;
        let old = active_id(&ks, AuthorityKind::X509);
        ks.prepare_now(AuthorityKind::X509, now).unwrap();
        ks.activate_now(AuthorityKind::X509, now).unwrap();
        assert_eq!(
            ks.taint(AuthorityKind::X509, &old.to_uppercase()),
            Ok(RotationEvent::Tainted {
                kind: AuthorityKind::X509,
                id: old.clone()
            })
        );
        assert_eq!(ks.tainted_ids(AuthorityKind::X509), [old]);
    }

    #[test]
    fn prepare_is_capped_per_kind() {
        for kind in KINDS {
            let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
            let mut now = t0();
            while statuses(&ks, kind).len() < MAX_AUTHORITIES_PER_KIND {
                now += Duration::from_secs(60);
                ks.prepare_now(kind, now).unwrap();
                ks.activate_now(kind, now).unwrap();
            }
            assert_eq!(published(&ks, kind, now).len(), MAX_AUTHORITIES_PER_KIND);
            let seq = ks.sequence();
            let err = ks.prepare_now(kind, now).unwrap_err();
            assert_eq!(
                err,
                AuthorityError::TooManyAuthorities {
                    kind,
                    max: MAX_AUTHORITIES_PER_KIND
                }
            );
            assert!(err.to_string().contains("10"), "{err}");
            assert_eq!(ks.sequence(), seq);
            assert_eq!(statuses(&ks, kind).len(), MAX_AUTHORITIES_PER_KIND);
            // The cap is per kind.
            ks.prepare_now(other(kind), now).unwrap();
            // Revoking one makes room.
            let oldest = statuses(&ks, kind)[0].id.clone();
            ks.taint(kind, &oldest).unwrap();
            ks.revoke(kind, &oldest).unwrap();
            assert!(ks.prepare_now(kind, now).is_ok());
        }
    }

    #[test]
    fn schedule_follows_the_manually_activated_authority() {
        for kind in KINDS {
            let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
            let old = active_id(&ks, kind);
            let (old_prepare, old_activate) = schedule(&ks, kind);
            let manual = t0() + 2 * HOUR;
            ks.prepare_now(kind, manual).unwrap();
            ks.activate_now(kind, manual).unwrap();
            let new = active_id(&ks, kind);
            let (new_prepare, new_activate) = schedule(&ks, kind);
            assert!(new_prepare >= old_prepare + 2 * HOUR - Duration::from_secs(20));

            // The old authority's points pass without effect on this kind.
            let events = ks.rotate(old_prepare).unwrap();
            assert!(of_kind(&events, kind).is_empty(), "{events:?}");
            let events = ks.rotate(new_prepare - Duration::from_secs(1)).unwrap();
            assert!(of_kind(&events, kind).is_empty(), "{events:?}");
            let events = ks.rotate(new_prepare).unwrap();
            assert_eq!(of_kind(&events, kind), ["prepared"]);
            let events = ks.rotate(old_activate).unwrap();
            assert!(of_kind(&events, kind).is_empty(), "{events:?}");
            assert_eq!(active_id(&ks, kind), new);
            let events = ks.rotate(new_activate).unwrap();
            assert_eq!(of_kind(&events, kind), ["retired", "activated"]);
            // The manually retired authority leaves the bundle at its notAfter.
            let events = ks.rotate(t0() + DEFAULT_CA_TTL).unwrap();
            assert!(events.contains(&RotationEvent::Pruned {
                kind,
                id: old.clone()
            }));
            assert!(statuses(&ks, kind).iter().all(|s| s.id != old));
        }
    }

    #[test]
    fn schedule_activates_a_manually_prepared_authority() {
        for kind in KINDS {
            let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
            let (prepare_at, activate_at) = schedule(&ks, kind);
            let RotationEvent::Prepared { id: manual, .. } =
                ks.prepare_now(kind, t0() + HOUR).unwrap()
            else {
                panic!()
            };
            // No second successor at the prepare point.
            let events = ks.rotate(prepare_at).unwrap();
            assert!(of_kind(&events, kind).is_empty(), "{events:?}");
            assert_eq!(statuses(&ks, kind).len(), 2);
            let events = ks.rotate(activate_at).unwrap();
            assert!(events.contains(&RotationEvent::Activated {
                kind,
                id: manual.clone()
            }));
            assert_eq!(active_id(&ks, kind), manual);
        }
    }

    #[test]
    fn tainted_authority_never_returns_and_is_pruned_at_expiry() {
        for kind in KINDS {
            let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
            let old = active_id(&ks, kind);
            let old_marker = marker(&ks, kind, &old);
            ks.prepare_now(kind, t0() + HOUR).unwrap();
            ks.activate_now(kind, t0() + HOUR).unwrap();
            ks.taint(kind, &old).unwrap();
            let mut pruned = false;
            let mut now = t0() + HOUR;
            while now < t0() + 60 * HOUR {
                now += Duration::from_secs(30 * 60);
                for event in ks.rotate(now).unwrap() {
                    match event {
                        RotationEvent::Activated { id, .. } => assert_ne!(id, old),
                        RotationEvent::Pruned { kind: k, id } if id == old => {
                            assert_eq!(k, kind);
                            assert_eq!(now, t0() + DEFAULT_CA_TTL);
                            pruned = true;
                        }
                        _ => {}
                    }
                }
                let all = ks.authorities();
                assert!(
                    all.iter()
                        .all(|s| !s.tainted || s.state == AuthorityState::Retired),
                    "{all:?}"
                );
                let expected: &[String] = if pruned {
                    &[]
                } else {
                    std::slice::from_ref(&old)
                };
                assert_eq!(ks.tainted_ids(kind), expected);
                assert_eq!(published(&ks, kind, now).contains(&old_marker), !pruned);
            }
            assert!(pruned);
        }
    }

    #[test]
    fn tainted_flag_is_saved_and_restored() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        let now = t0() + HOUR;
        let mut tainted = Vec::new();
        for kind in KINDS {
            let old = active_id(&ks, kind);
            ks.prepare_now(kind, now).unwrap();
            ks.activate_now(kind, now).unwrap();
            ks.taint(kind, &old).unwrap();
            tainted.push(old);
        }
        let json = ks.to_state_json().unwrap();
        let doc: Value = serde_json::from_str(&json).unwrap();
        for list in ["x509Authorities", "jwtAuthorities"] {
            assert_eq!(doc[list][0]["tainted"], true);
            assert_eq!(doc[list][0]["state"], "retired");
            assert!(
                doc[list][1].get("tainted").is_none(),
                "false is left out: {}",
                doc[list][1]
            );
        }
        assert_eq!(doc["version"], STATE_VERSION);

        let mut restored = CaKeyset::from_state_json(CaConfig::new(td()), &json).unwrap();
        assert_eq!(restored.authorities(), ks.authorities());
        assert_eq!(restored.sequence(), ks.sequence());
        assert_eq!(restored.bundle(now), ks.bundle(now));
        assert_eq!(
            restored.tainted_ids(AuthorityKind::X509),
            [tainted[0].clone()]
        );
        assert_eq!(
            restored.tainted_ids(AuthorityKind::Jwt),
            [tainted[1].clone()]
        );
        assert_eq!(*restored.to_state_json().unwrap(), *json);
        // Restored, it can be revoked.
        for (kind, id) in KINDS.into_iter().zip(&tainted) {
            assert!(restored.revoke(kind, id).is_ok());
        }
    }

    #[test]
    fn state_without_tainted_field_still_loads() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        ks.rotate(t0() + 12 * HOUR).unwrap();
        let json = ks.to_state_json().unwrap();
        assert!(
            !json.contains("tainted"),
            "nothing tainted, nothing written"
        );
        // As the previous version wrote it (no `tainted` key at all).
        let old_format = r#"{"version":1,"trustDomain":"example.org","sequence":3,"x509Authorities":[],"jwtAuthorities":[]}"#;
        let mut doc: Value = serde_json::from_str(old_format).unwrap();
        let current: Value = serde_json::from_str(&json).unwrap();
        doc["x509Authorities"] = current["x509Authorities"].clone();
        doc["jwtAuthorities"] = current["jwtAuthorities"].clone();
        let restored = CaKeyset::from_state_json(CaConfig::new(td()), &doc.to_string()).unwrap();
        assert!(restored.authorities().iter().all(|s| !s.tainted));
        assert_eq!(restored.authorities(), ks.authorities());
        // An explicit false loads too.
        doc["x509Authorities"][0]["tainted"] = Value::Bool(false);
        assert!(CaKeyset::from_state_json(CaConfig::new(td()), &doc.to_string()).is_ok());
        // Unknown fields are still refused.
        doc["x509Authorities"][0]["taint"] = Value::Bool(true);
        assert!(matches!(
            CaKeyset::from_state_json(CaConfig::new(td()), &doc.to_string()),
            Err(AuthorityError::InvalidState(_))
        ));
    }

    #[test]
    fn state_with_tainted_signing_authority_is_refused() {
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        ks.rotate(t0() + 12 * HOUR).unwrap();
        ks.rotate(t0() + 12 * HOUR + Duration::from_secs(10))
            .unwrap();
        let json = ks.to_state_json().unwrap();
        for list in ["x509Authorities", "jwtAuthorities"] {
            let doc: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(doc[list][0]["state"], "active");
            assert_eq!(doc[list][1]["state"], "prepared");
            for index in [0, 1] {
                let mut doc = doc.clone();
                doc[list][index]["tainted"] = Value::Bool(true);
                let result = CaKeyset::from_state_json(CaConfig::new(td()), &doc.to_string());
                assert!(
                    matches!(&result, Err(AuthorityError::InvalidState(m)) if m.contains("tainted")),
                    "{list}[{index}]: {:?}",
                    result.map(|k| k.sequence())
                );
            }
        }
    }

    /// An upstream root (valid 30 days from t0) for `CaConfig::upstream`.
    fn upstream_root() -> (X509Ca, Arc<UpstreamCa>) {
        let root = X509Ca::self_signed(
            &TrustDomain::new("corp.example").unwrap(),
            PrivateKey::generate(KeyType::EcP384).unwrap(),
            30 * 24 * HOUR,
            t0(),
        )
        .unwrap();
        let upstream = UpstreamCa::from_pem(
            &x509::certs_to_pem(std::slice::from_ref(root.certificate())),
            &root.key().to_pkcs8_pem(),
            None,
            t0(),
        )
        .unwrap();
        (root, Arc::new(upstream))
    }

    #[test]
    fn under_an_upstream_the_bundle_is_the_root_and_svids_chain_to_it() {
        let (root, upstream) = upstream_root();
        let mut config = CaConfig::new(td());
        config.upstream = Some(upstream.clone());
        let mut ks = CaKeyset::new(config.clone(), t0()).unwrap();
        let bundle = ks.bundle(t0());
        assert_eq!(bundle.x509_authorities, vec![root.certificate().clone()]);
        let ca = ks.active_x509().unwrap();
        assert!(!ca.is_self_signed());
        let svid = mint_x509(&ks, HOUR, t0());
        assert_eq!(svid.cert_chain.len(), 2, "leaf and the trust domain's CA");
        assert!(verify_x509_svid(&svid.cert_chain, &bundle, t0()).is_ok());

        // A restart restores the chain; every rotation gets a new
        // intermediate from the upstream, and the bundle does not change.
        let restored = CaKeyset::from_state_json(config, &ks.to_state_json().unwrap()).unwrap();
        let again = mint_x509(&restored, HOUR, t0());
        assert_eq!(again.cert_chain[1], svid.cert_chain[1]);
        let first = ks.active_x509().unwrap().key_id_hex();
        ks.rotate(t0() + 21 * HOUR).unwrap();
        let second = ks.active_x509().unwrap();
        assert_ne!(second.key_id_hex(), first);
        assert!(!second.is_self_signed());
        assert_eq!(
            ks.bundle(t0() + 21 * HOUR).x509_authorities,
            vec![root.certificate().clone()]
        );
        let later = mint_x509(&ks, HOUR, t0() + 21 * HOUR);
        assert!(verify_x509_svid(&later.cert_chain, &bundle, t0() + 21 * HOUR).is_ok());

        // Another upstream root: the CA signed under the first keeps its
        // root in the bundle (also after a restart) until it expires.
        let (new_root, new_upstream) = upstream_root();
        let now = t0() + 22 * HOUR;
        assert!(ks.set_upstream(Some(new_upstream.clone())));
        let both = vec![new_root.certificate().clone(), root.certificate().clone()];
        assert_eq!(ks.bundle(now).x509_authorities, both);
        assert!(verify_x509_svid(&later.cert_chain, &ks.bundle(now), now).is_ok());
        let mut config = CaConfig::new(td());
        config.upstream = Some(new_upstream);
        let restored = CaKeyset::from_state_json(config, &ks.to_state_json().unwrap()).unwrap();
        assert_eq!(restored.bundle(now).x509_authorities, both);
    }

    #[test]
    fn moving_to_an_upstream_keeps_the_self_signed_ca_until_it_expires() {
        let (root, upstream) = upstream_root();
        let mut ks = CaKeyset::new(CaConfig::new(td()), t0()).unwrap();
        let own = ks.active_x509().unwrap().certificate().clone();
        let old_svid = mint_x509(&ks, HOUR, t0());
        let sequence = ks.sequence();
        assert!(ks.set_upstream(Some(upstream.clone())));
        assert_eq!(ks.sequence(), sequence + 1, "the bundle changed");
        assert!(!ks.set_upstream(Some(upstream)), "same roots: no change");
        assert_eq!(ks.sequence(), sequence + 1);
        // Both anchors while the self-signed CA is in force.
        let bundle = ks.bundle(t0());
        assert_eq!(
            bundle.x509_authorities,
            vec![root.certificate().clone(), own.clone()]
        );
        assert!(verify_x509_svid(&old_svid.cert_chain, &bundle, t0()).is_ok());
        // The next CA is the upstream's; once the old one expired, the root alone.
        let after_activation = t0() + 21 * HOUR;
        ks.rotate(after_activation).unwrap();
        assert!(!ks.active_x509().unwrap().is_self_signed());
        let expired = t0() + 25 * HOUR;
        ks.rotate(expired).unwrap();
        assert_eq!(
            ks.bundle(expired).x509_authorities,
            vec![root.certificate().clone()]
        );
    }
}
