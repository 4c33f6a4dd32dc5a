//! SVIDs for people and pipelines: an aggregated API
//! (`issuance.signet.dev/v1alpha1`) behind the Kubernetes API server.
//!
//! Going through the API server means any credential a kubeconfig holds
//! works (client certificates, tokens, OIDC, exec plugins), the API
//! server's RBAC decides who may ask at all (`create` on
//! `x509svidrequests` / `jwtsvidrequests`), and nobody needs a network path
//! to the operator. The API server forwards the authenticated user in
//! request headers ([`FrontProxy`]); the operator decides which identity
//! that user may hold with the same policy decision as for workloads, on
//! `user.*` attributes, so only Roles with `User` or `Group` subjects can
//! allow it. Nothing is stored: a request is answered with its SVID and
//! forgotten (like TokenRequest), and every outcome is audited.
//!
//! The caller generates the key; only a CSR travels.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer_protocol::{MAX_AUDIENCE_LEN, MAX_AUDIENCES};

use crate::cluster::front_proxy::FrontProxy;
use crate::http_server::PeerCertificates;
use crate::issuer::service::IssuerService;

/// The API group and version.
pub const GROUP: &str = "issuance.signet.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "issuance.signet.dev/v1alpha1";
/// The APIService that routes the group here.
pub const API_SERVICE: &str = "v1alpha1.issuance.signet.dev";
pub const X509_RESOURCE: &str = "x509svidrequests";
pub const X509_KIND: &str = "X509SVIDRequest";
pub const JWT_RESOURCE: &str = "jwtsvidrequests";
pub const JWT_KIND: &str = "JWTSVIDRequest";

/// A request body is a CSR and a few names.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Bytes of a WorkloadIdentity name (a Kubernetes object name).
const MAX_NAME_LEN: usize = 253;

/// The path of a resource of this API.
pub fn resource_path(resource: &str) -> String {
    format!("/apis/{API_VERSION}/{resource}")
}

/// `X509SVIDRequest`: asks for an X.509-SVID for a key the caller holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509SvidRequest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub spec: X509SvidRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<X509SvidRequestStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509SvidRequestSpec {
    /// The WorkloadIdentity to issue.
    pub workload_identity: String,
    /// PEM `CERTIFICATE REQUEST` for the caller's key; only the key is used.
    pub csr: String,
    /// Wanted lifetime ("15m"); shortened to the operator's maximum and the
    /// identity's own TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509SvidRequestStatus {
    pub spiffe_id: String,
    /// PEM certificates, leaf first.
    pub certificate_chain: String,
    /// PEM X.509 authorities of the trust domain, to verify peers with.
    pub trust_bundle: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Hex serial of the leaf.
    pub serial: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// `JWTSVIDRequest`: asks for a JWT-SVID for the given audiences.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtSvidRequest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    pub spec: JwtSvidRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JwtSvidRequestStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtSvidRequestSpec {
    pub workload_identity: String,
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtSvidRequestStatus {
    pub spiffe_id: String,
    pub token: String,
    pub expires_at: String,
    /// The token's `jti`, as in the audit log.
    pub jwt_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// How long SVIDs for people live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserTtls {
    /// When the request names none.
    pub default: Duration,
    /// Longest ever issued.
    pub max: Duration,
}

impl UserTtls {
    /// The lifetime to give for a requested one (the default when none is
    /// asked for), never above `max`; the identity's own TTL caps it again.
    fn cap(&self, wanted: Option<&str>) -> Result<Duration, ApiError> {
        let Some(text) = wanted else {
            return Ok(self.default.min(self.max));
        };
        let ttl = signet_policy::ttl::parse_duration(text)
            .map_err(|e| ApiError::BadRequest(format!("spec.ttl: {e}")))?;
        if ttl.is_zero() {
            return Err(ApiError::BadRequest("spec.ttl must be positive".into()));
        }
        Ok(ttl.min(self.max))
    }
}

/// Why a request was not answered with an SVID; the one place that becomes
/// an HTTP status (a Kubernetes `Status` object, which kubectl and client
/// libraries print).
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Refused { reason: String, message: String },
    #[error("{message}")]
    Unavailable { reason: String, message: String },
    #[error("the request body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("{0} is not served here")]
    NotFound(String),
    #[error("{0} is not allowed; only POST creates a request")]
    MethodNotAllowed(String),
}

