//! Trusting the Kubernetes API server's front proxy: how the operator's
//! aggregated API learns who the API server authenticated.
//!
//! The API server forwards a request for an aggregated API with the caller's
//! user name, UID and groups in request headers, over a TLS connection on
//! which it presents its front-proxy client certificate. Those headers are
//! believed only on a connection whose client certificate chains to the
//! request-header CA and, when the API server names any, carries one of the
//! allowed common names; anyone else could write the same headers. The CA,
//! allowed names and header names come from the API server itself, in the
//! `kube-system/extension-apiserver-authentication` ConfigMap, and are
//! re-read as it changes (CA rotation).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use signet_policy::UserFacts;

/// Where the API server publishes its request-header settings.
pub const AUTHENTICATION_NAMESPACE: &str = "kube-system";
pub const AUTHENTICATION_CONFIG_MAP: &str = "extension-apiserver-authentication";

/// How often the ConfigMap is re-read (the API server rewrites it when its
/// front-proxy CA or flags change, which restarts it anyway).
const REFRESH: Duration = Duration::from_secs(60);

/// Bounds what a forwarded identity may carry: the API server sends few.
const MAX_GROUPS: usize = 256;
const MAX_HEADER_VALUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrontProxyError {
    #[error(
        "the ConfigMap has no {0} (is the API server run with --requestheader-client-ca-file?)"
    )]
    Missing(&'static str),
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("client CA: {0}")]
    Verifier(String),
}

/// Why a request's forwarded identity was not believed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotFromFrontProxy {
    #[error("no client certificate from the API server's front proxy")]
    NoCertificate,
    #[error("the client certificate's common name {0:?} is not an allowed front-proxy name")]
    NameNotAllowed(String),
    #[error("the front proxy forwarded no user name")]
    NoUser,
    #[error("the forwarded identity is malformed: {0}")]
    Malformed(&'static str),
}

/// The API server's `--requestheader-*` settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaderSettings {
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Empty: any certificate from the CA.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

impl RequestHeaderSettings {
    /// Reads the settings from the ConfigMap's data.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Self, FrontProxyError> {
        let pem = data
            .get("requestheader-client-ca-file")
            .filter(|pem| !pem.trim().is_empty())
            .ok_or(FrontProxyError::Missing("requestheader-client-ca-file"))?;
        let client_ca =
            signet_identity::x509::certs_from_pem(pem).map_err(|e| FrontProxyError::Invalid {
                key: "requestheader-client-ca-file",
                message: e.to_string(),
            })?;
        if client_ca.is_empty() {
            return Err(FrontProxyError::Missing("requestheader-client-ca-file"));
        }
        // Lists are JSON arrays of strings in this ConfigMap.
        let list = |key: &'static str| -> Result<Vec<String>, FrontProxyError> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(json) => serde_json::from_str(json).map_err(|e| FrontProxyError::Invalid {
                    key,
                    message: e.to_string(),
                }),
            }
        };
        let settings = Self {
            client_ca,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            uid_headers: list("requestheader-uid-headers")?,
            group_headers: list("requestheader-group-headers")?,
        };
        if settings.username_headers.is_empty() {
            return Err(FrontProxyError::Missing("requestheader-username-headers"));
        }
        Ok(settings)
    }
}

struct Loaded {
    settings: RequestHeaderSettings,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The front proxy as last read; also the TLS client-certificate verifier
/// of the aggregated API. Refuses every client until first loaded.
pub struct FrontProxy {
    loaded: RwLock<Option<Arc<Loaded>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for FrontProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontProxy")
            .field("loaded", &self.current().map(|l| l.settings.clone()))
            .finish()
    }
}

impl Default for FrontProxy {
    fn default() -> Self {
        Self {
            loaded: RwLock::new(None),
            provider: signet_tls::provider(),
        }
    }
}

