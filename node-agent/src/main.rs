//! signet-agent binary: `run --config FILE` starts the agent; `api ...`
//! talks to a Workload API endpoint.

use std::process::ExitCode;

use clap::Parser;
use signet_agent::cli::{Cli, Command};
use signet_agent::config::AgentConfig;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("starting the runtime: {error}")),
    };
    match cli.command {
        Command::Run { config } => {
            let config = match AgentConfig::load(&config) {
                Ok(config) => config,
                Err(error) => return fail(&error.to_string()),
            };
            signet_runtime::logging::init(config.log.format, &config.log.level);
            match runtime.block_on(signet_agent::agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(%error, "signet-agent failed");
                    fail(&error.to_string())
                }
            }
        }
        Command::Api(command) => {
            let mut stdout = std::io::stdout().lock();
            match runtime.block_on(signet_agent::cli::run_api(command, &mut stdout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(&error.to_string()),
            }
        }
    }
}

#[allow(clippy::print_stderr)] // the CLI's error channel
fn fail(message: &str) -> ExitCode {
    eprintln!("signet-agent: {message}");
    ExitCode::FAILURE
}
