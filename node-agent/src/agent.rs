//! `signet-agent run`: joins the issuer (or reuses the stored agent SVID),
//! follows the policy, runs the SVID cache and serves the Workload API, SDS
//! and health on the unix socket, plus the admin HTTP endpoint, until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use signet_runtime::http::Readiness;
use tokio::sync::watch;

use signet_runtime::audit::{AuditError, AuditLog};
use signet_runtime::clock::Clock;

use crate::api::audit::LocalAudit;
use crate::api::delegated::{DelegatedError, DelegatedState, bind_admin_socket, serve_admin};
use crate::api::{ServerState, serve};
use crate::attest::procfs::ProcRoot;
use crate::attest::{AttestError, WorkloadAttestor};
use crate::backoff::Backoff;
use crate::cache::{CacheConfig, PodReady, PodReadyHook, SvidCache, SvidKeyFactory};
use crate::config::{AgentConfig, ConfigError};
use crate::issuer::node_pods::run_node_pods_watch;
use crate::issuer::{IssuerClient, IssuerClientConfig, IssuerError, PolicyStore, run_policy_watch};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error("attestors: {0}")]
    Attestors(#[from] AttestError),
    #[error("workload API socket: {0}")]
    Socket(#[from] signet_runtime::uds::UdsError),
    #[error("delegated API: {0}")]
    Delegated(#[from] DelegatedError),
    #[error("admin endpoint {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the workload API: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("stopped before the agent had an identity")]
    Interrupted,
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
}

/// Whether a failed Join/RenewAgent is worth retrying (issuer not up yet)
/// rather than a reason to stop (bad or spent token, no credential).
fn transient(error: &IssuerError) -> bool {
    match error {
        IssuerError::Call { code, .. } => matches!(
            code,
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::ResourceExhausted
        ),
        _ => false,
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config: AgentConfig) -> Result<(), AgentError> {
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        signet_runtime::shutdown::signal().await;
        stop.send_replace(true);
    });
    run_until(config, stopping).await
}

/// Runs the agent until `shutdown` becomes true.
pub async fn run_until(
    config: AgentConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    signet_tls::install_default_provider();
    let clock = Clock::new();
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let readiness = Readiness::default();

    // Admin endpoint first, so liveness answers while the agent joins.
    if let Some(address) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| AgentError::Admin { address, source })?;
        let registry = Arc::new(registry);
        let readiness = readiness.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(signet_runtime::http::serve_admin(
            listener,
            registry,
            readiness,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        tracing::info!(%address, "admin endpoint listening");
    }

    raise_open_file_limit(&config.limits);
    let bootstrap = IssuerClient::read_bootstrap_bundle(
        &config.issuer.trust_bundle_path,
        &config.trust_domain,
    )?;
    let client = IssuerClient::new(
        IssuerClientConfig {
            address: config.issuer.address.clone(),
            trust_domain: config.trust_domain.clone(),
            state_dir: config.state_dir.clone(),
            join_token: config.join_token()?,
            service_account_token_path: config.issuer.service_account_token_path.clone(),
            node_name: config.node_name().map(str::to_owned),
        },
        bootstrap,
        clock,
        metrics.clone(),
    )?;
    join(&client, shutdown.clone()).await?;
    if let Some((id, expires)) = client.agent_svid() {
        tracing::info!(agent = %id, expires = %humantime::format_rfc3339_seconds(expires), "agent identity ready");
    }

    let store = PolicyStore::new();
    tokio::spawn(
        client
            .clone()
            .run_renewal(config.taint_reissue_window, shutdown.clone()),
    );
    tokio::spawn(run_policy_watch(
        client.clone(),
        store.clone(),
        config.selector.clone(),
        shutdown.clone(),
    ));
    {
        // Ready once the first policy is in force.
        let mut policy = store.subscribe();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            if policy.wait_for(Option::is_some).await.is_ok() {
                readiness.set(true);
            }
        });
    }

    let on_pod_ready = {
        let metrics = metrics.clone();
        PodReadyHook(Arc::new(move |ready: &PodReady| {
            let since_bound = ready
                .bound_at
                .and_then(|bound| ready.ready_at.duration_since(bound).ok());
            tracing::debug!(pod = %ready.pod_uid, svids = ready.svids, ?since_bound, "SVIDs signed ahead of the pod's start");
            metrics.pod_signed_ahead(since_bound);
        }))
    };
    let cache = SvidCache::spawn(
        CacheConfig {
            taint_reissue_window: config.taint_reissue_window,
            on_pod_ready: Some(on_pod_ready),
            ..CacheConfig::default()
        },
        clock,
        store.cache_receiver(),
        Arc::new(client.clone()),
        Arc::new(SvidKeyFactory::new(config.svid_key_type)),
    );
    {
        let cache = cache.clone();
        let metrics = metrics.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            // The cache counts re-issues since it started; the counter is
            // shared with the agent SVID's, so it gets the increments.
            let mut reissues_reported = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        metrics.set_svids_cached(cache.cached_svids());
                        metrics.set_svids_on_tainted_authority(cache.svids_on_tainted_authority());
                        let reissues = cache.taint_reissues();
                        metrics.taint_reissues(reissues.saturating_sub(reissues_reported));
                        reissues_reported = reissues;
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }

    let attestor = WorkloadAttestor::new(&config.attestors)?;
    // Only where callers are attested as pods: without the Kubernetes
    // attestor no caller could ever take what was signed ahead.
    if config.sign_ahead
        && attestor.kubernetes().is_some()
        && let Some(node_name) = config.node_name()
    {
        tokio::spawn(run_node_pods_watch(
            client.clone(),
            cache.clone(),
            node_name.to_owned(),
            shutdown.clone(),
        ));
    }
    let delegated = Arc::new(DelegatedState::new(
        cache.clone(),
        client.pod_tokens().clone(),
        attestor.kubernetes().map(|k| k.pod_cache().clone()),
        config.first_svid_timeout,
    ));
    let audit_log = AuditLog::open(&config.audit_log_path())?;
    let local_audit = Arc::new(LocalAudit::new(
        Some(audit_log),
        metrics.clone(),
        clock,
        config.audit_summary_window,
    ));
    tokio::spawn(local_audit.clone().run());
    let mut state = ServerState::new(
        cache,
        Arc::new(attestor),
        metrics,
        clock,
        config.first_svid_timeout,
        local_audit,
    );
    state.limits = config.limits.clone();
    state.reattest_interval = config.reattest_interval;
    let state = Arc::new(state);
    let Some(path) = config.listen.unix_path().map(ToOwned::to_owned) else {
        return Err(ConfigError::Invalid("listen must be a unix socket".into()).into());
    };
    let admin_path = admin_socket(&config)?;
    let listener = signet_runtime::uds::bind_unix_listener(&path, config.socket_mode)?;
    tracing::info!(
        socket = %config.listen,
        mode = format!("{:o}", config.socket_mode),
        "Workload API and SDS listening; export SPIFFE_ENDPOINT_SOCKET={}",
        config.listen
    );
    let admin = match admin_path {
        Some((admin_path, admin_listener)) => {
            tracing::info!(socket = %admin_path.display(), "delegated API (signet-csi) listening, root only");
            let mut stop = shutdown.clone();
            let served = tokio::spawn(serve_admin(admin_listener, delegated, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            Some((admin_path, served))
        }
        None => None,
    };
    let mut stop = shutdown.clone();
    let served = serve(listener, ProcRoot::from_env(), state, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
    signet_runtime::uds::remove_socket(&path);
    if let Some((admin_path, admin)) = admin {
        match admin.await {
            Ok(Err(error)) => tracing::warn!(%error, "the delegated API stopped with an error"),
            Err(error) => tracing::warn!(%error, "the delegated API task failed"),
            Ok(Ok(())) => {}
        }
        signet_runtime::uds::remove_socket(&admin_path);
    }
    tracing::info!("signet-agent stopped");
    served.map_err(AgentError::from)
}

/// Binds the delegated API's socket. A configured `admin_listen` must work;
/// the default may fail (an unprivileged agent cannot create
/// /run/signet-admin), which only leaves the delegated API off.
fn admin_socket(
    config: &AgentConfig,
) -> Result<Option<(std::path::PathBuf, tokio::net::UnixListener)>, AgentError> {
    let endpoint = config.admin_listen();
    let Some(path) = endpoint.unix_path().map(ToOwned::to_owned) else {
        return Err(ConfigError::Invalid("admin_listen must be a unix socket".into()).into());
    };
    match bind_admin_socket(&path) {
        Ok(listener) => Ok(Some((path, listener))),
        Err(error) if config.admin_listen.is_none() => {
            tracing::warn!(
                %error,
                "the delegated API for signet-csi files mode is off; set admin_listen to a path the agent may create"
            );
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// Gets the agent an identity, retrying while the issuer is unreachable.
async fn join(
    client: &IssuerClient,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match client.ensure_identity().await {
            Ok(()) => return Ok(()),
            Err(error) if transient(&error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "cannot reach the issuer yet");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait_for(|s| *s) => return Err(AgentError::Interrupted),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Lifts the soft limit on open files toward the hard one, so the
/// configured connection bound (plus the agent's own files) fits; many
/// service managers start processes with a soft limit of 1024.
fn raise_open_file_limit(limits: &crate::api::limits::ConnectionLimits) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let wanted = u64::try_from(limits.connections)
        .unwrap_or(u64::MAX)
        .saturating_add(1024);
    let soft = current.current.unwrap_or(u64::MAX);
    if soft >= wanted {
        return;
    }
    let target = current.maximum.map_or(wanted, |hard| hard.min(wanted));
    let raised = Rlimit {
        current: Some(target),
        maximum: current.maximum,
    };
    let now = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => target,
        Err(_) => soft,
    };
    if now < wanted {
        tracing::warn!(
            open_file_limit = now,
            connections = limits.connections,
            "the open-file limit is below limits.connections; connections beyond it fail at accept"
        );
    }
}
