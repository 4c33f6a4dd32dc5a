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
//! Hints: when two SVIDs of one response carry the same hint, the first keeps
//! it and later ones are sent without a hint (logged as a warning), so a
//! misconfigured policy never costs a workload an identity.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use prost_types::value::Kind;
use signet_identity::{BundleSet, SpiffeId, TrustDomain, validate_jwt_svid};
use signet_proto::workload as pb;
use signet_proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use signet_proto::{WORKLOAD_API_HEADER, WORKLOAD_API_HEADER_VALUE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attest::Attributes;
use crate::cache::{IssuedX509, Subscription, ViewStatus, WorkloadView};
use crate::policy_watch::AgentPolicy;
use crate::server::{ApiError, ServerState, code_of};

/// Messages buffered per stream; a slow reader only delays its own stream.
const STREAM_BUFFER: usize = 4;

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

/// Hints for a list of SVIDs: the first holder of a hint keeps it, later
/// duplicates are blanked.
pub fn unique_hints<'a>(
    hints: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    hints
        .into_iter()
        .map(|(id, hint)| match hint.filter(|h| !h.is_empty()) {
            Some(hint) if seen.insert(hint) => hint.to_owned(),
            Some(hint) => {
                tracing::warn!(
                    spiffe_id = id,
                    hint,
                    "duplicate hint dropped from a later SVID"
                );
                String::new()
            }
            None => String::new(),
        })
        .collect()
}

fn trust_domain_key(td: &TrustDomain) -> String {
    td.id().to_string()
}

/// The X509SVIDResponse for a ready view.
pub fn x509_response(svids: &[Arc<IssuedX509>], policy: &AgentPolicy) -> pb::X509svidResponse {
    let own_bundle = policy
        .own_bundle()
        .map(|b| b.to_x509_der())
        .unwrap_or_default();
    let hints = unique_hints(
        svids
            .iter()
            .map(|s| (s.spiffe_id.as_str(), s.hint.as_deref())),
    );
    let mut federated = HashMap::new();
    for svid in svids {
        for td in &svid.federates_with {
            if td == policy.trust_domain() {
                continue;
            }
            match policy.bundles().get(td) {
                Some(bundle) => {
                    federated.insert(trust_domain_key(td), bundle.to_x509_der());
                }
                None => {
                    tracing::debug!(trust_domain = %td, "no bundle for a federated trust domain")
                }
            }
        }
    }
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
        federated_bundles: federated,
    }
}

/// Trust domains (own first in the map's order does not matter) whose
/// bundles a workload with these identities receives; `None` when the
/// workload has no identity.
fn workload_bundles(policy: &AgentPolicy, workload: &Attributes) -> Option<BundleSet> {
    let identities = policy.identities(workload);
    if identities.is_empty() {
        return None;
    }
    let mut set = BundleSet::new();
    if let Some(own) = policy.own_bundle() {
        set.insert(own.clone());
    }
    for td in policy.federated_for(&identities) {
        if let Some(bundle) = policy.bundles().get(&td) {
            set.insert(bundle.clone());
        }
    }
    Some(set)
}

fn x509_bundles_response(bundles: &BundleSet) -> pb::X509BundlesResponse {
    pb::X509BundlesResponse {
        crl: Vec::new(),
        bundles: bundles
            .iter()
            .map(|b| (trust_domain_key(&b.trust_domain), b.to_x509_der()))
            .collect(),
    }
}

