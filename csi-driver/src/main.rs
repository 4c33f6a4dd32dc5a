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
    let registration = args.registration(&socket);
    let result = runtime.block_on(async move {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            signet_runtime::shutdown::signal().await;
            let _ = stop.send(true);
        });
        let until_stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stopped| *stopped).await;
        };
        let registrar = async {
            match registration {
                Some((path, info)) => {
                    signet_csi::registration::serve(path, info, until_stopped(stopping.clone()))
                        .await
                        .map_err(|e| e.to_string())
                }
                None => Ok(()),
            }
        };
        let csi = async {
            signet_csi::server::serve(&socket, config, until_stopped(stopping.clone()))
                .await
                .map_err(|e| e.to_string())
        };
        // A driver the kubelet cannot find is useless: a registration
        // failure stops the process rather than leaving it half-working.
        tokio::try_join!(csi, registrar).map(|_| ())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "signet-csi failed");
            fail(&error)
        }
    }
}

#[allow(clippy::print_stderr)] // the CLI's error channel
fn fail(message: &str) -> ExitCode {
    eprintln!("signet-csi: {message}");
    ExitCode::FAILURE
}
