//! signet-operator: policy reconciler, certificate authority and issuer API.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use signet_operator::cluster::ClusterConfig;
use signet_operator::cluster::config::KubernetesOverrides;
use signet_operator::config::{FileConfig, Overrides, StandaloneConfig};
use signet_operator::standalone::join_tokens::{generate_token, hash_token, validate_join_name};

#[derive(Parser)]
#[command(
    name = "signet-operator",
    version,
    about = "Signet policy, CA and issuer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the issuer on one machine, with policy from a directory.
    Standalone {
        #[command(flatten)]
        common: CommonArgs,
        /// Directory of WorkloadIdentity and Role YAML, reloaded on change.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
        /// Directory for the CA keyset, spent tokens and bundle files.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// A single-use join token read from a file, as NAME=PATH (repeatable).
        #[arg(long = "join-token-file", value_parser = parse_name_path)]
        join_token_files: Vec<(String, PathBuf)>,
    },
    /// Run in a Kubernetes cluster: policy from WorkloadIdentity and Role
    /// objects, the CA in a Secret, leader election on a Lease, agents
    /// joining with projected service-account tokens.
    Kubernetes {
        /// The file is the standalone format's shared keys plus a
        /// `kubernetes` section.
        #[command(flatten)]
        common: CommonArgs,
        /// The operator's namespace (Secret, ConfigMap, Lease, agents).
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: Option<String>,
        /// This replica's name in the leader Lease.
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// How long a leader's Lease lasts without renewal (e.g. 15s).
        #[arg(long, value_parser = humantime::parse_duration)]
        lease_duration: Option<std::time::Duration>,
    },
    /// Join token helpers.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Withdraw trust from an agent, or restore it.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Show and drive the trust domain's signing authorities (X.509 CAs
    /// and JWT keys): rotate now, distrust a key, remove it.
    Authority {
        #[command(subcommand)]
        action: AuthorityCommand,
        #[command(flatten)]
        target: AuthorityTarget,
        /// Print the answer as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuthorityCommand {
    /// Each authority: state, tainted, notAfter, live SVIDs it signed.
    Show,
    /// Make a successor now and publish it in the bundle (it signs once
    /// activated, by `activate` or by the schedule).
    Prepare { kind: KindArg },
    /// The prepared successor signs from now on; the active one retires.
    /// Give peers time to fetch the bundle with the successor first.
    Activate { kind: KindArg },
    /// Distrust a retired authority: agents re-issue every SVID it signed
    /// (jittered), and `show` counts down its live SVIDs.
    Taint { kind: KindArg, id: String },
    /// Remove a tainted authority from the bundle: SVIDs it signed stop
    /// verifying. Refused while live SVIDs depend on it, unless --force.
    Revoke {
        kind: KindArg,
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    X509,
    Jwt,
}

impl From<KindArg> for signet_identity::AuthorityKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::X509 => Self::X509,
            KindArg::Jwt => Self::Jwt,
        }
    }
}

/// Which operator: a standalone state directory (its admin socket).
#[derive(clap::Args)]
struct AuthorityTarget {
    /// The standalone operator's state directory.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// The standalone operator's configuration file (for its state_dir).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Revoke an agent: its renewals, joins and signing requests are
    /// refused and its policy stream closes within seconds.
    Revoke {
        /// The agent's name: its join name, or in a cluster its node.
        name: String,
        /// Why (kept with the revocation and shown to the agent).
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        target: RevocationTarget,
    },
    /// Take an agent off the revocation list (it must join again if its
    /// SVID expired meanwhile).
    Unrevoke {
        name: String,
        #[command(flatten)]
        target: RevocationTarget,
    },
    /// Print the revocation list as JSON.
    Revoked {
        #[command(flatten)]
        target: RevocationTarget,
    },
}

/// Where the revocation list is: a standalone state directory, or with
/// `--namespace` the cluster's ConfigMap (through the kubeconfig).
#[derive(clap::Args)]
struct RevocationTarget {
    /// The standalone operator's state directory.
    #[arg(long, conflicts_with = "namespace")]
    state_dir: Option<PathBuf>,
    /// The standalone operator's configuration file (for its state_dir).
    #[arg(long, conflicts_with = "namespace")]
    config: Option<PathBuf>,
    /// The operator's namespace in a cluster.
    #[arg(long)]
    namespace: Option<String>,
}

