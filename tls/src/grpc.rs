//! tonic over SPIFFE TLS: an incoming-connection stream for servers and a
//! connector for clients.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use signet_identity::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Channel, Endpoint};

/// A TLS handshake that has not finished by then is abandoned, so a slow
/// or silent client cannot hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress waiting to be handed to the server.
const ACCEPT_BACKLOG: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum GrpcTlsError {
    #[error("invalid issuer address {address:?}: {reason}")]
    Address { address: String, reason: String },
}

/// Accepted connections whose TLS handshake has completed, for
/// `tonic::transport::Server::serve_with_incoming`. Failed handshakes are
/// logged and dropped rather than ending the server.
pub struct TlsIncoming {
    accepted: mpsc::Receiver<Result<TlsStream<TcpStream>, io::Error>>,
}

impl TlsIncoming {
    /// Spawns the accept loop; it stops when the stream is dropped.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let (sender, accepted) = mpsc::channel(ACCEPT_BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = sender.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let sender = sender.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { accepted }
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted.poll_recv(cx)
    }
}

/// The SPIFFE ID of the client of a request served over [`TlsIncoming`].
///
/// Only meaningful because the server's verifier already validated the
/// chain; `None` when the client presented no certificate.
pub fn peer_spiffe_id<T>(request: &tonic::Request<T>) -> Option<SpiffeId> {
    let info = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?;
    let certs = info.peer_certs()?;
    let leaf = certs.first()?;
    signet_identity::x509::spiffe_id_from_cert(leaf).ok()
}

/// A lazily connecting channel to `address` (`host:port`) over TLS with
/// `config`. The host is sent as SNI; the server is authenticated by the
/// config's verifier (its SVID), not by hostname.
pub fn connect_channel(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, GrpcTlsError> {
    let address_error = |reason: String| GrpcTlsError::Address {
        address: address.to_owned(),
        reason,
    };
    let trimmed = address
        .strip_prefix("https://")
        .or_else(|| address.strip_prefix("tcp://"))
        .unwrap_or(address);
    let endpoint = Endpoint::from_shared(format!("http://{trimmed}"))
        .map_err(|e| address_error(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let uri = endpoint.uri().clone();
    let host = uri
        .host()
        .ok_or_else(|| address_error("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .ok_or_else(|| address_error("no port".into()))?;
    let server_name =
        ServerName::try_from(host.clone()).map_err(|e| address_error(e.to_string()))?;
    let connector = TlsConnector::from(config);
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        let host = host.clone();
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}
