//! The SPIFFE Workload API (all five RPCs), per the specification:
//! - every call must carry `workload.spiffe.io: true` exactly once, checked
//!   before anything else (InvalidArgument otherwise);
//! - callers are attested from their socket credentials on every call and
//!   stream; a caller with no identity gets PermissionDenied;
//! - stream messages carry the full state, the first one as soon as the
//!   cache has SVIDs (bounded wait, then Unavailable), the default SVID
//!   first, hints unique; when the last identity is revoked the stream ends
//!   with PermissionDenied;
//! - bundle streams send only when their content changes.
//!
//! Every stream follows the workload's one view in the cache (SVIDs and
//! bundles together) through the shared loop in `follow.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prost_types::value::Kind;
use signet_identity::{SpiffeId, TrustDomain, validate_jwt_svid};
use signet_proto::issuer_protocol::{MAX_AUDIENCE_LEN, MAX_AUDIENCES};
use signet_proto::workload as pb;
use signet_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use signet_proto::{WORKLOAD_API_HEADER, WORKLOAD_API_HEADER_VALUE};
use signet_runtime::audit::CredentialKind;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::error::{ApiError, code_of};
use super::follow::{Step, follow, unique_hints};
use super::state::ServerState;
use crate::cache::{IssuedX509, Subscription, ViewStatus, WorkloadBundles, WorkloadView};

pub struct WorkloadApiService {
    state: Arc<ServerState>,
}

impl WorkloadApiService {
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }
}

/// Checks the security header: present exactly once with value `true`.
pub fn check_header<T>(request: &Request<T>) -> Result<(), ApiError> {
    let mut values = request.metadata().get_all(WORKLOAD_API_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if value.as_bytes() == WORKLOAD_API_HEADER_VALUE.as_bytes() => Ok(()),
        _ => Err(ApiError::MissingHeader),
    }
}

/// Longest JWT-SVID accepted for validation: tokens this agent hands out
/// are well under 4 KiB even with generous extra claims.
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Audiences as the issuer accepts them, checked here first so an
/// oversized request is refused as InvalidArgument before anything is
/// signed, cached or logged.
fn check_audiences(audiences: &[String]) -> Result<(), ApiError> {
    if audiences.is_empty() {
        return Err(ApiError::InvalidArgument(
            "audience must be specified".into(),
        ));
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(ApiError::InvalidArgument(format!(
            "{} audiences requested; at most {MAX_AUDIENCES} are allowed",
            audiences.len()
        )));
    }
    if let Some(bad) = audiences
        .iter()
        .find(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LEN)
    {
        return Err(ApiError::InvalidArgument(format!(
            "an audience of {} bytes is not allowed: each must be 1 to {MAX_AUDIENCE_LEN} bytes",
            bad.len()
        )));
    }
    Ok(())
}

fn trust_domain_key(td: &TrustDomain) -> String {
    td.id().to_string()
}

/// The X509SVIDResponse for a view with SVIDs.
pub fn x509_response(svids: &[Arc<IssuedX509>], bundles: &WorkloadBundles) -> pb::X509svidResponse {
    let own_bundle = bundles.own.to_x509_der();
    let hints = unique_hints(
        svids
            .iter()
            .map(|s| (s.spiffe_id.as_str(), s.hint.as_deref())),
    );
    pb::X509svidResponse {
        svids: svids
            .iter()
            .zip(hints)
            .map(|(svid, hint)| pb::X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid.cert_chain.concat(),
                x509_svid_key: svid.private_key.to_vec(),
                bundle: own_bundle.clone(),
                hint,
            })
            .collect(),
        crl: Vec::new(),
        federated_bundles: bundles
            .federated
            .iter()
            .map(|b| (trust_domain_key(&b.trust_domain), b.to_x509_der()))
            .collect(),
    }
}

fn x509_bundles_response(bundles: &WorkloadBundles) -> Result<pb::X509BundlesResponse, ApiError> {
    Ok(pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles: bundles
            .all()
            .map(|b| (trust_domain_key(&b.trust_domain), b.to_x509_der()))
            .collect(),
    })
}

fn jwt_bundles_response(bundles: &WorkloadBundles) -> Result<pb::JwtBundlesResponse, ApiError> {
    let mut map = HashMap::new();
    for bundle in bundles.all() {
        let jwks = bundle
            .to_jwks_json()
            .map_err(|e| ApiError::Unavailable(format!("encoding the JWT bundle: {e}")))?;
        map.insert(trust_domain_key(&bundle.trust_domain), jwks.into_bytes());
    }
    Ok(pb::JwtBundlesResponse { bundles: map })
}

