//! `kubectl-signet`: the same tool as `signet`, found by kubectl on `PATH`
//! so that `kubectl signet ...` runs it.

fn main() -> std::process::ExitCode {
    signet_cli::command::main("kubectl signet")
}
