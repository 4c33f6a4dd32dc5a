//! Shared by the `attest_*` integration tests and the attestation benchmark.
//!
//! - [`FakeKubelet`]: an in-process HTTPS server answering `GET /pods` like a
//!   kubelet, with the recorded answers of `tests/fixtures/kubelet/` (no
//!   real kubelet is available to these tests; the cluster end-to-end suite
//!   runs against one). It checks the bearer token and records each request.
//! - [`Pki`]: a throwaway CA and a kubelet serving certificate (rcgen).
//! - [`FakeProc`]: a process directory in a fake procfs (`HOST_PROC`), so a
//!   "process in a pod" can be attested without a cluster.
// Test support: each test crate uses a different subset, and a failed setup
// step is a failed test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::time::Instant;

use signet_agent::attest::kubelet::KubeletConfig;
use signet_agent::attest::procfs::{ProcRoot, ProcessHandle};
use signet_agent::attest::unix::PeerCredentials;

/// The node all recorded pods are bound to.
pub const NODE: &str = "node-1";

/// Containers and pods of `fixtures/kubelet/pods.json`.
pub mod ids {
    pub const PROCESSOR_POD: &str = "f46b7b9c-c15d-4299-ada5-60fd8adda688";
    pub const PROCESSOR: &str = "793cf4220c917b853860886599b2ac757f8290996dd9de5798121e8fa462d6e8";
    /// Native sidecar (init container with `restartPolicy: Always`).
    pub const ENVOY: &str = "5bda6a317873a59e01b29a0a9a4d296e948c5a0b1e5bb93e6d63111541f7a139";
    pub const DEBUG_POD: &str = "20c894a2-5268-4f3a-ae65-2733a9425056";
    pub const APP: &str = "65083cc7165afe0213f841b209b22ec69c7fc323bdde269fd35b554afa805093";
    /// Ephemeral container of the debug pod.
    pub const DEBUGGER: &str = "3ff27d9b7501ae9eec48ba4d2459b6b22c5aba59002b355f235f79c7f79b7aec";
    pub const ETCD_STATIC_POD: &str = "b6bcb376b5600369af19c54cebb0e4e0";
    pub const ETCD: &str = "ca9ed085ebcc042eb928f7f24729415c8075361a2381954d42b04d469f2c558c";
    /// Pending in `pods.json`, running in `pods-web-started.json`.
    pub const WEB_POD: &str = "81aab556-1151-4f36-acff-abdc1154b797";
    pub const WEB: &str = "9ca5c1d080942530770f5eca563fb9d1689fa27a31afb251f7162a4930278010";
}

/// A recorded kubelet answer from `tests/fixtures/kubelet/`.
pub fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kubelet")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// `/proc/<pid>/cgroup` of a process in a pod's container, as a cgroup v1
/// node with the systemd driver and containerd writes it.
pub fn pod_cgroup(pod_uid: &str, container_id: &str) -> String {
    let slice = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{container_id}.scope",
        pod_uid.replace('-', "_")
    );
    format!("12:memory:{slice}\n11:pids:{slice}\n1:name=systemd:{slice}\n0::/\n")
}

/// A CA and a serving certificate for the given DNS names.
pub struct Pki {
    pub ca_pem: String,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: Arc<PrivatePkcs8KeyDer<'static>>,
}

impl Pki {
    pub fn new(server_names: &[&str]) -> Self {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test kubelet CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let server_params = rcgen::CertificateParams::new(names).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            server_chain: vec![server_cert.der().clone(), ca.der().clone()],
            server_key: Arc::new(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            self.server_chain.clone(),
            PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
        )
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// One request the fake kubelet received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// On tokio's clock (paused in the retry tests).
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    pub sni: Option<String>,
}

/// Decides the answer to the n-th (0-based) authorized request.
pub type Responder = Box<dyn FnMut(usize) -> (StatusCode, Bytes) + Send>;

/// Always the same recorded answer.
pub fn always(name: &str) -> Responder {
    let body = fixture(name);
    Box::new(move |_| (StatusCode::OK, body.clone()))
}

/// `first` for the first `times` requests, then `then`.
pub fn switch_after(times: usize, first: &str, then: &str) -> Responder {
    let (first, then) = (fixture(first), fixture(then));
    Box::new(move |n| {
        (
            StatusCode::OK,
            if n < times {
                first.clone()
            } else {
                then.clone()
            },
        )
    })
}

struct ServerState {
    token: Option<String>,
    requests: Vec<Seen>,
    authorized: usize,
    responder: Responder,
}

/// An in-process kubelet serving recorded `/pods` answers over TLS.
pub struct FakeKubelet {
    pub port: u16,
    state: Arc<Mutex<ServerState>>,
}

impl FakeKubelet {
    /// Listens on 127.0.0.1 (any port) in the current runtime. With
    /// `token`, requests without `Authorization: Bearer <token>` get 401.
    pub async fn start(pki: &Pki, token: Option<&str>, responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ServerState {
            token: token.map(str::to_owned),
            requests: Vec::new(),
            authorized: 0,
            responder,
        }));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                // As Go servers (the kubelet) do: no Nagle delay on replies.
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let state = server_state.clone();
                tokio::spawn(async move {
                    // Handshake failures are what some tests expect.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let service = service_fn(move |request: Request<Incoming>| {
                        let reply = answer(&state, &request, sni.clone());
                        async move { Ok::<_, std::convert::Infallible>(reply) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { port, state }
    }

    pub fn set_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.to_owned());
    }

