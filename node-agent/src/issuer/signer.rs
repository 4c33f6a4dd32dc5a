//! The issuer as the SVID cache's [`Signer`]: batches of requests over
//! mTLS, each answer checked against its request before the cache sees it.

use std::time::SystemTime;

use futures::future::BoxFuture;
use signet_policy::{Attributes, Field};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient as GrpcIssuer;
use signet_proto::issuer_protocol;

use super::checks::{check_issued_jwt, check_issued_x509};
use super::client::{IssuerClient, with_timeout};
use super::pod_tokens::PodTokens;
use crate::cache::{
    Denial, JwtSignRequest, SignError, SignOutcome, SignedJwt, SignedX509, Signer, X509SignRequest,
};

/// The issuer's view of a workload: its attributes, and for a pod its UID
/// and the pod's service-account token when one is held (CSI files mode).
fn workload_message(
    attributes: &Attributes,
    pod_tokens: &PodTokens,
    now: SystemTime,
) -> pb::Workload {
    let pod_uid = attributes
        .field(Field::KubernetesPodUid)
        .unwrap_or_default()
        .to_owned();
    let pod_token = if pod_uid.is_empty() {
        String::new()
    } else {
        pod_tokens.get(&pod_uid, now).unwrap_or_default()
    };
    pb::Workload {
        // Only what an agent may testify to; the issuer sets agent.* and
        // node.* itself.
        attributes: attributes
            .testimony()
            .iter()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        pod_uid,
        pod_token,
    }
}

fn sign_error(call: &'static str, status: &tonic::Status) -> SignError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted => {}
        code => tracing::warn!(?code, message = %status.message(), "the issuer rejected {call}"),
    }
    SignError::Unavailable(format!("{call}: {:?}: {}", status.code(), status.message()))
}

fn denial(denial: pb::Denial) -> Denial {
    Denial {
        reason: denial.reason,
        message: denial.message,
        retryable: denial.retryable,
    }
}

/// A certificate the issuer should not have produced: treated as a
/// retryable refusal so the cache keeps the old SVID and tries again.
fn invalid_svid(message: String) -> Denial {
    tracing::error!(%message, "the issuer returned an invalid SVID");
    Denial {
        reason: "invalid_svid".into(),
        message,
        retryable: true,
    }
}

