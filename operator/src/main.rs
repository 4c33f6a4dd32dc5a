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
    }
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
