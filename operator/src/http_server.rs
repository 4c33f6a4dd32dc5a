//! The small HTTP/1.1 servers of the operator (OIDC discovery, the
//! admission webhook): accept, TLS, timeouts and graceful shutdown, around
//! a [`Handler`].
//!
//! A failing connection (TLS handshake, timeout, bad request) only ends that
//! connection. On shutdown, idle keep-alive connections are closed and
//! in-flight responses get a few seconds (`DRAIN_TIMEOUT`) to finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A client that opens a connection and sends nothing must not hold a task
/// forever: bounds the TLS handshake and (through hyper) each request head,
/// idle keep-alive time included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight responses before dropping them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The client certificates a TLS connection presented and the handshake
/// verified (leaf first), in every request's extensions on that connection
/// when the server's TLS asks for them.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<rustls::pki_types::CertificateDer<'static>>>);

/// Answers one request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>>;
}

/// Serves `handler` on `listener` until `shutdown` resolves: HTTPS with
/// `tls` (its ALPN replaced by `http/1.1`, the only protocol served), plain
/// HTTP with `None`. `name` labels the logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let acceptor = tls.map(|config| {
        // hyper is driven as HTTP/1 only: a client offered h2 would speak
        // it and fail.
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    });
    let (stop, stopping) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, typically: pause rather than spin.
                    tracing::warn!(%error, server = name, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next() => continue,
            () = &mut shutdown => break,
        };
        connections.spawn(connection(
            name,
            stream,
            acceptor.clone(),
            handler.clone(),
            stopping.clone(),
        ));
    }
    drop(listener);
    stop.send_replace(());
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(server = name, "dropped connections still open at shutdown");
    }
    // Dropping the set aborts whatever is left.
}

async fn connection(
    name: &'static str,
    stream: TcpStream,
    acceptor: Option<TlsAcceptor>,
    handler: Arc<dyn Handler>,
    stopping: watch::Receiver<()>,
) {
    let Some(acceptor) = acceptor else {
        return http(name, stream, None, handler, stopping).await;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let peer = stream.get_ref().1.peer_certificates().map(|certs| {
                PeerCertificates(Arc::new(
                    certs.iter().map(|c| c.clone().into_owned()).collect(),
                ))
            });
            http(name, stream, peer, handler, stopping).await
        }
        Ok(Err(error)) => tracing::debug!(%error, server = name, "TLS handshake failed"),
        Err(_) => tracing::debug!(server = name, "TLS handshake timed out"),
    }
}

async fn http<I>(
    name: &'static str,
    io: I,
    peer: Option<PeerCertificates>,
    handler: Arc<dyn Handler>,
    mut stopping: watch::Receiver<()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |mut request: Request<Incoming>| {
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        let response = handler.handle(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        // Also taken when the server is dropped: then finish politely too.
        _ = stopping.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, server = name, "connection ended with an error");
    }
}
