//! Envoy Secret Discovery Service (v3, state of the world) on the Workload
//! API socket.
//!
//! Resource names, as SPIRE and tbot serve them:
//! - `default`: the default X.509-SVID as a `tls_certificate` named "default";
//! - a SPIFFE ID: that SVID;
//! - `ROOTCA`: the own trust domain's CA certificates (`trusted_ca`);
//! - `ALL`: a validation context using the `envoy.tls.cert_validator.spiffe`
//!   validator with the own and every federated trust domain of the workload;
//! - a trust domain ID (`spiffe://example.org`): that trust domain's CAs.
//!
//! An empty name list returns everything. Names the workload has nothing for
//! are left out of the response (and logged once per stream), as SPIRE does:
//! Envoy keeps waiting for them, which is right for an SVID still being
//! issued, where an error (tbot's choice) would tear the stream down.
//!
//! Envoy sends no `workload.spiffe.io` header, so SDS does not require it
//! (SPIRE exempts SDS too). Callers are attested once per stream.
//!
//! Versions are a hash of the content: a response is sent when the content
//! the stream asked for changes (renewal, CA rotation, policy change) or the
//! requested names change. A NACK is logged and the rejected version is not
//! re-sent; the next change produces a new version.

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use prost::Message;
use signet_identity::x509::certs_to_pem;
use signet_identity::{PrivateKey, SpiffeId, TrustBundle};
use signet_proto::envoy::config::core::v3::{DataSource, TypedExtensionConfig, data_source};
use signet_proto::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use signet_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use signet_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use signet_proto::{
    SDS_SECRET_TYPE_URL, SPIFFE_CERT_VALIDATOR_CONFIG_TYPE_URL, SPIFFE_CERT_VALIDATOR_NAME,
};
use signet_runtime::audit::CredentialKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::error::{ApiError, code_of};
use super::state::ServerState;
use super::workload::first_ready_view;
use crate::cache::{IssuedX509, Subscription, ViewStatus, WorkloadBundles};

pub const DEFAULT_NAME: &str = "default";
pub const ROOTCA_NAME: &str = "ROOTCA";
pub const ALL_NAME: &str = "ALL";

pub struct SdsService {
    state: Arc<ServerState>,
}

impl SdsService {
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }
}

fn inline(bytes: impl Into<Vec<u8>>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.into())),
        watched_directory: None,
    })
}

fn pem_of(bundle: &TrustBundle) -> String {
    certs_to_pem(&bundle.x509_authorities)
}

/// A TLS certificate secret; `None` if the stored key cannot be read back
/// (never expected: the agent generated it).
fn tls_secret(name: &str, svid: &IssuedX509) -> Option<Secret> {
    let chain: Vec<rustls_pki_types::CertificateDer<'_>> = svid
        .cert_chain
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_slice()))
        .collect();
    let key_pem = match PrivateKey::from_pkcs8_der(&svid.private_key) {
        Ok(key) => key.to_pkcs8_pem(),
        Err(error) => {
            tracing::error!(spiffe_id = %svid.spiffe_id, %error, "unreadable SVID key");
            return None;
        }
    };
    Some(Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(certs_to_pem(&chain)),
            private_key: inline(key_pem.as_bytes().to_vec()),
            ..Default::default()
        })),
    })
}

fn trusted_ca_secret(name: &str, bundle: &TrustBundle) -> Secret {
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(pem_of(bundle)),
                ..Default::default()
            },
        )),
    }
}

fn spiffe_validator_secret(name: &str, bundles: &[&TrustBundle]) -> Secret {
    let config = SpiffeCertValidatorConfig {
        trust_domains: bundles
            .iter()
            .map(|bundle| spiffe_cert_validator_config::TrustDomain {
                name: bundle.trust_domain.to_string(),
                trust_bundle: inline(pem_of(bundle)),
            })
            .collect(),
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                custom_validator_config: Some(TypedExtensionConfig {
                    name: SPIFFE_CERT_VALIDATOR_NAME.to_owned(),
                    typed_config: Some(prost_types::Any {
                        type_url: SPIFFE_CERT_VALIDATOR_CONFIG_TYPE_URL.to_owned(),
                        value: config.encode_to_vec(),
                    }),
                }),
                ..Default::default()
            },
        )),
    }
}