impl IssuerClient {
    async fn sign_x509(
        self,
        requests: Vec<X509SignRequest>,
    ) -> Result<Vec<SignOutcome<SignedX509>>, SignError> {
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let batch: Vec<X509SignRequest> =
                requests.by_ref().take(issuer_protocol::MAX_BATCH).collect();
            outcomes.extend(self.sign_x509_batch(batch).await?);
        }
        Ok(outcomes)
    }

    async fn sign_x509_batch(
        &self,
        batch: Vec<X509SignRequest>,
    ) -> Result<Vec<SignOutcome<SignedX509>>, SignError> {
        self.metrics().signing_requests("x509", batch.len());
        let mut keys = Vec::with_capacity(batch.len());
        let mut names = Vec::with_capacity(batch.len());
        let mut messages = Vec::with_capacity(batch.len());
        let now = self.clock().now();
        for request in batch {
            keys.push(request.public_key);
            names.push(request.workload_identity.clone());
            messages.push(pb::X509SvidRequest {
                workload: Some(workload_message(&request.workload, self.pod_tokens(), now)),
                workload_identity: request.workload_identity,
                csr: request.csr_der,
            });
        }
        let count = messages.len();
        let mut client = GrpcIssuer::new(self.mtls_channel());
        let response =
            with_timeout(client.sign_x509_svids(pb::SignX509SvidsRequest { requests: messages }))
                .await
                .map_err(|status| {
                    self.metrics()
                        .signing_failures("x509", "unavailable", count);
                    sign_error("SignX509Svids", &status)
                })?
                .into_inner();
        if response.results.len() != count {
            self.metrics()
                .signing_failures("x509", "unavailable", count);
            return Err(SignError::Unavailable(format!(
                "the issuer answered {} results for {count} requests",
                response.results.len()
            )));
        }
        let bundles = self.trusted_bundles();
        let now = self.clock().now();
        let td = self.trust_domain();
        let mut outcomes = Vec::with_capacity(count);
        for ((result, key), name) in response.results.into_iter().zip(keys).zip(names) {
            let outcome = match result.result {
                Some(pb::x509_svid_result::Result::Svid(svid)) => {
                    match check_issued_x509(svid, &name, &key, &bundles, td, now) {
                        Ok(signed) => SignOutcome::Issued(signed),
                        Err(message) => {
                            self.metrics().signing_failures("x509", "invalid_svid", 1);
                            SignOutcome::Denied(invalid_svid(message))
                        }
                    }
                }
                Some(pb::x509_svid_result::Result::Denial(d)) => {
                    self.metrics().signing_failures("x509", "denied", 1);
                    SignOutcome::Denied(denial(d))
                }
                None => {
                    self.metrics().signing_failures("x509", "invalid_svid", 1);
                    SignOutcome::Denied(invalid_svid("empty result".into()))
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn sign_jwt(
        self,
        requests: Vec<JwtSignRequest>,
    ) -> Result<Vec<SignOutcome<SignedJwt>>, SignError> {
        let mut outcomes = Vec::with_capacity(requests.len());
        for batch in requests.chunks(issuer_protocol::MAX_BATCH) {
            outcomes.extend(self.sign_jwt_batch(batch).await?);
        }
        Ok(outcomes)
    }

    async fn sign_jwt_batch(
        &self,
        batch: &[JwtSignRequest],
    ) -> Result<Vec<SignOutcome<SignedJwt>>, SignError> {
        self.metrics().signing_requests("jwt", batch.len());
        let now = self.clock().now();
        let messages = batch
            .iter()
            .map(|request| pb::JwtSvidRequest {
                workload: Some(workload_message(&request.workload, self.pod_tokens(), now)),
                workload_identity: request.workload_identity.clone(),
                audience: request.audiences.clone(),
            })
            .collect();
        let mut client = GrpcIssuer::new(self.mtls_channel());
        let response =
            with_timeout(client.sign_jwt_svids(pb::SignJwtSvidsRequest { requests: messages }))
                .await
                .map_err(|status| {
                    self.metrics()
                        .signing_failures("jwt", "unavailable", batch.len());
                    sign_error("SignJwtSvids", &status)
                })?
                .into_inner();
        if response.results.len() != batch.len() {
            self.metrics()
                .signing_failures("jwt", "unavailable", batch.len());
            return Err(SignError::Unavailable(format!(
                "the issuer answered {} results for {} requests",
                response.results.len(),
                batch.len()
            )));
        }
        let bundles = self.trusted_bundles();
        let now = self.clock().now();
        let td = self.trust_domain();
        Ok(response
            .results
            .into_iter()
            .zip(batch)
            .map(|(result, request)| match result.result {
                Some(pb::jwt_svid_result::Result::Svid(svid)) => {
                    match check_issued_jwt(svid, request, &bundles, td, now) {
                        Ok(signed) => SignOutcome::Issued(signed),
                        Err(message) => {
                            self.metrics().signing_failures("jwt", "invalid_svid", 1);
                            SignOutcome::Denied(invalid_svid(message))
                        }
                    }
                }
                Some(pb::jwt_svid_result::Result::Denial(d)) => {
                    self.metrics().signing_failures("jwt", "denied", 1);
                    SignOutcome::Denied(denial(d))
                }
                None => SignOutcome::Denied(invalid_svid("empty result".into())),
            })
            .collect())
    }
}

impl Signer for IssuerClient {
    fn sign_x509(
        &self,
        requests: Vec<X509SignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedX509>>, SignError>> {
        Box::pin(self.clone().sign_x509(requests))
    }

    fn sign_jwt(
        &self,
        requests: Vec<JwtSignRequest>,
    ) -> BoxFuture<'static, Result<Vec<SignOutcome<SignedJwt>>, SignError>> {
        Box::pin(self.clone().sign_jwt(requests))
    }
}

#[cfg(test)]
mod tests {
    use signet_runtime::clock::Clock;

    use super::*;

    #[test]
    fn pod_requests_carry_the_pod_uid_and_its_current_token() {
        let tokens = PodTokens::new();
        let mut workload = Attributes::default();
        workload.set(Field::KubernetesPodUid, "uid-1");
        workload.set(Field::KubernetesNamespace, "payments");
        workload.set(Field::AgentName, "forged");
        let now = Clock::new().now();
        let message = workload_message(&workload, &tokens, now);
        assert_eq!(message.pod_uid, "uid-1");
        assert_eq!(message.pod_token, "");
        assert!(!message.attributes.contains_key("agent.name"));
        tokens.offer("uid-1", "h.p.s");
        assert_eq!(workload_message(&workload, &tokens, now).pod_token, "h.p.s");
        // A host process has no pod, so no pod's token rides along.
        let mut host = Attributes::default();
        host.set(Field::UnixUid, "0");
        let message = workload_message(&host, &tokens, now);
        assert_eq!(
            (message.pod_uid.as_str(), message.pod_token.as_str()),
            ("", "")
        );
    }
}
