//! Writes the CRD manifests for `WorkloadIdentity` and `Role`, and the
//! attribute reference in the README.
//!
//! `crdgen <dir>` writes one file per CRD into `<dir>` (what `make crds`
//! runs with `crds`); `crdgen` alone prints both to stdout as one
//! multi-document YAML stream, for piping into `kubectl apply -f -`;
//! `crdgen --readme README.md` regenerates the attribute table between its
//! markers from the schema in `attributes.rs`.

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
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(std::ffi::OsStr::new("--readme")) {
        let path = std::path::PathBuf::from(args.next().ok_or("--readme needs a path")?);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let updated = signet_policy::attributes::with_reference(&text)
            .ok_or_else(|| format!("{} lacks the attribute reference markers", path.display()))?;
        std::fs::write(&path, updated).map_err(|e| format!("writing {}: {e}", path.display()))?;
        return Ok(());
    }
    match first {
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
