//! What the SVID cache needs from the rest of the agent, as traits and plain
//! data: the policy in force ([`PolicyView`]) with the tainted authorities
//! it names ([`TaintedAuthorities`]), the issuer ([`Signer`]) and key
//! generation ([`KeyFactory`]). The issuer client and the compiled policy
//! implement them; tests substitute their own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use signet_identity::{BundleSet, PublicKey, SpiffeId, TrustBundle, TrustDomain};
use signet_policy::Attributes;
use zeroize::Zeroizing;

// === policy seam ===

/// An identity the local policy says a workload should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredIdentity {
    /// WorkloadIdentity name; what the agent asks the issuer for.
    pub name: String,
    /// The SPIFFE ID as rendered locally (the issuer renders its own).
    pub spiffe_id: SpiffeId,
    /// Changes whenever anything the issuer would render changes.
    pub fingerprint: u64,
    /// Trust domains whose bundles ride along with this identity.
    pub federates_with: Vec<TrustDomain>,
}

/// What the cache needs from the policy in force.
pub trait PolicyView: Send + Sync + 'static {
    /// Changes with every policy or bundle update applied.
    fn version(&self) -> u64;
    /// Identities for `workload`, default first.
    fn desired_identities(&self, workload: &Attributes) -> Vec<DesiredIdentity>;
    /// The bundles a workload holding `identities` receives: the own trust
    /// domain's and those it federates with, where known.
    fn bundles_for(&self, identities: &[DesiredIdentity]) -> Arc<WorkloadBundles>;
    /// Why an identity was withheld from `workload` because an attribute it
    /// needed could not be read, if one was: said to a caller that gets no
    /// identity, instead of "nothing applies".
    fn withheld(&self, _workload: &Attributes) -> Option<String> {
        None
    }

    /// The own trust domain's authorities whose SVIDs must be replaced.
    fn tainted(&self) -> &TaintedAuthorities {
        &NO_TAINT
    }
}

static NO_TAINT: TaintedAuthorities = TaintedAuthorities::NONE;

/// Authorities of the own trust domain that the operator tainted (SPIRE's
/// tainted keys): still in the bundle, so what they signed keeps verifying,
/// but every SVID they signed is to be replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaintedAuthorities {
    /// Subject key identifiers of X.509 CAs, lowercase hex.
    pub x509: BTreeSet<String>,
    /// Key IDs (`kid`) of JWT signing keys, compared exactly.
    pub jwt: BTreeSet<String>,
}

impl TaintedAuthorities {
    pub const NONE: Self = Self {
        x509: BTreeSet::new(),
        jwt: BTreeSet::new(),
    };

    /// From the issuer's lists. X.509 key identifiers are lowercased (hex
    /// compares case-insensitively); empty entries are dropped.
    pub fn new<X, J>(x509: X, jwt: J) -> Self
    where
        X: IntoIterator,
        X::Item: AsRef<str>,
        J: IntoIterator,
        J::Item: AsRef<str>,
    {
        Self {
            x509: x509
                .into_iter()
                .map(|id| id.as_ref().trim().to_ascii_lowercase())
                .filter(|id| !id.is_empty())
                .collect(),
            jwt: jwt
                .into_iter()
                .map(|kid| kid.as_ref().to_owned())
                .filter(|kid| !kid.is_empty())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.x509.is_empty() && self.jwt.is_empty()
    }

    /// Whether the X.509 CA with subject key identifier `key_id` (hex, any
    /// case) is tainted.
    pub fn x509_tainted(&self, key_id: &str) -> bool {
        if key_id.bytes().any(|b| b.is_ascii_uppercase()) {
            self.x509.contains(&key_id.to_ascii_lowercase())
        } else {
            self.x509.contains(key_id)
        }
    }

    /// Whether the JWT signing key `kid` is tainted.
    pub fn jwt_tainted(&self, kid: &str) -> bool {
        self.jwt.contains(kid)
    }
}

pub type SharedPolicy = Option<Arc<dyn PolicyView>>;

/// The trust bundles one workload receives with its SVIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadBundles {
    /// The own trust domain's bundle.
    pub own: TrustBundle,
    /// Foreign trust domains the workload's identities federate with, in
    /// trust-domain order, only those whose bundle is known.
    pub federated: Vec<TrustBundle>,
}

impl WorkloadBundles {
    /// The own trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.own.trust_domain
    }

    /// The own bundle first, then the federated ones.
    pub fn all(&self) -> impl Iterator<Item = &TrustBundle> {
        std::iter::once(&self.own).chain(&self.federated)
    }

    /// The bundle of `trust_domain`, own or federated.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.all().find(|b| &b.trust_domain == trust_domain)
    }

    /// As a set, for verifying tokens and certificates.
    pub fn to_set(&self) -> BundleSet {
        let mut set = BundleSet::new();
        for bundle in self.all() {
            set.insert(bundle.clone());
        }
        set
    }
}

// === issuer seam ===

/// Why the issuer refused one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: String,
    pub message: String,
    /// The refusal may go away without a policy change (e.g. the issuer has
    /// not seen a new pod yet).
    pub retryable: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("issuer unavailable: {0}")]
    Unavailable(String),
}

pub struct X509SignRequest {
    pub workload: Arc<Attributes>,
    pub workload_identity: String,
    /// PKCS#10 request for a key generated by this agent (the issuer's
    /// proof of possession).
    pub csr_der: Vec<u8>,
    /// The key the CSR is for, so the answer can be checked without
    /// parsing the CSR again.
    pub public_key: PublicKey,
}

/// A certificate the issuer returned, already checked by the signer against
/// the request (key, trust domain).
#[derive(Clone, Debug)]
pub struct SignedX509 {
    pub spiffe_id: SpiffeId,
    /// DER, leaf first.
    pub cert_chain: Vec<Vec<u8>>,
    pub hint: Option<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub federates_with: Vec<TrustDomain>,
}

pub struct JwtSignRequest {
    pub workload: Arc<Attributes>,
    pub workload_identity: String,
    pub audiences: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SignedJwt {
    pub workload_identity: String,
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub hint: Option<String>,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

#[derive(Clone, Debug)]
pub enum SignOutcome<T> {
    Issued(T),
    Denied(Denial),
}

/// The issuer as the cache sees it.
pub trait Signer: Send + Sync + 'static {
    /// Results in request order.
    fn sign_x509(
        &self,
        requests: Vec<X509SignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedX509>>, SignError>>;
    fn sign_jwt(
        &self,
        requests: Vec<JwtSignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedJwt>>, SignError>>;
}

// === key seam ===

/// A fresh private key (PKCS#8 DER), its public key and a CSR for it.
pub struct KeyMaterial {
    pub private_key: Zeroizing<Vec<u8>>,
    pub public_key: PublicKey,
    pub csr_der: Vec<u8>,
}

pub trait KeyFactory: Send + Sync + 'static {
    fn generate(&self) -> Result<KeyMaterial, String>;
}
