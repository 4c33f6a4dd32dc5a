//! The issuer gRPC API (`signet.issuer.v1.Issuer`).
//!
//! Every signing request is decided here, against the policy in force, for
//! attributes the issuer trusts: Kubernetes attributes come from its own
//! view of the API server, the rest are the node agent's testimony, and
//! `agent.*` always comes from the caller's SVID. The agent names the
//! WorkloadIdentity it wants; the SPIFFE ID and every other field are
//! rendered here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use signet_identity::x509::{SubjectTemplate, X509SvidParams};
use signet_identity::{SpiffeId, TrustBundle, TrustDomain};
use signet_policy::{Attributes, IssuableIdentity};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_server::Issuer;
use signet_runtime::clock::Clock;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::agents::{AgentRecord, JoinVerifier};
use crate::audit::{AuditEvent, AuditLog, CredentialKind, Outcome, rfc3339, seconds_between};
use crate::ca::{Authority, PublishedBundle};
use crate::metrics::Metrics;
use crate::standalone::policy_dir::PolicyState;

/// Requests per batch; more is refused so one agent cannot monopolise the issuer.
pub const MAX_BATCH: usize = 500;
/// A refused request and the attributes it was decided on (for the audit).
type Refusal = (pb::Denial, BTreeMap<String, String>);

/// Audit message of an agent SVID renewal (event `agent.renewed`).
const RENEWAL: &str = "renewal";
/// Audiences per JWT-SVID.
const MAX_AUDIENCES: usize = 16;

// === workload verification seam ===

/// Why a workload's attributes were not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadRejection {
    pub reason: &'static str,
    pub message: String,
    pub retryable: bool,
}

/// Turns what an agent reports about a workload into attributes the issuer
/// will decide on.
pub trait WorkloadVerifier: Send + Sync + 'static {
    fn verify<'a>(
        &'a self,
        agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>>;
}

/// Standalone mode: the agent's attestation is the node's testimony.
/// Attributes it must not assert (`agent.*`, `node.*`) are refused.
#[derive(Debug, Default)]
pub struct AgentTestimony;

/// Adds `agent.name` / `agent.node_name` from the agent's SVID.
pub fn with_agent_attributes(
    mut map: BTreeMap<String, String>,
    agent: &AgentRecord,
) -> Result<Attributes, WorkloadRejection> {
    map.insert("agent.name".into(), agent.name.clone());
    if let Some(node) = &agent.node_name {
        map.insert("agent.node_name".into(), node.clone());
    }
    Attributes::try_from(map).map_err(|error| WorkloadRejection {
        reason: "invalid_attributes",
        message: error.to_string(),
        retryable: false,
    })
}

/// Checks that the agent only reports `workload.*` attributes.
pub fn workload_attributes_only(
    workload: &pb::Workload,
) -> Result<BTreeMap<String, String>, WorkloadRejection> {
    let mut map = BTreeMap::new();
    for (name, value) in &workload.attributes {
        if !name.starts_with("workload.") {
            return Err(WorkloadRejection {
                reason: "invalid_attributes",
                message: format!("agents may only report workload.* attributes, not {name:?}"),
                retryable: false,
            });
        }
        map.insert(name.clone(), value.clone());
    }
    Ok(map)
}

impl WorkloadVerifier for AgentTestimony {
    fn verify<'a>(
        &'a self,
        agent: &'a AgentRecord,
        workload: &'a pb::Workload,
    ) -> BoxFuture<'a, Result<Attributes, WorkloadRejection>> {
        Box::pin(async move { with_agent_attributes(workload_attributes_only(workload)?, agent) })
    }
}

// === federation ===

/// Bundles of other trust domains, for identities that federate with them.
#[derive(Clone, Debug, Default)]
pub struct Federation {
    pub bundles: BTreeMap<TrustDomain, TrustBundle>,
}

// === errors ===

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("this call requires mTLS with an agent SVID")]
    NotAnAgent,
    #[error("{0}")]
    JoinRefused(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("batch of {0} requests exceeds the limit of {MAX_BATCH}")]
    BatchTooLarge(usize),
    #[error("signing failed: {0}")]
    Signing(String),
}

impl From<IssuerError> for Status {
    fn from(error: IssuerError) -> Self {
        let message = error.to_string();
        match error {
            IssuerError::NotAnAgent => Status::unauthenticated(message),
            IssuerError::JoinRefused(_) => Status::unauthenticated(message),
            IssuerError::InvalidRequest(_) => Status::invalid_argument(message),
            IssuerError::BatchTooLarge(_) => Status::resource_exhausted(message),
            IssuerError::Signing(_) => Status::internal(message),
        }
    }
}

