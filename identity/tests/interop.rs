//! SVIDs minted by signet-identity, checked by independent implementations:
//! the `spiffe` crate's X.509 and JWT validation, and rustls/webpki in a real
//! mutual-TLS handshake.

// Test helpers outside #[test] functions panic on setup failure too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Map;
use signet_identity::x509::{certs_to_der_concat, spiffe_id_from_cert, verify_x509_svid};
use signet_identity::{
    CaConfig, CaKeyset, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain, X509Svid,
    X509SvidParams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOUR: Duration = Duration::from_secs(3600);

/// The peers under test check validity against the real clock.
fn wall_clock() -> SystemTime {
    signet_runtime::clock::Clock::new().now()
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn keyset(x509: KeyType, jwt: KeyType) -> CaKeyset {
    let mut config = CaConfig::new(td());
    config.x509_key_type = x509;
    config.jwt_key_type = jwt;
    // rustls and the spiffe crate read the real clock, so these use it too.
    CaKeyset::new(config, wall_clock()).unwrap()
}

fn issue(ks: &CaKeyset, id: &str, dns: &[&str], key_type: KeyType) -> (X509Svid, PrivateKey) {
    let key = PrivateKey::generate(key_type).unwrap();
    let mut params = X509SvidParams::new(SpiffeId::parse(id).unwrap(), HOUR);
    params.dns_sans = dns.iter().map(|s| (*s).to_owned()).collect();
    let svid = ks
        .mint_x509_svid(&params, key.public_key(), wall_clock())
        .unwrap();
    (svid, key)
}

#[test]
fn spiffe_crate_accepts_x509_svids() {
    for (ca_type, leaf_type) in [
        (KeyType::EcP256, KeyType::EcP256),
        (KeyType::EcP384, KeyType::EcP384),
        (KeyType::Rsa2048, KeyType::Rsa2048),
        (KeyType::EcP256, KeyType::Rsa2048),
    ] {
        let ks = keyset(ca_type, KeyType::EcP256);
        let (svid, key) = issue(&ks, "spiffe://example.org/ns/web", &["web.svc"], leaf_type);
        let chain = certs_to_der_concat(&svid.cert_chain);
        let parsed = spiffe::X509Svid::parse_from_der(&chain, &key.to_pkcs8_der())
            .unwrap_or_else(|e| panic!("{ca_type} CA, {leaf_type} leaf: {e}"));
        assert_eq!(
            parsed.spiffe_id().to_string(),
            "spiffe://example.org/ns/web"
        );
        assert_eq!(parsed.cert_chain().len(), 1);

        let bundle = ks.bundle(wall_clock());
        let spiffe_td = spiffe::TrustDomain::new("example.org").unwrap();
        let x509_bundle =
            spiffe::X509Bundle::parse_from_der(spiffe_td, &bundle.to_x509_der()).unwrap();
        assert_eq!(x509_bundle.authorities().len(), 1);
    }
}

#[test]
fn spiffe_crate_rejects_a_ca_as_svid() {
    // Our CA certificate is a valid CA but not an SVID leaf; both libraries agree.
    let ks = keyset(KeyType::EcP256, KeyType::EcP256);
    let ca = ks.active_x509().unwrap();
    let chain = certs_to_der_concat(std::slice::from_ref(ca.certificate()));
    assert!(spiffe::X509Svid::parse_from_der(&chain, &ca.key().to_pkcs8_der()).is_err());
    let bundle = ks.bundle(wall_clock());
    assert!(
        verify_x509_svid(
            std::slice::from_ref(ca.certificate()),
            &bundle,
            wall_clock()
        )
        .is_err()
    );
}

#[test]
fn spiffe_crate_validates_jwt_svids() {
    for jwt_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let ks = keyset(KeyType::EcP256, jwt_type);
        let now = wall_clock();
        let sub = SpiffeId::parse("spiffe://example.org/ns/web").unwrap();
        let svid = ks
            .mint_jwt_svid(
                &sub,
                &["reports".to_owned()],
                Duration::from_secs(300),
                &Map::new(),
                now,
            )
            .unwrap();
        let jwks = ks.bundle(now).to_jwks_json().unwrap();
        let spiffe_td = spiffe::TrustDomain::new("example.org").unwrap();
        let bundle = spiffe::JwtBundle::from_jwt_authorities(spiffe_td, jwks.as_bytes()).unwrap();
        let mut set = spiffe::JwtBundleSet::new();
        set.add_bundle(bundle);
        let parsed = spiffe::JwtSvid::parse_and_validate(&svid.token, &set, &["reports"])
            .unwrap_or_else(|e| panic!("{jwt_type}: {e}"));
        assert_eq!(parsed.spiffe_id().to_string(), sub.to_string());
        assert_eq!(parsed.key_id(), ks.active_jwt().unwrap().key_id());
        assert!(spiffe::JwtSvid::parse_and_validate(&svid.token, &set, &["other"]).is_err());
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(bundle: &TrustBundle) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in &bundle.x509_authorities {
        roots.add(cert.clone()).unwrap();
    }
    Arc::new(roots)
}

fn key_der(key: &PrivateKey) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_pkcs8_der().to_vec()))
}