/// Converts JSON claims to a protobuf Struct.
pub fn claims_struct(claims: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    fn value(v: &serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
                values: items.iter().map(value).collect(),
            }),
            serde_json::Value::Object(map) => Kind::StructValue(claims_struct(map)),
        };
        prost_types::Value { kind: Some(kind) }
    }
    prost_types::Struct {
        fields: claims
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Waits for the subscription's first settled view and checks that it can
/// be served.
pub async fn first_ready_view(
    state: &ServerState,
    subscription: &mut Subscription,
) -> Result<WorkloadView, ApiError> {
    let view = subscription.first_settled(state.first_svid_timeout).await;
    match &view.status {
        ViewStatus::Ready => Ok(view),
        ViewStatus::NoIdentity { reason } => Err(ApiError::NoIdentity(reason.clone())),
        ViewStatus::Unavailable { message } => Err(ApiError::Unavailable(format!(
            "no SVID could be obtained: {message}"
        ))),
        ViewStatus::Pending => Err(ApiError::Unavailable(
            "SVIDs are still being issued; retry".into(),
        )),
    }
}

/// The next X.509-SVID stream message for a view: the full state while
/// there are SVIDs; PermissionDenied when the last identity is revoked,
/// Unavailable when no valid SVID is left and none can be obtained.
fn x509_step(view: &WorkloadView) -> Step<pb::X509svidResponse> {
    match (&view.status, &view.bundles) {
        (ViewStatus::NoIdentity { reason }, _) => {
            tracing::info!(%reason, "identity revoked; ending the X.509-SVID stream");
            Step::End(ApiError::NoIdentity(reason.clone()).into())
        }
        (_, Some(bundles)) if !view.svids.is_empty() => {
            Step::Send(x509_response(&view.svids, bundles))
        }
        (ViewStatus::Unavailable { message }, _) => {
            Step::End(ApiError::Unavailable(format!("no valid SVID left: {message}")).into())
        }
        _ => Step::Wait,
    }
}

impl WorkloadApiService {
    async fn start_x509(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<ReceiverStream<Result<pb::X509svidResponse, Status>>, ApiError> {
        check_header(&request)?;
        let workload = self
            .state
            .attest(&request, CredentialKind::X509Svid)
            .await?;
        let started = async {
            let mut subscription = self.state.cache.subscribe(&workload).await?;
            let view = first_ready_view(&self.state, &mut subscription).await?;
            match x509_step(&view) {
                Step::Send(first) => Ok((subscription, first)),
                _ => Err(ApiError::Unavailable(
                    "SVIDs are still being issued; retry".into(),
                )),
            }
        }
        .await;
        let (subscription, first) =
            self.state
                .audited(&workload, CredentialKind::X509Svid, started)?;
        Ok(follow(subscription, first, x509_step, self.state.stopped()))
    }

    /// A bundle stream: answered as soon as the policy gives the workload
    /// an identity (bundles need no SVID), then on every change of what
    /// `build` makes of the bundles.
    async fn start_bundles<M: Clone + PartialEq + Send + 'static>(
        &self,
        request: &Request<impl Sized>,
        credential: CredentialKind,
        build: fn(&WorkloadBundles) -> Result<M, ApiError>,
    ) -> Result<ReceiverStream<Result<M, Status>>, ApiError> {
        check_header(request)?;
        let workload = self.state.attest(request, credential).await?;
        let started = async {
            let mut subscription = self.state.cache.subscribe(&workload).await?;
            let view = subscription
                .first_matching(self.state.first_svid_timeout, |view| {
                    view.bundles.is_some() || matches!(view.status, ViewStatus::NoIdentity { .. })
                })
                .await;
            match (&view.bundles, &view.status) {
                (Some(bundles), _) => Ok((subscription, build(bundles)?)),
                (None, ViewStatus::NoIdentity { reason }) => {
                    Err(ApiError::NoIdentity(reason.clone()))
                }
                (None, _) => Err(ApiError::Unavailable(
                    "the agent has not received its policy from the issuer yet".into(),
                )),
            }
        }
        .await;
        let (subscription, first) = self.state.audited(&workload, credential, started)?;
        let step = move |view: &WorkloadView| match (&view.bundles, &view.status) {
            (Some(bundles), _) => match build(bundles) {
                Ok(message) => Step::Send(message),
                Err(error) => Step::End(error.into()),
            },
            (None, ViewStatus::NoIdentity { .. }) => Step::End(
                ApiError::NoIdentity("no WorkloadIdentity applies to the workload any more".into())
                    .into(),
            ),
            (None, _) => Step::Wait,
        };
        Ok(follow(subscription, first, step, self.state.stopped()))
    }

    async fn jwt_svid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<pb::JwtsvidResponse, ApiError> {
        check_header(&request)?;
        let wanted = request.get_ref();
        check_audiences(&wanted.audience)?;
        let only = match wanted.spiffe_id.as_str() {
            "" => None,
            id => Some(SpiffeId::parse(id).map_err(|e| {
                ApiError::InvalidArgument(format!("invalid spiffe_id {id:?}: {e}"))
            })?),
        };
        let audiences = wanted.audience.clone();
        let workload = self.state.attest(&request, CredentialKind::JwtSvid).await?;
        self.state.wait_for_policy().await?;
        let fetched = self
            .state
            .cache
            .fetch_jwt(&workload, &audiences, only.as_ref())
            .await
            .map_err(ApiError::from);
        let svids = self
            .state
            .audited(&workload, CredentialKind::JwtSvid, fetched)?;
        let hints = unique_hints(
            svids
                .iter()
                .map(|s| (s.spiffe_id.as_str(), s.hint.as_deref())),
        );
        Ok(pb::JwtsvidResponse {
            svids: svids
                .iter()
                .zip(hints)
                .map(|(svid, hint)| pb::Jwtsvid {
                    spiffe_id: svid.spiffe_id.to_string(),
                    svid: svid.token.clone(),
                    hint,
                })
                .collect(),
        })
    }

    async fn validate(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<pb::ValidateJwtsvidResponse, ApiError> {
        check_header(&request)?;
        let wanted = request.get_ref();
        check_audiences(std::slice::from_ref(&wanted.audience))?;
        if wanted.svid.is_empty() {
            return Err(ApiError::InvalidArgument("svid must be specified".into()));
        }
        if wanted.svid.len() > MAX_TOKEN_LEN {
            return Err(ApiError::InvalidArgument(format!(
                "svid is {} bytes; JWT-SVIDs are at most {MAX_TOKEN_LEN}",
                wanted.svid.len()
            )));
        }
        let workload = self.state.attest(&request, CredentialKind::JwtSvid).await?;
        self.state.wait_for_policy().await?;
        let found = self
            .state
            .cache
            .bundles_for(&workload)
            .map_err(ApiError::from);
        let bundles = self
            .state
            .audited(&workload, CredentialKind::JwtSvid, found)?;
        let validated = validate_jwt_svid(
            &wanted.svid,
            &wanted.audience,
            &bundles.to_set(),
            self.state.clock.now(),
        )
        .map_err(|e| ApiError::InvalidToken(e.to_string()))?;
        Ok(pb::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(claims_struct(&validated.claims)),
        })
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = ReceiverStream<Result<pb::X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<pb::X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<pb::JwtBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let result = self
            .start_x509(request)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state
            .metrics
            .request("FetchX509SVID", code_of(&result));
        result
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let result = self
            .start_bundles(&request, CredentialKind::X509Svid, x509_bundles_response)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state
            .metrics
            .request("FetchX509Bundles", code_of(&result));
        result
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let result = self
            .jwt_svid(request)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state.metrics.request("FetchJWTSVID", code_of(&result));
        result
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let result = self
            .start_bundles(&request, CredentialKind::JwtSvid, jwt_bundles_response)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state
            .metrics
            .request("FetchJWTBundles", code_of(&result));
        result
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let result = self
            .validate(request)
            .await
            .map(Response::new)
            .map_err(Status::from);
        self.state
            .metrics
            .request("ValidateJWTSVID", code_of(&result));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_hints_are_blanked_after_the_first() {
        use super::super::follow::unique_hints;
        let hints = unique_hints([
            ("spiffe://td/a", Some("web")),
            ("spiffe://td/b", Some("web")),
            ("spiffe://td/c", None),
            ("spiffe://td/d", Some("db")),
            ("spiffe://td/e", Some("")),
        ]);
        assert_eq!(hints, vec!["web", "", "", "db", ""]);
    }

    #[test]
    fn audiences_are_bounded_before_anything_is_signed() {
        let one = |len: usize| vec!["a".repeat(len)];
        assert!(check_audiences(&one(MAX_AUDIENCE_LEN)).is_ok());
        for bad in [
            Vec::new(),
            one(0),
            one(MAX_AUDIENCE_LEN + 1),
            one(1 << 20),
            vec!["x".to_owned(); MAX_AUDIENCES + 1],
        ] {
            let status = Status::from(check_audiences(&bad).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            // The refusal never echoes the (possibly huge) audience.
            assert!(status.message().len() < 200, "{}", status.message());
        }
    }

    #[test]
    fn header_must_be_exactly_true_once() {
        let mut request = Request::new(());
        assert!(check_header(&request).is_err());
        request
            .metadata_mut()
            .insert(WORKLOAD_API_HEADER, "TRUE".parse().unwrap());
        assert!(check_header(&request).is_err());
        request
            .metadata_mut()
            .insert(WORKLOAD_API_HEADER, "true".parse().unwrap());
        assert!(check_header(&request).is_ok());
        request
            .metadata_mut()
            .append(WORKLOAD_API_HEADER, "true".parse().unwrap());
        assert!(check_header(&request).is_err());
    }

    #[test]
    fn claims_convert_to_struct() {
        let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            r#"{"sub":"spiffe://td/x","aud":["a","b"],"exp":12,"nested":{"ok":true},"n":null}"#,
        )
        .unwrap();
        let converted = claims_struct(&claims);
        assert_eq!(
            converted.fields["sub"].kind,
            Some(Kind::StringValue("spiffe://td/x".into()))
        );
        assert_eq!(converted.fields["exp"].kind, Some(Kind::NumberValue(12.0)));
        assert!(matches!(
            converted.fields["aud"].kind,
            Some(Kind::ListValue(ref l)) if l.values.len() == 2
        ));
        assert!(matches!(
            converted.fields["nested"].kind,
            Some(Kind::StructValue(_))
        ));
    }
}
