//! Writes the CRD manifests for `WorkloadIdentity` and `Role`.
//!
//! `crdgen <dir>` writes one file per CRD into `<dir>` (what `make crds`
//! runs with `crds`); `crdgen` alone prints both to stdout as one
//! multi-document YAML stream, for piping into `kubectl apply -f -`.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Reporting to the terminal is this binary's job.
            let _ = writeln!(std::io::stderr(), "crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let files = signet_policy::crd::crd_files()?;
    match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            for f in files {
                let path = dir.join(&f.file_name);
                std::fs::write(&path, f.contents)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            for f in files {
                write!(out, "---\n{}", f.contents)?;
            }
        }
    }
    Ok(())
}
