//! SPIFFE federation (the SPIFFE Trust Domain and Bundle and Federation
//! specs): the bundles of other trust domains, kept current from files
//! (offline federation: a GitOps pipeline updates the file) or from their
//! SPIFFE bundle endpoints (`https_web` or `https_spiffe`), and this trust
//! domain's own bundle endpoint.
//!
//! A foreign bundle is only ever replaced by one that was fetched from the
//! configured source and parsed whole; on any failure the last good bundle
//! stays in force (and, standalone, survives restarts in
//! `<state_dir>/federation/<trust domain>.json`). A bundle whose
//! `spiffe_sequence` is lower than the one in force is refused: an old
//! bundle replayed would bring back retired authorities.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use signet_identity::{BundleSet, SpiffeId, TrustBundle, TrustDomain};
use signet_runtime::clock::Clock;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeServerVerifier};
use tokio::sync::watch;

use crate::ca::PublishedBundle;
use crate::metrics::Metrics;

/// Bundles larger than this are refused (a bundle is a few KiB).
const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Connect, handshake and response, together.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Bounds on how often an endpoint is polled, whatever its refresh hint.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// When a bundle carries no refresh hint.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How often a bundle file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(5);

/// The bundles of the federated trust domains, as they are now.
pub type ForeignBundles = Arc<BTreeMap<TrustDomain, TrustBundle>>;

/// What the issuer hands agents: the federated bundles, following changes.
#[derive(Clone, Debug)]
pub struct Federation {
    pub bundles: watch::Receiver<ForeignBundles>,
}

impl Default for Federation {
    fn default() -> Self {
        Self::fixed(BTreeMap::new())
    }
}

impl Federation {
    /// Bundles that never change.
    pub fn fixed(bundles: BTreeMap<TrustDomain, TrustBundle>) -> Self {
        Self {
            bundles: watch::channel(Arc::new(bundles)).1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle of {trust_domain}: {reason}")]
    Bundle {
        trust_domain: TrustDomain,
        reason: String,
    },
    #[error("{0}")]
    Fetch(String),
    #[error("spiffe_sequence {got} is lower than {in_force}, the bundle in force")]
    SequenceWentBack { got: u64, in_force: u64 },
}

/// How a bundle endpoint authenticates itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointProfile {
    /// A Web PKI certificate for the URL's host, checked against `ca_file`
    /// or the system's roots.
    HttpsWeb { ca_file: Option<PathBuf> },
    /// An X.509-SVID with this ID, checked against the foreign trust
    /// domain's own bundle (the one in force).
    HttpsSpiffe { endpoint_id: SpiffeId },
}

/// Where a federated trust domain's bundle comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleSource {
    /// Only the initial bundle, until the configuration changes.
    Fixed,
    /// A file (SPIFFE bundle JSON or PEM), re-read when it changes.
    File(PathBuf),
    /// A SPIFFE bundle endpoint.
    Endpoint { url: Uri, profile: EndpointProfile },
}

/// One federated trust domain, configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedDomain {
    pub source: BundleSource,
    /// The bundle to start from (a `File` source's first read; an
    /// endpoint's `bundle`, required for `https_spiffe` to trust the
    /// endpoint the first time).
    pub initial: Option<TrustBundle>,
}

/// An endpoint's profile as configured, before it is checked.
#[derive(Clone, Debug)]
pub enum EndpointKind<'a> {
    Web {
        ca_file: Option<PathBuf>,
    },
    Spiffe {
        endpoint_id: Option<&'a str>,
        ca_file_set: bool,
    },
}

