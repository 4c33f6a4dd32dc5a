//! `signet issue x509|jwt`: SVIDs for people and pipelines, through the
//! API server with the caller's own kubeconfig credentials (any kind: client
//! certificate, token, OIDC, exec plugin). The key is generated here and
//! never leaves this process except into the file the user asked for.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use kube::Client;
use serde::de::DeserializeOwned;
use signet_identity::{KeyType, PrivateKey};
use signet_operator::cluster::user_issuance::{
    API_VERSION, JWT_KIND, JWT_RESOURCE, JwtSvidRequest, JwtSvidRequestSpec, X509_KIND,
    X509_RESOURCE, X509SvidRequest, X509SvidRequestSpec, resource_path,
};
use signet_runtime::files::write_atomic;

use crate::args::{Output, write_json};
use crate::cluster::{kube_config, runtime};

/// File names spiffe-helper uses by default, so tools configured for it
/// find these too.
pub const CERTIFICATE_FILE: &str = "svid.pem";
pub const KEY_FILE: &str = "svid_key.pem";
pub const BUNDLE_FILE: &str = "svid_bundle.pem";

#[derive(Subcommand)]
pub enum IssueCommand {
    /// An X.509-SVID and its key, written to --out as svid.pem,
    /// svid_key.pem (0600) and svid_bundle.pem.
    X509(X509Args),
    /// A JWT-SVID, printed on stdout (details on stderr).
    Jwt(JwtArgs),
}

