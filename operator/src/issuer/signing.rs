//! Deciding and signing: each request is decided against the policy in
//! force for attributes the issuer trusts, then signed and audited; a
//! refusal is audited with the attributes it was decided on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signet_identity::x509::{SubjectTemplate, X509SvidParams};
use signet_identity::{AuthorityError, AuthorityKind, PublicKey, SpiffeId, TrustDomain, X509Svid};
use signet_policy::{AgentContext, Attributes, IssuableIdentity, UserFacts};
use signet_proto::issuer::v1 as pb;
use signet_runtime::clock::Clock;

use crate::agents::{AgentRecord, NodeDirectory};
use crate::audit::{AuditEvent, AuditLog, CredentialKind, Outcome, rfc3339, seconds_between};
use crate::ca::{Authority, PublishedBundle};
use crate::issuer::request::{JwtRequest, Refusal, WorkloadRequest, X509Request, denial, reported};
use crate::issuer::workload::WorkloadVerifier;
use crate::ledger::{AuthorityRef, Holder, SvidLedger};
use crate::metrics::Metrics;
use crate::policy_state::PolicyState;

/// Audit message of an agent SVID renewal (event `agent.renewed`).
pub const RENEWAL: &str = "renewal";

/// Who asked for a workload SVID: an agent for one of its workloads, or a
/// person or pipeline through the API server (no agent, no pod feedback).
#[derive(Clone, Copy, Debug)]
pub enum Caller<'a> {
    Agent(&'a AgentRecord),
    User,
}

/// What a refused request asked for, as its denial is audited.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    pub kind: CredentialKind,
    pub workload_identity: &'a str,
    pub audiences: &'a [String],
}

/// Why an agent SVID was not minted.
#[derive(Debug, thiserror::Error)]
pub enum AgentSvidError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("signing failed: {0}")]
    Signing(String),
}

/// The workload as the agent caches it: by its attributes without the
/// process ID (processes of one workload share its SVID), so a re-issue
/// replaces the ledger entry it renews.
fn holder_workload(attributes: &BTreeMap<String, String>) -> String {
    let mut cached = attributes.clone();
    cached.remove(signet_policy::Field::UnixPid.as_str());
    crate::inventory::workload_key(&cached).unwrap_or_default()
}

fn x509_authority(id: &str) -> AuthorityRef {
    AuthorityRef {
        kind: AuthorityKind::X509,
        id: id.to_owned(),
    }
}

pub fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Told of every workload decision after it is audited, for feedback
/// where users look (Events on the pod, in a cluster). Must not block.
pub trait IssuanceObserver: Send + Sync + 'static {
    /// `workload` are the attributes decided on; `spiffe_id` what was issued.
    fn issued(&self, workload: &BTreeMap<String, String>, identity: &str, spiffe_id: &SpiffeId);
    /// A refusal, with the denial's reason and message.
    fn refused(&self, workload: &BTreeMap<String, String>, identity: &str, denial: &pb::Denial);
}

/// Tells no one (standalone mode: the audit log is the feedback).
#[derive(Debug, Default)]
pub struct NoObserver;

impl IssuanceObserver for NoObserver {
    fn issued(&self, _: &BTreeMap<String, String>, _: &str, _: &SpiffeId) {}
    fn refused(&self, _: &BTreeMap<String, String>, _: &str, _: &pb::Denial) {}
}

/// Everything a signing decision needs.
pub struct Signer {
    pub trust_domain: TrustDomain,
    pub authority: Arc<Authority>,
    pub workloads: Arc<dyn WorkloadVerifier>,
    pub nodes: Arc<dyn NodeDirectory>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub agent_svid_ttl: Duration,
    pub clock: Clock,
    pub inventory: crate::inventory::AgentInventory,
    pub observer: Arc<dyn IssuanceObserver>,
    /// Which authority signed what is in use (for taint and revoke).
    pub ledger: Arc<SvidLedger>,
}

