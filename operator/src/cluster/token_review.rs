//! Service-account tokens checked with a TokenReview: agents join with
//! their pod's projected token (its own audience, short expiry), and the
//! issuer binds the agent to the node its pod runs on.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, PostParams};
use signet_proto::issuer::v1 as pb;

use signet_proto::issuer_protocol::NODE_AGENT_PATH_PREFIX;

use crate::agents::{AdmittedAgent, JoinRejection, JoinVerifier};

/// Keys the API server puts in `user.extra` of a pod-bound token.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// A token the API server vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedToken {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// Present on clusters that add node claims (1.30+).
    pub node_name: Option<String>,
}

fn reject(reason: &'static str, message: impl Into<String>) -> JoinRejection {
    JoinRejection {
        reason,
        message: message.into(),
    }
}

/// Asks the API server whether `token` is valid for `audience` and bound
/// to a pod; returns who it names.
pub async fn review(
    client: &Client,
    token: &str,
    audience: &str,
) -> Result<ReviewedToken, JoinRejection> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let api: Api<TokenReview> = Api::all(client.clone());
    let reviewed = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| JoinRejection {
            reason: "token_review_failed",
            message: format!("TokenReview failed: {e}"),
        })?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(reject(
            "invalid_token",
            format!("the service-account token was refused: {why}"),
        ));
    }
    if !status
        .audiences
        .unwrap_or_default()
        .iter()
        .any(|a| a == audience)
    {
        return Err(reject(
            "invalid_token",
            format!("the token is not for audience {audience:?}"),
        ));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(reject(
            "invalid_token",
            format!("{username:?} is not a service account"),
        ));
    };
    let extra = user.extra.unwrap_or_default();
    let single = |key: &str| extra.get(key).and_then(|values| values.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (single(EXTRA_POD_NAME), single(EXTRA_POD_UID)) else {
        return Err(reject(
            "invalid_token",
            "the token is not bound to a pod: use a projected service-account token",
        ));
    };
    Ok(ReviewedToken {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
        pod_uid,
        node_name: single(EXTRA_NODE_NAME),
    })
}

/// Node names become a SPIFFE ID path segment.
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// Admits agents whose token belongs to the agent service account and
/// whose pod runs on the node they claim.
pub struct ServiceAccountJoin {
    client: Client,
    audience: String,
    namespace: String,
    service_account: String,
}

impl ServiceAccountJoin {
    pub fn new(
        client: Client,
        audience: String,
        namespace: String,
        service_account: String,
    ) -> Self {
        Self {
            client,
            audience,
            namespace,
            service_account,
        }
    }

    async fn admit(&self, request: &pb::JoinRequest) -> Result<AdmittedAgent, JoinRejection> {
        use pb::join_request::Credential;
        let token = match &request.credential {
            Some(Credential::ServiceAccountToken(token)) if !token.is_empty() => token,
            _ => {
                return Err(reject(
                    "unsupported_credential",
                    "this issuer accepts projected service-account tokens only",
                ));
            }
        };
        let reviewed = review(&self.client, token, &self.audience).await?;
        if reviewed.namespace != self.namespace || reviewed.service_account != self.service_account
        {
            return Err(reject(
                "not_an_agent",
                format!(
                    "service account {}/{} is not the agent's ({}/{})",
                    reviewed.namespace,
                    reviewed.service_account,
                    self.namespace,
                    self.service_account
                ),
            ));
        }
        // The pod behind the token, from the API server: it must still be
        // the same pod (UID) and run on the node the agent names.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &reviewed.namespace);
        let pod = pods
            .get_opt(&reviewed.pod_name)
            .await
            .map_err(|e| reject("pod_lookup_failed", format!("reading the agent's pod: {e}")))?
            .ok_or_else(|| {
                reject(
                    "pod_not_found",
                    format!("the agent's pod {} is gone", reviewed.pod_name),
                )
            })?;
        if pod.metadata.uid.as_deref() != Some(reviewed.pod_uid.as_str()) {
            return Err(reject("pod_not_found", "the token's pod was replaced"));
        }
        if pod.metadata.deletion_timestamp.is_some() {
            return Err(reject(
                "pod_terminating",
                "the agent's pod is being deleted",
            ));
        }
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        if !valid_node_name(&node) {
            return Err(reject(
                "pod_not_on_node",
                "the agent's pod is not scheduled to a node",
            ));
        }
        if let Some(claimed) = &reviewed.node_name
            && *claimed != node
        {
            return Err(reject(
                "pod_not_on_node",
                "the token's node claim does not match the pod",
            ));
        }
        if !request.node_name.is_empty() && request.node_name != node {
            return Err(reject(
                "pod_not_on_node",
                format!(
                    "the agent says it runs on {:?}, but its pod is on {node:?}",
                    request.node_name
                ),
            ));
        }
        Ok(AdmittedAgent {
            path: format!("{NODE_AGENT_PATH_PREFIX}{node}"),
            name: node.clone(),
            node_name: Some(node),
        })
    }
}

impl JoinVerifier for ServiceAccountJoin {
    fn verify<'a>(
        &'a self,
        request: &'a pb::JoinRequest,
    ) -> BoxFuture<'a, Result<AdmittedAgent, JoinRejection>> {
        Box::pin(self.admit(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_fit_a_path_segment() {
        assert!(valid_node_name("vm"));
        assert!(valid_node_name("ip-10-0-0-1.eu-west-1.compute.internal"));
        for bad in ["", "a/b", "..", ".", "A", "a b"] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }
}