/// A bundle endpoint source for `trust_domain`, checked: an https URL with
/// a host; for `https_spiffe` an endpoint ID in that trust domain (its
/// bundle is all that vouches for the endpoint) and a first bundle.
pub fn endpoint_domain(
    trust_domain: &TrustDomain,
    url: &str,
    kind: EndpointKind<'_>,
    initial: Option<TrustBundle>,
) -> Result<FederatedDomain, String> {
    let url: Uri = url
        .parse()
        .map_err(|e| format!("bundle endpoint URL: {e}"))?;
    if url.scheme_str() != Some("https") || url.host().is_none() {
        return Err("the bundle endpoint URL must be an https:// URL with a host".into());
    }
    let profile = match kind {
        EndpointKind::Web { ca_file } => EndpointProfile::HttpsWeb { ca_file },
        EndpointKind::Spiffe {
            endpoint_id,
            ca_file_set,
        } => {
            let id = endpoint_id.ok_or("https_spiffe needs the endpoint's SPIFFE ID")?;
            let endpoint_id =
                SpiffeId::parse(id).map_err(|e| format!("endpoint SPIFFE ID: {e}"))?;
            if endpoint_id.trust_domain() != trust_domain {
                return Err(format!(
                    "the endpoint SPIFFE ID {endpoint_id} is not in {trust_domain}"
                ));
            }
            if initial.is_none() {
                return Err(
                    "https_spiffe needs a first bundle to authenticate the endpoint with".into(),
                );
            }
            if ca_file_set {
                return Err("ca_file is for https_web".into());
            }
            EndpointProfile::HttpsSpiffe { endpoint_id }
        }
    };
    Ok(FederatedDomain {
        initial,
        source: BundleSource::Endpoint { url, profile },
    })
}

/// A FederatedTrustDomain object's spec, checked, for `own` trust domain's
/// operator (the admission webhook and the reconciler use this one check).
pub fn from_object(
    spec: &signet_policy::crd::FederatedTrustDomainSpec,
    own: &TrustDomain,
) -> Result<(TrustDomain, FederatedDomain), String> {
    use signet_policy::crd::EndpointProfileType;
    let trust_domain =
        TrustDomain::new(&spec.trust_domain).map_err(|e| format!("spec.trustDomain: {e}"))?;
    if trust_domain == *own {
        return Err(format!(
            "spec.trustDomain: {trust_domain} is this operator's own trust domain"
        ));
    }
    let initial = spec
        .trust_domain_bundle
        .as_deref()
        .map(|text| parse_bundle(&trust_domain, text.as_bytes()))
        .transpose()
        .map_err(|e| format!("spec.trustDomainBundle: {e}"))?;
    let domain = match (&spec.bundle_endpoint_url, &spec.bundle_endpoint_profile) {
        (None, None) => FederatedDomain {
            initial: Some(initial.ok_or(
                "spec: give bundleEndpointURL and bundleEndpointProfile, or trustDomainBundle",
            )?),
            source: BundleSource::Fixed,
        },
        (Some(url), Some(profile)) => {
            let kind = match profile.profile {
                EndpointProfileType::HttpsWeb => {
                    if profile.endpoint_spiffe_id.is_some() {
                        return Err(
                            "spec.bundleEndpointProfile.endpointSPIFFEID is for https_spiffe"
                                .into(),
                        );
                    }
                    EndpointKind::Web { ca_file: None }
                }
                EndpointProfileType::HttpsSpiffe => EndpointKind::Spiffe {
                    endpoint_id: profile.endpoint_spiffe_id.as_deref(),
                    ca_file_set: false,
                },
            };
            endpoint_domain(&trust_domain, url, kind, initial).map_err(|e| format!("spec: {e}"))?
        }
        _ => {
            return Err("spec: bundleEndpointURL and bundleEndpointProfile go together".into());
        }
    };
    Ok((trust_domain, domain))
}

