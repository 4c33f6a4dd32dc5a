//! OIDC discovery for JWT-SVID consumers that only speak OpenID Connect
//! (cloud IAM workload identity federation, Vault's JWT auth): a small
//! HTTP(S) server publishing the trust domain's JWT authorities.
//!
//! - `/.well-known/openid-configuration`: the provider metadata, in the
//!   shape Kubernetes' service-account issuer publishes (and SPIRE's
//!   oidc-discovery-provider): `issuer`, `jwks_uri`,
//!   `response_types_supported: ["id_token"]`,
//!   `subject_types_supported: ["public"]` and the signing algorithms of the
//!   current keys. `authorization_endpoint`, REQUIRED by OpenID Connect
//!   Discovery 1.0, is omitted as Kubernetes does: there is no login flow,
//!   relying parties only verify tokens, and an empty or made-up URL would
//!   be worse than none.
//! - `/keys`: [`PublishedBundle::jwks_json`], the JWT authorities only, each
//!   with `kid`, `alg` and `use: "sig"` (not SPIFFE's `jwt-svid`, which
//!   generic JOSE libraries reject as an unknown use).
//!
//! Both are rendered per request from the current bundle, so a rotated key
//! shows up without a restart. Both routes are also served under the issuer
//! URL's path (`https://host/tenant/keys`), whether or not an Ingress in
//! front strips that prefix.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::ca::PublishedBundle;

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
pub const KEYS_PATH: &str = "/keys";

/// `Cache-Control: max-age` when the bundle has no refresh hint. Successor
/// keys are published long before they sign (at half-life), so caching for
/// up to the refresh hint cannot make a consumer miss one.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Upper bound on `max-age` whatever the hint says, as Kubernetes uses.
const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("issuer URL {url:?} {reason}")]
    InvalidIssuer { url: String, reason: &'static str },
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// What the discovery server publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    /// The issuer identifier, without a trailing slash. Relying parties
    /// compare it byte for byte with the JWT-SVIDs' `iss` claim and fetch
    /// `{issuer_url}/.well-known/openid-configuration`.
    pub issuer_url: String,
}

impl OidcSettings {
    /// Validates `issuer_url` as OpenID Connect Discovery requires: `https`,
    /// no query or fragment. Plain `http` is accepted for loopback hosts
    /// only, for tests. A trailing slash is dropped so that appending the
    /// well-known path does not produce `//`.
    pub fn new(issuer_url: &str) -> Result<Self, OidcError> {
        let invalid = |reason| OidcError::InvalidIssuer {
            url: issuer_url.to_owned(),
            reason,
        };
        // Checked on the raw text: the URI parser drops a fragment silently.
        if issuer_url.contains(['?', '#']) {
            return Err(invalid("must have no query or fragment"));
        }
        let trimmed = issuer_url.trim_end_matches('/');
        let uri: hyper::Uri = trimmed.parse().map_err(|_| invalid("is not a URL"))?;
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| invalid("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid("must not carry user info"));
        }
        // Compared on the raw text, which is what ends up in `iss`: the
        // parser would accept `HTTPS://` too.
        let scheme = trimmed.split_once("://").map(|(scheme, _)| scheme);
        match scheme {
            Some("https") => {}
            Some("http") if is_loopback(authority.host()) => {}
            Some("http") => return Err(invalid("must use https (http only on loopback)")),
            _ => return Err(invalid("must be an https URL")),
        }
        Ok(Self {
            issuer_url: trimmed.to_owned(),
        })
    }

    /// Where the JWKS is published.
    pub fn jwks_uri(&self) -> String {
        format!("{}{KEYS_PATH}", self.issuer_url)
    }

