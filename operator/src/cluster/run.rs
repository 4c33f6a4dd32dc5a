//! `signet-operator kubernetes`: the operator inside a cluster.
//!
//! Every replica serves the issuer API, signs, and follows the policy and
//! the CA; the leader (a Lease) alone writes: object status and Events,
//! CA rotations (to the Secret) and the bundle ConfigMap.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, PartialObjectMeta};
use signet_policy::crd::{Agent, FederatedTrustDomain};
use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::audit::AuditLog;
use crate::ca::Authority;
use crate::cluster::config::ClusterConfig;
use crate::cluster::{
    admission, agent_records, agent_standing, bundle_config_map, ca_bundle,
    federated_trust_domains, front_proxy, keyset_secret, leader, nodes, pod_events, pods,
    reconciler, signing_authorities, token_review, user_issuance,
};
use crate::inventory::AgentInventory;
use crate::issuer::service::{IssuerParts, IssuerService, IssuerSettings};
use crate::server::{IssuerServer, ServeError};

/// How often the CA schedule runs (the leader rotates, others re-read).
const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("certificate authority: {0}")]
    Authority(#[from] crate::ca::AuthorityServiceError),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs until `shutdown` resolves.
pub async fn run(
    config: ClusterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ClusterError> {
    signet_tls::install_default_provider();
    let client = kube::Client::try_default().await?;
    let clock = Clock::new();
    let kube_config = &config.kubernetes;
    let namespace = kube_config.namespace.clone();

    let server = IssuerServer::new(&config.base).await?;
    let listener = crate::server::bind(config.base.listen).await?;

    let store = Arc::new(keyset_secret::SecretKeysetStore::new(
        Api::<Secret>::namespaced(client.clone(), &namespace),
        kube_config.ca_secret.clone(),
    ));
    let authority = Authority::load_or_create(
        config.base.ca.clone(),
        store.clone(),
        config.base.issuer_names.clone(),
        clock.now(),
    )
    .await?;
    let owner = store.owner_reference();

    let (stop_election, election_stopped) = watch::channel(false);
    let (elector, leading) = leader::LeaderElector::new(
        Api::<Lease>::namespaced(client.clone(), &namespace),
        kube_config.election.clone(),
        owner.clone(),
        clock,
    );
    let election = tokio::spawn(elector.run(async move {
        let mut stopped = election_stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let upstream = config
        .base
        .upstream
        .clone()
        .map(crate::upstream::UpstreamFollower::from_now);
    tokio::spawn(authority.clone().run_with_leader(
        clock,
        ROTATION_CHECK_INTERVAL,
        leading.clone(),
        upstream,
    ));
    tokio::spawn(bundle_config_map::publish(
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        kube_config.bundle_config_map.clone(),
        owner,
        authority.clone(),
        clock,
        leading.clone(),
    ));

    let (reconciler, channels) = reconciler::PolicyReconciler::new(
        client.clone(),
        config.base.trust_domain.clone(),
        leading.clone(),
        kube_config.election.identity.clone(),
        clock,
    );
    tokio::spawn(reconciler.run());

    let pods = Arc::new(pods::PodCache::with_clock(clock));
    tokio::spawn(pods.clone().run(Api::<Pod>::all(client.clone())));
    let (nodes, node_writer) = nodes::NodeCache::new();
    let nodes = Arc::new(nodes);
    tokio::spawn(nodes.clone().run(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        node_writer,
    ));

    let (revocations, revocation_watch) = watch::channel(Arc::default());
    let (revocations_synced, mut revocations_ready) = watch::channel(false);
    tokio::spawn(agent_standing::follow_revocations(
        Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        revocations,
        revocations_synced,
    ));
    let standing = Arc::new(agent_standing::NodeAgents::new(
        pods.clone(),
        namespace.clone(),
        kube_config.agent_service_account.clone(),
        revocation_watch,
    ));

    let audit = Arc::new(AuditLog::open(&config.base.audit_log)?);
    // No state directory in a cluster: a restarted replica starts from the
    // configured bundles (and FederatedTrustDomain objects) and refetches.
    let (federation_set, federation) = crate::federation::FederationSet::start(
        &config.base.federation,
        None,
        server.metrics(),
        clock,
    );
    tokio::spawn(federated_trust_domains::follow(
        Api::<FederatedTrustDomain>::all(client.clone()),
        config.base.trust_domain.clone(),
        federation_set,
        leading.clone(),
        clock,
    ));
    let join = Arc::new(token_review::ServiceAccountJoin::new(
        client.clone(),
        kube_config.agent_audience.clone(),
        namespace.clone(),
        kube_config.agent_service_account.clone(),
    ));
    let inventory = AgentInventory::new(clock);
    tokio::spawn(agent_records::keep(
        Api::<Agent>::all(client.clone()),
        Api::<Node>::all(client.clone()),
        inventory.clone(),
        leading.clone(),
        clock,
    ));
    let ledger = Arc::new(crate::ledger::SvidLedger::default());
    let issuer = IssuerService::new(IssuerParts {
        authority: authority.clone(),
        policy: channels.policy.clone(),
        federation,
        join,
        standing,
        workloads: Arc::new(pods::PodVerifier::new(
            pods.clone(),
            Some(pods::PodTokenReviewer {
                client: client.clone(),
                audience: kube_config.pod_token_audience.clone(),
            }),
        )),
        nodes: nodes.clone(),
        audit,
        metrics: server.metrics(),
        settings: IssuerSettings {
            agent_svid_ttl: config.base.agent_svid_ttl,
        },
        clock,
        observer: pod_events::PodEvents::start(
            client.clone(),
            pods.clone(),
            kube_config.election.identity.clone(),
            clock,
        ),
        inventory,
        ledger: ledger.clone(),
        node_pods: Some(pods.clone()),
    });
    // SigningAuthority objects: kubectl's view of the authorities, with
    // every replica's count summed, and their requests.
    tokio::spawn(
        signing_authorities::SigningAuthorities {
            api: Api::all(client.clone()),
            authority: authority.clone(),
            ledger: ledger.clone(),
            leading: leading.clone(),
            replica: signing_authorities::replica_name(&kube_config.election.identity),
            clock,
        }
        .keep(),
    );
    // `signet-operator authority` through `kubectl exec` into a replica;
    // each replica counts the SVIDs it signed (the metrics add them up).
    let admin = crate::authority_admin::AuthorityAdmin {
        authority: authority.clone(),
        ledger,
        clock,
        // Agents are spread over the replicas, each counting its own.
        counts_are_partial: true,
    };
    tokio::spawn(
        admin
            .clone()
            .report_metrics(server.metrics(), Duration::from_secs(5)),
    );
    tokio::spawn(async move {
        let dir = std::path::Path::new(crate::authority_admin::CLUSTER_ADMIN_DIR);
        if let Err(error) = crate::authority_admin::serve_socket(dir, admin).await {
            tracing::warn!(%error, "no authority admin socket (the chart mounts /run/signet-operator); `signet-operator authority` cannot reach this replica");
        }
    });

    let metrics = server.metrics();
    let (counted_pods, counted_nodes) = (pods.clone(), nodes.clone());
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            metrics.pods_cached.set(count(counted_pods.len()));
            metrics.nodes_cached.set(count(counted_nodes.len()));
        }
    });
    // Ready once the policy, the pods, the Nodes and the revoked agents are
    // known: before that requests would be refused (or Node subjects not
    // apply, or a revoked agent be served) for want of information.
    let readiness = server.readiness();
    let mut policy_synced = channels.synced.clone();
    let mut pods_synced = pods.synced();
    let mut nodes_synced = nodes.synced();
    tokio::spawn(async move {
        let _ = policy_synced.wait_for(|s| *s).await;
        let _ = pods_synced.wait_for(|s| *s).await;
        let _ = nodes_synced.wait_for(|s| *s).await;
        let _ = revocations_ready.wait_for(|s| *s).await;
        readiness.set(true);
        tracing::info!("policy, pods, nodes and agent revocations synced; ready");
    });

    if let Some(webhook) = &kube_config.webhook {
        let tls = signet_tls::server_config_without_client_auth(authority.issuer_resolver())
            .map_err(ServeError::from)?;
        let listener = crate::server::bind(webhook.listen).await?;
        tracing::info!(address = %webhook.listen, "admission webhook listening");
        let validator = Arc::new(admission::Validator {
            trust_domain: config.base.trust_domain.clone(),
            policy: channels.policy.clone(),
            pods: pods.clone(),
            nodes: nodes.clone(),
        });
        tokio::spawn(crate::http_server::serve(
            "admission webhook",
            listener,
            Some(Arc::new(tls)),
            validator,
            server.stopped(),
        ));
        if let Some(name) = &webhook.configuration {
            tokio::spawn(ca_bundle::keep(
                ca_bundle::WebhookConfiguration {
                    api: Api::<ValidatingWebhookConfiguration>::all(client.clone()),
                    name: name.clone(),
                },
                authority.bundle(),
                leading.clone(),
            ));
        }
    }

    if let Some(users) = &kube_config.user_issuance {
        let front_proxy = Arc::new(front_proxy::FrontProxy::default());
        tokio::spawn(front_proxy.clone().follow(Api::<ConfigMap>::namespaced(
            client.clone(),
            front_proxy::AUTHENTICATION_NAMESPACE,
        )));
        let tls = signet_tls::server_config(authority.issuer_resolver(), front_proxy.verifier())
            .map_err(ServeError::from)?;
        let listener = crate::server::bind(users.listen).await?;
        tracing::info!(address = %users.listen, "user issuance API ({}) listening", user_issuance::API_VERSION);
        tokio::spawn(crate::http_server::serve(
            "user issuance",
            listener,
            Some(Arc::new(tls)),
            Arc::new(user_issuance::UserIssuance {
                front_proxy,
                issuer: issuer.clone(),
                ttls: users.ttls,
            }),
            server.stopped(),
        ));
        if let Some(name) = &users.api_service {
            tokio::spawn(ca_bundle::keep(
                ca_bundle::ApiServiceRegistration {
                    api: Api::<APIService>::all(client.clone()),
                    name: name.clone(),
                },
                authority.bundle(),
                leading.clone(),
            ));
        }
    }

    if let Some(oidc) = &config.oidc {
        server.spawn_oidc(oidc, authority.bundle()).await?;
    }
    if let Some(endpoint) = &config.base.bundle_endpoint {
        server.spawn_bundle_endpoint(endpoint, &authority).await?;
    }

    let result = server
        .serve(
            listener,
            &config.base,
            authority,
            channels.policy,
            issuer,
            shutdown,
        )
        .await;
    let _ = stop_election.send(true);
    let _ = election.await;
    Ok(result?)
}
