//! `signet-operator standalone`: the issuer on one machine, with policy from
//! a directory and the CA keyset in a state directory.
//!
//! Files it keeps in `state_dir` (0700):
//! - `ca-keyset.json` (0600): every CA and JWT key, written atomically before
//!   any of them is used;
//! - `join-tokens-spent.json` (0600): single-use tokens already redeemed;
//! - `bundle.pem`, `bundle.spiffe.json`, `jwks.json` (0644): the trust bundle
//!   for agents to bootstrap from and for tools, rewritten on every change.

use std::sync::Arc;
use std::time::Duration;

use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::ca::{Authority, PublishedBundle};
use crate::config::StandaloneConfig;
use crate::issuer::policy_stream::Federation;
use crate::issuer::service::{IssuerParts, IssuerService, IssuerSettings};
use crate::issuer::workload::AgentTestimony;
use crate::policy_state::next_version;
use crate::server::{IssuerServer, ServeError};
use crate::standalone::join_tokens::JoinTokens;
use crate::standalone::keyset_file::FileKeysetStore;
use crate::standalone::policy_dir::DirectorySource;

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
    Authority(#[from] crate::ca::AuthorityServiceError),
    #[error("join tokens: {0}")]
    JoinTokens(#[from] crate::standalone::join_tokens::JoinError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Binds `config.listen` and runs until `shutdown` resolves.
pub async fn run(
    config: StandaloneConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StandaloneError> {
    let listener = crate::server::bind(config.listen).await?;
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
    let server = IssuerServer::new(&config).await?;

    let store = Arc::new(FileKeysetStore::new(config.state_dir.join(KEYSET_FILE)));
    let authority = Authority::load_or_create(
        config.ca.clone(),
        store,
        config.issuer_names.clone(),
        clock.now(),
    )
    .await?;
    publish_bundle_files(&config, &authority.current_bundle())?;
    tokio::spawn(follow_bundle(config.clone(), authority.bundle()));
    tokio::spawn(authority.clone().run(clock, ROTATION_CHECK_INTERVAL));

    let join = Arc::new(JoinTokens::load(&config.join_tokens, &config.state_dir)?);
    let audit = Arc::new(AuditLog::open(&config.audit_log)?);

    let (source, policy) = DirectorySource::load(
        config.policy_dir.clone(),
        config.trust_domain.clone(),
        next_version(0, clock.now()),
    );
    tokio::spawn(source.run());

    let issuer = IssuerService::new(IssuerParts {
        authority: authority.clone(),
        policy: policy.clone(),
        federation: Federation {
            bundles: config.federation.clone(),
        },
        join,
        workloads: Arc::new(AgentTestimony),
        audit,
        metrics: server.metrics(),
        settings: IssuerSettings {
            agent_svid_ttl: config.agent_svid_ttl,
        },
        clock,
    });
    if let Some(oidc) = &config.oidc {
        server.spawn_oidc(oidc, authority.bundle()).await?;
    }

    tracing::info!(
        trust_domain = %config.trust_domain,
        policy_dir = %config.policy_dir.display(),
        state_dir = %config.state_dir.display(),
        "standalone operator starting"
    );
    server.readiness().set(true);
    server
        .serve(listener, &config, authority, policy, issuer, shutdown)
        .await?;
    Ok(())
}

/// Rewrites the bundle files whenever the bundle changes.
async fn follow_bundle(
    config: StandaloneConfig,
    mut bundles: watch::Receiver<Arc<PublishedBundle>>,
) {
    while bundles.changed().await.is_ok() {
        let published = bundles.borrow_and_update().clone();
        if let Err(error) = publish_bundle_files(&config, &published) {
            tracing::error!(%error, "writing the trust bundle files failed");
        }
    }
}

fn publish_bundle_files(
    config: &StandaloneConfig,
    published: &PublishedBundle,
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
    )
}