    pub fn set_responder(&self, responder: Responder) {
        self.state.lock().unwrap().responder = responder;
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

fn answer(
    state: &Mutex<ServerState>,
    request: &Request<Incoming>,
    sni: Option<String>,
) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.requests.push(Seen {
        at: Instant::now(),
        path: request.uri().path().to_owned(),
        authorization: authorization.clone(),
        sni,
    });
    let authorized = match &state.token {
        Some(token) => authorization.as_deref() == Some(format!("Bearer {token}").as_str()),
        None => true,
    };
    let (status, body) = if !authorized {
        (
            StatusCode::UNAUTHORIZED,
            Bytes::from_static(b"Unauthorized"),
        )
    } else if request.uri().path() != "/pods" {
        (
            StatusCode::NOT_FOUND,
            Bytes::from_static(b"404 page not found"),
        )
    } else {
        let n = state.authorized;
        state.authorized += 1;
        (state.responder)(n)
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .unwrap()
}

/// The agent's view of the service account token and CA files.
pub struct Credentials {
    pub dir: tempfile::TempDir,
    pub token_path: PathBuf,
    pub ca_path: PathBuf,
}

impl Credentials {
    pub fn write(pki: &Pki, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&token_path, token).unwrap();
        std::fs::write(&ca_path, &pki.ca_pem).unwrap();
        Self {
            dir,
            token_path,
            ca_path,
        }
    }

    /// Rotates the token the way the kubelet updates a projected volume:
    /// write aside, then rename over (a new inode).
    pub fn rotate_token(&self, token: &str) {
        let staged = self.dir.path().join(".token.new");
        std::fs::write(&staged, token).unwrap();
        std::fs::rename(&staged, &self.token_path).unwrap();
    }

    /// Kubelet settings for `fake` at 127.0.0.1, verified as [`NODE`].
    pub fn config(&self, fake: &FakeKubelet) -> KubeletConfig {
        KubeletConfig {
            secure_port: Some(fake.port),
            token_path: self.token_path.clone(),
            ca_path: self.ca_path.clone(),
            node_name: Some(NODE.to_owned()),
            host: Some("127.0.0.1".to_owned()),
            ..KubeletConfig::default()
        }
    }
}

/// A process directory in a fake procfs, owned by the test's own uid/gid.
pub struct FakeProc {
    pub root: tempfile::TempDir,
    pub pid: u32,
}

impl FakeProc {
    pub fn new(pid: u32, cgroup: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(pid.to_string());
        std::fs::create_dir(&dir).unwrap();
        let fake = Self { root, pid };
        fake.set_start_time(424242);
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        std::fs::write(
            dir.join("status"),
            format!("Name:\tworkload\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\n"),
        )
        .unwrap();
        std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        let binary = fake.root.path().join("workload-binary");
        std::fs::write(&binary, b"\x7fELF not really").unwrap();
        std::os::unix::fs::symlink(&binary, dir.join("exe")).unwrap();
        fake
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(self.pid.to_string())
    }

    /// Rewrites the start time: the PID now names another process.
    pub fn set_start_time(&self, ticks: u64) {
        std::fs::write(
            self.dir().join("stat"),
            format!(
                "{} (workload) S 1 {0} {0} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {ticks} 1000 10",
                self.pid
            ),
        )
        .unwrap();
    }

    pub fn handle(&self) -> Arc<ProcessHandle> {
        Arc::new(ProcRoot::new(self.root.path()).open(self.pid).unwrap())
    }

    pub fn peer(&self) -> PeerCredentials {
        PeerCredentials {
            pid: self.pid,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }
}

/// The recorded answers without the network, for tests on tokio's paused
/// clock (which would otherwise jump to the request timeout while a real
/// socket is pending). Records when each fetch started.
pub struct RecordedSource {
    state: Mutex<(Vec<Instant>, Responder)>,
    latency: std::time::Duration,
}

impl RecordedSource {
    pub fn new(responder: Responder) -> Arc<Self> {
        Self::with_latency(responder, std::time::Duration::ZERO)
    }

    /// Each answer takes `latency` (on tokio's clock) to arrive.
    pub fn with_latency(responder: Responder, latency: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((Vec::new(), responder)),
            latency,
        })
    }

    pub fn fetches(&self) -> Vec<Instant> {
        self.state.lock().unwrap().0.clone()
    }
}

impl signet_agent::attest::kubelet::PodListSource for RecordedSource {
    fn fetch(
        &self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Bytes, signet_agent::attest::kubelet::KubeletError>,
                > + Send
                + '_,
        >,
    > {
        let mut state = self.state.lock().unwrap();
        let n = state.0.len();
        state.0.push(Instant::now());
        let (status, body) = (state.1)(n);
        let latency = self.latency;
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if status == StatusCode::OK {
                Ok(body)
            } else {
                Err(signet_agent::attest::kubelet::KubeletError::Status {
                    status,
                    message: String::from_utf8_lossy(&body).into_owned(),
                })
            }
        })
    }
}
