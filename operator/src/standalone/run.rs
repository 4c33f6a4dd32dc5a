//! `signet-operator standalone`: the issuer on one machine, with policy from
//! a directory and the CA keyset in a state directory.
//!
//! Files it keeps in `state_dir` (0700):
//! - `ca-keyset.json` (0600): every CA and JWT key, written atomically before
//!   any of them is used;
//! - `join-tokens-spent.json` (0600): single-use tokens already redeemed;
//! - `agents-revoked.json` (0600): agents revoked with `signet-operator
//!   agent revoke`, followed while running;
//! - `agents.json` (0600): the agent inventory (`signet agents list`);
//! - `bundle.pem`, `bundle.spiffe.json`, `jwks.json` (0644): the trust bundle
//!   for agents to bootstrap from and for tools, rewritten on every change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use signet_runtime::clock::Clock;
use tokio::sync::watch;

use crate::agents::NoNodes;
use crate::audit::AuditLog;
use crate::authority_admin::{AuthorityAdmin, serve_socket};
use crate::ca::{Authority, PublishedBundle};
use crate::config::StandaloneConfig;
use crate::inventory::AgentInventory;
use crate::issuer::service::{IssuerParts, IssuerService, IssuerSettings};
use crate::issuer::workload::AgentTestimony;
use crate::ledger::SvidLedger;
use crate::policy_state::{PolicyState, next_version};
use crate::server::{IssuerServer, ServeError};
use crate::standalone::agent_file;
use crate::standalone::agent_standing::{
    JoinedAgents, REVOKED_FILE, follow_revocations, read_revocations,
};
use crate::standalone::join_tokens::JoinTokens;
use crate::standalone::keyset_file::FileKeysetStore;
use crate::standalone::policy_dir::DirectorySource;
use crate::upstream::UpstreamFollower;

