//! Two workloads authenticating each other with X.509-SVIDs, the way a
//! user's service would: the SVID and bundles come from the SPIFFE Workload
//! API (`SPIFFE_ENDPOINT_SOCKET`) through the standard `spiffe` crate, and
//! each side accepts exactly one peer SPIFFE ID.
//!
//! ```text
//! signet-mtls-example server --listen 127.0.0.1:7443 --allow spiffe://example.org/client
//! signet-mtls-example client --connect 127.0.0.1:7443 --server-id spiffe://example.org/server
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signet_identity::{BundleSet, SpiffeId, TrustBundle};
use signet_tls::{
    PeerPolicy, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use spiffe::X509Source;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(
    name = "signet-mtls-example",
    about = "mTLS between two workloads with SPIFFE SVIDs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections from one SPIFFE ID and greet it.
    Server {
        #[arg(long)]
        listen: SocketAddr,
        /// The only client SPIFFE ID accepted.
        #[arg(long)]
        allow: String,
        /// Exit after serving this many authenticated connections (default: forever).
        #[arg(long)]
        connections: Option<u64>,
    },
    /// Connect, check the server's SPIFFE ID and print its greeting.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        /// The SPIFFE ID the server must present.
        #[arg(long)]
        server_id: String,
        /// Connect this many times, each with the SVID current then; any
        /// failure ends the run with an error.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Pause between connections.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    signet_tls::install_default_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.to_string()),
    };
    let result = runtime.block_on(async {
        let source = X509Source::new().await?;
        match cli.command {
            Command::Server {
                listen,
                allow,
                connections,
            } => server(&source, listen, &allow, connections).await,
            Command::Client {
                connect,
                server_id,
                repeat,
                interval,
            } => {
                for round in 0..repeat {
                    if round > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    client(&source, connect, &server_id).await?;
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string()),
    }
}

/// The current SVID and bundles, in the shapes rustls wants: the own trust
/// domain's bundle and, for a peer in another trust domain, that domain's
/// federated bundle from the Workload API. Read again for every connection
/// so rotated SVIDs and CAs are picked up.
fn credentials(source: &X509Source, peer: &SpiffeId) -> Result<Credentials, Error> {
    let svid = source.svid()?;
    let leaf_der = svid.leaf().as_bytes().to_vec();
    let resolver = Arc::new(SvidResolver::new());
    let chain = svid
        .cert_chain()
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    resolver.set(chain, svid.private_key().as_bytes())?;
    let own_id = SpiffeId::parse(&svid.spiffe_id().to_string())?;

    let mut bundles = BundleSet::new();
    let set = source.bundle_set()?;
    let mut domains = vec![own_id.trust_domain().clone()];
    if peer.trust_domain() != own_id.trust_domain() {
        domains.push(peer.trust_domain().clone());
    }
    for domain in domains {
        let spiffe_domain = spiffe::TrustDomain::new(domain.as_str())?;
        let bundle = set
            .get(&spiffe_domain)
            .ok_or_else(|| format!("no bundle for {domain}"))?;
        let der: Vec<u8> = bundle
            .authorities()
            .iter()
            .flat_map(|c| c.as_bytes().to_vec())
            .collect();
        bundles.insert(TrustBundle::from_x509_der(domain, &der)?);
    }
    Ok(Credentials {
        resolver,
        bundles: SharedBundles::new(bundles),
        own_id,
        leaf_der,
    })
}

/// One connection's credentials, read together from the source.
struct Credentials {
    resolver: Arc<SvidResolver>,
    bundles: SharedBundles,
    own_id: SpiffeId,
    leaf_der: Vec<u8>,
}

async fn server(
    source: &X509Source,
    listen: SocketAddr,
    allow: &str,
    connections: Option<u64>,
) -> Result<(), Error> {
    let allowed = SpiffeId::parse(allow)?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    say(&format!("listening on {}", listener.local_addr()?));
    let mut served = 0;
    while connections.is_none_or(|limit| served < limit) {
        let (tcp, peer) = listener.accept().await?;
        let Credentials {
            resolver,
            bundles,
            own_id,
            ..
        } = credentials(source, &allowed)?;
        let verifier =
            SpiffeClientVerifier::required(bundles, PeerPolicy::OneOf(vec![allowed.clone()]));
        let config = signet_tls::server_config(resolver, Arc::new(verifier))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let mut tls = match acceptor.accept(tcp).await {
            Ok(tls) => tls,
            Err(error) => {
                say(&format!("refused {peer}: {error}"));
                continue;
            }
        };
        served += 1;
        let mut line = String::new();
        BufReader::new(&mut tls).read_line(&mut line).await?;
        tls.write_all(format!("hello {allowed}, this is {own_id}\n").as_bytes())
            .await?;
        tls.shutdown().await?;
        say(&format!("served {allowed} ({peer}): {}", line.trim()));
    }
    Ok(())
}

async fn client(source: &X509Source, connect: SocketAddr, server_id: &str) -> Result<(), Error> {
    let expected = SpiffeId::parse(server_id)?;
    let Credentials {
        resolver,
        bundles,
        own_id,
        leaf_der,
    } = credentials(source, &expected)?;
    let verifier = SpiffeServerVerifier::new(bundles, PeerPolicy::OneOf(vec![expected]));
    let mut config = signet_tls::client_config(Some(resolver), Arc::new(verifier))?;
    config.alpn_protocols.clear();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(connect).await?;
    // SPIFFE authenticates by ID, not hostname; the name only fills SNI.
    let name = rustls_pki_types::ServerName::try_from("signet-example")?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(format!("ping from {own_id}\n").as_bytes())
        .await?;
    let mut reply = String::new();
    BufReader::new(&mut tls).read_line(&mut reply).await?;
    // Which SVID this connection used, to see rotation from the outside.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&leaf_der, &mut hasher);
    say(&format!(
        "{} (client svid {:016x})",
        reply.trim(),
        std::hash::Hasher::finish(&hasher)
    ));
    Ok(())
}

#[allow(clippy::print_stdout)] // the example's output
fn say(message: &str) {
    println!("{message}");
}

#[allow(clippy::print_stderr)] // the CLI's error channel
fn fail(message: &str) -> ExitCode {
    eprintln!("signet-mtls-example: {message}");
    ExitCode::FAILURE
}
