//! What both modes serve: the issuer gRPC API over TLS (client certificate
//! optional for Join, agent SVIDs only), gRPC health, the admin endpoint
//! (/healthz, /readyz, /metrics) and, when configured, OIDC discovery.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use signet_identity::BundleSet;
use signet_proto::issuer_protocol::AGENT_PATH_PREFIX;
use signet_runtime::http::Readiness;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeClientVerifier, TlsIncoming};
use tokio::sync::watch;

use crate::ca::{Authority, PublishedBundle};
use crate::config::{BundleEndpointConfig, OidcConfig, ProfileName, StandaloneConfig};
use crate::issuer::service::IssuerService;
use crate::metrics::Metrics;
use crate::policy_state::PolicyState;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("OIDC discovery: {0}")]
    Oidc(#[from] crate::oidc::OidcError),
    #[error("issuer server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub async fn bind(address: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Listen { address, source })
}

/// The servers of one operator process, started in order: admin endpoint
/// first (so probes answer while the CA loads), then the issuer.
pub struct IssuerServer {
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: watch::Sender<bool>,
}

impl IssuerServer {
    /// Registers the metrics and starts the admin endpoint if configured.
    pub async fn new(config: &StandaloneConfig) -> Result<Self, ServeError> {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let readiness = Readiness::default();
        let (stop, stopped) = watch::channel(false);
        if let Some(address) = config.metrics_listen {
            let listener = bind(address).await?;
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
        Ok(Self {
            metrics,
            readiness,
            stop,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Resolves once the issuer has stopped serving.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopped = self.stop.subscribe();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    }

    /// Serves OIDC discovery and the JWKS until the issuer stops.
    pub async fn spawn_oidc(
        &self,
        config: &OidcConfig,
        bundle: watch::Receiver<Arc<PublishedBundle>>,
    ) -> Result<(), ServeError> {
        let settings = crate::oidc::OidcSettings::new(&config.issuer_url)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::oidc::tls_from_pem_files(cert, key)?)),
            _ => None,
        };
        let listener = bind(config.listen).await?;
        tracing::info!(address = %config.listen, issuer = %config.issuer_url, https = tls.is_some(), "OIDC discovery listening");
        let stopped = self.stopped();
        tokio::spawn(async move {
            if let Err(error) = crate::oidc::serve(listener, tls, settings, bundle, stopped).await {
                tracing::error!(%error, "OIDC discovery server failed");
            }
        });
        Ok(())
    }

    /// Serves this trust domain's SPIFFE bundle endpoint until the issuer
    /// stops: `https_spiffe` with the issuer's SVID, `https_web` with the
    /// configured certificate.
    pub async fn spawn_bundle_endpoint(
        &self,
        config: &BundleEndpointConfig,
        authority: &Authority,
    ) -> Result<(), ServeError> {
        let tls = match (config.profile, &config.tls_cert, &config.tls_key) {
            (ProfileName::HttpsWeb, Some(cert), Some(key)) => {
                crate::oidc::tls_from_pem_files(cert, key)?
            }
            _ => signet_tls::server_config_without_client_auth(authority.issuer_resolver())?,
        };
        let listener = bind(config.listen).await?;
        tracing::info!(address = %config.listen, profile = ?config.profile, "SPIFFE bundle endpoint listening");
        tokio::spawn(crate::http_server::serve(
            "bundle endpoint",
            listener,
            Some(Arc::new(tls)),
            Arc::new(crate::federation::BundleEndpoint {
                bundle: authority.bundle(),
            }),
            self.stopped(),
        ));
        Ok(())
    }

    /// Serves the issuer API on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        config: &StandaloneConfig,
        authority: Arc<Authority>,
        policy: watch::Receiver<Arc<PolicyState>>,
        issuer: IssuerService,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        tokio::spawn(track_policy_version(policy, self.metrics.clone()));
        // Agents' client certificates chain to our own bundle, kept current.
        let own_bundles = SharedBundles::new(bundle_set(&authority.current_bundle()));
        tokio::spawn(follow_bundle(
            authority.bundle(),
            own_bundles.clone(),
            self.metrics.clone(),
        ));

        // A client certificate is optional because Join is called before
        // the agent has one; every other call checks for an agent SVID.
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
        tracing::info!(address = %bound, trust_domain = %config.trust_domain, "issuer listening");
        let result = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(issuer.into_server())
            .serve_with_incoming_shutdown(TlsIncoming::new(listener, Arc::new(tls)), shutdown)
            .await;
        let _ = self.stop.send(true);
        result?;
        tracing::info!("issuer stopped");
        Ok(())
    }
}

fn bundle_set(published: &PublishedBundle) -> BundleSet {
    let mut set = BundleSet::new();
    set.insert(published.bundle.clone());
    set
}

/// Points the client verifier at the current authorities.
async fn follow_bundle(
    mut bundles: watch::Receiver<Arc<PublishedBundle>>,
    shared: SharedBundles,
    metrics: Arc<Metrics>,
) {
    loop {
        let published = bundles.borrow_and_update().clone();
        shared.replace(bundle_set(&published));
        metrics
            .bundle_sequence
            .set(i64::try_from(published.bundle.sequence).unwrap_or(i64::MAX));
        if bundles.changed().await.is_err() {
            return;
        }
    }
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