/// A bundle file: SPIFFE bundle JSON, or PEM X.509 authorities.
pub fn read_bundle_file(
    trust_domain: &TrustDomain,
    path: &Path,
) -> Result<TrustBundle, FederationError> {
    let bytes = std::fs::read(path).map_err(|source| FederationError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_bundle(trust_domain, &bytes)
}

fn parse_bundle(trust_domain: &TrustDomain, bytes: &[u8]) -> Result<TrustBundle, FederationError> {
    let looks_like_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let parsed = if looks_like_pem {
        TrustBundle::from_x509_pem(trust_domain.clone(), &String::from_utf8_lossy(bytes))
    } else {
        TrustBundle::from_spiffe_json(trust_domain.clone(), bytes)
    };
    parsed.map_err(|e| FederationError::Bundle {
        trust_domain: trust_domain.clone(),
        reason: e.to_string(),
    })
}

/// Keeps the federated bundles current until the returned [`Federation`]
/// and its clones are dropped (the tasks end with the runtime).
pub fn start(
    domains: &BTreeMap<TrustDomain, FederatedDomain>,
    state_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    clock: Clock,
) -> Federation {
    FederationSet::start(domains, state_dir, metrics, clock).1
}

/// What is known of one federated trust domain's bundle, for status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainState {
    pub sequence: Option<u64>,
    pub last_refresh: Option<SystemTime>,
    pub earliest_expiry: Option<SystemTime>,
    /// The last failure, cleared by the next success.
    pub last_error: Option<String>,
}

type States = Arc<std::sync::Mutex<BTreeMap<TrustDomain, DomainState>>>;

/// The federated trust domains: the configured ones, fixed, plus those
/// that come and go (FederatedTrustDomain objects in a cluster), each
/// followed by its own task.
pub struct FederationSet {
    sender: Arc<watch::Sender<ForeignBundles>>,
    saved_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    clock: Clock,
    states: States,
    fixed: BTreeMap<TrustDomain, FederatedDomain>,
    dynamic: std::sync::Mutex<BTreeMap<TrustDomain, (FederatedDomain, tokio::task::AbortHandle)>>,
}

impl FederationSet {
    /// Starts following `domains` (fixed for the life of the set).
    pub fn start(
        domains: &BTreeMap<TrustDomain, FederatedDomain>,
        state_dir: Option<PathBuf>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> (Arc<Self>, Federation) {
        let saved_dir = state_dir.map(|dir| dir.join("federation"));
        let (sender, bundles) = watch::channel(Arc::new(BTreeMap::new()));
        let set = Arc::new(Self {
            sender: Arc::new(sender),
            saved_dir,
            metrics,
            clock,
            states: States::default(),
            fixed: domains.clone(),
            dynamic: std::sync::Mutex::new(BTreeMap::new()),
        });
        for (trust_domain, domain) in domains {
            set.follow(trust_domain, domain, None);
        }
        (set, Federation { bundles })
    }

    /// Starts following one domain: its first bundle (the newest of the
    /// saved one, `kept` (what a cluster kept in the object's status) and
    /// the configured one) in force at once.
    fn follow(
        &self,
        trust_domain: &TrustDomain,
        domain: &FederatedDomain,
        kept: Option<&TrustBundle>,
    ) -> Option<tokio::task::AbortHandle> {
        let on_disk = self
            .saved_dir
            .as_deref()
            .and_then(|dir| read_bundle_file(trust_domain, &saved_path(dir, trust_domain)).ok());
        let saved = match (on_disk, kept) {
            (Some(on_disk), Some(kept)) if kept.sequence > on_disk.sequence => Some(kept.clone()),
            (Some(on_disk), _) => Some(on_disk),
            (None, kept) => kept.cloned(),
        };
        let start = match (saved, domain.initial.clone()) {
            (Some(saved), Some(configured)) if configured.sequence > saved.sequence => {
                Some(configured)
            }
            (Some(saved), _) => Some(saved),
            (None, configured) => configured,
        };
        let follower = Follower {
            trust_domain: trust_domain.clone(),
            sender: self.sender.clone(),
            saved_dir: self.saved_dir.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock,
            states: self.states.clone(),
        };
        if let Some(bundle) = start {
            follower.put_in_force(bundle, false);
        }
        match &domain.source {
            BundleSource::Fixed => None,
            BundleSource::File(path) => {
                Some(tokio::spawn(follower.follow_file(path.clone())).abort_handle())
            }
            BundleSource::Endpoint { url, profile } => Some(
                tokio::spawn(follower.follow_endpoint(url.clone(), profile.clone())).abort_handle(),
            ),
        }
    }

    /// Makes `domains` the changing set (configured domains are never
    /// touched): removed ones leave the bundles, changed ones start over
    /// from their new configuration, or from the bundle `kept` for them
    /// when it is newer.
    pub fn replace_dynamic(
        &self,
        domains: &BTreeMap<TrustDomain, FederatedDomain>,
        kept: &BTreeMap<TrustDomain, TrustBundle>,
    ) {
        let mut dynamic = self
            .dynamic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let gone: Vec<TrustDomain> = dynamic
            .iter()
            .filter(|(td, (domain, _))| domains.get(*td) != Some(domain))
            .map(|(td, _)| td.clone())
            .collect();
        for trust_domain in gone {
            if let Some((_, task)) = dynamic.remove(&trust_domain) {
                task.abort();
            }
            if !domains.contains_key(&trust_domain) {
                self.sender.send_modify(|bundles| {
                    let mut next = (**bundles).clone();
                    next.remove(&trust_domain);
                    *bundles = Arc::new(next);
                });
                self.states
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&trust_domain);
                tracing::info!(%trust_domain, "no longer federated");
            }
        }
        for (trust_domain, domain) in domains {
            if self.fixed.contains_key(trust_domain) || dynamic.contains_key(trust_domain) {
                continue;
            }
            let task = self.follow(trust_domain, domain, kept.get(trust_domain));
            let handle = task.unwrap_or_else(|| tokio::spawn(async {}).abort_handle());
            dynamic.insert(trust_domain.clone(), (domain.clone(), handle));
        }
    }

