//! The issuer gRPC service (`signet.issuer.v1.Issuer`): who is calling,
//! request limits, and the one place errors become `tonic::Status`.
//!
//! Every signing request is decided against the policy in force, for
//! attributes the issuer trusts: Kubernetes attributes come from its own
//! view of the API server, the rest are the node agent's testimony, and
//! `agent.*` always comes from the caller's SVID. The agent names the
//! WorkloadIdentity it wants; the SPIFFE ID and every other field are
//! rendered here.

use std::sync::Arc;
use std::time::Duration;

use signet_identity::{PublicKey, TrustDomain};
use signet_policy::UserFacts;
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_server::Issuer;
use signet_proto::issuer_protocol::{MAX_BATCH, MAX_CSR_LEN, MAX_JOIN_TOKEN_LEN};
use signet_runtime::clock::Clock;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::agents::{AgentRecord, JoinVerifier, NodeDirectory};
use crate::audit::{AuditLog, CredentialKind, Outcome};
use crate::ca::{Authority, PublishedBundle};
use crate::cluster::pods::PodCache;
use crate::federation::Federation;
use crate::inventory::{AgentInventory, JoinMethod};
use crate::issuer::join_throttle::JoinThrottle;
use crate::issuer::node_pods::NodePodsFeed;
use crate::issuer::policy_stream::{PolicyFeed, WHOLE_POLICY_SENDS};
use crate::issuer::request::{JwtRequest, X509Request, subject_key};
use crate::issuer::signing::{
    AgentSvidError, Asked, Caller, IssuanceObserver, RENEWAL, Signer, unix_seconds,
};
use crate::issuer::workload::WorkloadVerifier;
use crate::metrics::Metrics;
use crate::policy_state::PolicyState;
use crate::revocation::{AgentStanding, StandingRefusal, not_revoked};

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
    #[error("{0}")]
    NotInStanding(StandingRefusal),
    #[error("too many join attempts from this address; retry in {}s", .0.as_secs().max(1))]
    JoinThrottled(Duration),
    #[error("this issuer does not watch pods (standalone mode)")]
    NoPodWatch,
    #[error("agent {0} is not bound to a node")]
    NoNode(String),
}

impl From<AgentSvidError> for IssuerError {
    fn from(error: AgentSvidError) -> Self {
        match error {
            AgentSvidError::InvalidRequest(message) => IssuerError::InvalidRequest(message),
            AgentSvidError::Signing(message) => IssuerError::Signing(message),
        }
    }
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
            IssuerError::NotInStanding(_) => Status::permission_denied(message),
            IssuerError::JoinThrottled(_) => Status::resource_exhausted(message),
            IssuerError::NoPodWatch => Status::unimplemented(message),
            IssuerError::NoNode(_) => Status::failed_precondition(message),
        }
    }
}

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
    policy: watch::Receiver<Arc<PolicyState>>,
    federation: Federation,
    join: Arc<dyn JoinVerifier>,
    standing: Arc<dyn AgentStanding>,
    join_throttle: JoinThrottle,
    signer: Signer,
    node_pods: Option<Arc<PodCache>>,
    /// Streams sending a whole policy now (see [`WHOLE_POLICY_SENDS`]).
    whole_policy_sends: Arc<tokio::sync::Semaphore>,
}

pub struct IssuerParts {
    pub authority: Arc<Authority>,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub federation: Federation,
    pub join: Arc<dyn JoinVerifier>,
    /// Whether an agent with a valid SVID is still trusted (revocation).
    pub standing: Arc<dyn AgentStanding>,
    pub workloads: Arc<dyn WorkloadVerifier>,
    /// Where `node.*` comes from ([`crate::agents::NoNodes`] standalone).
    pub nodes: Arc<dyn NodeDirectory>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub settings: IssuerSettings,
    pub clock: Clock,
    /// Feedback on decisions beyond the audit log (pod Events in a cluster).
    pub observer: Arc<dyn IssuanceObserver>,
    /// What this replica has seen of each agent.
    pub inventory: AgentInventory,
    /// Which authority signed what is in use.
    pub ledger: Arc<crate::ledger::SvidLedger>,
    /// In a cluster: the pods, for each agent's stream of its node's pods.
    pub node_pods: Option<Arc<PodCache>>,
}

