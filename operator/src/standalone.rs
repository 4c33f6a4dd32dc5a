//! `signet-operator standalone`: the issuer on one machine, with policy from
//! a directory and the CA keyset in a state directory.
//!
//! Files it keeps in `state_dir` (0700):
//! - `ca-keyset.json` (0600): every CA and JWT key, written atomically before
//!   any of them is used;
//! - `join-tokens-spent.json` (0600): single-use tokens already redeemed;
//! - `bundle.pem`, `bundle.spiffe.json`, `jwks.json` (0644): the trust bundle
//!   for agents to bootstrap from and for tools, rewritten on every change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use signet_identity::BundleSet;
use signet_runtime::clock::Clock;
use signet_runtime::http::Readiness;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeClientVerifier, TlsIncoming};
use tokio::sync::watch;

use crate::agents::AGENT_PATH_PREFIX;
use crate::audit::AuditLog;
use crate::authority::{Authority, FileKeysetStore, PublishedBundle};
use crate::config::StandaloneConfig;
use crate::issuer::{AgentTestimony, Federation, IssuerParts, IssuerService, IssuerSettings};
use crate::join::JoinTokens;
use crate::metrics::Metrics;
use crate::policy_source::{DirectorySource, PolicyState, initial_version};

/// How often the rotation schedule is checked.
const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

pub const KEYSET_FILE: &str = "ca-keyset.json";
pub const BUNDLE_PEM_FILE: &str = "bundle.pem";
pub const BUNDLE_JSON_FILE: &str = "bundle.spiffe.json";
pub const JWKS_FILE: &str = "jwks.json";

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("state directory: {0}")]
    StateDir(#[from] signet_runtime::files::FileError),
    #[error("certificate authority: {0}")]
    Authority(#[from] crate::authority::AuthorityServiceError),
    #[error("join tokens: {0}")]
    JoinTokens(#[from] crate::join::JoinError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("issuer server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds `config.listen` and runs until `shutdown` resolves.
pub async fn run(
    config: StandaloneConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StandaloneError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StandaloneError::Listen {
            address: config.listen,
            source,
        })?;
    serve(config, listener, shutdown).await
}

/// Runs the issuer on an already bound `listener` (tests and benchmarks
/// bind port 0) until `shutdown` resolves.
pub async fn serve(
    config: StandaloneConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StandaloneError> {
    signet_tls::install_default_provider();
    let clock = Clock::new();
    signet_runtime::files::ensure_private_dir(&config.state_dir, 0o700)?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Readiness::default();
    let (stop, stopped) = watch::channel(false);

    if let Some(address) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| StandaloneError::Listen { address, source })?;
        let mut stopped = stopped.clone();
        tokio::spawn(signet_runtime::http::serve_admin(
            listener,
            Arc::new(registry),
            readiness.clone(),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        tracing::info!(%address, "admin endpoint listening");
    }

    let store = Arc::new(FileKeysetStore::new(config.state_dir.join(KEYSET_FILE)));
    let authority = Authority::load_or_create(
        config.ca.clone(),
        store,
        config.issuer_names.clone(),
        clock.now(),
    )
    .await?;
    publish_bundle_files(&config, &authority.current_bundle(), &metrics)?;

    let join = Arc::new(JoinTokens::load(&config.join_tokens, &config.state_dir)?);
    let audit = Arc::new(AuditLog::open(&config.audit_log)?);

    let (source, policy) = DirectorySource::load(
        config.policy_dir.clone(),
        config.trust_domain.clone(),
        initial_version(),
    );
    tokio::spawn(source.run());
    tokio::spawn(track_policy_version(policy.clone(), metrics.clone()));

    // Agents' client certificates chain to our own bundle, kept current.
    let own_bundles = SharedBundles::new(bundle_set(&authority.current_bundle()));
    tokio::spawn(follow_bundle(
        config.clone(),
        authority.bundle(),
        own_bundles.clone(),
        metrics.clone(),
    ));
    tokio::spawn(authority.clone().run(clock, ROTATION_CHECK_INTERVAL));

    let issuer = IssuerService::new(IssuerParts {
        authority: authority.clone(),
        policy,
        federation: Federation {
            bundles: config.federation.clone(),
        },
        join,
        workloads: Arc::new(AgentTestimony),
        audit,
        metrics,
        settings: IssuerSettings {
            agent_svid_ttl: config.agent_svid_ttl,
        },
        clock,
    });

    // A client certificate is optional because Join is called before the
    // agent has one; every other call checks for an agent SVID itself.
    let verifier = SpiffeClientVerifier::optional(
        own_bundles,
        PeerPolicy::PathPrefix {
            trust_domain: config.trust_domain.clone(),
            prefix: AGENT_PATH_PREFIX.to_owned(),
        },
    );
    let tls = signet_tls::server_config(authority.issuer_resolver(), Arc::new(verifier))?;
    let bound = listener.local_addr().unwrap_or(config.listen);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<signet_proto::issuer::v1::issuer_server::IssuerServer<IssuerService>>()
        .await;

    tracing::info!(
        address = %bound,
        trust_domain = %config.trust_domain,
        policy_dir = %config.policy_dir.display(),
        state_dir = %config.state_dir.display(),
        "issuer listening"
    );
    readiness.set(true);
    let result = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(issuer.into_server())
        .serve_with_incoming_shutdown(TlsIncoming::new(listener, Arc::new(tls)), shutdown)
        .await;
    let _ = stop.send(true);
    result?;
    tracing::info!("issuer stopped");
    Ok(())
}

fn bundle_set(published: &PublishedBundle) -> BundleSet {
    let mut set = BundleSet::new();
    set.insert(published.bundle.clone());
    set
}

/// Writes the bundle files whenever the bundle changes, and points the
/// client verifier at the new authorities.
async fn follow_bundle(
    config: StandaloneConfig,
    mut bundles: watch::Receiver<Arc<PublishedBundle>>,
    shared: SharedBundles,
    metrics: Arc<Metrics>,
) {
    while bundles.changed().await.is_ok() {
        let published = bundles.borrow_and_update().clone();
        shared.replace(bundle_set(&published));
        if let Err(error) = publish_bundle_files(&config, &published, &metrics) {
            tracing::error!(%error, "writing the trust bundle files failed");
        }
    }
}

fn publish_bundle_files(
    config: &StandaloneConfig,
    published: &PublishedBundle,
    metrics: &Metrics,
) -> Result<(), signet_runtime::files::FileError> {
    use signet_runtime::files::write_atomic;
    // Public material: readable by agents running as other users.
    write_atomic(
        &config.state_dir.join(BUNDLE_PEM_FILE),
        published.pem.as_bytes(),
        0o644,
    )?;
    write_atomic(
        &config.state_dir.join(BUNDLE_JSON_FILE),
        published.spiffe_json.as_bytes(),
        0o644,
    )?;
    write_atomic(
        &config.state_dir.join(JWKS_FILE),
        published.jwks_json.as_bytes(),
        0o644,
    )?;
    metrics
        .bundle_sequence
        .set(i64::try_from(published.bundle.sequence).unwrap_or(i64::MAX));
    Ok(())
}

async fn track_policy_version(
    mut policy: watch::Receiver<Arc<PolicyState>>,
    metrics: Arc<Metrics>,
) {
    loop {
        let version = policy.borrow_and_update().version;
        metrics
            .policy_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        if policy.changed().await.is_err() {
            return;
        }
    }
}
