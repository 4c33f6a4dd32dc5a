//! X.509-SVIDs: minting (from a CSR or a bare public key), CA certificates,
//! and verification per the X509-SVID specification.
//!
//! Certificates are written directly in DER (see `der.rs`) so every field the
//! spec cares about is explicit: exactly one URI SAN, `cA=false`, a critical
//! KeyUsage without `keyCertSign`/`cRLSign`, serverAuth+clientAuth EKU, and a
//! critical SAN extension whenever the subject is empty. Verification uses
//! rustls-webpki for the path (signatures, validity, basic constraints) and
//! x509-parser for the SPIFFE-specific leaf rules.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
pub use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::der::{self, oid};
use crate::id::{IdError, SpiffeId, TrustDomain};
use crate::keys::{self, KeyError, PrivateKey, PublicKey, PublicKeyAlgorithm};

/// How far SVID and CA `notBefore` is set into the past, so peers whose
/// clocks lag slightly still accept a freshly minted certificate.
pub const NOT_BEFORE_BACKDATE: Duration = Duration::from_secs(10);

/// Longest value allowed for one subject attribute (the X.520 upper bound
/// for commonName, organizationName and organizationalUnitName).
pub const MAX_SUBJECT_ATTRIBUTE_LEN: usize = 64;

/// Why an X.509-SVID or CA could not be minted, parsed or verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509Error {
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The TTL requested is zero.
    #[error("TTL must be greater than zero")]
    ZeroTtl,
    /// The issuing CA's certificate has expired (or expires this second).
    #[error("the issuing CA expired at {not_after:?}")]
    CaExpired {
        /// The CA's notAfter.
        not_after: SystemTime,
    },
    /// The CA material is not a usable CA (not a CA certificate, key mismatch, ...).
    #[error("invalid CA: {0}")]
    InvalidCa(String),
    /// The upstream CA material cannot sign this trust domain's CAs.
    #[error("invalid upstream CA: {0}")]
    InvalidUpstream(String),
    /// The upstream signing certificate has expired.
    #[error("the upstream CA certificate expired at {not_after:?}")]
    UpstreamExpired {
        /// Its notAfter.
        not_after: SystemTime,
    },
    /// The SVID's SPIFFE ID is not in the CA's trust domain.
    #[error("SPIFFE ID {id} is not in the CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// A leaf SVID's SPIFFE ID must have a path (`spiffe://td` alone names the trust domain).
    #[error("leaf SVID SPIFFE ID {0} has no path")]
    LeafIdHasNoPath(SpiffeId),
    /// A DNS SAN is not a valid DNS name.
    #[error("invalid DNS SAN {0:?}")]
    InvalidDnsName(String),
    /// A subject attribute is empty or longer than [`MAX_SUBJECT_ATTRIBUTE_LEN`].
    #[error("invalid subject attribute {0:?}: must be 1 to 64 bytes")]
    InvalidSubject(String),
    /// The subject key cannot be certified (only EC P-256/P-384 and RSA are).
    #[error("unsupported subject public key for an X.509-SVID: {0}")]
    UnsupportedSubjectKey(String),
    /// The CSR could not be parsed.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// The CSR's self-signature does not verify, so its key is unproven.
    #[error("CSR signature does not verify")]
    CsrSignature,
    /// A certificate could not be parsed.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// PEM input could not be decoded.
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    /// No certificate was given.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The certificate has no URI SAN.
    #[error("certificate has no URI SAN")]
    NoUriSan,
    /// The certificate has more than one URI SAN; the spec requires rejecting it.
    #[error("certificate has {0} URI SANs; an SVID must have exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN is not a valid SPIFFE ID: {0}")]
    NotSpiffeId(IdError),
    /// The leaf is a CA certificate.
    #[error("leaf certificate is a CA (cA=true)")]
    LeafIsCa,
    /// The leaf has no KeyUsage extension.
    #[error("leaf certificate has no KeyUsage extension")]
    MissingKeyUsage,
    /// The leaf's KeyUsage lacks digitalSignature.
    #[error("leaf certificate KeyUsage lacks digitalSignature")]
    MissingDigitalSignature,
    /// The leaf's KeyUsage has keyCertSign or cRLSign.
    #[error("leaf certificate KeyUsage has keyCertSign or cRLSign")]
    LeafCanSign,
    /// The leaf has an EKU extension without both serverAuth and clientAuth.
    #[error("leaf ExtendedKeyUsage must include both serverAuth and clientAuth")]
    BadExtendedKeyUsage,
    /// A certificate between leaf and root is not a CA with keyCertSign.
    #[error("intermediate certificate is not a CA with keyCertSign")]
    IntermediateNotCa,
    /// No bundle (or an empty one) is known for the SVID's trust domain.
    #[error("no X.509 authorities for trust domain {0}")]
    NoBundle(TrustDomain),
    /// The certificate has expired.
    #[error("certificate expired")]
    Expired,
    /// The certificate is not yet valid.
    #[error("certificate is not yet valid")]
    NotYetValid,
    /// The chain does not lead to an authority of the trust domain's bundle.
    #[error("certificate is not signed by an authority of its trust domain")]
    UntrustedIssuer,
    /// Path validation failed for another reason.
    #[error("certificate path validation failed: {0}")]
    PathValidation(String),
}

/// Subject distinguished name of an X.509-SVID.
///
/// When `common_name` is `None` the first DNS SAN is used, as Postgres-style
/// CN mapping expects. An entirely empty subject is allowed; the SAN extension
/// is then marked critical as RFC 5280 requires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubjectTemplate {
    /// Common name (CN).
    pub common_name: Option<String>,
    /// Organization (O) values, in order.
    pub organization: Vec<String>,
    /// Organizational unit (OU) values, in order.
    pub organizational_unit: Vec<String>,
}

/// What to put in an X.509-SVID. The public key comes separately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509SvidParams {
    /// The SVID's SPIFFE ID (the single URI SAN). Must have a path and be in
    /// the CA's trust domain.
    pub spiffe_id: SpiffeId,
    /// DNS SANs.
    pub dns_sans: Vec<String>,
    /// IP address SANs.
    pub ip_sans: Vec<IpAddr>,
    /// Subject name.
    pub subject: SubjectTemplate,
    /// Requested lifetime; capped by the CA's notAfter.
    pub ttl: Duration,
}

impl X509SvidParams {
    /// Parameters with no extra SANs and an empty subject.
    pub fn new(spiffe_id: SpiffeId, ttl: Duration) -> Self {
        Self {
            spiffe_id,
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            subject: SubjectTemplate::default(),
            ttl,
        }
    }
}

/// A minted X.509-SVID: the certificate chain (leaf first) without the key,
/// which stays with whoever generated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X509Svid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then any intermediates (none for a root-issued SVID).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's notBefore (whole seconds).
    pub not_before: SystemTime,
    /// The leaf's notAfter (whole seconds); never after the CA's.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Subject key identifier (lowercase hex) of the CA that signed it: the
    /// id its authority goes by (see `CaKeyset::authorities`).
    pub issuer_key_id: String,
}

impl X509Svid {
    /// The leaf certificate (`None` only if `cert_chain` was emptied by hand).
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.cert_chain.first()
    }
}