impl Signer {
    /// Mints an agent's SVID at `path` for the key from the agent's CSR;
    /// the one way to a `/signet/agent/...` ID (any other path is refused).
    pub fn mint_agent_svid(
        &self,
        path: &str,
        key: &PublicKey,
    ) -> Result<(X509Svid, Arc<PublishedBundle>), AgentSvidError> {
        let id = SpiffeId::from_path(&self.trust_domain, path)
            .map_err(|e| AgentSvidError::InvalidRequest(e.to_string()))?;
        if AgentRecord::from_spiffe_id(&id, &self.trust_domain).is_none() {
            return Err(AgentSvidError::Signing(format!("{id} is not an agent ID")));
        }
        let params = X509SvidParams::new(id, self.agent_svid_ttl);
        let now = self.clock.now();
        let svid = self
            .authority
            .mint_x509(&params, key, now)
            .map_err(|e| AgentSvidError::Signing(e.to_string()))?;
        if let Some(agent) = AgentRecord::from_spiffe_id(&svid.spiffe_id, &self.trust_domain) {
            self.ledger.signed(
                Holder::Agent { agent: agent.name },
                x509_authority(&svid.issuer_key_id),
                svid.not_after,
                now,
            );
        }
        Ok((svid, self.authority.current_bundle()))
    }

    pub fn audit_agent(
        &self,
        outcome: Outcome,
        agent: Option<&str>,
        id: Option<&SpiffeId>,
        message: Option<String>,
    ) {
        let renewal = message.as_deref() == Some(RENEWAL);
        let mut event = AuditEvent::new(CredentialKind::AgentSvid, outcome, self.clock.now());
        if renewal {
            event.event = "agent.renewed";
        }
        event.agent = agent.map(str::to_owned);
        event.spiffe_id = id.map(ToString::to_string);
        event.message = message;
        self.audit.record(event);
    }

    /// An agent with a valid SVID refused for its standing (revoked, no
    /// longer configured, its pod gone): `agent.refused`, or
    /// `agent.join_denied` for a join under a revoked name.
    pub fn audit_agent_refused(
        &self,
        agent: &str,
        id: Option<&SpiffeId>,
        refusal: &crate::revocation::StandingRefusal,
        joining: bool,
    ) {
        let mut event =
            AuditEvent::new(CredentialKind::AgentSvid, Outcome::Denied, self.clock.now());
        if !joining {
            event.event = "agent.refused";
        }
        event.agent = Some(agent.to_owned());
        event.agent_spiffe_id = id.map(ToString::to_string);
        event.reason = Some(refusal.reason.to_owned());
        event.message = Some(refusal.message.clone());
        self.audit.record(event);
    }

    fn base_event(
        &self,
        kind: CredentialKind,
        outcome: Outcome,
        caller: Caller<'_>,
        attributes: &BTreeMap<String, String>,
        workload_identity: &str,
        policy_version: u64,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(kind, outcome, self.clock.now());
        if let Caller::Agent(agent) = caller {
            event.agent = Some(agent.name.clone());
            event.agent_spiffe_id = Some(agent.spiffe_id.to_string());
        }
        event.workload = attributes.clone();
        event.workload_identity = Some(workload_identity.to_owned());
        event.policy_version = Some(policy_version);
        event
    }

    /// Decides and signs one X.509-SVID request; a refusal carries the
    /// attributes it was decided on, for the audit event.
    pub async fn sign_one_x509(
        &self,
        agent: &AgentRecord,
        request: &X509Request<'_>,
        policy: &PolicyState,
    ) -> Result<pb::X509Svid, Refusal> {
        let name = request.workload.workload_identity;
        let (issuable, attributes) = self.decide(agent, request.workload, policy).await?;
        self.issue_x509(
            Caller::Agent(agent),
            name,
            &issuable,
            attributes,
            &request.subject_key,
            None,
            policy,
        )
    }

    /// Decides and signs an X.509-SVID for a person or pipeline the API
    /// server authenticated (`signet issue x509`), for at most `ttl`.
    pub fn sign_user_x509(
        &self,
        user: &UserFacts,
        workload_identity: &str,
        key: &PublicKey,
        ttl: Duration,
        policy: &PolicyState,
    ) -> Result<pb::X509Svid, Refusal> {
        let (issuable, attributes) = decide_for_user(user, workload_identity, policy)?;
        self.issue_x509(
            Caller::User,
            workload_identity,
            &issuable,
            attributes,
            key,
            Some(ttl),
            policy,
        )
    }