impl IssuerService {
    pub fn new(parts: IssuerParts) -> Self {
        let trust_domain = parts.authority.trust_domain();
        Self {
            inner: Arc::new(Inner {
                trust_domain: trust_domain.clone(),
                policy: parts.policy,
                federation: parts.federation,
                join: parts.join,
                standing: parts.standing,
                join_throttle: JoinThrottle::new(parts.clock),
                node_pods: parts.node_pods,
                whole_policy_sends: Arc::new(tokio::sync::Semaphore::new(WHOLE_POLICY_SENDS)),
                signer: Signer {
                    trust_domain,
                    authority: parts.authority,
                    workloads: parts.workloads,
                    nodes: parts.nodes,
                    audit: parts.audit,
                    metrics: parts.metrics,
                    agent_svid_ttl: parts.settings.agent_svid_ttl,
                    clock: parts.clock,
                    observer: parts.observer,
                    inventory: parts.inventory,
                    ledger: parts.ledger,
                },
            }),
        }
    }

    /// Decides and signs an X.509-SVID for a person or pipeline the API
    /// server authenticated (`signet issue x509`); every outcome is audited.
    pub fn issue_user_x509(
        &self,
        user: &UserFacts,
        workload_identity: &str,
        key: &PublicKey,
        ttl: Duration,
    ) -> Result<(pb::X509Svid, Arc<PublishedBundle>), pb::Denial> {
        let signer = &self.inner.signer;
        let policy = self.inner.policy.borrow().clone();
        signer
            .sign_user_x509(user, workload_identity, key, ttl, &policy)
            .map(|svid| (svid, signer.authority.current_bundle()))
            .map_err(|refusal| {
                let asked = Asked {
                    kind: CredentialKind::X509Svid,
                    workload_identity,
                    audiences: &[],
                };
                signer.deny(Caller::User, asked, &policy, refusal)
            })
    }

