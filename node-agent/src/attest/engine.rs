//! A minimal HTTP/1.1 client for container engine APIs (Docker, Podman)
//! served on a unix socket, and the retry-with-backoff helper their
//! attestors share.
//!
//! One connection per request: attestation asks an engine one or two
//! questions per new workload, and a fresh local connection costs far less
//! than keeping a pool honest across engine restarts.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::kind::AttestErrorKind;

/// Each engine call, from connecting to the last body byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Inspect documents are a few kilobytes; anything near this is not one.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine address {addr:?} is not supported: use unix:///path/to/socket")]
    UnsupportedAddress { addr: String },
    #[error("connecting to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("HTTP exchange with {socket}: {source}")]
    Http {
        socket: PathBuf,
        #[source]
        source: Arc<hyper::Error>,
    },
    #[error("invalid request for {path}: {source}")]
    Request {
        path: String,
        #[source]
        source: Arc<http::Error>,
    },
    #[error("response from {socket} exceeds {MAX_RESPONSE_BYTES} bytes or failed: {reason}")]
    Body { socket: PathBuf, reason: String },
    #[error("no answer from {socket} within {REQUEST_TIMEOUT:?}")]
    Timeout { socket: PathBuf },
    #[error("{path} not found after {attempts} attempts: {message}")]
    NotFound {
        path: String,
        attempts: u32,
        message: String,
    },
    #[error("{path} answered {status}: {message}")]
    Status {
        path: String,
        status: StatusCode,
        message: String,
    },
}

impl EngineError {
    /// All of these mean the engine could not be asked.
    pub fn kind(&self) -> AttestErrorKind {
        match self {
            Self::UnsupportedAddress { .. } => AttestErrorKind::FailedPrecondition,
            Self::Request { .. } => AttestErrorKind::Internal,
            // The engine answered, repeatedly, that it has no such object.
            Self::NotFound { .. } => AttestErrorKind::DeadlineExceeded,
            _ => AttestErrorKind::Unavailable,
        }
    }
}

/// An engine's answer: status and body.
#[derive(Clone, Debug)]
pub struct EngineResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl EngineResponse {
    /// The engine's error message (`{"message": "..."}` for Docker and
    /// Podman), or the raw body, shortened for logs and errors.
    pub fn message(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Message {
            message: String,
        }
        let text = match serde_json::from_slice::<Message>(&self.body) {
            Ok(m) => m.message,
            Err(_) => String::from_utf8_lossy(&self.body).into_owned(),
        };
        text.chars().take(512).collect()
    }
}

/// HTTP over a unix socket.
#[derive(Clone, Debug)]
pub struct EngineClient {
    socket: PathBuf,
}

impl EngineClient {
    /// Accepts `unix:///absolute/path`. TCP endpoints are refused: an
    /// engine API without a peer we can authenticate is not evidence.
    pub fn new(addr: &str) -> Result<Self, EngineError> {
        let path = addr
            .strip_prefix("unix://")
            .filter(|path| path.starts_with('/'))
            .ok_or_else(|| EngineError::UnsupportedAddress {
                addr: addr.to_owned(),
            })?;
        Ok(Self {
            socket: PathBuf::from(path),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, returning any status: callers decide what 404 means.
    pub async fn get(&self, path: &str) -> Result<EngineResponse, EngineError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.get_inner(path)).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::Timeout {
                socket: self.socket.clone(),
            }),
        }
    }

    async fn get_inner(&self, path: &str) -> Result<EngineResponse, EngineError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| EngineError::Connect {
                    socket: self.socket.clone(),
                    source: Arc::new(source),
                })?;
        let http_error = |source| EngineError::Http {
            socket: self.socket.clone(),
            source: Arc::new(source),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection task ends when the response is read and the sender
        // dropped; its errors surface through `send_request` too.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "engine connection closed with an error");
            }
        });
        let request = Request::get(path)
            // HTTP/1.1 requires a Host; engines ignore its value.
            .header(http::header::HOST, "localhost")
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|source| EngineError::Request {
                path: path.to_owned(),
                source: Arc::new(source),
            })?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|error| EngineError::Body {
                socket: self.socket.clone(),
                reason: error.to_string(),
            })?
            .to_bytes();
        Ok(EngineResponse { status, body })
    }
}

