//! Real TLS handshakes between SVID-holding endpoints.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use signet_identity::{
    KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain, X509Ca, X509SvidParams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;

/// rustls checks certificates against the real clock.
fn wall_clock() -> SystemTime {
    signet_runtime::clock::Clock::new().now()
}

struct Td {
    trust_domain: TrustDomain,
    ca: X509Ca,
}

impl Td {
    fn new(name: &str) -> Self {
        Self::created_at(name, wall_clock())
    }

    fn created_at(name: &str, now: SystemTime) -> Self {
        let trust_domain = TrustDomain::new(name).unwrap();
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let ca = X509Ca::self_signed(&trust_domain, key, Duration::from_secs(86400), now).unwrap();
        Self { trust_domain, ca }
    }

    fn bundle(&self) -> TrustBundle {
        let mut bundle = TrustBundle::new(self.trust_domain.clone());
        bundle.x509_authorities.push(self.ca.certificate().clone());
        bundle
    }

    fn resolver(&self, path: &str, ttl: Duration, now: SystemTime) -> Arc<SvidResolver> {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::from_path(&self.trust_domain, path).unwrap();
        let svid = self
            .ca
            .mint_svid(&X509SvidParams::new(id, ttl), key.public_key(), now)
            .unwrap();
        let resolver = Arc::new(SvidResolver::new());
        resolver.set(svid.cert_chain, &key.to_pkcs8_der()).unwrap();
        resolver
    }
}

fn bundles_of(tds: &[&Td]) -> SharedBundles {
    SharedBundles::new(tds.iter().map(|td| td.bundle()).collect())
}

/// Runs one handshake plus an echo over an in-memory duplex; returns the
/// client's and server's results.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<(), String>, Result<(), String>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let server_side = async move {
        let mut stream = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 5];
        stream
            .read_exact(&mut buffer)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&buffer).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok(())
    };
    let client_side = async move {
        let name = rustls_pki_types::ServerName::try_from("issuer.invalid").unwrap();
        let mut stream = connector
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"hello")
            .await
            .map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 5];
        stream
            .read_exact(&mut buffer)
            .await
            .map_err(|e| e.to_string())?;
        if &buffer != b"hello" {
            return Err("echo mismatch".into());
        }
        Ok(())
    };
    tokio::join!(client_side, server_side)
}

fn td_policy(td: &Td) -> PeerPolicy {
    PeerPolicy::MemberOf(td.trust_domain.clone())
}

#[tokio::test]
async fn mutual_tls_with_svids_succeeds() {
    let td = Td::new("example.org");
    let now = wall_clock();
    let bundles = bundles_of(&[&td]);
    let server = server_config(
        td.resolver("/issuer", Duration::from_secs(3600), now),
        Arc::new(SpiffeClientVerifier::required(
            bundles.clone(),
            td_policy(&td),
        )),
    )
    .unwrap();
    let client = client_config(
        Some(td.resolver("/agent", Duration::from_secs(3600), now)),
        Arc::new(SpiffeServerVerifier::new(
            bundles,
            PeerPolicy::OneOf(vec![
                SpiffeId::parse("spiffe://example.org/issuer").unwrap(),
            ]),
        )),
    )
    .unwrap();
    let (client, server) = handshake(server, client).await;
    assert_eq!(client, Ok(()));
    assert_eq!(server, Ok(()));
}

#[tokio::test]
async fn server_with_unexpected_id_is_rejected() {
    let td = Td::new("example.org");
    let now = wall_clock();
    let bundles = bundles_of(&[&td]);
    let server = server_config(
        td.resolver("/impostor", Duration::from_secs(3600), now),
        Arc::new(SpiffeClientVerifier::optional(
            bundles.clone(),
            td_policy(&td),
        )),
    )
    .unwrap();
    let client = client_config(
        None,
        Arc::new(SpiffeServerVerifier::new(
            bundles,
            PeerPolicy::OneOf(vec![
                SpiffeId::parse("spiffe://example.org/issuer").unwrap(),
            ]),
        )),
    )
    .unwrap();
    let (client, _) = handshake(server, client).await;
    let error = client.unwrap_err();
    assert!(error.contains("not authorized"), "{error}");
}

