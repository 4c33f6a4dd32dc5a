//! signet-csi binary: serves CSI Identity and Node on `--endpoint`.

use std::process::ExitCode;

use clap::Parser;
use signet_csi::config::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let (socket, config) = match args.validate() {
        Ok(validated) => validated,
        Err(error) => return fail(&error.to_string()),
    };
    signet_runtime::logging::init(args.log_format, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("starting the runtime: {error}")),
    };
    match runtime.block_on(signet_csi::server::serve(
        &socket,
        config,
        signet_runtime::shutdown::signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "signet-csi failed");
            fail(&error.to_string())
        }
    }
}

#[allow(clippy::print_stderr)] // the CLI's error channel
fn fail(message: &str) -> ExitCode {
    eprintln!("signet-csi: {message}");
    ExitCode::FAILURE
}
