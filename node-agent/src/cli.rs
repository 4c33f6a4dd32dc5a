//! Command line: `signet-agent run --config FILE` and, like `spire-agent
//! api`, Workload API client commands:
//!
//! ```text
//! signet-agent api fetch x509 [--write DIR]
//! signet-agent api fetch jwt --audience A [--spiffe-id ID]
//! signet-agent api fetch bundle
//! signet-agent api validate jwt --audience A --svid TOKEN
//! signet-agent api watch
//! ```
//!
//! The socket comes from `--socket-path`, else `SPIFFE_ENDPOINT_SOCKET`,
//! else the agent's default. `--output json` prints machine-readable output.
//!
//! `--write DIR` writes the default SVID as `svid.pem` (leaf first, then
//! intermediates), its key as `svid_key.pem` (PKCS#8, mode 0600) and the own
//! trust domain's CAs as `bundle.pem`, the names spiffe-helper uses; further
//! SVIDs go to `svid.N.pem` / `svid_key.N.pem` (N = 1, 2, ... in response
//! order) and federated bundles to `federated_bundle.<trust domain>.pem`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use signet_runtime::clock::Clock;
use tokio::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use signet_identity::PrivateKey;
use signet_identity::x509::{certs_from_der_concat, certs_to_pem};
use signet_proto::workload as pb;
use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use signet_proto::{WORKLOAD_API_HEADER, WORKLOAD_API_HEADER_VALUE};
use signet_runtime::endpoint::Endpoint;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::DEFAULT_LISTEN;

#[derive(Debug, Parser)]
#[command(
    name = "signet-agent",
    version,
    about = "Signet node agent: SPIFFE Workload API, Envoy SDS and workload attestation"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the agent.
    Run {
        /// YAML configuration file.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: PathBuf,
    },
    /// Talks to a Workload API endpoint (this agent's or any other).
    #[command(subcommand)]
    Api(ApiCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Fetches SVIDs or bundles once.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validates a credential.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Prints every X.509-SVID update until interrupted.
    Watch(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum FetchCommand {
    /// X.509-SVIDs with keys and bundles.
    X509 {
        #[command(flatten)]
        client: ClientArgs,
        /// Writes the SVIDs, keys and bundles as PEM files into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
    /// JWT-SVIDs for an audience.
    Jwt {
        #[command(flatten)]
        client: ClientArgs,
        /// Audience of the token (repeatable).
        #[arg(long, short = 'a', required = true)]
        audience: Vec<String>,
        /// Only the token for this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
    },
    /// X.509 bundles of the own and federated trust domains.
    Bundle(ClientArgs),
}

#[derive(Debug, Subcommand)]
pub enum ValidateCommand {
    /// Validates a JWT-SVID through the Workload API.
    Jwt {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, short = 'a')]
        audience: String,
        /// The token (compact JWS).
        #[arg(long)]
        svid: String,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Workload API endpoint (unix:///path).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET", default_value = DEFAULT_LISTEN)]
    pub socket_path: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Gives up after this long (e.g. 5s), retrying until then while the
    /// agent is not serving yet or answers Unavailable; watch is not
    /// limited.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid endpoint: {0}")]
    Endpoint(#[from] signet_runtime::endpoint::EndpointError),
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{rpc} failed: {code:?}: {message}")]
    Rpc {
        rpc: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("gave up after {after:?}: {last}")]
    GaveUp {
        after: Duration,
        #[source]
        last: Box<CliError>,
    },
    #[error("the stream ended without a message")]
    Empty,
    #[error("the response is malformed: {0}")]
    Malformed(String),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    fn rpc(rpc: &'static str, status: tonic::Status) -> Self {
        Self::Rpc {
            rpc,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

type HeaderInterceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type WorkloadClient = SpiffeWorkloadApiClient<InterceptedService<Channel, HeaderInterceptor>>;

fn add_header(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request.metadata_mut().insert(
        WORKLOAD_API_HEADER,
        tonic::metadata::MetadataValue::from_static(WORKLOAD_API_HEADER_VALUE),
    );
    Ok(request)
}

/// A Workload API client over a unix socket that sends the security header.
pub async fn connect(endpoint: &str) -> Result<WorkloadClient, CliError> {
    let channel = unix_channel(endpoint).await?;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel,
        add_header as HeaderInterceptor,
    ))
}

/// A tonic channel to a `unix:///path` endpoint.
pub async fn unix_channel(endpoint: &str) -> Result<Channel, CliError> {
    let parsed: Endpoint = endpoint.parse()?;
    let Endpoint::Unix(path) = parsed else {
        return Err(CliError::Endpoint(
            signet_runtime::endpoint::EndpointError::Scheme(endpoint.to_owned()),
        ));
    };
    let connect_error = |source| CliError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    // The URI is a placeholder: the connector below ignores it.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(connect_error)
}

/// One X.509-SVID of a response, decoded.
#[derive(Debug, Serialize)]
pub struct SvidSummary {
    pub spiffe_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
    #[serde(with = "rfc3339")]
    pub not_before: SystemTime,
    #[serde(with = "rfc3339")]
    pub not_after: SystemTime,
    pub chain_length: usize,
    pub bundle_certificates: usize,
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*time))
    }
}

fn validity(leaf: &[u8]) -> Result<(SystemTime, SystemTime), CliError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|e| CliError::Malformed(e.to_string()))?;
    let to_time = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    Ok((
        to_time(cert.validity().not_before),
        to_time(cert.validity().not_after),
    ))
}