// === service ===

#[derive(Clone, Debug)]
pub struct IssuerSettings {
    pub agent_svid_ttl: Duration,
}

impl Default for IssuerSettings {
    fn default() -> Self {
        Self {
            agent_svid_ttl: Duration::from_secs(3600),
        }
    }
}

/// The issuer service. Cheap to clone.
#[derive(Clone)]
pub struct IssuerService {
    inner: Arc<Inner>,
}

struct Inner {
    trust_domain: TrustDomain,
    authority: Arc<Authority>,
    policy: watch::Receiver<Arc<PolicyState>>,
    federation: Federation,
    join: Arc<dyn JoinVerifier>,
    workloads: Arc<dyn WorkloadVerifier>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    settings: IssuerSettings,
    clock: Clock,
}

pub struct IssuerParts {
    pub authority: Arc<Authority>,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub federation: Federation,
    pub join: Arc<dyn JoinVerifier>,
    pub workloads: Arc<dyn WorkloadVerifier>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub settings: IssuerSettings,
    pub clock: Clock,
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn denial(reason: &str, message: impl Into<String>, retryable: bool) -> pb::Denial {
    pb::Denial {
        reason: reason.to_owned(),
        message: message.into(),
        retryable,
    }
}

impl IssuerService {
    pub fn new(parts: IssuerParts) -> Self {
        let trust_domain = parts.authority.trust_domain();
        Self {
            inner: Arc::new(Inner {
                trust_domain,
                authority: parts.authority,
                policy: parts.policy,
                federation: parts.federation,
                join: parts.join,
                workloads: parts.workloads,
                audit: parts.audit,
                metrics: parts.metrics,
                settings: parts.settings,
                clock: parts.clock,
            }),
        }
    }