impl FrontProxy {
    fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Trusts `settings` from now on; unchanged settings are a no-op.
    pub fn load(&self, settings: RequestHeaderSettings) -> Result<bool, FrontProxyError> {
        if self
            .current()
            .is_some_and(|current| current.settings == settings)
        {
            return Ok(false);
        }
        let mut roots = RootCertStore::empty();
        for ca in &settings.client_ca {
            roots
                .add(ca.clone())
                .map_err(|e| FrontProxyError::Verifier(e.to_string()))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| FrontProxyError::Verifier(e.to_string()))?;
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arc::new(Loaded { settings, verifier }));
        Ok(true)
    }

    /// Who the API server says is asking, if the connection is the API
    /// server's: `peer` are the client certificates the TLS handshake
    /// verified (leaf first).
    pub fn authenticate(
        &self,
        peer: Option<&[CertificateDer<'static>]>,
        headers: &HeaderMap,
    ) -> Result<UserFacts, NotFromFrontProxy> {
        let loaded = self.current().ok_or(NotFromFrontProxy::NoCertificate)?;
        let settings = &loaded.settings;
        let leaf = peer
            .and_then(<[_]>::first)
            .ok_or(NotFromFrontProxy::NoCertificate)?;
        if !settings.allowed_names.is_empty() {
            let name = common_name(leaf).unwrap_or_default();
            if !settings.allowed_names.contains(&name) {
                return Err(NotFromFrontProxy::NameNotAllowed(name));
            }
        }
        let name =
            first_value(headers, &settings.username_headers)?.ok_or(NotFromFrontProxy::NoUser)?;
        let uid = first_value(headers, &settings.uid_headers)?;
        let mut groups = Vec::new();
        for header in &settings.group_headers {
            for value in headers.get_all(header.as_str()) {
                if groups.len() == MAX_GROUPS {
                    return Err(NotFromFrontProxy::Malformed("too many groups"));
                }
                groups.push(header_text(value)?);
            }
        }
        Ok(UserFacts { name, uid, groups })
    }

    /// Keeps the settings current from the API server's ConfigMap, until the
    /// task is dropped.
    pub async fn follow(self: Arc<Self>, api: Api<ConfigMap>) {
        let mut logged_failure = false;
        loop {
            match api.get_opt(AUTHENTICATION_CONFIG_MAP).await {
                Ok(Some(map)) => {
                    let data = map.data.unwrap_or_default();
                    match RequestHeaderSettings::from_config_map(&data).and_then(|s| self.load(s)) {
                        Ok(true) => {
                            logged_failure = false;
                            tracing::info!("front-proxy client CA and request headers loaded");
                        }
                        Ok(false) => {}
                        Err(error) if !logged_failure => {
                            logged_failure = true;
                            tracing::warn!(%error, "front-proxy settings unusable; SVIDs for people are refused until they are");
                        }
                        Err(_) => {}
                    }
                }
                Ok(None) if !logged_failure => {
                    logged_failure = true;
                    tracing::warn!(
                        "{AUTHENTICATION_NAMESPACE}/{AUTHENTICATION_CONFIG_MAP} not found; SVIDs for people are refused"
                    );
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "reading the front-proxy settings failed; retrying");
                }
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// The TLS client verifier backed by the current settings.
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(FrontProxyVerifier(self.clone()))
    }
}

fn first_value(headers: &HeaderMap, names: &[String]) -> Result<Option<String>, NotFromFrontProxy> {
    for name in names {
        if let Some(value) = headers.get(name.as_str()) {
            let value = header_text(value)?;
            if !value.is_empty() {
                return Ok(Some(value));
            }
        }
    }
    Ok(None)
}

fn header_text(value: &hyper::header::HeaderValue) -> Result<String, NotFromFrontProxy> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(NotFromFrontProxy::Malformed("header value too long"));
    }
    value
        .to_str()
        .map(str::to_owned)
        .map_err(|_| NotFromFrontProxy::Malformed("header value is not visible ASCII"))
}

fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

#[derive(Debug)]
struct FrontProxyVerifier(Arc<FrontProxy>);

