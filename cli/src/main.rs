//! `signet` (also `kubectl-signet`, for `kubectl signet ...`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use signet_cli::explain::{JsonExplanation, write_text};
use signet_cli::load::load;
use signet_cli::policy_test::run;
use signet_identity::TrustDomain;

#[derive(Parser)]
#[command(
    name = "signet",
    version,
    about = "Signet: explain identities, test policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Why a workload gets (or does not get) each WorkloadIdentity.
    Explain(ExplainArgs),
    /// Policy tooling for CI and GitOps.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Args)]
struct ExplainArgs {
    /// The workload's attributes: a YAML or JSON map of dotted names
    /// (workload.*, agent.*, node.*), as in the README's attribute reference.
    #[arg(long)]
    attributes: PathBuf,
    /// Policy files or directories (WorkloadIdentity and Role YAML).
    #[arg(long, required = true)]
    policy: Vec<PathBuf>,
    #[arg(long, env = "SIGNET_TRUST_DOMAIN", default_value = "example.org")]
    trust_domain: String,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    output: Output,
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

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result = match cli.command {
        Command::Explain(args) => explain(args, &mut out),
        Command::Policy(PolicyCommand::Test {
            paths,
            trust_domain,
        }) => policy_test(&paths, &trust_domain, &mut out),
    };
    match result {
        Ok(code) => code,
        Err(message) => fail(&message),
    }
}

fn trust_domain(name: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(name).map_err(|e| format!("trust domain {name:?}: {e}"))
}

fn explain(args: ExplainArgs, out: &mut dyn Write) -> Result<ExitCode, String> {
    let td = trust_domain(&args.trust_domain)?;
    let loaded = load(&args.policy).map_err(|e| e.to_string())?;
    let (snapshot, reports) = loaded.compile(&td);
    let attributes = signet_cli::attributes::read(&args.attributes).map_err(|e| e.to_string())?;
    let explanation = snapshot.explain_workload(&attributes);
    let written = match args.output {
        Output::Text => {
            for report in &reports {
                if let Err(error) = &report.result {
                    writeln!(
                        out,
                        "not in force: {} {}: {error}",
                        report.kind.as_str(),
                        report.name
                    )
                    .map_err(|e| e.to_string())?;
                }
            }
            write_text(out, &explanation)
        }
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &JsonExplanation::new(&explanation))
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(out))
        }
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
fn fail(message: &str) -> ExitCode {
    eprintln!("signet: {message}");
    ExitCode::from(2)
}