impl EngineClient {
    /// `GET path` expecting JSON, retried with `backoff` on transport
    /// errors and unexpected statuses. A 404 is retried and finally an error
    /// when `missing_is_error` (the object must exist: a container that is
    /// just starting), and otherwise an immediate `None`.
    pub async fn get_retrying(
        &self,
        path: &str,
        backoff: Backoff,
        missing_is_error: bool,
    ) -> Result<Option<Bytes>, EngineError> {
        backoff
            .run(|attempt| async move {
                match self.get(path).await {
                    Ok(response) if response.status == StatusCode::OK => {
                        Attempt::Done(Some(response.body))
                    }
                    Ok(response) if response.status == StatusCode::NOT_FOUND => {
                        if missing_is_error {
                            Attempt::Retry(EngineError::NotFound {
                                path: path.to_owned(),
                                attempts: attempt,
                                message: response.message(),
                            })
                        } else {
                            Attempt::Done(None)
                        }
                    }
                    Ok(response) => Attempt::Retry(EngineError::Status {
                        path: path.to_owned(),
                        status: response.status,
                        message: response.message(),
                    }),
                    Err(error @ EngineError::UnsupportedAddress { .. })
                    | Err(error @ EngineError::Request { .. }) => Attempt::Fail(error),
                    Err(error) => {
                        tracing::debug!(%error, attempt, "engine request failed");
                        Attempt::Retry(error)
                    }
                }
            })
            .await
    }
}

/// Exponential backoff for a container that is just starting: the first
/// retry after `initial`, each later one after twice the previous delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    /// 100 ms, 200 ms, 400 ms: four tries within a second, as SPIRE's
    /// Docker attestor does.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            attempts: 4,
        }
    }
}

/// What one try of a retried operation concluded.
#[derive(Debug)]
pub enum Attempt<T, E> {
    Done(T),
    /// Worth another try; the error is returned if no tries remain.
    Retry(E),
    /// Not worth another try.
    Fail(E),
}

impl Backoff {
    /// Runs `operation(try_number)` until it is done, fails, or the tries
    /// are used up (then the last error is returned). Sleeps on tokio's
    /// clock so paused-time tests can check the schedule.
    pub async fn run<T, E, F, Fut>(&self, mut operation: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T, E>>,
    {
        let mut delay = self.initial;
        let mut attempt = 1;
        loop {
            match operation(attempt).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Fail(error) => return Err(error),
                Attempt::Retry(error) if attempt >= self.attempts.max(1) => return Err(error),
                Attempt::Retry(_) => {
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    #[test]
    fn only_absolute_unix_addresses() {
        assert_eq!(
            EngineClient::new("unix:///var/run/docker.sock")
                .unwrap()
                .socket(),
            Path::new("/var/run/docker.sock")
        );
        for bad in [
            "tcp://127.0.0.1:2375",
            "unix://relative.sock",
            "/var/run/docker.sock",
            "",
        ] {
            assert!(
                matches!(
                    EngineClient::new(bad),
                    Err(EngineError::UnsupportedAddress { .. })
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_from_the_initial_delay() {
        let start = Instant::now();
        let tries = Mutex::new(Vec::new());
        let result: Result<(), &str> = Backoff {
            initial: Duration::from_millis(100),
            attempts: 4,
        }
        .run(|attempt| {
            tries.lock().unwrap().push((attempt, start.elapsed()));
            async { Attempt::Retry("not yet") }
        })
        .await;
        assert_eq!(result, Err("not yet"));
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            *tries.lock().unwrap(),
            vec![(1, ms(0)), (2, ms(100)), (3, ms(300)), (4, ms(700))]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_stops_at_success_or_hard_failure() {
        let start = Instant::now();
        let result: Result<u32, &str> = Backoff::default()
            .run(|attempt| async move {
                if attempt == 3 {
                    Attempt::Done(attempt)
                } else {
                    Attempt::Retry("starting")
                }
            })
            .await;
        assert_eq!(result, Ok(3));
        assert_eq!(start.elapsed(), Duration::from_millis(300));

        let mut calls = 0;
        let result: Result<(), &str> = Backoff::default()
            .run(|_| {
                calls += 1;
                async { Attempt::Fail("refused") }
            })
            .await;
        assert_eq!(result, Err("refused"));
        assert_eq!(calls, 1);
    }
}
