//! Closing Workload API connections that hold no call.
//!
//! A connection is idle from the moment it is admitted, and again from the
//! moment its last call ends, until a call starts (gRPC's own definition of
//! a connection's idleness). One idle for longer than the idle timeout is
//! closed, so a user cannot keep slots of the per-uid bound by opening
//! connections, completing the HTTP/2 handshake and never calling. A
//! SPIFFE client holds a streaming call open, so its connection is never
//! idle; a client that makes one call now and then reconnects, as gRPC
//! clients do after a connection closes.
//!
//! Calls are counted by a tower layer around the server's routes (from
//! request to the end of the response body, so a stream counts while it
//! is open); the connection's reader ends the connection once idle.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::limits::{ConnectionRefusal, ConnectionTracker};

#[derive(Debug)]
struct CallState {
    active: usize,
    idle_since: Instant,
}

/// The calls open on one connection.
#[derive(Debug)]
pub struct CallCounter {
    state: Mutex<CallState>,
}

impl CallCounter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(CallState {
                active: 0,
                idle_since: Instant::now(),
            }),
        })
    }

    /// A call started; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.lock().active += 1;
        CallGuard(self.clone())
    }

    /// When the connection will have been idle for `timeout`; `None` while
    /// a call is open.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        let state = self.lock();
        (state.active == 0).then(|| state.idle_since + timeout)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallState> {
        // Two integers updated together; a panic cannot leave them torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open call.
#[derive(Debug)]
pub struct CallGuard(Arc<CallCounter>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.active = state.active.saturating_sub(1);
        if state.active == 0 {
            state.idle_since = Instant::now();
        }
    }
}

/// A connection that reads as closed once it has been idle for `timeout`.
pub struct IdleClose<S> {
    inner: S,
    calls: Arc<CallCounter>,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    tracker: Arc<ConnectionTracker>,
    closed: bool,
}

impl<S> IdleClose<S> {
    pub fn new(
        inner: S,
        calls: Arc<CallCounter>,
        timeout: Duration,
        tracker: Arc<ConnectionTracker>,
    ) -> Self {
        let deadline = calls
            .idle_deadline(timeout)
            .unwrap_or_else(|| Instant::now() + timeout);
        Self {
            inner,
            calls,
            timeout,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            tracker,
            closed: false,
        }
    }

    /// Whether the idle timeout has passed with no call open; otherwise the
    /// timer is armed for the next look.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let deadline = match self.calls.idle_deadline(self.timeout) {
                Some(deadline) if deadline <= Instant::now() => return true,
                Some(deadline) => deadline,
                // A call is open: look again a timeout from now.
                None => Instant::now() + self.timeout,
            };
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleClose<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(read) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(read);
        }
        if this.poll_idle(cx) {
            // End of input: the server ends the connection, and the
            // client's next call opens a new one.
            this.closed = true;
            this.tracker.refused(ConnectionRefusal::IdleTimeout);
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleClose<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for IdleClose<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What a connection's info, as the server hands it to each request,
/// says of the calls on that connection.
pub trait ConnectionCalls: Send + Sync + 'static {
    fn calls(&self) -> &Arc<CallCounter>;
}

/// Counts each request as a call on its connection (found through the
/// connection info `I` in the request's extensions) until its response
/// body ends.
#[derive(Debug)]
pub struct CallTrackingLayer<I> {
    info: std::marker::PhantomData<fn() -> I>,
}

impl<I> CallTrackingLayer<I> {
    pub fn new() -> Self {
        Self {
            info: std::marker::PhantomData,
        }
    }
}

impl<I> Default for CallTrackingLayer<I> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I> Clone for CallTrackingLayer<I> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<S, I> tower::Layer<S> for CallTrackingLayer<I> {
    type Service = CallTracking<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTracking {
            inner,
            info: std::marker::PhantomData,
        }
    }
}

#[derive(Debug)]
pub struct CallTracking<S, I> {
    inner: S,
    info: std::marker::PhantomData<fn() -> I>,
}

impl<S: Clone, I> Clone for CallTracking<S, I> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            info: std::marker::PhantomData,
        }
    }
}

impl<S, I, B> tower::Service<http::Request<B>> for CallTracking<S, I>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    I: ConnectionCalls,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = request
            .extensions()
            .get::<I>()
            .map(|info| info.calls().begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match call {
                None => response,
                // The body owns the guard: the call lasts as long as it.
                Some(call) => response.map(|body| {
                    tonic::body::Body::new(body.map_frame(move |frame| {
                        let _open = &call;
                        frame
                    }))
                }),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::limits::ConnectionLimits;
    use crate::metrics::Metrics;
    use tokio::io::AsyncReadExt;

    fn tracker() -> Arc<ConnectionTracker> {
        ConnectionTracker::new(ConnectionLimits::default(), Arc::new(Metrics::default()))
    }

    const TIMEOUT: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_reads_as_closed_after_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let calls = CallCounter::new();
        let mut conn = IdleClose::new(server, calls.clone(), TIMEOUT, tracker());
        let started = Instant::now();
        let mut buf = [0u8; 8];
        let read = conn.read(&mut buf).await.unwrap();
        assert_eq!(read, 0, "end of input");
        assert_eq!(started.elapsed(), TIMEOUT);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_call_keeps_the_connection_and_its_end_restarts_the_clock() {
        let (mut client, server) = tokio::io::duplex(64);
        let calls = CallCounter::new();
        let call = calls.begin();
        let mut conn = IdleClose::new(server, calls.clone(), TIMEOUT, tracker());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let mut total = 0;
            loop {
                match conn.read(&mut buf).await.unwrap() {
                    0 => return (total, Instant::now()),
                    n => total += n,
                }
            }
        });
        // Traffic alone does not count as a call, and an open call holds
        // the connection far past the timeout.
        tokio::time::sleep(TIMEOUT * 5).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping")
            .await
            .unwrap();
        tokio::time::sleep(TIMEOUT * 5).await;
        assert!(!reader.is_finished(), "closed with a call open");
        let ended = Instant::now();
        drop(call);
        let (read, closed_at) = reader.await.unwrap();
        assert_eq!(read, 4);
        assert_eq!(closed_at - ended, TIMEOUT, "idle from the call's end");
    }
}
