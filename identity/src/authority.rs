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
//! The state serializes to JSON ([`CaKeyset::to_state_json`]) for a file or a
//! Kubernetes Secret. **That JSON contains the CA private keys.**

use std::fmt;
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
use crate::x509::{self, CertificateDer, X509Ca, X509Error, X509Svid, X509SvidParams};

/// Default CA and JWT key lifetime (SPIRE's `ca_ttl`).
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default share of the active authority's life left when a successor is prepared.
pub const DEFAULT_PREPARE_FRACTION: f64 = 1.0 / 2.0;
/// Default share of the active authority's life left when the successor activates.
pub const DEFAULT_ACTIVATE_FRACTION: f64 = 1.0 / 6.0;
/// Default `spiffe_refresh_hint` of published bundles.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

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
}

/// Which authority slot an event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Something [`CaKeyset::rotate`] did. `id` is the X.509 CA's subject key
/// identifier (hex) or the JWT key's `kid`.
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
}

impl Authority for X509Ca {
    fn id(&self) -> String {
        self.key_id_hex()
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
                self.entries[index].state = AuthorityState::Active;
                events.push(RotationEvent::Activated {
                    kind,
                    id: self.entries[index].authority.id(),
                });
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
            self.entries[active].state = AuthorityState::Retired;
            events.push(RotationEvent::Retired {
                kind,
                id: self.entries[active].authority.id(),
            });
            self.entries[prepared].state = AuthorityState::Active;
            events.push(RotationEvent::Activated {
                kind,
                id: self.entries[prepared].authority.id(),
            });
        }
        Ok(())
    }

    fn prepare(
        &mut self,
        now: SystemTime,
        create: &dyn Fn(SystemTime) -> Result<A, AuthorityError>,
        events: &mut Vec<RotationEvent>,
    ) -> Result<usize, AuthorityError> {
        let authority = create(now)?;
        events.push(RotationEvent::Prepared {
            kind: self.kind,
            id: authority.id(),
            not_after: authority.not_after(),
        });
        self.entries.push(Slot {
            state: AuthorityState::Prepared,
            authority,
        });
        Ok(self.entries.len() - 1)
    }

    fn check_states(&self) -> Result<(), AuthorityError> {
        for state in [AuthorityState::Active, AuthorityState::Prepared] {
            if self.entries.iter().filter(|s| s.state == state).count() > 1 {
                return Err(AuthorityError::InvalidState(format!(
                    "more than one {state:?} {} authority",
                    self.kind
                )));
            }
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
        let config = self.config.clone();
        let td = config.trust_domain.clone();
        let x509_type = config.x509_key_type;
        let x509_ttl = config.ttl(AuthorityKind::X509);
        let make_ca = move |at: SystemTime| -> Result<X509Ca, AuthorityError> {
            let key = PrivateKey::generate(x509_type)?;
            Ok(X509Ca::self_signed(&td, key, x509_ttl, at)?)
        };
        let jwt_type = config.jwt_key_type;
        let jwt_ttl = config.ttl(AuthorityKind::Jwt);
        let make_jwt = move |at: SystemTime| -> Result<JwtKey, AuthorityError> {
            let at = truncate_to_secs(at);
            Ok(JwtKey {
                kid: random_kid()?,
                key: PrivateKey::generate(jwt_type)?,
                not_before: at,
                not_after: at + jwt_ttl,
            })
        };
        self.x509.rotate(&config, now, &make_ca, &mut events)?;
        self.jwt.rotate(&config, now, &make_jwt, &mut events)?;
        if !events.is_empty() {
            self.sequence += 1;
        }
        Ok(events)
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
    /// retired) whose notAfter is after `now`.
    pub fn bundle(&self, now: SystemTime) -> TrustBundle {
        TrustBundle {
            trust_domain: self.config.trust_domain.clone(),
            x509_authorities: self
                .x509
                .entries
                .iter()
                .filter(|s| s.authority.not_after() > now)
                .map(|s| s.authority.certificate().clone())
                .collect(),
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
                    certificate: x509::certs_to_pem(std::slice::from_ref(
                        s.authority.certificate(),
                    )),
                    private_key: Secret(s.authority.key().to_pkcs8_pem().to_string()),
                })
                .collect(),
            jwt_authorities: self
                .jwt
                .entries
                .iter()
                .map(|s| StateJwt {
                    state: s.state,
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
            let mut certs = x509::certs_from_pem(&entry.certificate)?;
            let cert = match (certs.pop(), certs.is_empty()) {
                (Some(cert), true) => cert,
                _ => {
                    return Err(invalid(
                        "each X.509 authority needs exactly one certificate".into(),
                    ));
                }
            };
            let key = PrivateKey::from_pkcs8_pem(&entry.private_key.0)?;
            let ca = X509Ca::from_parts(CertificateDer::from(cert.to_vec()), key)?;
            if ca.trust_domain() != &config.trust_domain {
                return Err(invalid("X.509 authority of another trust domain".into()));
            }
            x509.entries.push(Slot {
                state: entry.state,
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
    certificate: String,
    private_key: Secret,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StateJwt {
    state: AuthorityState,
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
}