/// An upstream signing CA (the organisation's PKI: an offline root, or an
/// intermediate under it) that signs the trust domain's own CAs, so SVIDs
/// chain to the upstream roots and the bundle holds only those roots.
pub struct UpstreamCa {
    cert: CertificateDer<'static>,
    key: PrivateKey,
    /// What SVIDs carry above the trust domain's CA: `cert` unless it is a
    /// root, then the intermediates of the chain file that are not roots.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    subject_der: Vec<u8>,
    key_id: Vec<u8>,
    not_after: SystemTime,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("key_id", &keys::hex(&self.key_id))
            .field("chain", &self.chain.len())
            .field("roots", &self.roots.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamCa {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert && self.chain == other.chain && self.roots == other.roots
    }
}

impl UpstreamCa {
    /// The upstream CA from PEM: `cert_chain` is its certificate first, then
    /// any intermediates up to the root; `key` its private key (PKCS#8, SEC1
    /// PEM, `PRIVATE KEY`); `roots` the trust anchors (default: the
    /// self-signed certificates of `cert_chain`). Refused unless a CA minted
    /// under it at `now` verifies against `roots`.
    pub fn from_pem(
        cert_chain: &str,
        key: &str,
        roots: Option<&str>,
        now: SystemTime,
    ) -> Result<Self, X509Error> {
        let invalid = |m: String| X509Error::InvalidUpstream(m);
        let certs = certs_from_pem(cert_chain)?;
        let Some(cert) = certs.first().cloned() else {
            return Err(invalid("the certificate file holds no certificate".into()));
        };
        let key = PrivateKey::from_pkcs8_pem(key).map_err(|e| {
            invalid(format!(
                "the key must be PKCS#8 PEM (`openssl pkcs8 -topk8 -nocrypt` converts): {e}"
            ))
        })?;
        let parsed = parse_cert(&cert)?;
        if !is_ca(&parsed) || !key_usage(&parsed).is_some_and(|ku| ku.key_cert_sign()) {
            return Err(invalid(
                "the upstream certificate is not a CA with keyCertSign".into(),
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key().raw() {
            return Err(invalid(
                "the private key does not match the upstream certificate".into(),
            ));
        }
        let self_issued = |der: &CertificateDer<'_>| {
            parse_cert(der)
                .map(|c| c.tbs_certificate.issuer.as_raw() == c.tbs_certificate.subject.as_raw())
        };
        let mut chain = Vec::new();
        let mut found_roots = Vec::new();
        for (index, der) in certs.iter().enumerate() {
            if !is_ca(&parse_cert(der)?) {
                return Err(invalid(format!(
                    "certificate {index} of the chain is not a CA"
                )));
            }
            if self_issued(der)? {
                found_roots.push(der.clone());
            } else {
                chain.push(der.clone());
            }
        }
        let roots = match roots {
            Some(pem) => certs_from_pem(pem)?,
            None => found_roots,
        };
        if roots.is_empty() {
            return Err(invalid(
                "no root: the certificate is not self-signed, so give the roots (bundle file)"
                    .into(),
            ));
        }
        let key_id = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ki) => Some(ki.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| key.public_key().key_id());
        let (_, not_after) = validity(&parsed);
        let upstream = Self {
            subject_der: parsed.tbs_certificate.subject.as_raw().to_vec(),
            cert,
            key,
            chain,
            roots,
            key_id,
            not_after,
        };
        upstream.check_path(now)?;
        Ok(upstream)
    }

    /// Mints a throwaway CA and SVID under this upstream and verifies the
    /// SVID against the roots, so a wrong chain or bundle is refused at
    /// start-up rather than at the first handshake.
    fn check_path(&self, now: SystemTime) -> Result<(), X509Error> {
        struct Roots<'a>(&'a TrustDomain, &'a [CertificateDer<'static>]);
        impl X509BundleSource for Roots<'_> {
            fn x509_authorities(&self, td: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
                (td == self.0).then_some(self.1)
            }
        }
        let td = TrustDomain::new("upstream-check.invalid")
            .map_err(|e| X509Error::InvalidUpstream(e.to_string()))?;
        let ca = X509Ca::signed_by(
            self,
            &td,
            PrivateKey::generate(crate::keys::KeyType::EcP256)?,
            Duration::from_secs(600),
            now,
        )?;
        let id = SpiffeId::from_path(&td, "/check")
            .map_err(|e| X509Error::InvalidUpstream(e.to_string()))?;
        let leaf_key = PrivateKey::generate(crate::keys::KeyType::EcP256)?;
        let svid = ca.mint_svid(
            &X509SvidParams::new(id, Duration::from_secs(60)),
            leaf_key.public_key(),
            now,
        )?;
        verify_x509_svid(&svid.cert_chain, &Roots(&td, &self.roots), now)
            .map(|_| ())
            .map_err(|e| {
                X509Error::InvalidUpstream(format!(
                    "a CA signed by it does not verify against the roots: {e}"
                ))
            })
    }

    /// The trust anchors: what the trust domain's bundle publishes.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The upstream certificates SVIDs carry above the trust domain's CA.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    /// The upstream signing certificate's notAfter: no CA under it outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// An X.509 signing authority: a CA certificate for the trust domain and
/// its key. Self-signed (the certificate is the trust anchor), or signed by
/// an [`UpstreamCa`] (an intermediate under the organisation's root).
pub struct X509Ca {
    cert: CertificateDer<'static>,
    /// The certificates above `cert` that SVIDs carry, up to and not
    /// including a root: empty when `cert` is self-signed.
    chain: Vec<CertificateDer<'static>>,
    /// Whether `cert` is self-signed: its own trust anchor, and the only
    /// certificate SVIDs need (the SVID profile's leaf-only chain).
    self_signed: bool,
    /// The roots its SVIDs verify against: itself when self-signed, else
    /// the upstream's roots when it was signed (kept so the bundle still
    /// publishes them after the upstream changes, while this CA lives).
    anchors: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    trust_domain: TrustDomain,
    /// Exact subject Name bytes, copied into issued certificates' issuer field
    /// so name chaining is byte-identical.
    subject_der: Vec<u8>,
    key_id: Vec<u8>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for X509Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Ca")
            .field("trust_domain", &self.trust_domain)
            .field("key_id", &keys::hex(&self.key_id))
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}