    pub fn into_server(self) -> pb::issuer_server::IssuerServer<Self> {
        pb::issuer_server::IssuerServer::new(self)
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<AgentRecord, IssuerError> {
        let id = signet_tls::peer_spiffe_id(request).ok_or(IssuerError::NotAnAgent)?;
        AgentRecord::from_spiffe_id(&id, &self.inner.trust_domain).ok_or(IssuerError::NotAnAgent)
    }

    fn mint_agent_svid(
        &self,
        path: &str,
        csr: &[u8],
    ) -> Result<(signet_identity::X509Svid, Arc<PublishedBundle>), IssuerError> {
        let id = SpiffeId::from_path(&self.inner.trust_domain, path)
            .map_err(|e| IssuerError::InvalidRequest(e.to_string()))?;
        let params = X509SvidParams::new(id, self.inner.settings.agent_svid_ttl);
        let svid = self
            .inner
            .authority
            .mint_x509_from_csr(&params, csr, self.inner.clock.now())
            .map_err(|e| match e {
                signet_identity::AuthorityError::X509(inner) => {
                    IssuerError::InvalidRequest(format!("csr: {inner}"))
                }
                other => IssuerError::Signing(other.to_string()),
            })?;
        Ok((svid, self.inner.authority.current_bundle()))
    }

    fn agent_svid_response(
        &self,
        svid: signet_identity::X509Svid,
        bundle: &PublishedBundle,
        name: String,
    ) -> pb::AgentSvid {
        pb::AgentSvid {
            spiffe_id: svid.spiffe_id.to_string(),
            cert_chain: svid.cert_chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle: bundle.spiffe_json.clone().into_bytes(),
            agent_name: name,
            expires_at_unix: unix_seconds(svid.not_after),
        }
    }

    fn audit_agent(
        &self,
        outcome: Outcome,
        agent: Option<&str>,
        id: Option<&SpiffeId>,
        message: Option<String>,
    ) {
        let renewal = message.as_deref() == Some(RENEWAL);
        let mut event = AuditEvent::new(CredentialKind::AgentSvid, outcome, self.inner.clock.now());
        if renewal {
            event.event = "agent.renewed";
        }
        event.agent = agent.map(str::to_owned);
        event.spiffe_id = id.map(ToString::to_string);
        event.message = message;
        self.inner.audit.record(event);
    }

    fn base_event(
        &self,
        kind: CredentialKind,
        outcome: Outcome,
        agent: &AgentRecord,
        attributes: &BTreeMap<String, String>,
        workload_identity: &str,
        policy_version: u64,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(kind, outcome, self.inner.clock.now());
        event.agent = Some(agent.name.clone());
        event.agent_spiffe_id = Some(agent.spiffe_id.to_string());
        event.workload = attributes.clone();
        event.workload_identity = Some(workload_identity.to_owned());
        event.policy_version = Some(policy_version);
        event
    }

    /// Decides and signs one X.509-SVID request; a refusal carries the
    /// attributes it was decided on, for the audit event.
    async fn sign_one_x509(
        &self,
        agent: &AgentRecord,
        item: &pb::X509SvidRequest,
        policy: &PolicyState,
    ) -> Result<pb::X509Svid, Refusal> {
        let name = item.workload_identity.as_str();
        let (issuable, attributes) = self
            .decide(agent, item.workload.as_ref(), name, policy)
            .await?;
        let params = X509SvidParams {
            spiffe_id: issuable.spiffe_id.clone(),
            dns_sans: issuable.x509.dns_sans.clone(),
            ip_sans: issuable.x509.ip_sans.clone(),
            subject: subject_of(&issuable),
            ttl: issuable.x509.ttl,
        };
        let now = self.inner.clock.now();
        let svid = match self
            .inner
            .authority
            .mint_x509_from_csr(&params, &item.csr, now)
        {
            Ok(svid) => svid,
            Err(error) => {
                return Err((denial("invalid_csr", error.to_string(), false), attributes));
            }
        };
        let mut event = self.base_event(
            CredentialKind::X509Svid,
            Outcome::Issued,
            agent,
            &attributes,
            name,
            policy.version,
        );
        event.spiffe_id = Some(svid.spiffe_id.to_string());
        event.dns_sans = params.dns_sans.clone();
        event.ip_sans = params.ip_sans.iter().map(ToString::to_string).collect();
        event.serial = Some(svid.serial.clone());
        event.ttl_seconds = Some(seconds_between(svid.not_before, svid.not_after));
        event.expires_at = Some(rfc3339(svid.not_after));
        self.inner.audit.record(event);
        self.inner.metrics.issued("x509", name);
        Ok(pb::X509Svid {
            workload_identity: name.to_owned(),
            spiffe_id: svid.spiffe_id.to_string(),
            cert_chain: svid.cert_chain.iter().map(|c| c.to_vec()).collect(),
            hint: issuable.hint.clone().unwrap_or_default(),
            expires_at_unix: unix_seconds(svid.not_after),
            federates_with: issuable
                .federates_with
                .iter()
                .map(ToString::to_string)
                .collect(),
            serial: svid.serial,
        })
    }

    /// Decides and signs one JWT-SVID request (see [`Self::sign_one_x509`]).
    async fn sign_one_jwt(
        &self,
        agent: &AgentRecord,
        item: &pb::JwtSvidRequest,
        policy: &PolicyState,
    ) -> Result<pb::JwtSvid, Refusal> {
        let name = item.workload_identity.as_str();
        let audiences_ok = !item.audience.is_empty()
            && item.audience.len() <= MAX_AUDIENCES
            && item.audience.iter().all(|a| !a.is_empty());
        if !audiences_ok {
            return Err((
                denial(
                    "invalid_request",
                    format!("1 to {MAX_AUDIENCES} non-empty audiences are required"),
                    false,
                ),
                BTreeMap::new(),
            ));
        }
        let (issuable, attributes) = self
            .decide(agent, item.workload.as_ref(), name, policy)
            .await?;
        let now = self.inner.clock.now();
        let minted = self.inner.authority.mint_jwt(
            &issuable.spiffe_id,
            &item.audience,
            issuable.jwt.ttl,
            &issuable.jwt.extra_claims,
            now,
        );
        let jwt = match minted {
            Ok(jwt) => jwt,
            Err(error) => {
                return Err((
                    denial("signing_failed", error.to_string(), true),
                    attributes,
                ));
            }
        };
        let mut event = self.base_event(
            CredentialKind::JwtSvid,
            Outcome::Issued,
            agent,
            &attributes,
            name,
            policy.version,
        );
        event.spiffe_id = Some(jwt.spiffe_id.to_string());
        event.jwt_id = Some(jwt.jti.clone());
        event.audiences = item.audience.clone();
        event.ttl_seconds = Some(seconds_between(jwt.issued_at, jwt.expiry));
        event.expires_at = Some(rfc3339(jwt.expiry));
        self.inner.audit.record(event);
        self.inner.metrics.issued("jwt", name);
        Ok(pb::JwtSvid {
            workload_identity: name.to_owned(),
            spiffe_id: jwt.spiffe_id.to_string(),
            token: jwt.token,
            hint: issuable.hint.clone().unwrap_or_default(),
            expires_at_unix: unix_seconds(jwt.expiry),
            jti: jwt.jti,
        })
    }

    fn deny(
        &self,
        kind: CredentialKind,
        agent: &AgentRecord,
        attributes: &BTreeMap<String, String>,
        workload_identity: &str,
        policy_version: u64,
        denial: pb::Denial,
    ) -> pb::Denial {
        let mut event = self.base_event(
            kind,
            Outcome::Denied,
            agent,
            attributes,
            workload_identity,
            policy_version,
        );
        event.reason = Some(denial.reason.clone());
        event.message = Some(denial.message.clone());
        self.inner.audit.record(event);
        let metric_kind = if kind == CredentialKind::JwtSvid {
            "jwt"
        } else {
            "x509"
        };
        self.inner
            .metrics
            .denied(metric_kind, workload_identity, &denial.reason);
        denial
    }

    /// Verifies the workload and decides one identity for it.
    async fn decide(
        &self,
        agent: &AgentRecord,
        workload: Option<&pb::Workload>,
        workload_identity: &str,
        policy: &PolicyState,
    ) -> Result<(IssuableIdentity, BTreeMap<String, String>), Refusal> {
        let empty = pb::Workload::default();
        let workload = workload.unwrap_or(&empty);
        let reported: BTreeMap<String, String> = workload
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if workload_identity.is_empty() {
            return Err((
                denial("invalid_request", "workload_identity is required", false),
                reported,
            ));
        }
        let attributes = match self.inner.workloads.verify(agent, workload).await {
            Ok(attributes) => attributes,
            Err(rejection) => {
                return Err((
                    denial(rejection.reason, rejection.message, rejection.retryable),
                    reported,
                ));
            }
        };
        let evaluated: BTreeMap<String, String> = attributes.clone().into();
        match policy.snapshot.decide(&attributes, workload_identity) {
            Ok(issuable) => Ok((issuable, evaluated)),
            Err(refusal) => Err((
                denial(refusal.reason.as_str(), refusal.message, false),
                evaluated,
            )),
        }
    }
}

fn subject_of(issuable: &IssuableIdentity) -> SubjectTemplate {
    SubjectTemplate {
        common_name: issuable.x509.subject.common_name.clone(),
        organization: issuable.x509.subject.organization.clone(),
        organizational_unit: issuable.x509.subject.organizational_unit.clone(),
    }
}

fn policy_update(
    trust_domain: &TrustDomain,
    policy: &PolicyState,
    bundle: &PublishedBundle,
    federation: &Federation,
) -> pb::PolicyUpdate {
    let federated_bundles: HashMap<String, Vec<u8>> = federation
        .bundles
        .iter()
        .filter_map(|(td, b)| Some((td.to_string(), b.to_spiffe_json().ok()?.into_bytes())))
        .collect();
    pb::PolicyUpdate {
        version: policy.version,
        trust_domain: trust_domain.to_string(),
        policy: policy.document_json.as_ref().clone(),
        trust_bundle: bundle.spiffe_json.clone().into_bytes(),
        federated_bundles,
        bundle_sequence: bundle.bundle.sequence,
        node: None,
    }
}

#[tonic::async_trait]
impl Issuer for IssuerService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let join = request.into_inner();
        if join.csr.is_empty() {
            return Err(IssuerError::InvalidRequest("csr is required".into()).into());
        }
        // Check the CSR before spending a single-use token on it.
        signet_identity::x509::public_key_from_csr(&join.csr)
            .map_err(|e| IssuerError::InvalidRequest(format!("csr: {e}")))?;
        let admitted = match self.inner.join.verify(&join).await {
            Ok(admitted) => admitted,
            Err(rejection) => {
                tracing::warn!(reason = rejection.reason, message = %rejection.message, "join refused");
                self.audit_agent(Outcome::Denied, None, None, Some(rejection.message.clone()));
                self.inner.metrics.denied("agent", "", rejection.reason);
                return Err(IssuerError::JoinRefused(rejection.message).into());
            }
        };
        let (svid, bundle) = self.mint_agent_svid(&admitted.path, &join.csr)?;
        tracing::info!(agent = %admitted.name, spiffe_id = %svid.spiffe_id, "agent joined");
        self.audit_agent(
            Outcome::Issued,
            Some(&admitted.name),
            Some(&svid.spiffe_id),
            None,
        );
        self.inner.metrics.issued("agent", "");
        Ok(Response::new(self.agent_svid_response(
            svid,
            &bundle,
            admitted.name,
        )))
    }