    /// Signs, audits and reports an X.509-SVID the policy allowed; its TTL
    /// is the identity's, shortened to `ttl_cap` when given.
    #[allow(clippy::too_many_arguments)]
    fn issue_x509(
        &self,
        caller: Caller<'_>,
        name: &str,
        issuable: &IssuableIdentity,
        attributes: BTreeMap<String, String>,
        key: &PublicKey,
        ttl_cap: Option<Duration>,
        policy: &PolicyState,
    ) -> Result<pb::X509Svid, Refusal> {
        if let Err(denial) = refuse_reserved(&issuable.spiffe_id) {
            return Err((denial, attributes));
        }
        let ttl = ttl_cap.map_or(issuable.x509.ttl, |cap| cap.min(issuable.x509.ttl));
        let params = X509SvidParams {
            spiffe_id: issuable.spiffe_id.clone(),
            dns_sans: issuable.x509.dns_sans.clone(),
            ip_sans: issuable.x509.ip_sans.clone(),
            subject: subject_of(issuable),
            ttl,
        };
        let now = self.clock.now();
        let svid = match self.authority.mint_x509(&params, key, now) {
            Ok(svid) => svid,
            Err(error) => {
                return Err((signing_failed(&error), attributes));
            }
        };
        let mut event = self.base_event(
            CredentialKind::X509Svid,
            Outcome::Issued,
            caller,
            &attributes,
            name,
            policy.version,
        );
        event.spiffe_id = Some(svid.spiffe_id.to_string());
        event.dns_sans = params.dns_sans.clone();
        event.ip_sans = params.ip_sans.iter().map(ToString::to_string).collect();
        event.serial = Some(svid.serial.clone());
        event.authority_id = Some(svid.issuer_key_id.clone());
        event.ttl_seconds = Some(seconds_between(svid.not_before, svid.not_after));
        event.expires_at = Some(rfc3339(svid.not_after));
        self.audit.record(event);
        self.metrics.issued("x509", name);
        let holder = match caller {
            Caller::Agent(agent) => Holder::WorkloadX509 {
                agent: agent.name.clone(),
                workload: holder_workload(&attributes),
                identity: name.to_owned(),
            },
            Caller::User => Holder::User {
                credential: format!("x509:{}", svid.serial),
            },
        };
        self.ledger.signed(
            holder,
            x509_authority(&svid.issuer_key_id),
            svid.not_after,
            now,
        );
        if let Caller::Agent(agent) = caller {
            self.observer.issued(&attributes, name, &svid.spiffe_id);
            self.inventory.served(agent, &attributes);
        }
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
    pub async fn sign_one_jwt(
        &self,
        agent: &AgentRecord,
        request: &JwtRequest<'_>,
        policy: &PolicyState,
    ) -> Result<pb::JwtSvid, Refusal> {
        let name = request.workload.workload_identity;
        let (issuable, attributes) = self.decide(agent, request.workload, policy).await?;
        self.issue_jwt(
            Caller::Agent(agent),
            name,
            &issuable,
            attributes,
            request.audiences,
            None,
            policy,
        )
    }

    /// Decides and signs a JWT-SVID for a person or pipeline (see
    /// [`Self::sign_user_x509`]).
    pub fn sign_user_jwt(
        &self,
        user: &UserFacts,
        workload_identity: &str,
        audiences: &[String],
        ttl: Duration,
        policy: &PolicyState,
    ) -> Result<pb::JwtSvid, Refusal> {
        let (issuable, attributes) = decide_for_user(user, workload_identity, policy)?;
        self.issue_jwt(
            Caller::User,
            workload_identity,
            &issuable,
            attributes,
            audiences,
            Some(ttl),
            policy,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_jwt(
        &self,
        caller: Caller<'_>,
        name: &str,
        issuable: &IssuableIdentity,
        attributes: BTreeMap<String, String>,
        audiences: &[String],
        ttl_cap: Option<Duration>,
        policy: &PolicyState,
    ) -> Result<pb::JwtSvid, Refusal> {
        if let Err(denial) = refuse_reserved(&issuable.spiffe_id) {
            return Err((denial, attributes));
        }
        let ttl = ttl_cap.map_or(issuable.jwt.ttl, |cap| cap.min(issuable.jwt.ttl));
        let now = self.clock.now();
        let minted = self.authority.mint_jwt(
            &issuable.spiffe_id,
            audiences,
            ttl,
            &issuable.jwt.extra_claims,
            now,
        );
        let jwt = match minted {
            Ok(jwt) => jwt,
            Err(error) => {
                return Err((signing_failed(&error), attributes));
            }
        };
        let mut event = self.base_event(
            CredentialKind::JwtSvid,
            Outcome::Issued,
            caller,
            &attributes,
            name,
            policy.version,
        );
        event.spiffe_id = Some(jwt.spiffe_id.to_string());
        event.jwt_id = Some(jwt.jti.clone());
        event.authority_id = Some(jwt.key_id.clone());
        event.audiences = audiences.to_vec();
        event.ttl_seconds = Some(seconds_between(jwt.issued_at, jwt.expiry));
        event.expires_at = Some(rfc3339(jwt.expiry));
        self.audit.record(event);
        self.metrics.issued("jwt", name);
        let holder = match caller {
            Caller::Agent(agent) => Holder::WorkloadJwt {
                agent: agent.name.clone(),
                workload: holder_workload(&attributes),
                identity: name.to_owned(),
                audiences: audiences.to_vec(),
            },
            Caller::User => Holder::User {
                credential: format!("jwt:{}", jwt.jti),
            },
        };
        self.ledger.signed(
            holder,
            AuthorityRef {
                kind: AuthorityKind::Jwt,
                id: jwt.key_id.clone(),
            },
            jwt.expiry,
            now,
        );
        if let Caller::Agent(agent) = caller {
            self.observer.issued(&attributes, name, &jwt.spiffe_id);
            self.inventory.served(agent, &attributes);
        }
        Ok(pb::JwtSvid {
            workload_identity: name.to_owned(),
            spiffe_id: jwt.spiffe_id.to_string(),
            token: jwt.token,
            hint: issuable.hint.clone().unwrap_or_default(),
            expires_at_unix: unix_seconds(jwt.expiry),
            jti: jwt.jti,
        })
    }

    /// Audits and counts a refusal; returns the denial for the caller. What
    /// the caller sent is recorded bounded: a refused request may be huge.
    pub fn deny(
        &self,
        caller: Caller<'_>,
        asked: Asked<'_>,
        policy: &PolicyState,
        (denial, attributes): Refusal,
    ) -> pb::Denial {
        let Asked {
            kind,
            workload_identity,
            audiences,
        } = asked;
        let mut event = self.base_event(
            kind,
            Outcome::Denied,
            caller,
            &attributes,
            workload_identity,
            policy.version,
        );
        event.audiences = audiences.to_vec();
        event.reason = Some(denial.reason.clone());
        event.message = Some(denial.message.clone());
        event.bound_refused_input();
        self.audit.record(event);
        let metric_kind = if kind == CredentialKind::JwtSvid {
            "jwt"
        } else {
            "x509"
        };
        // Only names the policy knows become label values: a caller must
        // not be able to mint metric series.
        let known = policy
            .snapshot
            .identity_names()
            .any(|known| known == workload_identity);
        let label = if known { workload_identity } else { "" };
        self.metrics.denied(metric_kind, label, &denial.reason);
        if matches!(caller, Caller::Agent(_)) {
            self.observer.refused(&attributes, label, &denial);
        }
        denial
    }

    /// `agent.*` from the caller's SVID, `node.*` from the operator's view
    /// of the caller's Node (none while it has not seen the Node).
    pub fn context_of(&self, agent: &AgentRecord) -> AgentContext {
        let node = agent
            .node_name
            .as_deref()
            .and_then(|name| self.nodes.node(name));
        agent.context(node)
    }

    /// Verifies the workload and decides one identity for it.
    async fn decide(
        &self,
        agent: &AgentRecord,
        request: WorkloadRequest<'_>,
        policy: &PolicyState,
    ) -> Result<(IssuableIdentity, BTreeMap<String, String>), Refusal> {
        let attributes = match self.workloads.verify(agent, request.workload).await {
            Ok(attributes) => attributes.with_context(&self.context_of(agent)),
            Err(rejection) => {
                return Err((
                    denial(rejection.reason, rejection.message, rejection.retryable),
                    reported(request.workload),
                ));
            }
        };
        let evaluated: BTreeMap<String, String> = attributes.clone().into();
        match policy
            .snapshot
            .decide(&attributes, request.workload_identity)
        {
            Ok(issuable) => Ok((issuable, evaluated)),
            Err(refusal) => Err((
                denial(refusal.reason.as_str(), refusal.message, false),
                evaluated,
            )),
        }
    }
}

/// Decides one identity for a person or pipeline: the same decision as for
/// workloads, on `user.*` attributes only, so only Roles with `User` or
/// `Group` subjects can allow it.
fn decide_for_user(
    user: &UserFacts,
    workload_identity: &str,
    policy: &PolicyState,
) -> Result<(IssuableIdentity, BTreeMap<String, String>), Refusal> {
    let attributes = Attributes::of_user(user);
    let evaluated: BTreeMap<String, String> = attributes.clone().into();
    match policy.snapshot.decide(&attributes, workload_identity) {
        Ok(issuable) => Ok((issuable, evaluated)),
        Err(refusal) => Err((
            denial(refusal.reason.as_str(), refusal.message, false),
            evaluated,
        )),
    }
}

/// IDs under `/signet` are the agents' and the issuer's: a workload never
/// gets one, whatever a policy renders (an attribute value like `signet`
/// in the first segment of a template would otherwise make an agent ID).
fn refuse_reserved(id: &SpiffeId) -> Result<(), pb::Denial> {
    if id.is_reserved() {
        return Err(denial(
            "reserved_id",
            format!("{id} is reserved for Signet's agents and issuer"),
            false,
        ));
    }
    Ok(())
}

/// Only a missing authority (mid-rotation, or a replica that has not
/// loaded one) may pass if the agent asks again.
fn signing_failed(error: &AuthorityError) -> pb::Denial {
    let retryable = matches!(error, AuthorityError::NoActiveAuthority(_));
    denial("signing_failed", error.to_string(), retryable)
}

fn subject_of(issuable: &IssuableIdentity) -> SubjectTemplate {
    SubjectTemplate {
        common_name: issuable.x509.subject.common_name.clone(),
        organization: issuable.x509.subject.organization.clone(),
        organizational_unit: issuable.x509.subject.organizational_unit.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_policy::{PolicyDocument, parse_yaml_documents};

    fn policy(yaml: &str) -> PolicyState {
        let objects: Vec<_> = parse_yaml_documents(yaml)
            .into_iter()
            .map(|o| o.unwrap())
            .collect();
        let td = TrustDomain::new("example.org").unwrap();
        PolicyState::compile(1, &td, &PolicyDocument::from_objects(objects))
    }

    const PEOPLE: &str = r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: sre, labels: {audience: people}}
spec:
  spiffe: {id: "/people/{{ user.name }}"}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: anything, labels: {audience: people}}
spec:
  spiffe: {id: /shared}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: sre}
spec:
  subjects: [{kind: Group, name: sre}]
  allow: {workloadIdentityLabels: {audience: [people]}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: ci-pods}
spec:
  subjects: [{kind: ServiceAccount, namespace: ci, name: "*"}]
  allow: {workloadIdentityLabels: {audience: [people]}}
"#;

    fn user(name: &str, groups: &[&str]) -> UserFacts {
        UserFacts {
            name: name.into(),
            uid: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn people_get_identities_only_through_user_and_group_subjects() {
        let policy = policy(PEOPLE);
        let (issuable, attributes) =
            decide_for_user(&user("jane", &["sre"]), "sre", &policy).unwrap();
        assert_eq!(
            issuable.spiffe_id.to_string(),
            "spiffe://example.org/people/jane"
        );
        assert_eq!(
            attributes.get("user.groups.sre").map(String::as_str),
            Some("true")
        );
        // The ci service account's user name is not its pods: the
        // ServiceAccount subject does not apply to it.
        let (refusal, _) = decide_for_user(
            &user("system:serviceaccount:ci:deployer", &[]),
            "anything",
            &policy,
        )
        .unwrap_err();
        assert_eq!(refusal.reason, "no_role_allows");
        // A user name that is not a valid path segment renders nothing.
        let (refusal, _) =
            decide_for_user(&user("jane doe", &["sre"]), "sre", &policy).unwrap_err();
        assert_ne!(refusal.reason, "");
        assert!(decide_for_user(&user("jane", &["sre"]), "anything", &policy).is_ok());
    }
}
