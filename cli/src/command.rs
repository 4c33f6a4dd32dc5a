//! The command line of `signet` and `kubectl-signet` (one tool, two names).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use signet_identity::TrustDomain;

use crate::agents::AgentsCommand;
use crate::args::{Output, trust_domain, write_json};
use crate::cluster::{PodArgs, explain_pod};
use crate::explain::{JsonExplanation, write_text};
use crate::issue::IssueCommand;
use crate::load::load;
use crate::policy_test::run;

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "Signet: explain identities, test policy, list agents, issue SVIDs for people"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Why a workload gets (or does not get) each WorkloadIdentity.
    Explain(Box<ExplainArgs>),
    /// Policy tooling for CI and GitOps.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The agent inventory: every agent, its node, join, renewal, last
    /// sighting, SVID expiry, version and workloads.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// An SVID for you or your pipeline, through the API server with your
    /// kubeconfig's credentials; Roles with User or Group subjects decide
    /// which identities you may hold.
    #[command(subcommand)]
    Issue(IssueCommand),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ExplainArgs {
    #[command(subcommand)]
    target: Option<ExplainTarget>,
    /// The workload's attributes: a YAML or JSON map of dotted names
    /// (workload.*, agent.*, node.*), as in the README's attribute reference.
    #[arg(long)]
    attributes: Option<PathBuf>,
    /// Policy files or directories (WorkloadIdentity and Role YAML).
    #[arg(long)]
    policy: Vec<PathBuf>,
    #[arg(long, env = "SIGNET_TRUST_DOMAIN", default_value = "example.org")]
    trust_domain: String,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Subcommand)]
enum ExplainTarget {
    /// A pod in the cluster: the issuer's decision from the API server's
    /// Pod, Node, WorkloadIdentities and Roles (your kubeconfig's access).
    Pod(PodArgs),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Checks PolicyTest fixtures against the policy beside them; exits 1
    /// with a diff when an identity would be added, removed or altered.
    Test {
        /// Files or directories holding policy objects and PolicyTest documents.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Trust domain for tests that name none.
        #[arg(long, env = "SIGNET_TRUST_DOMAIN", default_value = "example.org")]
        trust_domain: String,
    },
}

/// Runs the tool; `name` is how the user called it (`signet`, or
/// `kubectl signet` for the plugin), for help and errors.
pub fn main(name: &'static str) -> ExitCode {
    let matches = Cli::command().name(name).bin_name(name).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let mut out = std::io::stdout().lock();
    let result = match cli.command {
        Command::Explain(args) => match &args.target {
            Some(ExplainTarget::Pod(pod)) => explain_pod(pod, &mut out),
            None => explain(*args, &mut out),
        },
        Command::Policy(PolicyCommand::Test {
            paths,
            trust_domain,
        }) => policy_test(&paths, &trust_domain, &mut out),
        Command::Agents(command) => crate::agents::run(&command, &mut out),
        Command::Issue(command) => crate::issue::run(&command, &mut out),
    };
    match result {
        Ok(code) => code,
        Err(message) => fail(name, &message),
    }
}

fn explain(args: ExplainArgs, out: &mut dyn Write) -> Result<ExitCode, String> {
    let Some(attributes) = &args.attributes else {
        return Err(
            "explain needs --attributes FILE and --policy PATH, or: explain pod NAMESPACE/NAME"
                .into(),
        );
    };
    if args.policy.is_empty() {
        return Err("explain --attributes needs --policy PATH (files or directories)".into());
    }
    let td = trust_domain(&args.trust_domain)?;
    let loaded = load(&args.policy).map_err(|e| e.to_string())?;
    let (snapshot, reports) = loaded.compile(&td);
    let attributes = crate::attributes::read(attributes).map_err(|e| e.to_string())?;
    let explanation = snapshot.explain_workload(&attributes);
    let written = match args.output {
        Output::Text => crate::explain::write_not_in_force(out, &reports)
            .and_then(|()| write_text(out, &explanation)),
        Output::Json => write_json(out, &JsonExplanation::new(&explanation)),
    };
    written.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn policy_test(
    paths: &[PathBuf],
    default_td: &str,
    out: &mut dyn Write,
) -> Result<ExitCode, String> {
    let default_td = trust_domain(default_td)?;
    let loaded = load(paths).map_err(|e| e.to_string())?;
    if loaded.tests.is_empty() {
        return Err("no PolicyTest documents found".into());
    }
    let mut broken = Vec::new();
    let mut snapshot_for = |td: &TrustDomain| {
        let (snapshot, reports) = loaded.compile(td);
        for report in reports {
            if let Err(error) = report.result {
                broken.push(format!("{} {}: {error}", report.kind.as_str(), report.name));
            }
        }
        snapshot
    };
    let mut results = Vec::new();
    for (file, test) in &loaded.tests {
        results.extend(run(file, test, &mut snapshot_for, &default_td).map_err(|e| e.to_string())?);
    }
    broken.sort();
    broken.dedup();
    let write = |out: &mut dyn Write| -> std::io::Result<bool> {
        for problem in &broken {
            writeln!(out, "POLICY ERROR {problem}")?;
        }
        let mut failed = 0;
        for result in &results {
            if result.differences.is_empty() {
                writeln!(out, "ok   {} / {}", result.test, result.case)?;
            } else {
                failed += 1;
                writeln!(
                    out,
                    "FAIL {} / {} ({})",
                    result.test,
                    result.case,
                    result.file.display()
                )?;
                for line in &result.differences {
                    writeln!(out, "     {line}")?;
                }
            }
        }
        writeln!(
            out,
            "\n{} passed, {failed} failed{}",
            results.len() - failed,
            if broken.is_empty() {
                String::new()
            } else {
                format!(", {} policy objects not in force", broken.len())
            }
        )?;
        Ok(failed == 0 && broken.is_empty())
    };
    match write(out) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE),
        Err(e) => Err(e.to_string()),
    }
}

#[allow(clippy::print_stderr)] // the CLI's error channel
fn fail(name: &str, message: &str) -> ExitCode {
    eprintln!("{name}: {message}");
    ExitCode::from(2)
}