impl X509Ca {
    /// Creates a self-signed root CA for `trust_domain` valid from
    /// `now - NOT_BEFORE_BACKDATE` to `now + ttl`.
    ///
    /// The certificate carries `spiffe://<trust domain>` as its URI SAN,
    /// `cA=true`, a critical KeyUsage of keyCertSign+cRLSign, and subject
    /// `O=Signet, OU=<trust domain>, CN=Signet CA <key id>` (OU omitted when
    /// the name is over 64 bytes).
    pub fn self_signed(
        trust_domain: &TrustDomain,
        key: PrivateKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, X509Error> {
        Self::issue(trust_domain, key, ttl, now, None)
    }

    /// Creates an intermediate CA for `trust_domain` signed by `upstream`,
    /// with the same profile as [`X509Ca::self_signed`]; its notAfter is
    /// capped at the upstream certificate's. SVIDs it mints carry it and the
    /// upstream chain (not the root).
    pub fn signed_by(
        upstream: &UpstreamCa,
        trust_domain: &TrustDomain,
        key: PrivateKey,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, X509Error> {
        Self::issue(trust_domain, key, ttl, now, Some(upstream))
    }

    fn issue(
        trust_domain: &TrustDomain,
        key: PrivateKey,
        ttl: Duration,
        now: SystemTime,
        upstream: Option<&UpstreamCa>,
    ) -> Result<Self, X509Error> {
        if ttl.is_zero() {
            return Err(X509Error::ZeroTtl);
        }
        let now = truncate_to_secs(now);
        let not_before = now.checked_sub(NOT_BEFORE_BACKDATE).unwrap_or(now);
        let mut not_after = now + ttl;
        if let Some(upstream) = upstream {
            if now >= upstream.not_after {
                return Err(X509Error::UpstreamExpired {
                    not_after: upstream.not_after,
                });
            }
            not_after = not_after.min(upstream.not_after);
        }
        let key_id = key.public_key().key_id();
        let mut subject = SubjectTemplate {
            common_name: Some(format!("Signet CA {}", keys::hex(&key_id[..8]))),
            organization: vec!["Signet".to_owned()],
            organizational_unit: Vec::new(),
        };
        if trust_domain.as_str().len() <= MAX_SUBJECT_ATTRIBUTE_LEN {
            subject.organizational_unit.push(trust_domain.to_string());
        }
        let subject_der = encode_name(&subject)?;
        let san = der::sequence(&[&der::implicit_primitive(
            6,
            trust_domain.id().as_str().as_bytes(),
        )]);
        let authority_key_id = upstream.map_or(key_id.as_slice(), |u| u.key_id.as_slice());
        let extensions = [
            extension(
                oid::BASIC_CONSTRAINTS,
                true,
                &der::sequence(&[&der::boolean_true()]),
            ),
            extension(
                oid::KEY_USAGE,
                true,
                &der::named_bits(&[KU_KEY_CERT_SIGN, KU_CRL_SIGN]),
            ),
            extension(oid::SUBJECT_KEY_ID, false, &der::octet_string(&key_id)),
            extension(
                oid::AUTHORITY_KEY_ID,
                false,
                &der::sequence(&[&der::implicit_primitive(0, authority_key_id)]),
            ),
            extension(oid::SUBJECT_ALT_NAME, false, &san),
        ];
        let (issuer_key, issuer_name) = match upstream {
            Some(upstream) => (&upstream.key, upstream.subject_der.as_slice()),
            None => (&key, subject_der.as_slice()),
        };
        let cert = sign_certificate(
            issuer_key,
            &random_serial()?,
            issuer_name,
            not_before,
            not_after,
            &subject_der,
            key.public_key().spki_der(),
            &extensions,
        )?;
        let cert = CertificateDer::from(cert);
        Ok(Self {
            anchors: upstream.map_or_else(|| vec![cert.clone()], |u| u.roots.clone()),
            cert,
            chain: upstream.map(UpstreamCa::chain).unwrap_or_default(),
            self_signed: upstream.is_none(),
            key,
            trust_domain: trust_domain.clone(),
            subject_der,
            key_id,
            not_before,
            not_after,
        })
    }

    /// Rebuilds a CA from its certificate and key (e.g. after a restart).
    /// Checks that the certificate is a CA with keyCertSign, carries a
    /// trust-domain SPIFFE ID, and matches the key.
    pub fn from_parts(cert: CertificateDer<'static>, key: PrivateKey) -> Result<Self, X509Error> {
        Self::from_parts_with_chain(cert, Vec::new(), Vec::new(), key)
    }

    /// [`X509Ca::from_parts`] for an intermediate: `chain` is what SVIDs
    /// carry above it (see [`X509Ca::chain`]), each a CA; `roots` what they
    /// verify against (see [`X509Ca::anchors`]; ignored when self-signed).
    pub fn from_parts_with_chain(
        cert: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Self, X509Error> {
        for above in &chain {
            let parsed = parse_cert(above)?;
            if !is_ca(&parsed) {
                return Err(X509Error::InvalidCa(
                    "a certificate of the upstream chain is not a CA".to_owned(),
                ));
            }
        }
        let invalid = |m: &str| X509Error::InvalidCa(m.to_owned());
        let parsed = parse_cert(&cert)?;
        if !is_ca(&parsed) {
            return Err(invalid("certificate is not a CA"));
        }
        match key_usage(&parsed) {
            Some(ku) if ku.key_cert_sign() => {}
            _ => return Err(invalid("certificate lacks keyCertSign")),
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key().raw() {
            return Err(invalid("private key does not match the certificate"));
        }
        let id = spiffe_id_of(&parsed)?;
        if !id.path().is_empty() {
            return Err(invalid("CA SPIFFE ID must not have a path"));
        }
        let key_id = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(ki) => Some(ki.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| key.public_key().key_id());
        let (not_before, not_after) = validity(&parsed);
        let subject_der = parsed.tbs_certificate.subject.as_raw().to_vec();
        let trust_domain = id.trust_domain().clone();
        let self_signed =
            chain.is_empty() && parsed.tbs_certificate.issuer.as_raw() == subject_der.as_slice();
        let anchors = if self_signed {
            vec![cert.clone()]
        } else {
            roots
        };
        Ok(Self {
            anchors,
            cert,
            chain,
            self_signed,
            key,
            trust_domain,
            subject_der,
            key_id,
            not_before,
            not_after,
        })
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The upstream certificates above this CA that its SVIDs carry (empty
    /// for a self-signed CA).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Whether this CA is its own trust anchor (no upstream): then it is
    /// what the bundle publishes; otherwise the upstream's roots are.
    pub fn is_self_signed(&self) -> bool {
        self.self_signed
    }

    /// The trust anchors its SVIDs verify against: the CA itself when
    /// self-signed, else the upstream roots it was signed under.
    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    /// An SVID's chain: the leaf alone under a self-signed CA, else the
    /// leaf, this CA and the upstream chain.
    fn svid_chain(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        if self.self_signed {
            return vec![leaf];
        }
        let mut chain = Vec::with_capacity(2 + self.chain.len());
        chain.push(leaf);
        chain.push(self.cert.clone());
        chain.extend(self.chain.iter().cloned());
        chain
    }

    /// The CA's private key. Secret.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The trust domain named by the CA's URI SAN.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA's notBefore.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The CA's notAfter; no SVID it issues outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Subject key identifier, lowercase hex: a stable name for this authority.
    pub fn key_id_hex(&self) -> String {
        keys::hex(&self.key_id)
    }

    /// Mints an X.509-SVID for `subject_key`.
    ///
    /// notBefore is `now - NOT_BEFORE_BACKDATE` (not before the CA's),
    /// notAfter is `min(now + ttl, CA notAfter)`.
    pub fn mint_svid(
        &self,
        params: &X509SvidParams,
        subject_key: &PublicKey,
        now: SystemTime,
    ) -> Result<X509Svid, X509Error> {
        if params.ttl.is_zero() {
            return Err(X509Error::ZeroTtl);
        }
        if !params.spiffe_id.is_member_of(&self.trust_domain) {
            return Err(X509Error::ForeignTrustDomain {
                id: params.spiffe_id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if params.spiffe_id.path().is_empty() {
            return Err(X509Error::LeafIdHasNoPath(params.spiffe_id.clone()));
        }
        let now = truncate_to_secs(now);
        if now >= self.not_after {
            return Err(X509Error::CaExpired {
                not_after: self.not_after,
            });
        }
        let rsa = match subject_key.algorithm() {
            PublicKeyAlgorithm::EcP256 | PublicKeyAlgorithm::EcP384 => false,
            PublicKeyAlgorithm::Rsa { .. } => true,
            PublicKeyAlgorithm::EcP521 => {
                return Err(X509Error::UnsupportedSubjectKey("P-521".to_owned()));
            }
        };
        for dns in &params.dns_sans {
            validate_dns_san(dns)?;
        }
        let mut subject = params.subject.clone();
        if subject.common_name.is_none() {
            subject.common_name = params.dns_sans.first().cloned();
        }
        let subject_der = encode_name(&subject)?;
        let subject_empty = subject.common_name.is_none()
            && subject.organization.is_empty()
            && subject.organizational_unit.is_empty();

        let not_before = now
            .checked_sub(NOT_BEFORE_BACKDATE)
            .unwrap_or(now)
            .max(self.not_before);
        let not_after = now
            .checked_add(params.ttl)
            .map_or(self.not_after, |t| truncate_to_secs(t).min(self.not_after));

        let mut names: Vec<Vec<u8>> =
            Vec::with_capacity(1 + params.dns_sans.len() + params.ip_sans.len());
        names.push(der::implicit_primitive(
            6,
            params.spiffe_id.as_str().as_bytes(),
        ));
        for dns in &params.dns_sans {
            names.push(der::implicit_primitive(2, dns.as_bytes()));
        }
        for ip in &params.ip_sans {
            match ip {
                IpAddr::V4(v4) => names.push(der::implicit_primitive(7, &v4.octets())),
                IpAddr::V6(v6) => names.push(der::implicit_primitive(7, &v6.octets())),
            }
        }
        let name_refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let san = der::sequence(&name_refs);

        // keyEncipherment only means something for RSA subject keys.
        let ku: &[u8] = if rsa {
            &[KU_DIGITAL_SIGNATURE, KU_KEY_ENCIPHERMENT]
        } else {
            &[KU_DIGITAL_SIGNATURE]
        };
        let eku = der::sequence(&[
            &der::oid(oid::KP_SERVER_AUTH),
            &der::oid(oid::KP_CLIENT_AUTH),
        ]);
        let extensions = [
            extension(oid::BASIC_CONSTRAINTS, true, &der::sequence(&[])),
            extension(oid::KEY_USAGE, true, &der::named_bits(ku)),
            extension(oid::EXT_KEY_USAGE, false, &eku),
            extension(
                oid::SUBJECT_KEY_ID,
                false,
                &der::octet_string(&subject_key.key_id()),
            ),
            extension(
                oid::AUTHORITY_KEY_ID,
                false,
                &der::sequence(&[&der::implicit_primitive(0, &self.key_id)]),
            ),
            extension(oid::SUBJECT_ALT_NAME, subject_empty, &san),
        ];
        let serial = random_serial()?;
        let cert = sign_certificate(
            &self.key,
            &serial,
            &self.subject_der,
            not_before,
            not_after,
            &subject_der,
            subject_key.spki_der(),
            &extensions,
        )?;
        Ok(X509Svid {
            spiffe_id: params.spiffe_id.clone(),
            cert_chain: self.svid_chain(CertificateDer::from(cert)),
            not_before,
            not_after,
            serial: keys::hex(&serial),
            issuer_key_id: self.key_id_hex(),
        })
    }
}

/// Extracts the public key of a DER PKCS#10 CSR after checking its
/// self-signature; mint with [`X509Ca::mint_svid`] and that key.
///
/// Only the key is taken: the CSR's subject, SANs and requested extensions
/// are ignored so a requester cannot smuggle in names the policy did not
/// grant.
pub fn public_key_from_csr(csr_der: &[u8]) -> Result<PublicKey, X509Error> {
    use x509_parser::certification_request::X509CertificationRequest;
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| X509Error::InvalidCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error::InvalidCsr("trailing bytes after CSR".to_owned()));
    }
    csr.verify_signature()
        .map_err(|_| X509Error::CsrSignature)?;
    Ok(PublicKey::from_spki_der(
        csr.certification_request_info.subject_pki.raw,
    )?)
}

/// Builds a minimal DER PKCS#10 CSR for `key`: empty subject, no attributes.
/// The issuer takes only the key from it, so nothing else is worth sending.
pub fn create_csr(key: &PrivateKey) -> Result<Vec<u8>, X509Error> {
    let info = der::sequence(&[
        &der::small_integer(0),
        &der::sequence(&[]),
        key.public_key().spki_der(),
        // attributes [0] IMPLICIT SET OF, empty
        &der::tlv(0xa0, &[]),
    ]);
    let sig = key.sign(&info)?;
    Ok(der::sequence(&[
        &info,
        &key.x509_signature_algorithm(),
        &der::bit_string(&sig),
    ]))
}

/// PEM-encodes a DER CSR (`CERTIFICATE REQUEST`, as `openssl req` writes).
pub fn csr_to_pem(der: &[u8]) -> String {
    keys::pem_encode("CERTIFICATE REQUEST", der)
}

/// The DER of the first `CERTIFICATE REQUEST` block in PEM text.
pub fn csr_from_pem(pem: &str) -> Result<Vec<u8>, X509Error> {
    use rustls_pki_types::CertificateSigningRequestDer;
    CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map(|csr| csr.as_ref().to_vec())
        .map_err(|e| X509Error::InvalidPem(e.to_string()))
}

/// Where [`verify_x509_svid`] finds a trust domain's X.509 authorities;
/// every `bundle::BundleSource` is one.
pub trait X509BundleSource {
    /// The X.509 authorities of `trust_domain`, if a bundle is known.
    fn x509_authorities(&self, trust_domain: &TrustDomain) -> Option<&[CertificateDer<'static>]>;
}

/// The result of a successful [`verify_x509_svid`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedX509Svid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf notBefore.
    pub not_before: SystemTime,
    /// Leaf notAfter.
    pub not_after: SystemTime,
    /// Leaf DNS SANs, in certificate order.
    pub dns_sans: Vec<String>,
}

/// Verifies an X.509-SVID chain (leaf first) at time `now` against the
/// X.509 authorities of the leaf's trust domain found in `bundles`.
///
/// Enforces the X509-SVID spec: exactly one URI SAN holding a SPIFFE ID with
/// a path, leaf `cA=false`, KeyUsage present with digitalSignature and
/// without keyCertSign/cRLSign, EKU (if present) with serverAuth and
/// clientAuth, intermediates being CAs with keyCertSign, and an RFC 5280 path
/// to one of the trust domain's authorities valid at `now`.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundles: &impl X509BundleSource,
    now: SystemTime,
) -> Result<VerifiedX509Svid, X509Error> {
    let leaf_der = chain.first().ok_or(X509Error::EmptyChain)?;
    let leaf = parse_cert(leaf_der)?;
    let spiffe_id = spiffe_id_of(&leaf)?;
    if spiffe_id.path().is_empty() {
        return Err(X509Error::LeafIdHasNoPath(spiffe_id));
    }
    if is_ca(&leaf) {
        return Err(X509Error::LeafIsCa);
    }
    let ku = key_usage(&leaf).ok_or(X509Error::MissingKeyUsage)?;
    if !ku.digital_signature() {
        return Err(X509Error::MissingDigitalSignature);
    }
    if ku.key_cert_sign() || ku.crl_sign() {
        return Err(X509Error::LeafCanSign);
    }
    for ext in leaf.extensions() {
        if let ParsedExtension::ExtendedKeyUsage(eku) = ext.parsed_extension()
            && !(eku.any || (eku.server_auth && eku.client_auth))
        {
            return Err(X509Error::BadExtendedKeyUsage);
        }
    }
    for intermediate in &chain[1..] {
        let cert = parse_cert(intermediate)?;
        let can_sign = key_usage(&cert).is_some_and(|ku| ku.key_cert_sign());
        if !is_ca(&cert) || !can_sign {
            return Err(X509Error::IntermediateNotCa);
        }
    }

    let td = spiffe_id.trust_domain();
    let authorities = bundles
        .x509_authorities(td)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| X509Error::NoBundle(td.clone()))?;
    let anchors: Vec<_> = authorities
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .collect();
    if anchors.is_empty() {
        return Err(X509Error::NoBundle(td.clone()));
    }
    let ee = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| X509Error::Malformed(e.to_string()))?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    ee.verify_for_usage(
        SIGNATURE_ALGORITHMS,
        &anchors,
        &chain[1..],
        rustls_pki_types::UnixTime::since_unix_epoch(since_epoch),
        AnyEku,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => X509Error::Expired,
        webpki::Error::CertNotValidYet { .. } => X509Error::NotYetValid,
        // A name-matching authority whose key did not sign the certificate is
        // as untrusted as no matching authority at all.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            X509Error::UntrustedIssuer
        }
        other => X509Error::PathValidation(other.to_string()),
    })?;

    let (not_before, not_after) = validity(&leaf);
    let dns_sans = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(VerifiedX509Svid {
        spiffe_id,
        not_before,
        not_after,
        dns_sans,
    })
}

/// The SPIFFE ID in a certificate's single URI SAN (leaf or CA; no other
/// checks). Useful after a TLS handshake to name the peer.
pub fn spiffe_id_from_cert(der: &[u8]) -> Result<SpiffeId, X509Error> {
    spiffe_id_of(&parse_cert(der)?)
}

/// PEM-encodes certificates as consecutive `CERTIFICATE` blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| keys::pem_encode("CERTIFICATE", c))
        .collect()
}

/// Decodes every `CERTIFICATE` block in PEM text (other blocks are skipped).
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| X509Error::InvalidPem(e.to_string()))
}