#[tokio::test]
async fn client_of_another_trust_domain_is_rejected() {
    let ours = Td::new("example.org");
    let theirs = Td::new("evil.example");
    let now = wall_clock();
    // The server knows both bundles but only admits its own trust domain.
    let bundles = bundles_of(&[&ours, &theirs]);
    let server = server_config(
        ours.resolver("/issuer", Duration::from_secs(3600), now),
        Arc::new(SpiffeClientVerifier::required(
            bundles.clone(),
            td_policy(&ours),
        )),
    )
    .unwrap();
    let client = client_config(
        Some(theirs.resolver("/agent", Duration::from_secs(3600), now)),
        Arc::new(SpiffeServerVerifier::new(bundles, td_policy(&ours))),
    )
    .unwrap();
    let (_, server) = handshake(server, client).await;
    assert!(server.is_err());
}

#[tokio::test]
async fn certificate_from_unknown_ca_is_rejected() {
    let ours = Td::new("example.org");
    let forger = Td::new("example.org");
    let now = wall_clock();
    let bundles = bundles_of(&[&ours]);
    let server = server_config(
        forger.resolver("/issuer", Duration::from_secs(3600), now),
        Arc::new(SpiffeClientVerifier::optional(
            bundles.clone(),
            td_policy(&ours),
        )),
    )
    .unwrap();
    let client = client_config(
        None,
        Arc::new(SpiffeServerVerifier::new(bundles, td_policy(&ours))),
    )
    .unwrap();
    let (client, _) = handshake(server, client).await;
    let error = client.unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn expired_client_svid_is_rejected() {
    let long_ago = wall_clock() - Duration::from_secs(7200);
    let td = Td::created_at("example.org", long_ago);
    let bundles = bundles_of(&[&td]);
    let server = server_config(
        td.resolver("/issuer", Duration::from_secs(3600), wall_clock()),
        Arc::new(SpiffeClientVerifier::required(
            bundles.clone(),
            td_policy(&td),
        )),
    )
    .unwrap();
    let client = client_config(
        Some(td.resolver("/agent", Duration::from_secs(60), long_ago)),
        Arc::new(SpiffeServerVerifier::new(bundles, td_policy(&td))),
    )
    .unwrap();
    let (_, server) = handshake(server, client).await;
    let error = server.unwrap_err();
    assert!(error.contains("Expired"), "{error}");
}

#[tokio::test]
async fn bundle_update_takes_effect_without_new_configs() {
    let old = Td::new("example.org");
    let new = Td::new("example.org");
    let now = wall_clock();
    let bundles = bundles_of(&[&old]);
    let verifier = Arc::new(SpiffeServerVerifier::new(bundles.clone(), td_policy(&old)));
    let resolver = new.resolver("/issuer", Duration::from_secs(3600), now);
    let make_server = || {
        server_config(
            resolver.clone(),
            Arc::new(SpiffeClientVerifier::optional(
                bundles.clone(),
                td_policy(&old),
            )),
        )
        .unwrap()
    };
    let client = client_config(None, verifier.clone()).unwrap();
    let (refused, _) = handshake(make_server(), client.clone()).await;
    assert!(refused.is_err(), "new CA not trusted yet");

    // Rotation publishes the new authority next to the old one.
    let mut both = old.bundle();
    both.x509_authorities.push(new.ca.certificate().clone());
    bundles.replace([both].into_iter().collect());
    let (accepted, _) = handshake(make_server(), client).await;
    assert_eq!(accepted, Ok(()));
}

#[tokio::test]
async fn grpc_over_spiffe_tls_reports_the_peer_id() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let td = Td::new("example.org");
    let now = wall_clock();
    let bundles = bundles_of(&[&td]);
    let server_tls = server_config(
        td.resolver("/issuer", Duration::from_secs(3600), now),
        Arc::new(SpiffeClientVerifier::optional(
            bundles.clone(),
            td_policy(&td),
        )),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen_in_server = seen.clone();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let intercepted = tonic::service::interceptor::InterceptedService::new(
        health,
        move |request: tonic::Request<()>| {
            let id = peer_spiffe_id(&request).map(|id| id.to_string());
            seen_in_server.lock().unwrap().push(id);
            Ok(request)
        },
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(intercepted)
            .serve_with_incoming(TlsIncoming::new(listener, Arc::new(server_tls))),
    );

    let verifier = Arc::new(SpiffeServerVerifier::new(bundles, td_policy(&td)));
    for resolver in [
        Some(td.resolver("/agent/a", Duration::from_secs(3600), now)),
        None,
    ] {
        let config = client_config(resolver, verifier.clone()).unwrap();
        let channel = connect_channel(&address.to_string(), Arc::new(config)).unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("spiffe://example.org/agent/a".to_string()), None]
    );
}