impl ApiError {
    fn from_denial(denial: pb::Denial) -> Self {
        if denial.retryable {
            ApiError::Unavailable {
                reason: denial.reason,
                message: denial.message,
            }
        } else {
            ApiError::Refused {
                reason: denial.reason,
                message: denial.message,
            }
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (code, reason) = match &self {
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Refused { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        };
        let mut status = serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        if let ApiError::Refused { reason, .. } | ApiError::Unavailable { reason, .. } = &self {
            // Signet's own reason (no_matching_rule, role_denied, ...).
            status["details"] = serde_json::json!({
                "group": GROUP,
                "causes": [{"reason": reason, "message": self.to_string()}],
            });
        }
        json_response(code, &status)
    }
}

fn json_response(code: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The aggregated API's HTTP handler.
#[derive(Clone)]
pub struct UserIssuance {
    pub front_proxy: Arc<FrontProxy>,
    pub issuer: IssuerService,
    pub ttls: UserTtls,
}

impl crate::http_server::Handler for UserIssuance {
    fn handle(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> {
        let this = self.clone();
        Box::pin(async move {
            match this.route(request).await {
                Ok(response) => response,
                Err(error) => {
                    if matches!(error, ApiError::Unauthenticated(_)) {
                        tracing::warn!(%error, "request not from the API server's front proxy refused");
                    }
                    error.into_response()
                }
            }
        })
    }
}

impl UserIssuance {
    async fn route(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
        let peer = request.extensions().get::<PeerCertificates>().cloned();
        let peer = peer.as_ref().map(|p| p.0.as_slice());
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        // Discovery and health are the API server's own calls; they need
        // its certificate too (checked by TLS), but no user.
        match (method.clone(), path.as_str()) {
            (Method::GET, "/healthz" | "/readyz" | "/livez") => {
                return Ok(json_response(StatusCode::OK, &"ok"));
            }
            (Method::GET, "/apis") => return Ok(json_response(StatusCode::OK, &group_list())),
            (Method::GET, p) if p == format!("/apis/{GROUP}") => {
                return Ok(json_response(StatusCode::OK, &group()));
            }
            (Method::GET, p) if p == format!("/apis/{API_VERSION}") => {
                return Ok(json_response(StatusCode::OK, &resource_list()));
            }
            _ => {}
        }
        let x509 = path == resource_path(X509_RESOURCE);
        let jwt = path == resource_path(JWT_RESOURCE);
        if !x509 && !jwt {
            // The API server only asks for discovery and the two
            // resources; anything else is worth seeing in the log.
            tracing::warn!(%method, %path, version = ?request.version(), "unknown path on the user issuance API");
            return Err(ApiError::NotFound(path));
        }
        if method != Method::POST {
            return Err(ApiError::MethodNotAllowed(method.to_string()));
        }
        let user = self
            .front_proxy
            .authenticate(peer, request.headers())
            .map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        if request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("dryRun=")))
        {
            return Err(ApiError::BadRequest(
                "dry run is not supported: a request is answered with a signed SVID".into(),
            ));
        }
        let body = Limited::new(request.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|_| ApiError::TooLarge)?
            .to_bytes();
        if x509 {
            let request: X509SvidRequest = parse_body(&body, X509_KIND)?;
            let answered = self.x509(&user, request)?;
            Ok(json_response(StatusCode::CREATED, &answered))
        } else {
            let request: JwtSvidRequest = parse_body(&body, JWT_KIND)?;
            let answered = self.jwt(&user, request)?;
            Ok(json_response(StatusCode::CREATED, &answered))
        }
    }

    fn x509(
        &self,
        user: &signet_policy::UserFacts,
        mut request: X509SvidRequest,
    ) -> Result<X509SvidRequest, ApiError> {
        let name = checked_name(&request.spec.workload_identity)?;
        let ttl = self.ttls.cap(request.spec.ttl.as_deref())?;
        let csr = signet_identity::x509::csr_from_pem(&request.spec.csr)
            .map_err(|e| ApiError::BadRequest(format!("spec.csr: {e}")))?;
        let key = crate::issuer::request::subject_key(&csr)
            .map_err(|e| ApiError::BadRequest(format!("spec.csr: {e}")))?;
        let (svid, bundle) = self
            .issuer
            .issue_user_x509(user, name, &key, ttl)
            .map_err(ApiError::from_denial)?;
        let chain: Vec<_> = svid
            .cert_chain
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect();
        tracing::info!(user = %user.name, identity = name, spiffe_id = %svid.spiffe_id, "X.509-SVID issued to a user");
        request.status = Some(X509SvidRequestStatus {
            spiffe_id: svid.spiffe_id,
            certificate_chain: signet_identity::x509::certs_to_pem(&chain),
            trust_bundle: bundle.pem.clone(),
            expires_at: rfc3339_unix(svid.expires_at_unix),
            serial: svid.serial,
            hint: svid.hint,
        });
        request.spec.csr.clear();
        Ok(stamp(request, X509_KIND))
    }

    fn jwt(
        &self,
        user: &signet_policy::UserFacts,
        mut request: JwtSvidRequest,
    ) -> Result<JwtSvidRequest, ApiError> {
        let name = checked_name(&request.spec.workload_identity)?;
        let ttl = self.ttls.cap(request.spec.ttl.as_deref())?;
        let audiences = &request.spec.audiences;
        let audiences_ok = !audiences.is_empty()
            && audiences.len() <= MAX_AUDIENCES
            && audiences
                .iter()
                .all(|a| !a.is_empty() && a.len() <= MAX_AUDIENCE_LEN);
        if !audiences_ok {
            return Err(ApiError::BadRequest(format!(
                "spec.audiences: 1 to {MAX_AUDIENCES} audiences of 1 to {MAX_AUDIENCE_LEN} bytes are required"
            )));
        }
        let svid = self
            .issuer
            .issue_user_jwt(user, name, audiences, ttl)
            .map_err(ApiError::from_denial)?;
        tracing::info!(user = %user.name, identity = name, spiffe_id = %svid.spiffe_id, "JWT-SVID issued to a user");
        request.status = Some(JwtSvidRequestStatus {
            spiffe_id: svid.spiffe_id,
            token: svid.token,
            expires_at: rfc3339_unix(svid.expires_at_unix),
            jwt_id: svid.jti,
            hint: svid.hint,
        });
        Ok(stamp(request, JWT_KIND))
    }
}

/// The request kinds: their `apiVersion` and `kind`.
trait ApiObject {
    fn type_fields(&mut self) -> (&mut String, &mut String);
}

impl ApiObject for X509SvidRequest {
    fn type_fields(&mut self) -> (&mut String, &mut String) {
        (&mut self.api_version, &mut self.kind)
    }
}

impl ApiObject for JwtSvidRequest {
    fn type_fields(&mut self) -> (&mut String, &mut String) {
        (&mut self.api_version, &mut self.kind)
    }
}

/// An answer: the request with its type set.
fn stamp<T: ApiObject>(mut object: T, kind: &str) -> T {
    let (api_version, found) = object.type_fields();
    *api_version = API_VERSION.into();
    *found = kind.into();
    object
}

/// Parses a request body of `kind`; `apiVersion` and `kind` may be left
/// out, but not be something else.
fn parse_body<T: for<'de> Deserialize<'de> + ApiObject>(
    body: &[u8],
    kind: &str,
) -> Result<T, ApiError> {
    let mut object: T = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("not a {kind}: {e}")))?;
    let (api_version, found) = object.type_fields();
    let expected = (api_version.is_empty() || api_version == API_VERSION)
        && (found.is_empty() || found == kind);
    if !expected {
        return Err(ApiError::BadRequest(format!(
            "expected {API_VERSION} {kind}, got {api_version} {found}"
        )));
    }
    Ok(object)
}