/// Runs a mutual-TLS handshake over an in-memory duplex; returns the SPIFFE
/// IDs each side saw for its peer, or the first error.
async fn handshake(
    server: (&X509Svid, &PrivateKey),
    server_trusts: &TrustBundle,
    client: (&X509Svid, &PrivateKey),
    client_trusts: &TrustBundle,
) -> Result<(SpiffeId, SpiffeId), String> {
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots(server_trusts), provider())
            .build()
            .map_err(|e| e.to_string())?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server.0.cert_chain.clone(), key_der(server.1))
        .map_err(|e| e.to_string())?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots(client_trusts), provider())
            .build()
            .map_err(|e| e.to_string())?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(client.0.cert_chain.clone(), key_der(client.1))
        .map_err(|e| e.to_string())?;

    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let server_task = tokio::spawn(async move {
        let mut tls = acceptor
            .accept(server_io)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no client certificate")?[0]
            .clone();
        spiffe_id_from_cert(&peer).map_err(|e| e.to_string())
    });
    let name = ServerName::try_from("server.example.org").map_err(|e| e.to_string())?;
    let client_side = async {
        let mut tls = connector
            .connect(name, client_io)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"pong" {
            return Err("bad reply".to_owned());
        }
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .ok_or("no server certificate")?
            .to_vec();
        // Beyond what webpki checked, apply the SPIFFE rules to the peer chain.
        verify_x509_svid(&chain, client_trusts, wall_clock()).map_err(|e| e.to_string())?;
        spiffe_id_from_cert(&chain[0]).map_err(|e| e.to_string())
    };
    let client_result = client_side.await;
    let server_result = server_task.await.map_err(|e| e.to_string())?;
    Ok((server_result?, client_result?))
}

#[tokio::test]
async fn mutual_tls_between_two_svids() {
    for (ca_type, server_type, client_type) in [
        (KeyType::EcP256, KeyType::EcP256, KeyType::EcP256),
        (KeyType::EcP384, KeyType::EcP384, KeyType::EcP256),
        (KeyType::Rsa2048, KeyType::Rsa2048, KeyType::EcP384),
    ] {
        let ks = keyset(ca_type, KeyType::EcP256);
        let bundle = ks.bundle(wall_clock());
        let server = issue(
            &ks,
            "spiffe://example.org/server",
            &["server.example.org"],
            server_type,
        );
        let client = issue(&ks, "spiffe://example.org/client", &[], client_type);
        let (seen_by_server, seen_by_client) = handshake(
            (&server.0, &server.1),
            &bundle,
            (&client.0, &client.1),
            &bundle,
        )
        .await
        .unwrap_or_else(|e| panic!("{ca_type}/{server_type}/{client_type}: {e}"));
        assert_eq!(seen_by_server.as_str(), "spiffe://example.org/client");
        assert_eq!(seen_by_client.as_str(), "spiffe://example.org/server");
    }
}

#[tokio::test]
async fn mutual_tls_fails_across_unrelated_cas() {
    let ours = keyset(KeyType::EcP256, KeyType::EcP256);
    let theirs = keyset(KeyType::EcP256, KeyType::EcP256);
    let server = issue(
        &ours,
        "spiffe://example.org/server",
        &["server.example.org"],
        KeyType::EcP256,
    );
    let stranger = issue(&theirs, "spiffe://example.org/client", &[], KeyType::EcP256);
    let ours_bundle = ours.bundle(wall_clock());
    let theirs_bundle = theirs.bundle(wall_clock());
    // The server does not trust the client's CA.
    let err = handshake(
        (&server.0, &server.1),
        &ours_bundle,
        (&stranger.0, &stranger.1),
        &ours_bundle,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("UnknownIssuer"),
        "{err}"
    );
    // The client does not trust the server's CA.
    let client = issue(&ours, "spiffe://example.org/client", &[], KeyType::EcP256);
    let err = handshake(
        (&server.0, &server.1),
        &ours_bundle,
        (&client.0, &client.1),
        &theirs_bundle,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownCA") || err.contains("UnknownIssuer"),
        "{err}"
    );
}

#[tokio::test]
async fn mutual_tls_survives_ca_rotation() {
    // Peers holding the bundle published at prepare time accept SVIDs from the
    // successor CA after activation, and vice versa.
    let start = wall_clock() - 21 * HOUR;
    let mut ks = CaKeyset::new(CaConfig::new(td()), start).unwrap();
    ks.rotate(start + 12 * HOUR).unwrap();
    let published = ks.bundle(start + 12 * HOUR);
    let old_key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let mut params = X509SvidParams::new(
        SpiffeId::parse("spiffe://example.org/server").unwrap(),
        10 * HOUR,
    );
    params.dns_sans = vec!["server.example.org".to_owned()];
    let old_server = ks
        .mint_x509_svid(&params, old_key.public_key(), start + 19 * HOUR)
        .unwrap();
    ks.rotate(start + 20 * HOUR).unwrap();
    let client = issue(&ks, "spiffe://example.org/client", &[], KeyType::EcP256);
    let current = ks.bundle(wall_clock());
    let (by_server, by_client) = handshake(
        (&old_server, &old_key),
        &published,
        (&client.0, &client.1),
        &current,
    )
    .await
    .unwrap();
    assert_eq!(by_server.as_str(), "spiffe://example.org/client");
    assert_eq!(by_client.as_str(), "spiffe://example.org/server");
}