/// The secrets for `names` (all when empty), and the names nothing was
/// found for.
pub fn build_secrets(
    svids: &[Arc<IssuedX509>],
    bundles: &WorkloadBundles,
    names: &[String],
) -> (Vec<Secret>, Vec<String>) {
    let own_td = bundles.trust_domain();
    let own = Some(&bundles.own);
    let federated: Vec<&TrustBundle> = bundles.federated.iter().collect();

    let everything: Vec<String>;
    let names = if names.is_empty() {
        let mut all = Vec::new();
        if !svids.is_empty() {
            all.push(DEFAULT_NAME.to_owned());
        }
        all.extend(svids.iter().map(|s| s.spiffe_id.to_string()));
        all.push(ROOTCA_NAME.to_owned());
        all.push(ALL_NAME.to_owned());
        all.push(own_td.id().to_string());
        all.extend(federated.iter().map(|b| b.trust_domain.id().to_string()));
        everything = all;
        &everything
    } else {
        names
    };

    let mut secrets = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let secret = match name.as_str() {
            DEFAULT_NAME => svids
                .first()
                .and_then(|svid| tls_secret(DEFAULT_NAME, svid)),
            ROOTCA_NAME => own.map(|bundle| trusted_ca_secret(ROOTCA_NAME, bundle)),
            ALL_NAME => {
                let mut all: Vec<&TrustBundle> = own.into_iter().collect();
                all.extend(federated.iter().copied());
                Some(spiffe_validator_secret(ALL_NAME, &all))
            }
            other => match SpiffeId::parse(other) {
                Ok(id) if id.path().is_empty() => bundles
                    .get(id.trust_domain())
                    .map(|bundle| trusted_ca_secret(other, bundle)),
                Ok(id) => svids
                    .iter()
                    .find(|svid| svid.spiffe_id == id)
                    .and_then(|svid| tls_secret(other, svid)),
                Err(_) => None,
            },
        };
        match secret {
            Some(secret) => secrets.push(secret),
            None => unknown.push(name.clone()),
        }
    }
    (secrets, unknown)
}

/// A response carrying `secrets`, versioned by their content.
pub fn response(secrets: &[Secret], nonce: String) -> DiscoveryResponse {
    let resources: Vec<prost_types::Any> = secrets
        .iter()
        .map(|secret| prost_types::Any {
            type_url: SDS_SECRET_TYPE_URL.to_owned(),
            value: secret.encode_to_vec(),
        })
        .collect();
    let mut hasher = DefaultHasher::new();
    for resource in &resources {
        resource.value.hash(&mut hasher);
    }
    DiscoveryResponse {
        version_info: format!("{:016x}", hasher.finish()),
        resources,
        canary: false,
        type_url: SDS_SECRET_TYPE_URL.to_owned(),
        nonce,
        control_plane: None,
    }
}

/// Resource names one request may ask for: a workload holds a handful of
/// SVIDs and bundles, and each name costs a lookup and a remembered warning.
pub const MAX_RESOURCE_NAMES: usize = 256;
/// Longest resource name: a SPIFFE ID is at most 2048 bytes.
const MAX_RESOURCE_NAME_LEN: usize = signet_identity::MAX_SPIFFE_ID_LEN;

/// The request's type and names, before anything is looked up.
fn check_request(request: &DiscoveryRequest) -> Result<(), ApiError> {
    if !(request.type_url.is_empty() || request.type_url == SDS_SECRET_TYPE_URL) {
        return Err(ApiError::InvalidArgument(format!(
            "unsupported type_url {:?}; this server only serves {SDS_SECRET_TYPE_URL}",
            request.type_url.chars().take(128).collect::<String>()
        )));
    }
    if request.resource_names.len() > MAX_RESOURCE_NAMES {
        return Err(ApiError::InvalidArgument(format!(
            "{} resource names requested; at most {MAX_RESOURCE_NAMES} are served per request",
            request.resource_names.len()
        )));
    }
    if let Some(long) = request
        .resource_names
        .iter()
        .find(|n| n.len() > MAX_RESOURCE_NAME_LEN)
    {
        return Err(ApiError::InvalidArgument(format!(
            "a resource name of {} bytes is longer than any SPIFFE ID ({MAX_RESOURCE_NAME_LEN})",
            long.len()
        )));
    }
    Ok(())
}

/// One StreamSecrets conversation.
struct SdsStream {
    subscription: Subscription,
    sender: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    names: Option<Vec<String>>,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    nonces: u64,
    warned: HashSet<String>,
}