/// How often the rotation schedule is checked.
const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// How often the per-authority metrics are recomputed.
const AUTHORITY_METRICS_INTERVAL: Duration = Duration::from_secs(5);

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
    #[error("agent revocations: {0}")]
    Revocations(#[from] crate::standalone::agent_standing::RevocationFileError),
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
    let upstream = config.upstream.clone().map(UpstreamFollower::from_now);
    tokio::spawn(
        authority
            .clone()
            .run(clock, ROTATION_CHECK_INTERVAL, upstream),
    );

    let join = Arc::new(JoinTokens::load(&config.join_tokens, &config.state_dir)?);
    let revoked_path = config.state_dir.join(REVOKED_FILE);
    let (revocations, revocation_watch) =
        watch::channel(Arc::new(read_revocations(&revoked_path)?));
    tokio::spawn(follow_revocations(revoked_path, revocations));
    let standing = Arc::new(JoinedAgents::new(
        config.join_tokens.iter().map(|token| token.name.clone()),
        revocation_watch,
    ));
    let audit = Arc::new(AuditLog::open(&config.audit_log)?);

    let (source, policy) = DirectorySource::load(
        config.policy_dir.clone(),
        config.trust_domain.clone(),
        next_version(0, clock.now()),
    );
    tokio::spawn(source.run());
    tokio::spawn(warn_about_node_subjects(policy.clone()));

    let inventory = AgentInventory::new(clock);
    tokio::spawn(agent_file::keep(
        inventory.clone(),
        config.state_dir.clone(),
    ));

    let ledger = Arc::new(SvidLedger::default());
    let issuer = IssuerService::new(IssuerParts {
        authority: authority.clone(),
        policy: policy.clone(),
        federation: crate::federation::start(
            &config.federation,
            Some(config.state_dir.clone()),
            server.metrics(),
            clock,
        ),
        join,
        standing,
        workloads: Arc::new(AgentTestimony),
        nodes: Arc::new(NoNodes),
        audit,
        metrics: server.metrics(),
        settings: IssuerSettings {
            agent_svid_ttl: config.agent_svid_ttl,
        },
        clock,
        observer: Arc::new(crate::issuer::signing::NoObserver),
        inventory,
        ledger: ledger.clone(),
        node_pods: None,
    });
    let admin = AuthorityAdmin {
        authority: authority.clone(),
        ledger,
        clock,
        counts_are_partial: false,
    };
    tokio::spawn(
        admin
            .clone()
            .report_metrics(server.metrics(), AUTHORITY_METRICS_INTERVAL),
    );
    let state_dir = config.state_dir.clone();
    tokio::spawn(async move {
        if let Err(error) = serve_socket(&state_dir, admin).await {
            tracing::error!(%error, "the authority admin socket failed; `signet-operator authority` cannot reach this operator");
        }
    });
    if let Some(oidc) = &config.oidc {
        server.spawn_oidc(oidc, authority.bundle()).await?;
    }
    if let Some(endpoint) = &config.bundle_endpoint {
        server.spawn_bundle_endpoint(endpoint, &authority).await?;
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

/// The Roles with Node subjects in `state` when they differ from the last
/// ones warned about (`warned` is updated); `None` when there is nothing
/// new to say.
fn node_subjects_to_warn_about(
    warned: &mut BTreeSet<String>,
    state: &PolicyState,
) -> Option<Vec<String>> {
    let roles: BTreeSet<String> = state
        .snapshot
        .roles_with_node_subjects()
        .map(str::to_owned)
        .collect();
    if roles == *warned {
        return None;
    }
    *warned = roles;
    (!warned.is_empty()).then(|| warned.iter().cloned().collect())
}

/// Says so, each time the set changes, when Roles have Node subjects: they
/// can never apply here, which their author may not expect.
async fn warn_about_node_subjects(mut policy: watch::Receiver<Arc<PolicyState>>) {
    let mut warned = BTreeSet::new();
    loop {
        let roles = node_subjects_to_warn_about(&mut warned, &policy.borrow_and_update());
        if let Some(roles) = roles {
            tracing::warn!(
                ?roles,
                "Node subjects never apply in standalone mode: agents have no Node"
            );
        }
        if policy.changed().await.is_err() {
            return;
        }
    }
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

#[cfg(test)]
mod tests {
    use signet_identity::TrustDomain;
    use signet_policy::PolicyDocument;

    use super::*;

    fn compiled(yaml: &str) -> PolicyState {
        let objects: Vec<_> = signet_policy::parse_yaml_documents(yaml)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        PolicyState::compile(
            1,
            &TrustDomain::new("example.org").unwrap(),
            &PolicyDocument::from_objects(objects),
        )
    }

    fn role(name: &str, subject: &str) -> String {
        format!(
            "apiVersion: signet.dev/v1alpha1\nkind: Role\nmetadata: {{name: {name}}}\nspec:\n  subjects: [{subject}]\n  allow: {{workloadIdentityLabels: {{app: [web]}}}}\n---\n"
        )
    }

    #[test]
    fn node_subjects_are_warned_about_when_the_set_changes() {
        let agents = role("agents", "{kind: Agent, name: \"*\"}");
        let pci = role("pci", "{kind: Node, selector: {matchLabels: {pool: pci}}}");
        let dmz = role("dmz", "{kind: Node, selector: {matchLabels: {pool: dmz}}}");
        let mut warned = BTreeSet::new();
        assert_eq!(
            node_subjects_to_warn_about(&mut warned, &compiled(&agents)),
            None
        );
        let with_pci = compiled(&format!("{agents}{pci}"));
        assert_eq!(
            node_subjects_to_warn_about(&mut warned, &with_pci),
            Some(vec!["pci".to_owned()])
        );
        assert_eq!(
            node_subjects_to_warn_about(&mut warned, &with_pci),
            None,
            "said once per set"
        );
        assert_eq!(
            node_subjects_to_warn_about(&mut warned, &compiled(&format!("{pci}{dmz}"))),
            Some(vec!["dmz".to_owned(), "pci".to_owned()])
        );
        assert_eq!(
            node_subjects_to_warn_about(&mut warned, &compiled(&agents)),
            None
        );
        assert_eq!(
            node_subjects_to_warn_about(&mut warned, &compiled(&pci)),
            Some(vec!["pci".to_owned()]),
            "again after it went away"
        );
    }
}