    /// Whether `trust_domain` is configured in the operator's file (an
    /// object naming it is then not used).
    pub fn is_fixed(&self, trust_domain: &TrustDomain) -> bool {
        self.fixed.contains_key(trust_domain)
    }

    /// The bundle of `trust_domain` in force.
    pub fn bundle(&self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.sender.borrow().get(trust_domain).cloned()
    }

    pub fn state(&self, trust_domain: &TrustDomain) -> Option<DomainState> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(trust_domain)
            .cloned()
    }
}

fn saved_path(dir: &Path, trust_domain: &TrustDomain) -> PathBuf {
    // Trust domain names are lowercase letters, digits, '.', '-' and '_':
    // safe as file names.
    dir.join(format!("{trust_domain}.json"))
}

struct Follower {
    trust_domain: TrustDomain,
    sender: Arc<watch::Sender<ForeignBundles>>,
    saved_dir: Option<PathBuf>,
    metrics: Arc<Metrics>,
    clock: Clock,
    states: States,
}

impl Follower {
    fn in_force(&self) -> Option<TrustBundle> {
        self.sender.borrow().get(&self.trust_domain).cloned()
    }

    /// Puts `bundle` in force unless it is older than the one in force.
    fn accept(&self, bundle: TrustBundle) -> Result<bool, FederationError> {
        if let Some(current) = self.in_force() {
            if bundle.sequence < current.sequence {
                return Err(FederationError::SequenceWentBack {
                    got: bundle.sequence,
                    in_force: current.sequence,
                });
            }
            if current == bundle {
                self.record(&bundle, true);
                return Ok(false);
            }
        }
        if let Some(dir) = &self.saved_dir {
            self.save(dir, &bundle);
        }
        self.put_in_force(bundle, true);
        Ok(true)
    }

    /// Makes `bundle` the one in force; `refreshed` when it was just
    /// fetched or read (not a saved or configured starting point).
    fn put_in_force(&self, bundle: TrustBundle, refreshed: bool) {
        self.record(&bundle, refreshed);
        tracing::info!(trust_domain = %self.trust_domain, sequence = bundle.sequence, x509_authorities = bundle.x509_authorities.len(), jwt_authorities = bundle.jwt_authorities.len(), "federated bundle in force");
        let trust_domain = self.trust_domain.clone();
        self.sender.send_modify(|bundles| {
            let mut next = (**bundles).clone();
            next.insert(trust_domain, bundle);
            *bundles = Arc::new(next);
        });
    }