    /// The path part of the issuer URL (`""` when it has none).
    fn path_prefix(&self) -> &str {
        self.issuer_url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
            .unwrap_or("")
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A rustls server config from a PEM certificate chain and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1), e.g. a mounted cert-manager Secret. The
/// certificate is not reloaded: restart the operator to change it.
pub fn tls_from_pem_files(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, OidcError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| OidcError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |path: &Path, reason: String| OidcError::Pem {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "no CERTIFICATE block".to_owned()));
    }
    let key_pem = Zeroizing::new(read(key)?);
    let key_der =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_error(key, e.to_string()))?;
    // with_single_cert also checks that the key belongs to the certificate.
    let mut config = rustls::ServerConfig::builder_with_provider(signet_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves discovery on `listener` until `shutdown` resolves: HTTPS with
/// `tls`, or plain HTTP (`None`) behind an Ingress that terminates TLS.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    settings: OidcSettings,
    bundle: watch::Receiver<Arc<PublishedBundle>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OidcError> {
    tracing::info!(
        address = ?listener.local_addr().ok(),
        issuer = %settings.issuer_url,
        tls = tls.is_some(),
        "OIDC discovery listening"
    );
    let site = Arc::new(Site { settings, bundle });
    crate::http_server::serve("OIDC discovery", listener, tls, site, shutdown).await;
    Ok(())
}

impl crate::http_server::Handler for Site {
    fn handle(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> {
        let response = self.respond(request.method(), request.uri().path());
        Box::pin(async move { response })
    }
}

/// The routes, over the settings and the live bundle.
struct Site {
    settings: OidcSettings,
    bundle: watch::Receiver<Arc<PublishedBundle>>,
}

impl Site {
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let path = path
            .strip_prefix(self.settings.path_prefix())
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path);
        if path != DISCOVERY_PATH && path != KEYS_PATH {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        // Cloned out so the watch is not held while the response is built.
        let published = self.bundle.borrow().clone();
        let body = if path == KEYS_PATH {
            published.jwks_json.clone()
        } else {
            self.discovery_document(&published.jwks_json)
        };
        let max_age = published
            .bundle
            .refresh_hint
            .unwrap_or(DEFAULT_MAX_AGE)
            .min(MAX_MAX_AGE);
        let mut response = Response::new(Full::new(Bytes::from(body)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(value) = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
        {
            headers.insert(header::CACHE_CONTROL, value);
        }
        response
    }

    fn discovery_document(&self, jwks_json: &str) -> String {
        json!({
            "issuer": self.settings.issuer_url,
            "jwks_uri": self.settings.jwks_uri(),
            // Only ID-token-shaped JWTs are issued, and `sub` is the same
            // SPIFFE ID for every audience.
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": signing_algs(jwks_json),
        })
        .to_string()
    }
}

/// The algorithms of the keys in a JWKS, sorted and deduplicated, so the
/// metadata always matches what `/keys` serves.
fn signing_algs(jwks_json: &str) -> Vec<String> {
    let doc: Value = serde_json::from_str(jwks_json).unwrap_or_default();
    let keys = doc.get("keys").and_then(Value::as_array);
    let algs: BTreeSet<&str> = keys.into_iter().flatten().filter_map(jwk_alg).collect();
    algs.into_iter().map(str::to_owned).collect()
}

/// A JWK's `alg`, or (it is optional, RFC 7517 section 4.4) the algorithm
/// this CA signs with for its key type.
fn jwk_alg(jwk: &Value) -> Option<&str> {
    if let Some(alg) = jwk.get("alg").and_then(Value::as_str) {
        return Some(alg);
    }
    let member = |name| jwk.get(name).and_then(Value::as_str);
    match (member("kty")?, member("crv")) {
        ("EC", Some("P-256")) => Some("ES256"),
        ("EC", Some("P-384")) => Some("ES384"),
        ("EC", Some("P-521")) => Some("ES512"),
        ("RSA", _) => Some("RS256"),
        _ => None,
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{Authority, IssuerNames, KeysetStore};
    use crate::standalone::keyset_file::FileKeysetStore;
    use http_body_util::{BodyExt, Empty};
    use hyper::HeaderMap;
    use hyper_util::rt::TokioIo;
    use rustls::pki_types::ServerName;
    use signet_identity::{CaConfig, TrustDomain};
    use signet_runtime::clock::Clock;
    use std::net::SocketAddr;
    use std::time::SystemTime;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;
    use tokio_rustls::TlsConnector;

    fn ca_config() -> CaConfig {
        let mut config = CaConfig::new(TrustDomain::new("example.org").unwrap());
        config.x509_ttl = Duration::from_secs(6 * 3600);
        config.jwt_ttl = Duration::from_secs(6 * 3600);
        config
    }

    async fn authority(dir: &Path, now: SystemTime) -> Arc<Authority> {
        let store: Arc<dyn KeysetStore> = Arc::new(FileKeysetStore::new(dir.join("ca.json")));
        Authority::load_or_create(ca_config(), store, IssuerNames::default(), now)
            .await
            .unwrap()
    }

    struct Running {
        addr: SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        task: JoinHandle<Result<(), OidcError>>,
    }

    async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        issuer: &str,
        authority: &Authority,
    ) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            tls,
            OidcSettings::new(issuer).unwrap(),
            authority.bundle(),
            async {
                let _ = stopped.await;
            },
        ));
        Running { addr, stop, task }
    }

    /// A self-signed `localhost` certificate as PEM files, loaded the way
    /// the operator loads a mounted Secret; and a client trusting it.
    fn tls_pair(dir: &Path) -> (Arc<rustls::ServerConfig>, TlsConnector) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, issued.cert.pem()).unwrap();
        std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
        let server = tls_from_pem_files(&cert, &key).unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots.add(issued.cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(signet_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        (Arc::new(server), TlsConnector::from(Arc::new(client)))
    }

    struct Fetched {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Fetched {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// One request on a fresh connection, over TLS when `tls` is given.
    async fn fetch(
        addr: SocketAddr,
        tls: Option<&TlsConnector>,
        method: Method,
        path: &str,
    ) -> Fetched {
        let tcp = TcpStream::connect(addr).await.unwrap();
        match tls {
            None => request(tcp, method, path).await,
            Some(connector) => {
                let name = ServerName::try_from("localhost").unwrap();
                let stream = connector.connect(name, tcp).await.unwrap();
                assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
                request(stream, method, path).await
            }
        }
    }

    async fn request<I>(io: I, method: Method, path: &str) -> Fetched
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (parts, body) = sender.send_request(request).await.unwrap().into_parts();
        Fetched {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    fn kids(jwks: &Value) -> BTreeSet<String> {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The JWT authorities' key IDs as the authority describes them.
    fn jwt_key_ids(authority: &Authority) -> BTreeSet<String> {
        authority
            .describe()
            .into_iter()
            .filter_map(|(name, _, _)| name.strip_prefix("jwt:").map(str::to_owned))
            .collect()
    }

    #[test]
    fn settings_validate_the_issuer_url() {
        for bad in [
            "http://example.org",
            "https://x/?q",
            "https://x/#frag",
            "ftp://x",
            "oidc.example.org",
            "https://",
            "https://user@x",
            "HTTPS://x",
        ] {
            assert!(OidcSettings::new(bad).is_err(), "{bad} accepted");
        }
        let settings = OidcSettings::new("https://oidc.example.org/").unwrap();
        assert_eq!(settings.issuer_url, "https://oidc.example.org");
        assert_eq!(settings.jwks_uri(), "https://oidc.example.org/keys");
        assert_eq!(settings.path_prefix(), "");
        let settings = OidcSettings::new("https://x.example/tenant/a/").unwrap();
        assert_eq!(settings.path_prefix(), "/tenant/a");
        for loopback in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:9",
        ] {
            assert!(OidcSettings::new(loopback).is_ok(), "{loopback} refused");
        }
    }

    #[tokio::test]
    async fn serves_discovery_and_keys_over_tls_and_follows_rotation() {
        signet_tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let start_time = Clock::new().now();
        let authority = authority(dir.path(), start_time).await;
        let (server_tls, client) = tls_pair(dir.path());
        let issuer = "https://oidc.example.org";
        let server = start(Some(server_tls), issuer, &authority).await;
        let tls = Some(&client);

        let discovery = fetch(server.addr, tls, Method::GET, DISCOVERY_PATH).await;
        assert_eq!(discovery.status, StatusCode::OK);
        assert_eq!(discovery.headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            discovery.headers[header::CACHE_CONTROL],
            "public, max-age=300"
        );
        let doc = discovery.json();
        assert_eq!(doc["issuer"], issuer);
        assert_eq!(doc["jwks_uri"], "https://oidc.example.org/keys");
        assert_eq!(doc["response_types_supported"], json!(["id_token"]));
        assert_eq!(doc["subject_types_supported"], json!(["public"]));
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        assert!(doc.get("authorization_endpoint").is_none());

        let keys = fetch(server.addr, tls, Method::GET, KEYS_PATH).await;
        assert_eq!(keys.status, StatusCode::OK);
        assert_eq!(keys.headers[header::CONTENT_TYPE], "application/json");
        let jwks = keys.json();
        let before = jwt_key_ids(&authority);
        assert_eq!(before.len(), 1);
        assert_eq!(kids(&jwks), before);
        for key in jwks["keys"].as_array().unwrap() {
            // What generic JOSE libraries (cloud IAM) need; no X.509 entries.
            assert_eq!(key["use"], "sig", "{key}");
            assert_eq!(key["alg"], "ES256", "{key}");
            assert!(key.get("x5c").is_none(), "{key}");
        }

        // HEAD: same headers, no body.
        let head = fetch(server.addr, tls, Method::HEAD, KEYS_PATH).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(
            head.headers[header::CONTENT_LENGTH],
            keys.body.len().to_string().as_str()
        );
        assert!(head.body.is_empty());

        let post = fetch(server.addr, tls, Method::POST, KEYS_PATH).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers[header::ALLOW], "GET, HEAD");
        let missing = fetch(server.addr, tls, Method::GET, "/nope").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);

        // A client that fails the handshake does not take the server down.
        let mut garbage = TcpStream::connect(server.addr).await.unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut alert = Vec::new();
        garbage.read_to_end(&mut alert).await.unwrap();

        // Past half-life a successor key is prepared: served at once.
        authority
            .tick(start_time + Duration::from_secs(3 * 3600 + 60))
            .await
            .unwrap();
        let after = jwt_key_ids(&authority);
        assert_eq!(after.len(), 2);
        assert!(after.is_superset(&before));
        let jwks = fetch(server.addr, tls, Method::GET, KEYS_PATH).await.json();
        assert_eq!(kids(&jwks), after);

        server.stop.send(()).unwrap();
        server.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serves_plain_http_under_the_issuer_path_and_stops_promptly() {
        signet_tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let authority = authority(dir.path(), Clock::new().now()).await;
        let issuer = "http://localhost:8080/tenant";
        let server = start(None, issuer, &authority).await;

        // With the issuer's path (no rewriting proxy) and without it (an
        // Ingress that strips the prefix).
        for path in ["/tenant/.well-known/openid-configuration", DISCOVERY_PATH] {
            let doc = fetch(server.addr, None, Method::GET, path).await.json();
            assert_eq!(doc["issuer"], issuer);
            assert_eq!(doc["jwks_uri"], "http://localhost:8080/tenant/keys");
        }
        let expected = jwt_key_ids(&authority);
        for path in ["/tenant/keys", KEYS_PATH] {
            let jwks = fetch(server.addr, None, Method::GET, path).await.json();
            assert_eq!(kids(&jwks), expected);
        }
        let other = fetch(server.addr, None, Method::GET, "/tenantx/keys").await;
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        let delete = fetch(server.addr, None, Method::DELETE, "/tenant/keys").await;
        assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);

        // An idle keep-alive connection does not hold up shutdown.
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let client = tokio::spawn(connection);
        let request = Request::get(KEYS_PATH)
            .header(header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        response.into_body().collect().await.unwrap();
        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), server.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // The server closed it; the client side sees the end.
        tokio::time::timeout(Duration::from_secs(2), client)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