fn checked_name(name: &str) -> Result<&str, ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::BadRequest(format!(
            "spec.workloadIdentity: the name of a WorkloadIdentity (1 to {MAX_NAME_LEN} bytes) is required"
        )));
    }
    Ok(name)
}

fn rfc3339_unix(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0));
    crate::audit::rfc3339(time)
}

fn group_list() -> serde_json::Value {
    serde_json::json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [group()],
    })
}

fn group() -> serde_json::Value {
    let version = serde_json::json!({"groupVersion": API_VERSION, "version": VERSION});
    serde_json::json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [version],
        "preferredVersion": version,
    })
}

fn resource_list() -> serde_json::Value {
    let resource = |name: &str, singular: &str, kind: &str| {
        serde_json::json!({
            "name": name,
            "singularName": singular,
            "namespaced": false,
            "kind": kind,
            "verbs": ["create"],
        })
    };
    serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": [
            resource(X509_RESOURCE, "x509svidrequest", X509_KIND),
            resource(JWT_RESOURCE, "jwtsvidrequest", JWT_KIND),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_the_default_or_the_asked_never_above_the_maximum() {
        let ttls = UserTtls {
            default: Duration::from_secs(900),
            max: Duration::from_secs(3600),
        };
        assert_eq!(ttls.cap(None).unwrap(), Duration::from_secs(900));
        assert_eq!(ttls.cap(Some("5m")).unwrap(), Duration::from_secs(300));
        assert_eq!(ttls.cap(Some("24h")).unwrap(), Duration::from_secs(3600));
        for bad in ["0s", "forever", "-5m", ""] {
            assert!(
                matches!(ttls.cap(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn bodies_of_another_kind_are_refused_and_refusals_become_statuses() {
        let body = br#"{"apiVersion":"issuance.signet.dev/v1alpha1","kind":"JWTSVIDRequest","spec":{"workloadIdentity":"w","audiences":["a"]}}"#;
        assert!(parse_body::<JwtSvidRequest>(body, JWT_KIND).is_ok());
        let untyped = br#"{"spec":{"workloadIdentity":"w","audiences":["a"]}}"#;
        assert!(parse_body::<JwtSvidRequest>(untyped, JWT_KIND).is_ok());
        let wrong = br#"{"apiVersion":"v1","kind":"JWTSVIDRequest","spec":{"workloadIdentity":"w","audiences":["a"]}}"#;
        assert!(matches!(
            parse_body::<JwtSvidRequest>(wrong, JWT_KIND),
            Err(ApiError::BadRequest(_))
        ));
        assert!(parse_body::<X509SvidRequest>(b"{}", X509_KIND).is_err());

        let refused = ApiError::from_denial(pb::Denial {
            reason: "no_matching_rule".into(),
            message: "no rule matches".into(),
            retryable: false,
        })
        .into_response();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let retry = ApiError::from_denial(pb::Denial {
            reason: "signing_failed".into(),
            message: "no active authority".into(),
            retryable: true,
        });
        assert_eq!(
            retry.into_response().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            checked_name("").unwrap_err().into_response().status(),
            StatusCode::BAD_REQUEST
        );
        assert!(checked_name(&"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
