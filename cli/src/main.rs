//! `signet`: explain identities, test policy.

fn main() -> std::process::ExitCode {
    signet_cli::command::main("signet")
}