/// Flags both run modes take.
#[derive(clap::Args)]
struct CommonArgs {
    /// YAML configuration file; flags override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, env = "SIGNET_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Address of the issuer gRPC API.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Audit log file, or `-` for standard output (in a cluster, the default).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl CommonArgs {
    /// The config file (or defaults) and the overrides these flags make.
    fn resolve(self) -> Result<(FileConfig, Overrides), String> {
        let file = self
            .config
            .as_deref()
            .map(FileConfig::read)
            .transpose()
            .map_err(|error| error.to_string())?
            .unwrap_or_default();
        let overrides = Overrides {
            trust_domain: self.trust_domain,
            listen: self.listen,
            audit_log: self.audit_log,
            metrics_listen: self.metrics_listen,
            ..Overrides::default()
        };
        Ok((file, overrides))
    }
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random token and the configuration entry holding its hash.
    Generate {
        /// The agent's join name (becomes agent.name).
        #[arg(long)]
        name: String,
        /// Let the token join any number of agents.
        #[arg(long)]
        reusable: bool,
        /// Write the token to this file (0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_name_path(value: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=PATH"))?;
    validate_join_name(name).map_err(|e| format!("join name {name:?} {e}"))?;
    Ok((name.to_owned(), PathBuf::from(path)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Standalone {
            common,
            policy_dir,
            state_dir,
            join_token_files,
        } => {
            let (file, overrides) = match common.resolve() {
                Ok(resolved) => resolved,
                Err(error) => return fail(&error),
            };
            let overrides = Overrides {
                policy_dir,
                state_dir,
                join_token_files,
                ..overrides
            };
            match StandaloneConfig::resolve(file, overrides) {
                Ok(config) => launch(
                    config.log.clone(),
                    signet_operator::standalone::run(config, signet_runtime::shutdown::signal()),
                ),
                Err(error) => fail(&error.to_string()),
            }
        }
        Command::Kubernetes {
            common,
            namespace,
            identity,
            lease_duration,
        } => {
            let (file, overrides) = match common.resolve() {
                Ok(resolved) => resolved,
                Err(error) => return fail(&error),
            };
            let kube = KubernetesOverrides {
                namespace,
                identity,
                lease_duration,
            };
            match ClusterConfig::resolve(file, overrides, kube) {
                Ok(config) => launch(
                    config.base.log.clone(),
                    signet_operator::cluster::run(config, signet_runtime::shutdown::signal()),
                ),
                Err(error) => fail(&error.to_string()),
            }
        }
        Command::Token(TokenCommand::Generate {
            name,
            reusable,
            out,
        }) => token_generate(&name, reusable, out),
        Command::Agent(command) => agent_command(command),
        Command::Authority {
            action,
            target,
            json,
        } => authority_command(action, target, json),
    }
}

fn authority_command(action: AuthorityCommand, target: AuthorityTarget, json: bool) -> ExitCode {
    use signet_operator::authority_admin::{AdminRequest, call_socket};
    let request = match action {
        AuthorityCommand::Show => AdminRequest::Show,
        AuthorityCommand::Prepare { kind } => AdminRequest::Prepare { kind: kind.into() },
        AuthorityCommand::Activate { kind } => AdminRequest::Activate { kind: kind.into() },
        AuthorityCommand::Taint { kind, id } => AdminRequest::Taint {
            kind: kind.into(),
            id,
        },
        AuthorityCommand::Revoke { kind, id, force } => AdminRequest::Revoke {
            kind: kind.into(),
            id,
            force,
        },
    };
    let state_dir = match standalone_state_dir(target.state_dir, target.config) {
        Ok(dir) => dir,
        Err(error) => return fail(&error),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.to_string()),
    };
    let response = match runtime.block_on(call_socket(&state_dir, &request)) {
        Ok(response) => response,
        Err(error) => {
            return fail(&format!(
                "{error} (is the standalone operator of {} running, and are you its user or root?)",
                state_dir.display()
            ));
        }
    };
    let text = if json {
        serde_json::to_string_pretty(&response).unwrap_or_default()
    } else {
        authority_table(&response)
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{text}") {
        return fail(&format!("writing to stdout: {error}"));
    }
    match response.error {
        Some(error) => fail(&error),
        None => ExitCode::SUCCESS,
    }
}

fn authority_table(response: &signet_operator::authority_admin::AdminResponse) -> String {
    let mut out = String::new();
    for event in &response.events {
        out.push_str(event);
        out.push('\n');
    }
    out.push_str(&format!(
        "{:<5} {:<40} {:<9} {:<8} {:<8} {:<21} {:>10}\n",
        "KIND", "ID", "STATE", "TAINTED", "UPSTREAM", "NOT AFTER", "LIVE SVIDS"
    ));
    for a in &response.authorities {
        out.push_str(&format!(
            "{:<5} {:<40} {:<9} {:<8} {:<8} {:<21} {:>10}\n",
            a.kind.to_string(),
            a.id,
            a.state.to_string(),
            if a.tainted { "yes" } else { "no" },
            match a.upstream_signed {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            a.not_after,
            a.live_svids
        ));
    }
    if response.counts_incomplete {
        out.push_str("(live SVID counts are incomplete: the ledger was full)\n");
    }
    out.trim_end().to_owned()
}

/// The state directory of a standalone operator: given, from its
/// configuration file, or the default.
fn standalone_state_dir(
    state_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<PathBuf, String> {
    match (state_dir, config) {
        (Some(dir), _) => Ok(dir),
        (None, Some(config)) => FileConfig::read(&config)
            .map(|file| {
                file.state_dir
                    .unwrap_or_else(|| PathBuf::from(signet_operator::config::DEFAULT_STATE_DIR))
            })
            .map_err(|e| e.to_string()),
        (None, None) => Ok(PathBuf::from(signet_operator::config::DEFAULT_STATE_DIR)),
    }
}

enum RevocationChange {
    Revoke { name: String, reason: String },
    Unrevoke { name: String },
    Show,
}

fn agent_command(command: AgentCommand) -> ExitCode {
    let (change, target) = match command {
        AgentCommand::Revoke {
            name,
            reason,
            target,
        } => (RevocationChange::Revoke { name, reason }, target),
        AgentCommand::Unrevoke { name, target } => (RevocationChange::Unrevoke { name }, target),
        AgentCommand::Revoked { target } => (RevocationChange::Show, target),
    };
    let result = match target.namespace {
        Some(namespace) => cluster_revocation(&namespace, change),
        None => standalone_state_dir(target.state_dir, target.config)
            .and_then(|dir| standalone_revocation(&dir, change)),
    };
    match result {
        Ok(message) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{message}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&format!("writing to stdout: {error}")),
            }
        }
        Err(error) => fail(&error),
    }
}