/// Concatenates DER certificates, the Workload API's chain and bundle format.
pub fn certs_to_der_concat(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    certs.iter().flat_map(|c| c.iter().copied()).collect()
}

/// Splits concatenated DER certificates (the Workload API format).
pub fn certs_from_der_concat(mut der: &[u8]) -> Result<Vec<CertificateDer<'static>>, X509Error> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (tag, _, rest) = der::read_tlv(der)
            .ok_or_else(|| X509Error::Malformed("truncated DER certificate".to_owned()))?;
        if tag != der::TAG_SEQUENCE {
            return Err(X509Error::Malformed("expected a DER SEQUENCE".to_owned()));
        }
        let one = &der[..der.len() - rest.len()];
        parse_cert(one)?;
        out.push(CertificateDer::from(one.to_vec()));
        der = rest;
    }
    Ok(out)
}

/// Signature algorithms accepted on certificate paths (ring only).
static SIGNATURE_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::ring::ED25519,
];

/// webpki applies its EKU policy to every certificate on the path; SPIFFE's
/// leaf EKU rule is checked separately, so the path itself accepts any EKU.
struct AnyEku;

impl webpki::ExtendedKeyUsageValidator for AnyEku {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

const KU_DIGITAL_SIGNATURE: u8 = 0;
const KU_KEY_ENCIPHERMENT: u8 = 2;
const KU_KEY_CERT_SIGN: u8 = 5;
const KU_CRL_SIGN: u8 = 6;

fn extension(arcs: &[u64], critical: bool, value: &[u8]) -> Vec<u8> {
    let id = der::oid(arcs);
    let wrapped = der::octet_string(value);
    if critical {
        der::sequence(&[&id, &der::boolean_true(), &wrapped])
    } else {
        der::sequence(&[&id, &wrapped])
    }
}

#[allow(clippy::too_many_arguments)]
fn sign_certificate(
    issuer_key: &PrivateKey,
    serial: &[u8],
    issuer_name: &[u8],
    not_before: SystemTime,
    not_after: SystemTime,
    subject_name: &[u8],
    spki: &[u8],
    extensions: &[Vec<u8>],
) -> Result<Vec<u8>, X509Error> {
    let sig_alg = issuer_key.x509_signature_algorithm();
    let ext_refs: Vec<&[u8]> = extensions.iter().map(Vec::as_slice).collect();
    let tbs = der::sequence(&[
        &der::explicit(0, &der::small_integer(2)),
        &der::unsigned_integer(serial),
        &sig_alg,
        issuer_name,
        &der::sequence(&[&der::x509_time(not_before), &der::x509_time(not_after)]),
        subject_name,
        spki,
        &der::explicit(3, &der::sequence(&ext_refs)),
    ]);
    let signature = issuer_key.sign(&tbs)?;
    Ok(der::sequence(&[
        &tbs,
        &sig_alg,
        &der::bit_string(&signature),
    ]))
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<[u8; 16], X509Error> {
    let mut serial = [0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| KeyError::Generation("random serial".to_owned()))?;
    serial[0] &= 0x7f;
    if serial.iter().all(|b| *b == 0) {
        serial[15] = 1;
    }
    Ok(serial)
}

fn encode_name(subject: &SubjectTemplate) -> Result<Vec<u8>, X509Error> {
    let mut rdns = Vec::new();
    let attrs = subject
        .organization
        .iter()
        .map(|v| (oid::ORGANIZATION, v))
        .chain(
            subject
                .organizational_unit
                .iter()
                .map(|v| (oid::ORGANIZATIONAL_UNIT, v)),
        )
        .chain(subject.common_name.iter().map(|v| (oid::COMMON_NAME, v)));
    for (arcs, value) in attrs {
        if value.is_empty() || value.len() > MAX_SUBJECT_ATTRIBUTE_LEN {
            return Err(X509Error::InvalidSubject(value.clone()));
        }
        let atv = der::sequence(&[&der::oid(arcs), &der::utf8_string(value)]);
        rdns.push(der::constructed(der::TAG_SET, &[&atv]));
    }
    let refs: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
    Ok(der::sequence(&refs))
}

/// Accepts RFC 1123 host names, optionally with a leading `*.` wildcard label.
fn validate_dns_san(name: &str) -> Result<(), X509Error> {
    let bad = || X509Error::InvalidDnsName(name.to_owned());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if label.is_empty()
            || label.len() > 63
            || !ok_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| X509Error::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(X509Error::Malformed(
            "trailing bytes after certificate".to_owned(),
        ));
    }
    Ok(cert)
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn key_usage<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a x509_parser::extensions::KeyUsage> {
    cert.key_usage().ok().flatten().map(|ext| ext.value)
}

fn validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let to_time =
        |secs: i64| u64::try_from(secs).map_or(UNIX_EPOCH, |s| UNIX_EPOCH + Duration::from_secs(s));
    (
        to_time(cert.validity().not_before.timestamp()),
        to_time(cert.validity().not_after.timestamp()),
    )
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, X509Error> {
    // A duplicated SAN extension makes x509-parser return an error here,
    // which is rejected rather than read as "no SAN".
    let san = cert
        .subject_alternative_name()
        .map_err(|e| X509Error::Malformed(e.to_string()))?
        .ok_or(X509Error::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(X509Error::NoUriSan),
        [one] => SpiffeId::parse(one).map_err(X509Error::NotSpiffeId),
        many => Err(X509Error::MultipleUriSans(many.len())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::keys::KeyType;
    use x509_parser::extensions::X509Extension;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn id(uri: &str) -> SpiffeId {
        SpiffeId::parse(uri).unwrap()
    }

    fn ca(key_type: KeyType) -> X509Ca {
        let key = PrivateKey::generate(key_type).unwrap();
        X509Ca::self_signed(
            &td("example.org"),
            key,
            Duration::from_secs(24 * 3600),
            now(),
        )
        .unwrap()
    }

    /// Authorities by trust domain: all verification asks of a bundle
    /// (the bundle module's tests verify against real bundles).
    #[derive(Default)]
    struct Authorities(BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>);

    impl Authorities {
        fn with(
            mut self,
            trust_domain: TrustDomain,
            cert: Option<CertificateDer<'static>>,
        ) -> Self {
            self.0.entry(trust_domain).or_default().extend(cert);
            self
        }
    }

    impl X509BundleSource for Authorities {
        fn x509_authorities(
            &self,
            trust_domain: &TrustDomain,
        ) -> Option<&[CertificateDer<'static>]> {
            self.0.get(trust_domain).map(Vec::as_slice)
        }
    }

    fn bundle_of(ca: &X509Ca) -> Authorities {
        Authorities::default().with(ca.trust_domain().clone(), Some(ca.certificate().clone()))
    }

    fn ext<'a>(cert: &'a X509Certificate<'a>, arcs: &[u64]) -> &'a X509Extension<'a> {
        let want = x509_parser::der_parser::oid::Oid::from(arcs).unwrap();
        cert.extensions().iter().find(|e| e.oid == want).unwrap()
    }

    #[test]
    fn leaf_has_every_field_the_spec_requires() {
        let ca = ca(KeyType::EcP256);
        let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params = X509SvidParams::new(
            id("spiffe://example.org/ns/a/sa/b"),
            Duration::from_secs(3600),
        );
        let svid = ca.mint_svid(&params, leaf_key.public_key(), now()).unwrap();
        assert_eq!(svid.cert_chain.len(), 1);
        assert_eq!(svid.not_before, now() - NOT_BEFORE_BACKDATE);
        assert_eq!(svid.not_after, now() + Duration::from_secs(3600));

        let cert = parse_cert(svid.leaf().unwrap()).unwrap();
        assert_eq!(cert.version(), x509_parser::x509::X509Version::V3);
        assert_eq!(validity(&cert), (svid.not_before, svid.not_after));
        assert!(
            cert.subject().iter().next().is_none(),
            "subject should be empty"
        );
        assert_eq!(cert.public_key().raw, leaf_key.public_key().spki_der());
        assert_eq!(
            cert.issuer().as_raw(),
            parse_cert(ca.certificate()).unwrap().subject().as_raw()
        );
        // Positive, at most 128 bits.
        let serial = cert.raw_serial();
        assert!(serial.len() <= 17 && serial[0] & 0x80 == 0);
        assert_eq!(
            keys::hex(&cert.serial.to_bytes_be()),
            svid.serial.trim_start_matches("00")
        );

        // Exactly one URI SAN, critical because the subject is empty.
        let san = ext(&cert, oid::SUBJECT_ALT_NAME);
        assert!(san.critical);
        assert_eq!(spiffe_id_of(&cert).unwrap(), params.spiffe_id);

        let bc = ext(&cert, oid::BASIC_CONSTRAINTS);
        assert!(bc.critical);
        assert!(!is_ca(&cert));

        let ku = ext(&cert, oid::KEY_USAGE);
        assert!(ku.critical);
        let ku = key_usage(&cert).unwrap();
        assert!(ku.digital_signature());
        assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.key_encipherment());

        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        let ski = match ext(&cert, oid::SUBJECT_KEY_ID).parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => k.0.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(ski, leaf_key.public_key().key_id());
        let aki = match ext(&cert, oid::AUTHORITY_KEY_ID).parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().unwrap().0.to_vec()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(keys::hex(&aki), ca.key_id_hex());

        let verified = verify_x509_svid(&svid.cert_chain, &bundle_of(&ca), now()).unwrap();
        assert_eq!(verified.spiffe_id, params.spiffe_id);
        assert_eq!(verified.not_after, svid.not_after);
    }

    #[test]
    fn ca_certificate_fields() {
        let ca = ca(KeyType::EcP256);
        let cert = parse_cert(ca.certificate()).unwrap();
        assert!(is_ca(&cert));
        let ku_ext = ext(&cert, oid::KEY_USAGE);
        assert!(ku_ext.critical);
        let ku = key_usage(&cert).unwrap();
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(spiffe_id_of(&cert).unwrap(), td("example.org").id());
        assert_eq!(
            cert.subject().to_string().split(", ").next(),
            Some("O=Signet")
        );
        assert!(cert.subject().to_string().contains("OU=example.org"));
        assert_eq!(ca.not_before(), now() - NOT_BEFORE_BACKDATE);
        assert_eq!(ca.not_after(), now() + Duration::from_secs(24 * 3600));
        // Self-signed and valid as a trust anchor.
        assert!(webpki::anchor_from_trusted_cert(ca.certificate()).is_ok());
        cert.verify_signature(None).unwrap();
    }

    #[test]
    fn subject_defaults_and_san_criticality() {
        let ca = ca(KeyType::EcP256);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let mut params =
            X509SvidParams::new(id("spiffe://example.org/db"), Duration::from_secs(60));
        params.dns_sans = vec!["db.payments.svc".into(), "db".into()];
        params.ip_sans = vec!["10.1.2.3".parse().unwrap(), "::1".parse().unwrap()];
        let svid = ca.mint_svid(&params, key.public_key(), now()).unwrap();
        let cert = parse_cert(svid.leaf().unwrap()).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=db.payments.svc");
        assert!(!ext(&cert, oid::SUBJECT_ALT_NAME).critical);
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names.len(), 5);
        assert!(names.contains(&GeneralName::IPAddress(&[10, 1, 2, 3])));
        let verified = verify_x509_svid(&svid.cert_chain, &bundle_of(&ca), now()).unwrap();
        assert_eq!(verified.dns_sans, params.dns_sans);

        params.subject = SubjectTemplate {
            common_name: Some("explicit".into()),
            organization: vec!["Org A".into(), "Org B".into()],
            organizational_unit: vec!["Unit".into()],
        };
        let svid = ca.mint_svid(&params, key.public_key(), now()).unwrap();
        let cert = parse_cert(svid.leaf().unwrap()).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "O=Org A, O=Org B, OU=Unit, CN=explicit"
        );
        assert!(!ext(&cert, oid::SUBJECT_ALT_NAME).critical);
    }