impl ClientCertVerifier for FrontProxyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let loaded = self.0.current().ok_or_else(|| {
            rustls::Error::General("the front-proxy client CA is not loaded yet".into())
        })?;
        loaded
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    struct Ca {
        cert: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap().der().clone();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn client(ca: &Ca, common_name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn config_map(ca: &Ca) -> BTreeMap<String, String> {
        [
            (
                "requestheader-client-ca-file",
                signet_identity::x509::certs_to_pem(std::slice::from_ref(&ca.cert)),
            ),
            (
                "requestheader-allowed-names",
                r#"["front-proxy-client"]"#.into(),
            ),
            (
                "requestheader-username-headers",
                r#"["X-Remote-User"]"#.into(),
            ),
            (
                "requestheader-group-headers",
                r#"["X-Remote-Group"]"#.into(),
            ),
            ("requestheader-uid-headers", r#"["X-Remote-Uid"]"#.into()),
            (
                "requestheader-extra-headers-prefix",
                r#"["X-Remote-Extra-"]"#.into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(
            signet_runtime::clock::Clock::new()
                .now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap(),
        )
    }

    #[test]
    fn only_the_api_servers_proxy_certificate_passes_the_handshake() {
        signet_tls::install_default_provider();
        let proxy_ca = ca("front-proxy-ca");
        let rogue_ca = ca("front-proxy-ca");
        let front_proxy = Arc::new(FrontProxy::default());
        let verifier = front_proxy.verifier();
        let genuine = client(&proxy_ca, "front-proxy-client");
        // Nothing is trusted before the API server's settings are read.
        assert!(verifier.verify_client_cert(&genuine, &[], now()).is_err());
        assert!(verifier.client_auth_mandatory());

        let settings = RequestHeaderSettings::from_config_map(&config_map(&proxy_ca)).unwrap();
        assert!(front_proxy.load(settings.clone()).unwrap());
        assert!(!front_proxy.load(settings).unwrap(), "unchanged is a no-op");
        assert!(verifier.verify_client_cert(&genuine, &[], now()).is_ok());
        // Same names, another CA: a forger's certificate.
        let forged = client(&rogue_ca, "front-proxy-client");
        assert!(verifier.verify_client_cert(&forged, &[], now()).is_err());

        // A rotated front-proxy CA replaces the old one.
        let rotated_ca = ca("front-proxy-ca-2");
        front_proxy
            .load(RequestHeaderSettings::from_config_map(&config_map(&rotated_ca)).unwrap())
            .unwrap();
        assert!(verifier.verify_client_cert(&genuine, &[], now()).is_err());
        let rotated = client(&rotated_ca, "front-proxy-client");
        assert!(verifier.verify_client_cert(&rotated, &[], now()).is_ok());
    }

    #[test]
    fn the_forwarded_user_is_believed_only_from_an_allowed_name() {
        let proxy_ca = ca("front-proxy-ca");
        let front_proxy = FrontProxy::default();
        front_proxy
            .load(RequestHeaderSettings::from_config_map(&config_map(&proxy_ca)).unwrap())
            .unwrap();
        let genuine = vec![client(&proxy_ca, "front-proxy-client")];
        let forwarded = headers(&[
            ("X-Remote-User", "jane@example.com"),
            ("X-Remote-Uid", "u-1"),
            ("X-Remote-Group", "sre"),
            ("X-Remote-Group", "system:authenticated"),
        ]);
        assert_eq!(
            front_proxy.authenticate(Some(&genuine), &forwarded),
            Ok(UserFacts {
                name: "jane@example.com".into(),
                uid: Some("u-1".into()),
                groups: vec!["sre".into(), "system:authenticated".into()],
            })
        );
        // Another certificate of the same CA (say a kubelet's, if the CA
        // were shared) with a name the API server did not allow.
        let other = vec![client(&proxy_ca, "system:node:vm")];
        assert_eq!(
            front_proxy.authenticate(Some(&other), &forwarded),
            Err(NotFromFrontProxy::NameNotAllowed("system:node:vm".into()))
        );
        assert_eq!(
            front_proxy.authenticate(None, &forwarded),
            Err(NotFromFrontProxy::NoCertificate)
        );
        assert_eq!(
            front_proxy.authenticate(Some(&genuine), &headers(&[("X-Remote-Group", "sre")])),
            Err(NotFromFrontProxy::NoUser)
        );
        let many: Vec<(&str, &str)> = (0..=MAX_GROUPS).map(|_| ("X-Remote-Group", "g")).collect();
        let mut flood = headers(&many);
        flood.append("X-Remote-User", "jane".parse().unwrap());
        assert!(matches!(
            front_proxy.authenticate(Some(&genuine), &flood),
            Err(NotFromFrontProxy::Malformed(_))
        ));
    }

    #[test]
    fn settings_without_a_ca_or_user_header_are_refused() {
        let proxy_ca = ca("front-proxy-ca");
        let mut data = config_map(&proxy_ca);
        data.remove("requestheader-client-ca-file");
        assert!(matches!(
            RequestHeaderSettings::from_config_map(&data),
            Err(FrontProxyError::Missing("requestheader-client-ca-file"))
        ));
        let mut data = config_map(&proxy_ca);
        data.insert("requestheader-username-headers".into(), "[]".into());
        assert!(RequestHeaderSettings::from_config_map(&data).is_err());
        let mut data = config_map(&proxy_ca);
        data.insert("requestheader-allowed-names".into(), "not json".into());
        assert!(matches!(
            RequestHeaderSettings::from_config_map(&data),
            Err(FrontProxyError::Invalid { .. })
        ));
    }
}