fn standalone_revocation(
    state_dir: &std::path::Path,
    change: RevocationChange,
) -> Result<String, String> {
    use signet_operator::standalone::agent_standing::{
        REVOKED_FILE, read_revocations, revoke, unrevoke,
    };
    if !state_dir.is_dir() {
        return Err(format!(
            "{} is not a state directory (use --state-dir or --config)",
            state_dir.display()
        ));
    }
    match change {
        RevocationChange::Revoke { name, reason } => {
            validate_join_name(&name).map_err(|e| format!("agent name {name:?} {e}"))?;
            let added = revoke(
                state_dir,
                &name,
                &reason,
                signet_runtime::clock::Clock::new().now(),
            )
            .map_err(|e| e.to_string())?;
            Ok(if added {
                format!("agent {name:?} revoked")
            } else {
                format!("agent {name:?} was already revoked")
            })
        }
        RevocationChange::Unrevoke { name } => {
            let removed = unrevoke(state_dir, &name).map_err(|e| e.to_string())?;
            Ok(if removed {
                format!("agent {name:?} is no longer revoked")
            } else {
                format!("agent {name:?} was not revoked")
            })
        }
        RevocationChange::Show => {
            let list =
                read_revocations(&state_dir.join(REVOKED_FILE)).map_err(|e| e.to_string())?;
            serde_json::to_string_pretty(&list).map_err(|e| e.to_string())
        }
    }
}