#[derive(Args)]
pub struct Common {
    /// The WorkloadIdentity to issue; a Role with a User or Group subject
    /// matching you must allow it.
    #[arg(long)]
    pub identity: String,
    /// Wanted lifetime, e.g. 10m; the operator shortens it to its maximum
    /// (default 1h) and the identity's own TTL.
    #[arg(long)]
    pub ttl: Option<String>,
    /// The kubeconfig context whose credentials ask (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Args)]
pub struct X509Args {
    #[command(flatten)]
    pub common: Common,
    /// Directory for the files (created 0700 if missing).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct JwtArgs {
    #[command(flatten)]
    pub common: Common,
    /// Audience of the token; repeatable, at least one.
    #[arg(long = "audience", required = true)]
    pub audiences: Vec<String>,
}

/// Why no SVID came back.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The API server's RBAC or Signet's policy said no.
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

pub fn run(command: &IssueCommand, out: &mut dyn Write) -> Result<ExitCode, String> {
    let result = match command {
        IssueCommand::X509(args) => issue_x509(args, out),
        IssueCommand::Jwt(args) => issue_jwt(args, out),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(IssueError::Refused(message)) => {
            report(&format!("refused: {message}"));
            Ok(ExitCode::FAILURE)
        }
        Err(IssueError::Failed(message)) => Err(message),
    }
}

#[allow(clippy::print_stderr)] // the CLI's channel for what is not the answer
fn report(line: &str) {
    eprintln!("{line}");
}

fn failed(error: impl std::fmt::Display) -> IssueError {
    IssueError::Failed(error.to_string())
}

fn issue_x509(args: &X509Args, out: &mut dyn Write) -> Result<(), IssueError> {
    let key = PrivateKey::generate(KeyType::EcP256).map_err(failed)?;
    let csr = signet_identity::x509::create_csr(&key).map_err(failed)?;
    let request = X509SvidRequest {
        api_version: API_VERSION.into(),
        kind: X509_KIND.into(),
        spec: X509SvidRequestSpec {
            workload_identity: args.common.identity.clone(),
            csr: signet_identity::x509::csr_to_pem(&csr),
            ttl: args.common.ttl.clone(),
        },
        status: None,
    };
    let answer: X509SvidRequest = create(args.common.context.as_deref(), X509_RESOURCE, &request)?;
    let status = answer
        .status
        .ok_or_else(|| failed("the answer has no status"))?;
    write_files(
        &args.out,
        &status.certificate_chain,
        &key,
        &status.trust_bundle,
    )
    .map_err(|e| failed(format!("writing to {}: {e}", args.out.display())))?;
    let written = match args.common.output {
        Output::Json => write_json(out, &status),
        Output::Text => writeln!(
            out,
            "{}\nexpires {}\nwrote {}, {} and {} in {}",
            status.spiffe_id,
            status.expires_at,
            CERTIFICATE_FILE,
            KEY_FILE,
            BUNDLE_FILE,
            args.out.display()
        ),
    };
    written.map_err(failed)
}

fn issue_jwt(args: &JwtArgs, out: &mut dyn Write) -> Result<(), IssueError> {
    let request = JwtSvidRequest {
        api_version: API_VERSION.into(),
        kind: JWT_KIND.into(),
        spec: JwtSvidRequestSpec {
            workload_identity: args.common.identity.clone(),
            audiences: args.audiences.clone(),
            ttl: args.common.ttl.clone(),
        },
        status: None,
    };
    let answer: JwtSvidRequest = create(args.common.context.as_deref(), JWT_RESOURCE, &request)?;
    let status = answer
        .status
        .ok_or_else(|| failed("the answer has no status"))?;
    let written = match args.common.output {
        Output::Json => write_json(out, &status),
        Output::Text => {
            report(&format!(
                "{} expires {}",
                status.spiffe_id, status.expires_at
            ));
            writeln!(out, "{}", status.token)
        }
    };
    written.map_err(failed)
}

/// POSTs `request` to the aggregated API with the kubeconfig's credentials.
fn create<T: serde::Serialize + DeserializeOwned>(
    context: Option<&str>,
    resource: &str,
    request: &T,
) -> Result<T, IssueError> {
    let body = serde_json::to_vec(request).map_err(failed)?;
    runtime().map_err(IssueError::Failed)?.block_on(async {
        let config = kube_config(context).await.map_err(IssueError::Failed)?;
        let client = Client::try_from(config).map_err(failed)?;
        let http = http::Request::post(resource_path(resource))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(failed)?;
        client.request::<T>(http).await.map_err(|error| match error {
            kube::Error::Api(status) if status.code == 403 => {
                let cause = status
                    .details
                    .as_ref()
                    .and_then(|d| d.causes.first())
                    .map(|c| format!(" ({})", c.reason))
                    .unwrap_or_default();
                IssueError::Refused(format!("{}{cause}", status.message))
            }
            kube::Error::Api(status) if status.code == 404 => IssueError::Failed(format!(
                "the API server does not serve {API_VERSION}: is Signet installed with userIssuance enabled? ({})",
                status.message
            )),
            kube::Error::Api(status) => IssueError::Failed(format!(
                "{} ({}, HTTP {})",
                status.message, status.reason, status.code
            )),
            other => failed(other),
        })
    })
}

/// Writes the chain, the key (0600, replacing any file there whatever its
/// mode) and the bundle, each file whole or not at all.
fn write_files(dir: &Path, chain: &str, key: &PrivateKey, bundle: &str) -> Result<(), String> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| e.to_string())?;
    }
    let write = |name: &str, contents: &[u8], mode: u32| {
        write_atomic(&dir.join(name), contents, mode).map_err(|e| e.to_string())
    };
    write(KEY_FILE, key.to_pkcs8_pem().as_bytes(), 0o600)?;
    write(CERTIFICATE_FILE, chain.as_bytes(), 0o644)?;
    write(BUNDLE_FILE, bundle.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_file_is_private_even_when_it_existed_before() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("creds");
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        write_files(&out, "chain", &key, "bundle").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
        fs::set_permissions(out.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        write_files(&out, "chain", &key, "bundle").unwrap();
        assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
        let written = fs::read_to_string(out.join(KEY_FILE)).unwrap();
        assert_eq!(
            PrivateKey::from_pkcs8_pem(&written).unwrap().public_key(),
            key.public_key()
        );
        assert_eq!(fs::read_to_string(out.join(BUNDLE_FILE)).unwrap(), "bundle");
    }
}