    async fn renew_agent(
        &self,
        request: Request<pb::RenewAgentRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let agent = self.caller(&request)?;
        let renew = request.into_inner();
        let (svid, bundle) = self.mint_agent_svid(agent.spiffe_id.path(), &renew.csr)?;
        self.audit_agent(
            Outcome::Issued,
            Some(&agent.name),
            Some(&svid.spiffe_id),
            Some(RENEWAL.into()),
        );
        self.inner.metrics.issued("agent", "");
        Ok(Response::new(
            self.agent_svid_response(svid, &bundle, agent.name),
        ))
    }

    type WatchPolicyStream = ReceiverStream<Result<pb::PolicyUpdate, Status>>;

    async fn watch_policy(
        &self,
        request: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        let agent = self.caller(&request)?;
        let (sender, receiver) = mpsc::channel(4);
        let mut policy = self.inner.policy.clone();
        let mut bundle = self.inner.authority.bundle();
        let inner = self.inner.clone();
        tokio::spawn(async move {
            inner.metrics.agents_connected.inc();
            tracing::debug!(agent = %agent.name, "policy watch opened");
            loop {
                let update = {
                    let current_policy = policy.borrow_and_update().clone();
                    let current_bundle = bundle.borrow_and_update().clone();
                    policy_update(
                        &inner.trust_domain,
                        &current_policy,
                        &current_bundle,
                        &inner.federation,
                    )
                };
                if sender.send(Ok(update)).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = policy.changed() => if changed.is_err() { break },
                    changed = bundle.changed() => if changed.is_err() { break },
                    () = sender.closed() => break,
                }
            }
            inner.metrics.agents_connected.dec();
            tracing::debug!(agent = %agent.name, "policy watch closed");
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn sign_x509_svids(
        &self,
        request: Request<pb::SignX509SvidsRequest>,
    ) -> Result<Response<pb::SignX509SvidsResponse>, Status> {
        use pb::x509_svid_result::Result as Outcome_;
        let agent = self.caller(&request)?;
        let batch = request.into_inner().requests;
        if batch.len() > MAX_BATCH {
            return Err(IssuerError::BatchTooLarge(batch.len()).into());
        }
        let policy = self.inner.policy.borrow().clone();
        let mut results = Vec::with_capacity(batch.len());
        for item in &batch {
            let result = match self.sign_one_x509(&agent, item, &policy).await {
                Ok(svid) => Outcome_::Svid(svid),
                Err((refusal, attributes)) => Outcome_::Denial(self.deny(
                    CredentialKind::X509Svid,
                    &agent,
                    &attributes,
                    &item.workload_identity,
                    policy.version,
                    refusal,
                )),
            };
            results.push(pb::X509SvidResult {
                result: Some(result),
            });
        }
        Ok(Response::new(pb::SignX509SvidsResponse { results }))
    }

    async fn sign_jwt_svids(
        &self,
        request: Request<pb::SignJwtSvidsRequest>,
    ) -> Result<Response<pb::SignJwtSvidsResponse>, Status> {
        use pb::jwt_svid_result::Result as Outcome_;
        let agent = self.caller(&request)?;
        let batch = request.into_inner().requests;
        if batch.len() > MAX_BATCH {
            return Err(IssuerError::BatchTooLarge(batch.len()).into());
        }
        let policy = self.inner.policy.borrow().clone();
        let mut results = Vec::with_capacity(batch.len());
        for item in &batch {
            let result = match self.sign_one_jwt(&agent, item, &policy).await {
                Ok(svid) => Outcome_::Svid(svid),
                Err((refusal, attributes)) => Outcome_::Denial(self.deny(
                    CredentialKind::JwtSvid,
                    &agent,
                    &attributes,
                    &item.workload_identity,
                    policy.version,
                    refusal,
                )),
            };
            results.push(pb::JwtSvidResult {
                result: Some(result),
            });
        }
        Ok(Response::new(pb::SignJwtSvidsResponse { results }))
    }
}