fn jwt_bundles_response(bundles: &BundleSet) -> Result<pb::JwtBundlesResponse, ApiError> {
    let mut map = HashMap::new();
    for bundle in bundles.iter() {
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

impl WorkloadApiService {
    async fn start_x509(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<ReceiverStream<Result<pb::X509svidResponse, Status>>, ApiError> {
        check_header(&request)?;
        let workload = self.state.attest(&request).await?;
        let mut subscription = self.state.cache.subscribe(workload).await?;
        let view = first_ready_view(&self.state, &mut subscription).await?;
        let policy = self.state.policy().await?;
        let first = x509_response(&view.svids, &policy);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        // Cannot fail: the receiver is right here.
        let _ = sender.send(Ok(first.clone())).await;
        let policy_updates = self.state.policy.clone();
        let stopped = self.state.stopped();
        tokio::spawn(async move {
            tokio::select! {
                () = follow_x509(subscription, policy_updates, sender.clone(), first) => {}
                () = stopped => {
                    let _ = sender.send(Err(shutting_down())).await;
                }
            }
        });
        Ok(ReceiverStream::new(receiver))
    }

    async fn start_bundles<M: Clone + PartialEq + Send + 'static>(
        &self,
        workload: Attributes,
        build: fn(&BundleSet) -> Result<M, ApiError>,
    ) -> Result<ReceiverStream<Result<M, Status>>, ApiError> {
        let policy = self.state.policy().await?;
        let bundles = workload_bundles(&policy, &workload).ok_or_else(|| {
            ApiError::NoIdentity("no WorkloadIdentity applies to the workload".into())
        })?;
        let first = build(&bundles)?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let _ = sender.send(Ok(first.clone())).await;
        let mut updates = self.state.policy.clone();
        updates.mark_unchanged();
        let stopped = self.state.stopped();
        tokio::spawn(async move {
            let mut last = first;
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    changed = updates.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                    () = &mut stopped => {
                        let _ = sender.send(Err(shutting_down())).await;
                        return;
                    }
                }
                let Some(policy) = updates.borrow_and_update().clone() else {
                    continue;
                };
                let next = match workload_bundles(&policy, &workload) {
                    Some(bundles) => build(&bundles),
                    None => Err(ApiError::NoIdentity(
                        "no WorkloadIdentity applies to the workload any more".into(),
                    )),
                };
                match next {
                    Ok(message) if message == last => {}
                    Ok(message) => {
                        if sender.send(Ok(message.clone())).await.is_err() {
                            return;
                        }
                        last = message;
                    }
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(receiver))
    }

    async fn jwt_svid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<pb::JwtsvidResponse, ApiError> {
        check_header(&request)?;
        let wanted = request.get_ref();
        if wanted.audience.is_empty() || wanted.audience.iter().any(String::is_empty) {
            return Err(ApiError::InvalidArgument(
                "audience must be specified".into(),
            ));
        }
        let only = match wanted.spiffe_id.as_str() {
            "" => None,
            id => Some(SpiffeId::parse(id).map_err(|e| {
                ApiError::InvalidArgument(format!("invalid spiffe_id {id:?}: {e}"))
            })?),
        };
        let audiences = wanted.audience.clone();
        let workload = self.state.attest(&request).await?;
        self.state.policy().await?;
        let svids = self
            .state
            .cache
            .fetch_jwt(&workload, &audiences, only.as_ref())
            .await?;
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
        if wanted.audience.is_empty() {
            return Err(ApiError::InvalidArgument(
                "audience must be specified".into(),
            ));
        }
        if wanted.svid.is_empty() {
            return Err(ApiError::InvalidArgument("svid must be specified".into()));
        }
        let workload = self.state.attest(&request).await?;
        let policy = self.state.policy().await?;
        let bundles = workload_bundles(&policy, &workload).ok_or_else(|| {
            ApiError::NoIdentity("no WorkloadIdentity applies to the workload".into())
        })?;
        let validated = validate_jwt_svid(
            &wanted.svid,
            &wanted.audience,
            &bundles,
            self.state.clock.now(),
        )
        .map_err(|e| ApiError::InvalidToken(e.to_string()))?;
        Ok(pb::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(claims_struct(&validated.claims)),
        })
    }
}

fn shutting_down() -> Status {
    ApiError::Unavailable("the agent is shutting down".into()).into()
}

/// Pushes the full state on every change until the client leaves, the
/// workload loses its last identity (PermissionDenied) or its SVIDs can no
/// longer be obtained (Unavailable).
async fn follow_x509(
    mut subscription: Subscription,
    mut policy: tokio::sync::watch::Receiver<Option<Arc<AgentPolicy>>>,
    sender: mpsc::Sender<Result<pb::X509svidResponse, Status>>,
    first: pb::X509svidResponse,
) {
    let mut last = first;
    policy.mark_unchanged();
    subscription.view().mark_unchanged();
    loop {
        tokio::select! {
            changed = subscription.view().changed() => if changed.is_err() {
                let _ = sender.send(Err(ApiError::Unavailable("the agent is shutting down".into()).into())).await;
                return;
            },
            changed = policy.changed() => if changed.is_err() { return },
            () = sender.closed() => return,
        }
        let view = subscription.view().borrow_and_update().clone();
        let Some(current) = policy.borrow_and_update().clone() else {
            continue;
        };
        let message = match &view.status {
            ViewStatus::NoIdentity { reason } => {
                tracing::info!(%reason, "identity revoked; ending the X.509-SVID stream");
                let _ = sender
                    .send(Err(ApiError::NoIdentity(reason.clone()).into()))
                    .await;
                return;
            }
            _ if !view.svids.is_empty() => x509_response(&view.svids, &current),
            ViewStatus::Unavailable { message } => {
                let _ = sender
                    .send(Err(ApiError::Unavailable(format!(
                        "no valid SVID left: {message}"
                    ))
                    .into()))
                    .await;
                return;
            }
            // Between an old SVID going and its replacement arriving.
            _ => continue,
        };
        if message != last {
            if sender.send(Ok(message.clone())).await.is_err() {
                return;
            }
            last = message;
        }
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
        let result = async {
            check_header(&request)?;
            let workload = self.state.attest(&request).await?;
            self.start_bundles(workload, |b| Ok(x509_bundles_response(b)))
                .await
        }
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
        let result = async {
            check_header(&request)?;
            let workload = self.state.attest(&request).await?;
            self.start_bundles(workload, jwt_bundles_response).await
        }
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