impl SdsStream {
    /// Sends the current state if it differs from what was last sent.
    /// Returns false when the stream is over.
    async fn push(&mut self, force: bool) -> bool {
        let Some(names) = self.names.clone() else {
            return true;
        };
        let view = self.subscription.view().borrow_and_update().clone();
        if let ViewStatus::NoIdentity { reason } = &view.status {
            let _ = self
                .sender
                .send(Err(ApiError::NoIdentity(reason.clone()).into()))
                .await;
            return false;
        }
        let Some(bundles) = view.bundles.clone() else {
            return true;
        };
        let (secrets, unknown) = build_secrets(&view.svids, &bundles, &names);
        for name in unknown {
            if self.warned.insert(name.clone()) && view.status == ViewStatus::Ready {
                tracing::warn!(
                    name,
                    "SDS resource not available to this workload; leaving it out"
                );
            }
        }
        if secrets.is_empty() {
            // Nothing yet (SVIDs being issued): Envoy keeps waiting.
            return true;
        }
        self.nonces += 1;
        let message = response(&secrets, self.nonces.to_string());
        if !force && self.sent_version.as_deref() == Some(message.version_info.as_str()) {
            return true;
        }
        self.sent_version = Some(message.version_info.clone());
        self.sent_nonce = Some(message.nonce.clone());
        self.sender.send(Ok(message)).await.is_ok()
    }

    /// Handles one request; false when the stream is over.
    async fn request(&mut self, request: DiscoveryRequest) -> bool {
        if let Err(error) = check_request(&request) {
            let _ = self.sender.send(Err(error.into())).await;
            return false;
        }
        if !request.response_nonce.is_empty()
            && self.sent_nonce.as_deref() != Some(request.response_nonce.as_str())
        {
            // Answers an older response; a newer one is on its way.
            return true;
        }
        let names_changed = self.names.as_ref() != Some(&request.resource_names);
        if let Some(error) = &request.error_detail {
            tracing::warn!(
                version = %request.version_info,
                code = error.code,
                message = %error.message,
                "Envoy rejected an SDS response (NACK); waiting for the next change"
            );
            if !names_changed {
                return true;
            }
        }
        if names_changed {
            // Warnings are remembered for the names asked for now only, so a
            // client cycling through names cannot grow this set without end.
            self.warned
                .retain(|name| request.resource_names.contains(name));
            self.names = Some(request.resource_names);
            return self.push(true).await;
        }
        // An ACK of the current version: nothing to do.
        true
    }

    async fn run(
        mut self,
        mut requests: Streaming<DiscoveryRequest>,
        stopped: impl Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        loop {
            let keep_going = tokio::select! {
                () = &mut stopped => {
                    let _ = self
                        .sender
                        .send(Err(ApiError::Unavailable("the agent is shutting down".into()).into()))
                        .await;
                    false
                }
                request = requests.message() => match request {
                    Ok(Some(request)) => self.request(request).await,
                    Ok(None) => false,
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "SDS stream ended by the client");
                        false
                    }
                },
                changed = self.subscription.view().changed() => {
                    changed.is_ok() && self.push(false).await
                }
                () = self.sender.closed() => false,
            };
            if !keep_going {
                return;
            }
        }
    }
}

impl SdsService {
    async fn start_stream(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<ReceiverStream<Result<DiscoveryResponse, Status>>, ApiError> {
        let workload = self
            .state
            .attest(&request, CredentialKind::X509Svid)
            .await?;
        let subscribed = async {
            let mut subscription = self.state.cache.subscribe(&workload).await?;
            let status = subscription.view().borrow().status.clone();
            match status {
                ViewStatus::NoIdentity { reason } => Err(ApiError::NoIdentity(reason)),
                _ => Ok(subscription),
            }
        }
        .await;
        let subscription = self
            .state
            .audited(&workload, CredentialKind::X509Svid, subscribed)?;
        let (sender, receiver) = mpsc::channel(4);
        let stream = SdsStream {
            subscription,
            sender,
            names: None,
            sent_version: None,
            sent_nonce: None,
            nonces: 0,
            warned: HashSet::new(),
        };
        tokio::spawn(stream.run(request.into_inner(), self.state.stopped()));
        Ok(ReceiverStream::new(receiver))
    }

    async fn fetch(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<DiscoveryResponse, ApiError> {
        check_request(request.get_ref())?;
        let workload = self
            .state
            .attest(&request, CredentialKind::X509Svid)
            .await?;
        let ready = async {
            let mut subscription = self.state.cache.subscribe(&workload).await?;
            first_ready_view(&self.state, &mut subscription).await
        }
        .await;
        let view = self
            .state
            .audited(&workload, CredentialKind::X509Svid, ready)?;
        let bundles = view
            .bundles
            .clone()
            .ok_or_else(|| ApiError::Unavailable("SVIDs are still being issued; retry".into()))?;
        let (secrets, _) = build_secrets(&view.svids, &bundles, &request.get_ref().resource_names);
        Ok(response(&secrets, String::new()))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let result = self
            .start_stream(request)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state
            .metrics
            .request("StreamSecrets", code_of(&result));
        result
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let result = self
            .fetch(request)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state.metrics.request("FetchSecrets", code_of(&result));
        result
    }
}