    #[test]
    fn not_after_is_capped_by_the_ca() {
        let ca = ca(KeyType::EcP256);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params =
            X509SvidParams::new(id("spiffe://example.org/w"), Duration::from_secs(48 * 3600));
        let svid = ca.mint_svid(&params, key.public_key(), now()).unwrap();
        assert_eq!(svid.not_after, ca.not_after());
        // Late in the CA's life the cap is tighter still.
        let late = ca.not_after() - Duration::from_secs(5);
        let svid = ca.mint_svid(&params, key.public_key(), late).unwrap();
        assert_eq!(svid.not_after, ca.not_after());
        assert_eq!(
            ca.mint_svid(&params, key.public_key(), ca.not_after()),
            Err(X509Error::CaExpired {
                not_after: ca.not_after()
            })
        );
    }

    #[test]
    fn minting_rejects_bad_params() {
        let ca = ca(KeyType::EcP256);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let mut p = X509SvidParams::new(id("spiffe://other.org/w"), Duration::from_secs(60));
        assert!(matches!(
            ca.mint_svid(&p, key.public_key(), now()),
            Err(X509Error::ForeignTrustDomain { .. })
        ));
        p.spiffe_id = id("spiffe://example.org");
        assert!(matches!(
            ca.mint_svid(&p, key.public_key(), now()),
            Err(X509Error::LeafIdHasNoPath(_))
        ));
        p.spiffe_id = id("spiffe://example.org/w");
        p.ttl = Duration::ZERO;
        assert_eq!(
            ca.mint_svid(&p, key.public_key(), now()),
            Err(X509Error::ZeroTtl)
        );
        p.ttl = Duration::from_secs(60);
        for bad in ["", "a..b", "-a.b", "a b", "x.*.y", &"a".repeat(64)] {
            p.dns_sans = vec![bad.to_owned()];
            assert_eq!(
                ca.mint_svid(&p, key.public_key(), now()),
                Err(X509Error::InvalidDnsName(bad.to_owned())),
                "{bad:?}"
            );
        }
        p.dns_sans = vec!["*.payments.svc".into()];
        assert!(ca.mint_svid(&p, key.public_key(), now()).is_ok());
        p.subject.organization = vec![String::new()];
        assert!(matches!(
            ca.mint_svid(&p, key.public_key(), now()),
            Err(X509Error::InvalidSubject(_))
        ));
        p.subject.organization = vec!["o".repeat(65)];
        assert!(matches!(
            ca.mint_svid(&p, key.public_key(), now()),
            Err(X509Error::InvalidSubject(_))
        ));
    }