    /// Decides and signs a JWT-SVID for a person or pipeline (see
    /// [`Self::issue_user_x509`]); `audiences` must already be checked.
    pub fn issue_user_jwt(
        &self,
        user: &UserFacts,
        workload_identity: &str,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<pb::JwtSvid, pb::Denial> {
        let signer = &self.inner.signer;
        let policy = self.inner.policy.borrow().clone();
        signer
            .sign_user_jwt(user, workload_identity, audiences, ttl, &policy)
            .map_err(|refusal| {
                let asked = Asked {
                    kind: CredentialKind::JwtSvid,
                    workload_identity,
                    audiences,
                };
                signer.deny(Caller::User, asked, &policy, refusal)
            })
    }

    pub fn into_server(self) -> pb::issuer_server::IssuerServer<Self> {
        pb::issuer_server::IssuerServer::new(self)
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<AgentRecord, IssuerError> {
        let id = signet_tls::peer_spiffe_id(request).ok_or(IssuerError::NotAnAgent)?;
        AgentRecord::from_spiffe_id(&id, &self.inner.trust_domain).ok_or(IssuerError::NotAnAgent)
    }

    /// The caller, if it is an agent still in standing; a refusal is
    /// audited and counted.
    async fn trusted_caller<T>(
        &self,
        request: &Request<T>,
        renewal: bool,
    ) -> Result<AgentRecord, IssuerError> {
        let agent = self.caller(request)?;
        if let Err(refusal) = self.inner.standing.check(&agent, renewal).await {
            let signer = &self.inner.signer;
            tracing::warn!(agent = %agent.name, reason = refusal.reason, message = %refusal.message, "agent refused");
            signer.audit_agent_refused(&agent.name, Some(&agent.spiffe_id), &refusal, false);
            signer.metrics.denied("agent", "", refusal.reason);
            return Err(IssuerError::NotInStanding(refusal));
        }
        Ok(agent)
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
}

#[tonic::async_trait]
impl Issuer for IssuerService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::AgentSvid>, Status> {
        let signer = &self.inner.signer;
        let peer = request.remote_addr().map(|address| address.ip());
        if let Err(throttled) = self.inner.join_throttle.admit(peer) {
            signer.metrics.denied("agent", "", "join_throttled");
            if throttled.first {
                tracing::warn!(peer = ?peer, "join attempts throttled (logged once until one is admitted)");
            }
            return Err(IssuerError::JoinThrottled(throttled.retry_after).into());
        }
        let join = request.into_inner();
        let (token_len, method) = match &join.credential {
            Some(pb::join_request::Credential::JoinToken(token)) => {
                (token.len(), JoinMethod::JoinToken)
            }
            Some(pb::join_request::Credential::ServiceAccountToken(token)) => {
                (token.len(), JoinMethod::Kubernetes)
            }
            None => (0, JoinMethod::JoinToken),
        };
        if token_len > MAX_JOIN_TOKEN_LEN {
            return Err(IssuerError::InvalidRequest(format!(
                "token of {token_len} bytes exceeds the limit of {MAX_JOIN_TOKEN_LEN}"
            ))
            .into());
        }
        if join.csr.len() > MAX_CSR_LEN {
            return Err(IssuerError::InvalidRequest(format!(
                "CSR of {} bytes exceeds the limit of {MAX_CSR_LEN}",
                join.csr.len()
            ))
            .into());
        }
        // The CSR is checked before a single-use token is spent on it.
        let key = subject_key(&join.csr).map_err(IssuerError::InvalidRequest)?;
        let admitted = match self.inner.join.verify(&join).await {
            Ok(admitted) => admitted,
            Err(rejection) => {
                tracing::warn!(reason = rejection.reason, message = %rejection.message, "join refused");
                signer.audit_agent(Outcome::Denied, None, None, Some(rejection.message.clone()));
                signer.metrics.denied("agent", "", rejection.reason);
                return Err(IssuerError::JoinRefused(rejection.message).into());
            }
        };
        // A revoked name cannot come back with a reusable token.
        let revoked = not_revoked(&self.inner.standing.revocations().borrow(), &admitted.name);
        if let Err(refusal) = revoked {
            tracing::warn!(agent = %admitted.name, message = %refusal.message, "join refused");
            signer.audit_agent_refused(&admitted.name, None, &refusal, true);
            signer.metrics.denied("agent", "", refusal.reason);
            return Err(IssuerError::NotInStanding(refusal).into());
        }
        let (svid, bundle) = signer
            .mint_agent_svid(&admitted.path, &key)
            .map_err(IssuerError::from)?;
        tracing::info!(agent = %admitted.name, spiffe_id = %svid.spiffe_id, "agent joined");
        signer.inventory.joined(
            &svid.spiffe_id,
            &admitted.name,
            admitted.node_name.as_deref(),
            method,
            svid.not_after,
        );
        signer.audit_agent(
            Outcome::Issued,
            Some(&admitted.name),
            Some(&svid.spiffe_id),
            None,
        );
        signer.metrics.issued("agent", "");
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
        let signer = &self.inner.signer;
        let agent = self.trusted_caller(&request, true).await?;
        let key = subject_key(&request.into_inner().csr).map_err(IssuerError::InvalidRequest)?;
        let (svid, bundle) = signer
            .mint_agent_svid(agent.spiffe_id.path(), &key)
            .map_err(IssuerError::from)?;
        signer.audit_agent(
            Outcome::Issued,
            Some(&agent.name),
            Some(&svid.spiffe_id),
            Some(RENEWAL.into()),
        );
        signer.inventory.renewed(&agent, svid.not_after);
        signer.metrics.issued("agent", "");
        Ok(Response::new(
            self.agent_svid_response(svid, &bundle, agent.name),
        ))
    }

    type WatchPolicyStream = ReceiverStream<Result<pb::PolicyUpdate, Status>>;

    async fn watch_policy(
        &self,
        request: Request<pb::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        let agent = self.trusted_caller(&request, false).await?;
        let (sender, receiver) = mpsc::channel(4);
        // Only this agent's Node: a relabelled Node wakes its agent alone.
        let node = agent
            .node_name
            .as_deref()
            .and_then(|name| self.inner.signer.nodes.follow(name));
        let feed = PolicyFeed {
            trust_domain: self.inner.trust_domain.clone(),
            policy: self.inner.policy.clone(),
            bundle: self.inner.signer.authority.bundle(),
            federation: self.inner.federation.clone(),
            node,
            revocations: self.inner.standing.revocations(),
            metrics: self.inner.signer.metrics.clone(),
            accepts_deltas: request.get_ref().accepts_policy_deltas,
            accepts_parts: request.get_ref().accepts_policy_parts,
            whole_policy_sends: self.inner.whole_policy_sends.clone(),
        };
        let seen = self
            .inner
            .signer
            .inventory
            .stream_opened(&agent, &request.get_ref().agent_version);
        tokio::spawn(async move {
            feed.run(agent, sender).await;
            drop(seen);
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    type WatchNodePodsStream = ReceiverStream<Result<pb::NodePodsUpdate, Status>>;

    async fn watch_node_pods(
        &self,
        request: Request<pb::WatchNodePodsRequest>,
    ) -> Result<Response<Self::WatchNodePodsStream>, Status> {
        let agent = self.trusted_caller(&request, false).await?;
        let pods = self
            .inner
            .node_pods
            .clone()
            .ok_or(IssuerError::NoPodWatch)?;
        let node = agent
            .node_name
            .as_deref()
            .map(Box::<str>::from)
            .ok_or_else(|| IssuerError::NoNode(agent.name.clone()))?;
        let (sender, receiver) = mpsc::channel(4);
        let feed = NodePodsFeed {
            pods,
            node,
            revocations: self.inner.standing.revocations(),
        };
        tokio::spawn(feed.run(agent, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn sign_x509_svids(
        &self,
        request: Request<pb::SignX509SvidsRequest>,
    ) -> Result<Response<pb::SignX509SvidsResponse>, Status> {
        use pb::x509_svid_result::Result as Outcome_;
        let signer = &self.inner.signer;
        let agent = self.trusted_caller(&request, false).await?;
        let batch = request.into_inner().requests;
        if batch.len() > MAX_BATCH {
            return Err(IssuerError::BatchTooLarge(batch.len()).into());
        }
        let policy = self.inner.policy.borrow().clone();
        let mut results = Vec::with_capacity(batch.len());
        for item in &batch {
            let signed = match X509Request::parse(item) {
                Ok(request) => signer.sign_one_x509(&agent, &request, &policy).await,
                Err(refusal) => Err(refusal),
            };
            let result = match signed {
                Ok(svid) => Outcome_::Svid(svid),
                Err(refusal) => Outcome_::Denial(signer.deny(
                    Caller::Agent(&agent),
                    Asked {
                        kind: CredentialKind::X509Svid,
                        workload_identity: &item.workload_identity,
                        audiences: &[],
                    },
                    &policy,
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
        let signer = &self.inner.signer;
        let agent = self.trusted_caller(&request, false).await?;
        let batch = request.into_inner().requests;
        if batch.len() > MAX_BATCH {
            return Err(IssuerError::BatchTooLarge(batch.len()).into());
        }
        let policy = self.inner.policy.borrow().clone();
        let mut results = Vec::with_capacity(batch.len());
        for item in &batch {
            let signed = match JwtRequest::parse(item) {
                Ok(request) => signer.sign_one_jwt(&agent, &request, &policy).await,
                Err(refusal) => Err(refusal),
            };
            let result = match signed {
                Ok(svid) => Outcome_::Svid(svid),
                Err(refusal) => Outcome_::Denial(signer.deny(
                    Caller::Agent(&agent),
                    Asked {
                        kind: CredentialKind::JwtSvid,
                        workload_identity: &item.workload_identity,
                        audiences: &item.audience,
                    },
                    &policy,
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