    fn update_state(&self, change: impl FnOnce(&mut DomainState)) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(states.entry(self.trust_domain.clone()).or_default());
    }

    fn record(&self, bundle: &TrustBundle, refreshed: bool) {
        let now = refreshed.then(|| self.clock.now());
        let expiry = earliest_expiry(bundle);
        self.metrics
            .federation_bundle(&self.trust_domain, bundle.sequence, expiry, now);
        self.update_state(|state| {
            state.sequence = Some(bundle.sequence);
            state.earliest_expiry = expiry;
            if now.is_some() {
                state.last_refresh = now;
                state.last_error = None;
            }
        });
    }

    fn save(&self, dir: &Path, bundle: &TrustBundle) {
        let written = bundle
            .to_spiffe_json()
            .map_err(|e| e.to_string())
            .and_then(|json| {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                signet_runtime::files::write_atomic(
                    &saved_path(dir, &self.trust_domain),
                    json.as_bytes(),
                    0o644,
                )
                .map_err(|e| e.to_string())
            });
        if let Err(error) = written {
            tracing::warn!(trust_domain = %self.trust_domain, %error, "saving the federated bundle failed; it is still in force");
        }
    }

    fn failed(&self, error: &FederationError, first: bool) {
        self.metrics.federation_failed(&self.trust_domain);
        self.update_state(|state| state.last_error = Some(error.to_string()));
        if first {
            tracing::warn!(trust_domain = %self.trust_domain, %error, "federated bundle not refreshed; the last good one stays in force");
        } else {
            tracing::debug!(trust_domain = %self.trust_domain, %error, "federated bundle still not refreshed");
        }
    }

    async fn follow_file(self, path: PathBuf) {
        let mut last_seen = None;
        let mut failing = false;
        loop {
            let stamp = std::fs::metadata(&path)
                .ok()
                .map(|m| (m.modified().ok(), m.len()));
            if stamp != last_seen {
                last_seen = stamp;
                match read_bundle_file(&self.trust_domain, &path).and_then(|b| self.accept(b)) {
                    Ok(_) => failing = false,
                    Err(error) => {
                        self.failed(&error, !failing);
                        failing = true;
                    }
                }
            }
            tokio::time::sleep(FILE_POLL).await;
        }
    }

    async fn follow_endpoint(self, url: Uri, profile: EndpointProfile) {
        let mut failures: u32 = 0;
        loop {
            let fetched = fetch_bundle(&url, &profile, self.in_force().as_ref())
                .await
                .and_then(|bytes| parse_bundle(&self.trust_domain, &bytes))
                .and_then(|bundle| {
                    let hint = bundle.refresh_hint;
                    self.accept(bundle).map(|_| hint)
                });
            let wait = match fetched {
                Ok(hint) => {
                    failures = 0;
                    refresh_interval(hint)
                }
                Err(error) => {
                    self.failed(&error, failures == 0);
                    failures = failures.saturating_add(1);
                    let hint = self.in_force().and_then(|b| b.refresh_hint);
                    retry_interval(failures, refresh_interval(hint))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// When to fetch again after a success: the bundle's hint, bounded.
pub fn refresh_interval(hint: Option<Duration>) -> Duration {
    hint.unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// When to retry after `failures` failures in a row: doubling from
/// [`MIN_REFRESH`], never beyond the normal interval.
pub fn retry_interval(failures: u32, normal: Duration) -> Duration {
    let doubled = MIN_REFRESH.saturating_mul(1 << failures.saturating_sub(1).min(10));
    doubled.min(normal)
}

/// GETs a bundle endpoint, authenticating it per `profile`.
async fn fetch_bundle(
    url: &Uri,
    profile: &EndpointProfile,
    in_force: Option<&TrustBundle>,
) -> Result<Vec<u8>, FederationError> {
    let fetch = |message: String| FederationError::Fetch(message);
    let host = url.host().ok_or_else(|| fetch(format!("{url}: no host")))?;
    let port = url.port_u16().unwrap_or(443);
    let tls = client_tls(profile, in_force)?;
    let server_name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| fetch(format!("{url}: {e}")))?;
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = url.authority().map(ToString::to_string).unwrap_or_default();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| fetch(format!("connecting to {host}:{port}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| fetch(format!("TLS with {host}:{port}: {e}")))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fetch(format!("HTTP with {host}:{port}: {e}")))?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .body(Full::<Bytes>::default())
            .map_err(|e| fetch(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fetch(format!("GET {url}: {e}")))?;
        if response.status() != StatusCode::OK {
            return Err(fetch(format!("GET {url}: HTTP {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_BUNDLE_BYTES)
            .collect()
            .await
            .map_err(|e| fetch(format!("GET {url}: {e}")))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| fetch(format!("GET {url}: no answer in {FETCH_TIMEOUT:?}")))?
}

fn client_tls(
    profile: &EndpointProfile,
    in_force: Option<&TrustBundle>,
) -> Result<Arc<rustls::ClientConfig>, FederationError> {
    let fetch = |message: String| FederationError::Fetch(message);
    let mut config = match profile {
        EndpointProfile::HttpsSpiffe { endpoint_id } => {
            // Only the foreign trust domain's own authorities vouch for
            // its endpoint: without a bundle there is nothing to trust.
            let bundle = in_force.ok_or_else(|| {
                fetch(format!(
                    "no bundle of {} to authenticate {endpoint_id} with (configure `bundle`)",
                    endpoint_id.trust_domain()
                ))
            })?;
            let mut set = BundleSet::new();
            set.insert(bundle.clone());
            let verifier = SpiffeServerVerifier::new(
                SharedBundles::new(set),
                PeerPolicy::OneOf(vec![endpoint_id.clone()]),
            );
            signet_tls::client_config(None, Arc::new(verifier)).map_err(|e| fetch(e.to_string()))?
        }
        EndpointProfile::HttpsWeb { ca_file } => {
            let mut roots = rustls::RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    let pem =
                        std::fs::read_to_string(path).map_err(|source| FederationError::Read {
                            path: path.clone(),
                            source,
                        })?;
                    for cert in signet_identity::x509::certs_from_pem(&pem)
                        .map_err(|e| fetch(format!("{}: {e}", path.display())))?
                    {
                        roots
                            .add(cert)
                            .map_err(|e| fetch(format!("{}: {e}", path.display())))?;
                    }
                }
                None => {
                    for cert in rustls_native_certs::load_native_certs().certs {
                        let _ = roots.add(cert);
                    }
                }
            }
            rustls::ClientConfig::builder_with_provider(signet_tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| fetch(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The earliest `notAfter` of a bundle's X.509 authorities.
pub fn earliest_expiry(bundle: &TrustBundle) -> Option<SystemTime> {
    bundle
        .x509_authorities
        .iter()
        .filter_map(|der: &CertificateDer<'_>| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
            Some(std::time::UNIX_EPOCH + Duration::from_secs(seconds))
        })
        .min()
}

/// This trust domain's SPIFFE bundle endpoint: the bundle JSON at `/`.
pub struct BundleEndpoint {
    pub bundle: watch::Receiver<Arc<PublishedBundle>>,
}

impl crate::http_server::Handler for BundleEndpoint {
    fn handle(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> {
        let (status, body, content_type) = if request.uri().path() != "/" {
            (
                StatusCode::NOT_FOUND,
                "not found\n".to_owned(),
                "text/plain",
            )
        } else if request.method() != Method::GET && request.method() != Method::HEAD {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                "GET only\n".to_owned(),
                "text/plain",
            )
        } else {
            (
                StatusCode::OK,
                self.bundle.borrow().spiffe_json.clone(),
                "application/json",
            )
        };
        Box::pin(async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_hint_within_bounds_and_retries_double() {
        assert_eq!(refresh_interval(None), DEFAULT_REFRESH);
        assert_eq!(refresh_interval(Some(Duration::from_secs(1))), MIN_REFRESH);
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_interval(Some(Duration::from_secs(86400))),
            MAX_REFRESH
        );
        let normal = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=6)
            .map(|n| retry_interval(n, normal).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(
            retry_interval(u32::MAX, MAX_REFRESH),
            MAX_REFRESH.min(MIN_REFRESH * 1024)
        );
    }
}