fn cluster_revocation(namespace: &str, change: RevocationChange) -> Result<String, String> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use signet_operator::cluster::agent_standing::REVOCATIONS_CONFIG_MAP;
    use signet_operator::revocation::{Revocation, RevocationList};

    signet_tls::install_default_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("Kubernetes client: {e}"))?;
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let current = api
            .get_opt(REVOCATIONS_CONFIG_MAP)
            .await
            .map_err(|e| format!("reading {namespace}/{REVOCATIONS_CONFIG_MAP}: {e}"))?;
        let data = current
            .as_ref()
            .and_then(|map| map.data.clone())
            .unwrap_or_default();
        match change {
            RevocationChange::Show => {
                let list = RevocationList::from_config_map_data(&data);
                serde_json::to_string_pretty(&list).map_err(|e| e.to_string())
            }
            RevocationChange::Revoke { name, reason } => {
                if data.contains_key(&name) {
                    return Ok(format!("agent {name:?} was already revoked"));
                }
                let revocation = Revocation {
                    revoked_at_unix: signet_runtime::clock::Clock::new()
                        .now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                    reason,
                };
                let value = serde_json::to_string(&revocation).map_err(|e| e.to_string())?;
                if current.is_none() {
                    let map = ConfigMap {
                        metadata: kube::api::ObjectMeta {
                            name: Some(REVOCATIONS_CONFIG_MAP.into()),
                            ..Default::default()
                        },
                        data: Some([(name.clone(), value)].into()),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &map)
                        .await
                        .map_err(|e| format!("creating {REVOCATIONS_CONFIG_MAP}: {e}"))?;
                } else {
                    let patch = serde_json::json!({"data": {name.clone(): value}});
                    api.patch(
                        REVOCATIONS_CONFIG_MAP,
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map_err(|e| format!("updating {REVOCATIONS_CONFIG_MAP}: {e}"))?;
                }
                Ok(format!("agent {name:?} revoked"))
            }
            RevocationChange::Unrevoke { name } => {
                if !data.contains_key(&name) {
                    return Ok(format!("agent {name:?} was not revoked"));
                }
                let patch = serde_json::json!({"data": {name.clone(): null}});
                api.patch(
                    REVOCATIONS_CONFIG_MAP,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| format!("updating {REVOCATIONS_CONFIG_MAP}: {e}"))?;
                Ok(format!("agent {name:?} is no longer revoked"))
            }
        }
    })
}

/// Starts logging and the runtime, and runs `service` to completion.
fn launch<E: std::fmt::Display>(
    log: signet_runtime::logging::LogConfig,
    service: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    signet_runtime::logging::init(log.format, &log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("starting the runtime: {error}")),
    };
    match runtime.block_on(service) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "signet-operator failed");
            fail(&error.to_string())
        }
    }
}

fn token_generate(name: &str, reusable: bool, out: Option<PathBuf>) -> ExitCode {
    if let Err(error) = validate_join_name(name) {
        return fail(&format!("join name {name:?} {error}"));
    }
    let token = match generate_token() {
        Ok(token) => token,
        Err(_) => return fail("the system random number generator failed"),
    };
    let entry = format!(
        "- {{name: {name}, sha256: {}{}}}\n",
        hash_token(&token),
        if reusable { ", reusable: true" } else { "" }
    );
    let mut stdout = std::io::stdout().lock();
    let written = match out {
        Some(path) => {
            if let Err(error) =
                signet_runtime::files::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
            {
                return fail(&format!("writing {}: {error}", path.display()));
            }
            write!(
                stdout,
                "# token written to {}\n# join_tokens entry:\n{entry}",
                path.display()
            )
        }
        None => write!(stdout, "token: {token}\n# join_tokens entry:\n{entry}"),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&format!("writing to stdout: {error}")),
    }
}

#[allow(clippy::print_stderr)] // the CLI's error channel
fn fail(message: &str) -> ExitCode {
    eprintln!("signet-operator: {message}");
    ExitCode::FAILURE
}