fn split_certs(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, CliError> {
    certs_from_der_concat(der).map_err(|e| CliError::Malformed(e.to_string()))
}

pub fn summarize(response: &pb::X509svidResponse) -> Result<Vec<SvidSummary>, CliError> {
    response
        .svids
        .iter()
        .map(|svid| {
            let chain = split_certs(&svid.x509_svid)?;
            let leaf = chain.first().ok_or_else(|| {
                CliError::Malformed(format!("{} has no certificate", svid.spiffe_id))
            })?;
            let (not_before, not_after) = validity(leaf)?;
            Ok(SvidSummary {
                spiffe_id: svid.spiffe_id.clone(),
                hint: svid.hint.clone(),
                not_before,
                not_after,
                chain_length: chain.len(),
                bundle_certificates: split_certs(&svid.bundle)?.len(),
            })
        })
        .collect()
}

fn remaining(until: SystemTime) -> String {
    match until.duration_since(Clock::new().now()) {
        Ok(left) => format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(left.as_secs()))
        ),
        Err(_) => "expired".to_owned(),
    }
}

fn print_x509(
    out: &mut dyn Write,
    response: &pb::X509svidResponse,
    elapsed: Duration,
    format: Output,
) -> Result<(), CliError> {
    let summaries = summarize(response)?;
    match format {
        Output::Json => {
            let federated: Vec<&String> = response.federated_bundles.keys().collect();
            let json = serde_json::json!({
                "svids": summaries,
                "federated_trust_domains": federated,
            });
            writeln!(out, "{json}")?;
        }
        Output::Text => {
            writeln!(
                out,
                "Received {} svid(s) after {:.1}ms",
                summaries.len(),
                elapsed.as_secs_f64() * 1000.0
            )?;
            for summary in &summaries {
                writeln!(out)?;
                writeln!(out, "SPIFFE ID:\t\t{}", summary.spiffe_id)?;
                if !summary.hint.is_empty() {
                    writeln!(out, "Hint:\t\t\t{}", summary.hint)?;
                }
                writeln!(
                    out,
                    "SVID Valid After:\t{}",
                    humantime::format_rfc3339_seconds(summary.not_before)
                )?;
                writeln!(
                    out,
                    "SVID Valid Until:\t{} ({})",
                    humantime::format_rfc3339_seconds(summary.not_after),
                    remaining(summary.not_after)
                )?;
                writeln!(out, "CA certificates:\t{}", summary.bundle_certificates)?;
            }
            let mut federated: Vec<&String> = response.federated_bundles.keys().collect();
            federated.sort();
            for td in federated {
                writeln!(out, "Federated bundle:\t{td}")?;
            }
        }
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CliError> {
    signet_runtime::files::write_atomic(path, contents, mode).map_err(|e| CliError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes the response's SVIDs, keys and bundles as PEM files into `dir`;
/// returns the paths written.
pub fn write_x509(dir: &Path, response: &pb::X509svidResponse) -> Result<Vec<PathBuf>, CliError> {
    std::fs::create_dir_all(dir).map_err(|e| CliError::Write {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let mut written = Vec::new();
    for (index, svid) in response.svids.iter().enumerate() {
        let suffix = if index == 0 {
            String::new()
        } else {
            format!(".{index}")
        };
        let chain = split_certs(&svid.x509_svid)?;
        let cert_path = dir.join(format!("svid{suffix}.pem"));
        write_file(&cert_path, certs_to_pem(&chain).as_bytes(), 0o644)?;
        let key_path = dir.join(format!("svid_key{suffix}.pem"));
        let key = PrivateKey::from_pkcs8_der(&svid.x509_svid_key)
            .map_err(|e| CliError::Malformed(format!("key of {}: {e}", svid.spiffe_id)))?;
        write_file(&key_path, key.to_pkcs8_pem().as_bytes(), 0o600)?;
        written.push(cert_path);
        written.push(key_path);
        if index == 0 {
            let bundle_path = dir.join("bundle.pem");
            write_file(
                &bundle_path,
                certs_to_pem(&split_certs(&svid.bundle)?).as_bytes(),
                0o644,
            )?;
            written.push(bundle_path);
        }
    }
    let federated: BTreeMap<&String, &Vec<u8>> = response.federated_bundles.iter().collect();
    for (td, der) in federated {
        let name = td.trim_start_matches("spiffe://");
        let path = dir.join(format!("federated_bundle.{name}.pem"));
        write_file(&path, certs_to_pem(&split_certs(der)?).as_bytes(), 0o644)?;
        written.push(path);
    }
    Ok(written)
}

async fn first_x509(client: &mut WorkloadClient) -> Result<pb::X509svidResponse, CliError> {
    let mut stream = client
        .fetch_x509svid(pb::X509svidRequest {})
        .await
        .map_err(|s| CliError::rpc("FetchX509SVID", s))?
        .into_inner();
    stream
        .message()
        .await
        .map_err(|s| CliError::rpc("FetchX509SVID", s))?
        .ok_or(CliError::Empty)
}

/// Whether trying again may succeed: the agent is not serving yet (its
/// socket is missing or refuses, as when a pod starts before the node's
/// agent) or cannot answer yet (`Unavailable`: no policy yet, the issuer
/// unreachable). A refusal (`PermissionDenied`) is an answer, given at once.
fn worth_retrying(error: &CliError) -> bool {
    match error {
        CliError::Connect { source, .. } => not_serving_yet(source),
        CliError::Rpc { code, .. } => matches!(code, tonic::Code::Unavailable),
        _ => false,
    }
}

/// Whether connecting failed because nothing serves the socket yet (it is
/// missing, or nobody accepts on it), not because the caller may not use
/// it (permissions: final).
fn not_serving_yet(error: &tonic::transport::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            );
        }
        cause = current.source();
    }
    false
}

/// The first attempt of `attempt` that succeeds within `timeout`, trying
/// again after a growing pause (100 ms to 1 s) while the error is worth
/// retrying, as go-spiffe and spiffe-helper do; on timeout, the last error.
async fn retrying<T, F>(timeout: Duration, mut attempt: impl FnMut() -> F) -> Result<T, CliError>
where
    F: Future<Output = Result<T, CliError>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        let error = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if worth_retrying(&error) => error,
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(CliError::Timeout(timeout)),
        };
        if Instant::now() + pause >= deadline {
            return Err(CliError::GaveUp {
                after: timeout,
                last: Box::new(error),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Runs an `api` command, writing human or JSON output to `out`.
pub async fn run_api(command: ApiCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        ApiCommand::Fetch(FetchCommand::X509 { client, write }) => {
            let started = Instant::now();
            let response = retrying(client.timeout, || async {
                let mut api = connect(&client.socket_path).await?;
                first_x509(&mut api).await
            })
            .await?;
            let elapsed = started.elapsed();
            print_x509(out, &response, elapsed, client.output)?;
            if let Some(dir) = write {
                for path in write_x509(&dir, &response)? {
                    if client.output == Output::Text {
                        writeln!(out, "Wrote {}", path.display())?;
                    }
                }
            }
        }
        ApiCommand::Fetch(FetchCommand::Jwt {
            client,
            audience,
            spiffe_id,
        }) => {
            let request = pb::JwtsvidRequest {
                audience,
                spiffe_id: spiffe_id.unwrap_or_default(),
            };
            let response = retrying(client.timeout, || async {
                let mut api = connect(&client.socket_path).await?;
                api.fetch_jwtsvid(request.clone())
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| CliError::rpc("FetchJWTSVID", s))
            })
            .await?;
            match client.output {
                Output::Json => {
                    let svids: Vec<_> = response
                        .svids
                        .iter()
                        .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "svid": s.svid, "hint": s.hint}))
                        .collect();
                    writeln!(out, "{}", serde_json::json!({ "svids": svids }))?;
                }
                Output::Text => {
                    for svid in &response.svids {
                        writeln!(out, "token({}):\n\t{}", svid.spiffe_id, svid.svid)?;
                    }
                }
            }
        }
        ApiCommand::Fetch(FetchCommand::Bundle(client)) => {
            let response = retrying(client.timeout, || async {
                let mut api = connect(&client.socket_path).await?;
                let mut stream = api
                    .fetch_x509_bundles(pb::X509BundlesRequest {})
                    .await
                    .map_err(|s| CliError::rpc("FetchX509Bundles", s))?
                    .into_inner();
                stream
                    .message()
                    .await
                    .map_err(|s| CliError::rpc("FetchX509Bundles", s))?
                    .ok_or(CliError::Empty)
            })
            .await?;
            let bundles: BTreeMap<&String, &Vec<u8>> = response.bundles.iter().collect();
            match client.output {
                Output::Json => {
                    let mut map = serde_json::Map::new();
                    for (td, der) in bundles {
                        map.insert(td.clone(), certs_to_pem(&split_certs(der)?).into());
                    }
                    writeln!(out, "{}", serde_json::json!({ "bundles": map }))?;
                }
                Output::Text => {
                    for (td, der) in bundles {
                        writeln!(out, "bundle({td}):")?;
                        write!(out, "{}", certs_to_pem(&split_certs(der)?))?;
                    }
                }
            }
        }
        ApiCommand::Validate(ValidateCommand::Jwt {
            client,
            audience,
            svid,
        }) => {
            let request = pb::ValidateJwtsvidRequest { audience, svid };
            let response = retrying(client.timeout, || async {
                let mut api = connect(&client.socket_path).await?;
                api.validate_jwtsvid(request.clone())
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| CliError::rpc("ValidateJWTSVID", s))
            })
            .await?;
            let claims = response
                .claims
                .as_ref()
                .map(struct_to_json)
                .unwrap_or(serde_json::Value::Null);
            match client.output {
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"spiffe_id": response.spiffe_id, "claims": claims})
                )?,
                Output::Text => {
                    writeln!(out, "SVID is valid.")?;
                    writeln!(out, "SPIFFE ID : {}", response.spiffe_id)?;
                    writeln!(out, "Claims    : {claims}")?;
                }
            }
        }
        ApiCommand::Watch(client) => {
            let mut api = retrying(client.timeout, || connect(&client.socket_path)).await?;
            let mut stream = api
                .fetch_x509svid(pb::X509svidRequest {})
                .await
                .map_err(|s| CliError::rpc("FetchX509SVID", s))?
                .into_inner();
            let started = Instant::now();
            while let Some(response) = stream
                .message()
                .await
                .map_err(|s| CliError::rpc("FetchX509SVID", s))?
            {
                print_x509(out, &response, started.elapsed(), client.output)?;
                writeln!(out)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

/// A protobuf Struct as JSON.
pub fn struct_to_json(value: &prost_types::Struct) -> serde_json::Value {
    fn one(value: &prost_types::Value) -> serde_json::Value {
        use prost_types::value::Kind;
        match &value.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => (*b).into(),
            Some(Kind::NumberValue(n)) => {
                if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    serde_json::Value::from(*n as i64)
                } else {
                    serde_json::Value::from(*n)
                }
            }
            Some(Kind::StringValue(s)) => s.clone().into(),
            Some(Kind::ListValue(list)) => list.values.iter().map(one).collect(),
            Some(Kind::StructValue(s)) => struct_to_json(s),
        }
    }
    serde_json::Value::Object(
        value
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), one(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_spire_agent_api() {
        let cli = Cli::try_parse_from([
            "signet-agent",
            "api",
            "fetch",
            "x509",
            "--write",
            "/tmp/out",
            "--socket-path",
            "unix:///tmp/a.sock",
        ])
        .unwrap();
        let Command::Api(ApiCommand::Fetch(FetchCommand::X509 { client, write })) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(client.socket_path, "unix:///tmp/a.sock");
        assert_eq!(write, Some(PathBuf::from("/tmp/out")));

        let cli = Cli::try_parse_from([
            "signet-agent",
            "api",
            "fetch",
            "jwt",
            "--audience",
            "a",
            "--audience",
            "b",
            "--spiffe-id",
            "spiffe://td/x",
            "--output",
            "json",
        ])
        .unwrap();
        let Command::Api(ApiCommand::Fetch(FetchCommand::Jwt {
            client,
            audience,
            spiffe_id,
        })) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(audience, vec!["a", "b"]);
        assert_eq!(spiffe_id.as_deref(), Some("spiffe://td/x"));
        assert_eq!(client.output, Output::Json);

        assert!(Cli::try_parse_from(["signet-agent", "api", "fetch", "jwt"]).is_err());
        assert!(
            Cli::try_parse_from(["signet-agent", "api", "validate", "jwt", "--audience", "a"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["signet-agent", "run", "--config", "/etc/a.yaml"]).is_ok());
        assert!(Cli::try_parse_from(["signet-agent", "api", "watch"]).is_ok());
        assert!(Cli::try_parse_from(["signet-agent", "api", "fetch", "bundle"]).is_ok());
    }

    #[test]
    fn struct_round_trips_to_json() {
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"sub":"spiffe://td/x","aud":["a"],"exp":1700000000,"x":{"y":true}}"#,
        )
        .unwrap();
        let proto = crate::api::workload::claims_struct(&claims);
        assert_eq!(struct_to_json(&proto), serde_json::Value::Object(claims));
    }
}