    #[test]
    fn every_key_type_mints_and_verifies() {
        for ca_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
            let ca = ca(ca_type);
            for leaf_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
                let key = PrivateKey::generate(leaf_type).unwrap();
                let params =
                    X509SvidParams::new(id("spiffe://example.org/w"), Duration::from_secs(60));
                let svid = ca.mint_svid(&params, key.public_key(), now()).unwrap();
                let verified = verify_x509_svid(&svid.cert_chain, &bundle_of(&ca), now());
                assert!(
                    verified.is_ok(),
                    "{ca_type} CA, {leaf_type} leaf: {verified:?}"
                );
                let ku = key_usage(&parse_cert(svid.leaf().unwrap()).unwrap())
                    .unwrap()
                    .key_encipherment();
                assert_eq!(ku, leaf_type == KeyType::Rsa2048);
            }
        }
    }

    #[test]
    fn csr_contributes_only_its_key() {
        let ca = ca(KeyType::EcP256);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let csr = create_csr(&key).unwrap();
        assert_eq!(&public_key_from_csr(&csr).unwrap(), key.public_key());
        let params = X509SvidParams::new(id("spiffe://example.org/w"), Duration::from_secs(60));
        let svid = ca
            .mint_svid(&params, &public_key_from_csr(&csr).unwrap(), now())
            .unwrap();
        let cert = parse_cert(svid.leaf().unwrap()).unwrap();
        assert_eq!(cert.public_key().raw, key.public_key().spki_der());

        // A CSR asking for extra names and CA powers gets none of them.
        let rc_key = rcgen::KeyPair::generate().unwrap();
        let mut req = rcgen::CertificateParams::new(vec!["evil.example.com".to_owned()]).unwrap();
        req.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example.org/admin".try_into().unwrap(),
        ));
        req.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        req.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let rc_csr = req.serialize_request(&rc_key).unwrap();
        let svid = ca
            .mint_svid(&params, &public_key_from_csr(rc_csr.der()).unwrap(), now())
            .unwrap();
        let cert = parse_cert(svid.leaf().unwrap()).unwrap();
        assert_eq!(spiffe_id_of(&cert).unwrap(), params.spiffe_id);
        assert_eq!(
            cert.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .len(),
            1
        );
        assert!(cert.subject().iter().next().is_none());
        assert!(!is_ca(&cert));
        assert!(verify_x509_svid(&svid.cert_chain, &bundle_of(&ca), now()).is_ok());

        // Tampering with the CSR body breaks its signature.
        let mut tampered = csr.clone();
        let spki_pos = tampered
            .windows(key.public_key().raw().len())
            .position(|w| w == key.public_key().raw())
            .unwrap();
        tampered[spki_pos + 10] ^= 1;
        assert!(matches!(
            public_key_from_csr(&tampered),
            Err(X509Error::CsrSignature | X509Error::InvalidCsr(_) | X509Error::Key(_))
        ));
        assert!(matches!(
            public_key_from_csr(b"junk"),
            Err(X509Error::InvalidCsr(_))
        ));
        let mut trailing = csr.clone();
        trailing.push(0);
        assert!(matches!(
            public_key_from_csr(&trailing),
            Err(X509Error::InvalidCsr(_))
        ));
    }

    #[test]
    fn csr_signature_is_checked() {
        // Same CSR body, signature from a different key.
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let other = PrivateKey::generate(KeyType::EcP256).unwrap();
        let info = der::sequence(&[
            &der::small_integer(0),
            &der::sequence(&[]),
            key.public_key().spki_der(),
            &der::tlv(0xa0, &[]),
        ]);
        let sig = other.sign(&info).unwrap();
        let csr = der::sequence(&[
            &info,
            &other.x509_signature_algorithm(),
            &der::bit_string(&sig),
        ]);
        assert_eq!(public_key_from_csr(&csr), Err(X509Error::CsrSignature));
    }

    #[test]
    fn tampered_leaf_is_untrusted() {
        let ca = ca(KeyType::EcP256);
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params = X509SvidParams::new(id("spiffe://example.org/web"), Duration::from_secs(60));
        let svid = ca.mint_svid(&params, key.public_key(), now()).unwrap();
        // Rewrite the path inside the signed URI SAN: same length, still a valid SVID shape.
        let mut der = svid.leaf().unwrap().to_vec();
        let pos = der.windows(4).position(|w| w == b"/web").unwrap();
        der[pos + 1..pos + 4].copy_from_slice(b"adm");
        let tampered = vec![CertificateDer::from(der)];
        assert_eq!(
            spiffe_id_from_cert(&tampered[0]).unwrap(),
            id("spiffe://example.org/adm")
        );
        assert_eq!(
            verify_x509_svid(&tampered, &bundle_of(&ca), now()),
            Err(X509Error::UntrustedIssuer)
        );
    }

    #[test]
    fn ca_round_trips_through_parts() {
        let original = ca(KeyType::EcP384);
        let key = PrivateKey::from_pkcs8_der(&original.key().to_pkcs8_der()).unwrap();
        let restored = X509Ca::from_parts(original.certificate().clone(), key).unwrap();
        assert_eq!(restored.not_after(), original.not_after());
        assert_eq!(restored.key_id_hex(), original.key_id_hex());
        let leaf = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params = X509SvidParams::new(id("spiffe://example.org/w"), Duration::from_secs(60));
        let svid = restored
            .mint_svid(&params, leaf.public_key(), now())
            .unwrap();
        assert!(verify_x509_svid(&svid.cert_chain, &bundle_of(&original), now()).is_ok());

        let wrong_key = PrivateKey::generate(KeyType::EcP384).unwrap();
        assert!(matches!(
            X509Ca::from_parts(original.certificate().clone(), wrong_key),
            Err(X509Error::InvalidCa(_))
        ));
        // A leaf is not a CA.
        assert!(matches!(
            X509Ca::from_parts(svid.leaf().unwrap().clone(), leaf),
            Err(X509Error::InvalidCa(_))
        ));
        assert!(format!("{original:?}").contains("<redacted>"));
    }

    #[test]
    fn pem_and_der_chains_round_trip() {
        let a = ca(KeyType::EcP256);
        let b = ca(KeyType::EcP256);
        let certs = vec![a.certificate().clone(), b.certificate().clone()];
        let pem = certs_to_pem(&certs);
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);
        assert_eq!(certs_from_pem(&pem).unwrap(), certs);
        let der = certs_to_der_concat(&certs);
        assert_eq!(certs_from_der_concat(&der).unwrap(), certs);
        assert!(certs_from_der_concat(&der[..der.len() - 1]).is_err());
        assert!(certs_from_der_concat(b"\x04\x00").is_err());
        assert_eq!(certs_from_der_concat(&[]).unwrap(), vec![]);
        assert_eq!(
            spiffe_id_from_cert(a.certificate()).unwrap(),
            td("example.org").id()
        );
    }

    // --- negative verification tests, bad certificates crafted with rcgen ---

    struct RcCa {
        params: rcgen::CertificateParams,
        key: rcgen::KeyPair,
        cert: CertificateDer<'static>,
    }

    fn rc_time(t: SystemTime) -> time::OffsetDateTime {
        time::OffsetDateTime::from(t)
    }

    fn rc_ca(td_name: &str) -> RcCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{td_name}").try_into().unwrap(),
        )];
        params.not_before = rc_time(now() - Duration::from_secs(3600));
        params.not_after = rc_time(now() + Duration::from_secs(24 * 3600));
        let cert = params.self_signed(&key).unwrap().der().clone();
        RcCa { params, key, cert }
    }

    fn good_leaf_params(uri: &str) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.use_authority_key_identifier_extension = true;
        params.not_before = rc_time(now() - Duration::from_secs(60));
        params.not_after = rc_time(now() + Duration::from_secs(3600));
        params
    }

    fn sign_leaf(ca: &RcCa, params: &rcgen::CertificateParams) -> Vec<CertificateDer<'static>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        vec![params.signed_by(&key, &issuer).unwrap().der().clone()]
    }

    fn rc_bundle(ca: &RcCa, td_name: &str) -> Authorities {
        Authorities::default().with(td(td_name), Some(ca.cert.clone()))
    }

    #[test]
    fn rcgen_baseline_leaf_verifies() {
        // Guards the negative tests below: each differs from this in one way.
        let ca = rc_ca("example.org");
        let chain = sign_leaf(&ca, &good_leaf_params("spiffe://example.org/w"));
        let verified = verify_x509_svid(&chain, &rc_bundle(&ca, "example.org"), now()).unwrap();
        assert_eq!(verified.spiffe_id, id("spiffe://example.org/w"));
    }

    #[test]
    fn rejects_each_broken_rule() {
        let ca = rc_ca("example.org");
        let bundle = rc_bundle(&ca, "example.org");
        let check = |mutate: &dyn Fn(&mut rcgen::CertificateParams), want: X509Error| {
            let mut params = good_leaf_params("spiffe://example.org/w");
            mutate(&mut params);
            let chain = sign_leaf(&ca, &params);
            assert_eq!(verify_x509_svid(&chain, &bundle, now()), Err(want));
        };
        check(
            &|p| {
                p.subject_alt_names.push(rcgen::SanType::URI(
                    "spiffe://example.org/x".try_into().unwrap(),
                ))
            },
            X509Error::MultipleUriSans(2),
        );
        check(
            &|p| {
                p.subject_alt_names = vec![rcgen::SanType::DnsName("a.example".try_into().unwrap())]
            },
            X509Error::NoUriSan,
        );
        check(
            &|p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(
                    "https://example.org/w".try_into().unwrap(),
                )]
            },
            X509Error::NotSpiffeId(IdError::WrongScheme),
        );
        check(
            &|p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(
                    "spiffe://example.org".try_into().unwrap(),
                )]
            },
            X509Error::LeafIdHasNoPath(id("spiffe://example.org")),
        );
        check(
            &|p| p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
            X509Error::LeafIsCa,
        );
        check(
            &|p| p.key_usages.push(rcgen::KeyUsagePurpose::KeyCertSign),
            X509Error::LeafCanSign,
        );
        check(
            &|p| p.key_usages.push(rcgen::KeyUsagePurpose::CrlSign),
            X509Error::LeafCanSign,
        );
        check(&|p| p.key_usages.clear(), X509Error::MissingKeyUsage);
        check(
            &|p| p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment],
            X509Error::MissingDigitalSignature,
        );
        check(
            &|p| p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
            X509Error::BadExtendedKeyUsage,
        );
        check(
            &|p| {
                p.not_before = rc_time(now() - Duration::from_secs(7200));
                p.not_after = rc_time(now() - Duration::from_secs(1));
            },
            X509Error::Expired,
        );
        check(
            &|p| p.not_before = rc_time(now() + Duration::from_secs(60)),
            X509Error::NotYetValid,
        );
        // EKU is optional: a leaf without it is fine.
        let mut params = good_leaf_params("spiffe://example.org/w");
        params.extended_key_usages.clear();
        assert!(verify_x509_svid(&sign_leaf(&ca, &params), &bundle, now()).is_ok());
    }

    #[test]
    fn rejects_wrong_trust_domain_and_signer() {
        let ours = rc_ca("example.org");
        let theirs = rc_ca("other.org");
        let set = rc_bundle(&ours, "example.org").with(td("other.org"), Some(theirs.cert.clone()));

        // Our CA signing an ID of another trust domain: that domain's bundle does not vouch for it.
        let chain = sign_leaf(&ours, &good_leaf_params("spiffe://other.org/w"));
        assert_eq!(
            verify_x509_svid(&chain, &set, now()),
            Err(X509Error::UntrustedIssuer)
        );
        // With only our own bundle there is no bundle for the claimed domain at all.
        assert_eq!(
            verify_x509_svid(&chain, &rc_bundle(&ours, "example.org"), now()),
            Err(X509Error::NoBundle(td("other.org")))
        );
        // A signer outside the bundle.
        let stranger = rc_ca("example.org");
        let chain = sign_leaf(&stranger, &good_leaf_params("spiffe://example.org/w"));
        assert_eq!(
            verify_x509_svid(&chain, &set, now()),
            Err(X509Error::UntrustedIssuer)
        );
        // An empty bundle means distrust.
        let empty = Authorities::default().with(td("example.org"), None);
        let chain = sign_leaf(&ours, &good_leaf_params("spiffe://example.org/w"));
        assert_eq!(
            verify_x509_svid(&chain, &empty, now()),
            Err(X509Error::NoBundle(td("example.org")))
        );
        assert_eq!(
            verify_x509_svid(&[], &set, now()),
            Err(X509Error::EmptyChain)
        );
        assert!(matches!(
            verify_x509_svid(&[CertificateDer::from(vec![0x30, 0x00])], &set, now()),
            Err(X509Error::Malformed(_))
        ));
    }

    #[test]
    fn intermediates_must_be_signing_cas() {
        let root = rc_ca("example.org");
        let bundle = rc_bundle(&root, "example.org");
        let root_issuer = rcgen::Issuer::from_params(&root.params, &root.key);

        // A proper intermediate: our X509Ca rebuilt from an rcgen-issued CA cert.
        let mid_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let mid_rc_key = rcgen::KeyPair::try_from(mid_key.to_pkcs8_der().as_slice()).unwrap();
        let mut mid_params = rc_ca("example.org").params;
        mid_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "intermediate");
        mid_params.use_authority_key_identifier_extension = true;
        let mid_cert = mid_params
            .signed_by(&mid_rc_key, &root_issuer)
            .unwrap()
            .der()
            .clone();
        let mid = X509Ca::from_parts(mid_cert.clone(), mid_key).unwrap();
        let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params = X509SvidParams::new(id("spiffe://example.org/w"), Duration::from_secs(60));
        // A CA that is not self-signed sends itself along with the leaf.
        let chain = mid
            .mint_svid(&params, leaf_key.public_key(), now())
            .unwrap()
            .cert_chain;
        assert_eq!(chain[1..], [mid_cert]);
        assert!(verify_x509_svid(&chain, &bundle, now()).is_ok());
        assert_eq!(
            verify_x509_svid(&chain[..1], &bundle, now()),
            Err(X509Error::UntrustedIssuer),
            "the intermediate is needed to reach the root"
        );

        // A "chain" whose second certificate is a leaf is refused.
        let bogus_mid = sign_leaf(&root, &good_leaf_params("spiffe://example.org/m"));
        let mut chain = sign_leaf(&root, &good_leaf_params("spiffe://example.org/w"));
        chain.extend(bogus_mid);
        assert_eq!(
            verify_x509_svid(&chain, &bundle, now()),
            Err(X509Error::IntermediateNotCa)
        );
    }

    /// PEM of a CA's certificate (and `above`) and of its key.
    fn pem_of(ca: &X509Ca, above: &[&X509Ca]) -> (String, String) {
        let mut certs = vec![ca.certificate().clone()];
        certs.extend(above.iter().map(|c| c.certificate().clone()));
        (certs_to_pem(&certs), ca.key().to_pkcs8_pem().to_string())
    }

    fn upstream_from(
        ca: &X509Ca,
        above: &[&X509Ca],
        roots: Option<&X509Ca>,
    ) -> Result<UpstreamCa, X509Error> {
        let (chain, key) = pem_of(ca, above);
        let roots = roots.map(|r| certs_to_pem(std::slice::from_ref(r.certificate())));
        UpstreamCa::from_pem(&chain, &key, roots.as_deref(), now())
    }

    fn workload_svid(ca: &X509Ca) -> X509Svid {
        let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let params = X509SvidParams::new(id("spiffe://example.org/w"), Duration::from_secs(600));
        ca.mint_svid(&params, leaf_key.public_key(), now()).unwrap()
    }

    fn anchors(td_name: &str, roots: &[&X509Ca]) -> Authorities {
        roots.iter().fold(Authorities::default(), |a, r| {
            a.with(td(td_name), Some(r.certificate().clone()))
        })
    }

    #[test]
    fn a_ca_under_an_upstream_root_chains_to_the_root_alone() {
        let root = ca(KeyType::EcP384);
        let upstream = upstream_from(&root, &[], None).unwrap();
        assert_eq!(upstream.roots(), std::slice::from_ref(root.certificate()));
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let signet = X509Ca::signed_by(
            &upstream,
            &td("example.org"),
            key,
            Duration::from_secs(3600),
            now(),
        )
        .unwrap();
        assert!(!signet.is_self_signed());
        let svid = workload_svid(&signet);
        // Leaf and the trust domain's CA; the root is not sent.
        assert_eq!(
            svid.cert_chain,
            vec![svid.cert_chain[0].clone(), signet.certificate().clone()]
        );
        verify_x509_svid(&svid.cert_chain, &anchors("example.org", &[&root]), now()).unwrap();
        // The CA names the root as issuer, by name and key identifier.
        let cert = parse_cert(signet.certificate()).unwrap();
        let parsed_root = parse_cert(root.certificate()).unwrap();
        assert_eq!(
            cert.tbs_certificate.issuer.as_raw(),
            parsed_root.tbs_certificate.subject.as_raw()
        );
        let aki = ext(&cert, &[2, 5, 29, 35]);
        match aki.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                assert_eq!(
                    aki.key_identifier.as_ref().unwrap().0,
                    hex_decode(&root.key_id_hex())
                );
            }
            other => panic!("{other:?}"),
        }
        // Without the root, the leaf does not verify against the CA's own
        // trust domain bundle of another root.
        let other_root = ca(KeyType::EcP256);
        assert_eq!(
            verify_x509_svid(
                &svid.cert_chain,
                &anchors("example.org", &[&other_root]),
                now()
            ),
            Err(X509Error::UntrustedIssuer)
        );
    }

    fn hex_decode(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn under_an_upstream_intermediate_svids_carry_it_and_not_the_root() {
        let root = ca(KeyType::EcP256);
        let root_upstream = upstream_from(&root, &[], None).unwrap();
        let intermediate = X509Ca::signed_by(
            &root_upstream,
            &td("corp.example"),
            PrivateKey::generate(KeyType::EcP256).unwrap(),
            Duration::from_secs(7200),
            now(),
        )
        .unwrap();
        // The chain file ends with the root: that is where the root comes from.
        let upstream = upstream_from(&intermediate, &[&root], None).unwrap();
        assert_eq!(upstream.roots(), std::slice::from_ref(root.certificate()));
        assert_eq!(upstream.chain(), vec![intermediate.certificate().clone()]);
        let signet = X509Ca::signed_by(
            &upstream,
            &td("example.org"),
            PrivateKey::generate(KeyType::EcP256).unwrap(),
            Duration::from_secs(24 * 3600),
            now(),
        )
        .unwrap();
        // Capped at the upstream certificate's notAfter.
        assert_eq!(signet.not_after(), intermediate.not_after());
        let svid = workload_svid(&signet);
        assert_eq!(svid.cert_chain.len(), 3);
        assert_eq!(&svid.cert_chain[2], intermediate.certificate());
        verify_x509_svid(&svid.cert_chain, &anchors("example.org", &[&root]), now()).unwrap();
        // Rebuilt from its parts (a restart), it mints the same chain.
        let rebuilt = X509Ca::from_parts_with_chain(
            signet.certificate().clone(),
            signet.chain().to_vec(),
            signet.anchors().to_vec(),
            PrivateKey::from_pkcs8_pem(&signet.key().to_pkcs8_pem()).unwrap(),
        )
        .unwrap();
        assert!(!rebuilt.is_self_signed());
        let again = workload_svid(&rebuilt);
        assert_eq!(again.cert_chain[1..], svid.cert_chain[1..]);
        // The same with the roots given apart from the chain file.
        assert!(upstream_from(&intermediate, &[], Some(&root)).is_ok());
    }

    #[test]
    fn bad_upstream_material_is_refused_with_the_reason() {
        let root = ca(KeyType::EcP256);
        let root_upstream = upstream_from(&root, &[], None).unwrap();
        let intermediate = X509Ca::signed_by(
            &root_upstream,
            &td("corp.example"),
            PrivateKey::generate(KeyType::EcP256).unwrap(),
            Duration::from_secs(7200),
            now(),
        )
        .unwrap();
        let refused = |r: Result<UpstreamCa, X509Error>| match r {
            Err(X509Error::InvalidUpstream(message)) => message,
            other => panic!("accepted or wrong error: {other:?}"),
        };
        // An intermediate with no root anywhere.
        assert!(refused(upstream_from(&intermediate, &[], None)).contains("no root"));
        // Roots it does not chain to.
        let stranger = ca(KeyType::EcP256);
        assert!(
            refused(upstream_from(&intermediate, &[], Some(&stranger))).contains("does not verify")
        );
        // A key of another certificate.
        let (chain, _) = pem_of(&root, &[]);
        let (_, other_key) = pem_of(&stranger, &[]);
        assert!(
            refused(UpstreamCa::from_pem(&chain, &other_key, None, now()))
                .contains("does not match")
        );
        // A leaf is not a CA.
        let svid = workload_svid(&root);
        let leaf_key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let leaf_pem = certs_to_pem(&svid.cert_chain);
        assert!(
            refused(UpstreamCa::from_pem(
                &leaf_pem,
                &leaf_key.to_pkcs8_pem(),
                None,
                now()
            ))
            .contains("not a CA")
        );
        // A key that is not PKCS#8 is named as such.
        assert!(
            refused(UpstreamCa::from_pem(
                &chain,
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                None,
                now()
            ))
            .contains("PKCS#8")
        );
        // Nothing in the file.
        assert!(
            refused(UpstreamCa::from_pem("", &other_key, None, now())).contains("no certificate")
        );
        // An expired upstream signs nothing.
        let later = intermediate.not_after() + Duration::from_secs(1);
        let upstream = upstream_from(&intermediate, &[&root], None).unwrap();
        assert!(matches!(
            X509Ca::signed_by(
                &upstream,
                &td("example.org"),
                PrivateKey::generate(KeyType::EcP256).unwrap(),
                Duration::from_secs(60),
                later
            ),
            Err(X509Error::UpstreamExpired { .. })
        ));
    }
}
