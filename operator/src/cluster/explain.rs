//! `signet explain pod NAMESPACE/NAME`: the issuer's decision for a pod,
//! worked out from the API server's objects with the issuer's own code.
//!
//! The pod checks and `workload.kubernetes.*` come from
//! [`check_workload`] (what [`super::pods::PodVerifier`] runs), the policy
//! from [`PolicyState::compile`] over the objects as the reconciler sees
//! them, `agent.*`/`node.*` from [`AgentRecord::context`] with the Node's
//! labels, and the verdict from `PolicySnapshot::explain_workload`, the
//! issuer's `decide` with its steps. What the API server cannot know (the
//! agent's testimony about the calling process, `workload.unix.*` and
//! the like) is whatever the caller passes in `testimony`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use signet_identity::TrustDomain;
use signet_policy::snapshot::ObjectReport;
use signet_policy::{Explanation, Field, NodeFacts, Role, WorkloadIdentity};
use signet_proto::issuer::v1 as pb;

use crate::agents::AgentRecord;
use crate::cluster::pods::{PodFacts, check_workload};
use crate::cluster::reconciler::policy_document;
use crate::issuer::workload::WorkloadRejection;
use crate::policy_state::PolicyState;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("reading {what} from the API server: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("pod {namespace}/{name} not found")]
    PodNotFound { namespace: String, name: String },
    #[error("pod {namespace}/{name} has no UID")]
    NoUid { namespace: String, name: String },
    #[error("pod {namespace}/{name} has no container {container:?} (it has {known})")]
    NoContainer {
        namespace: String,
        name: String,
        container: String,
        known: String,
    },
}

/// What `explain pod` found out.
#[derive(Debug)]
pub struct PodExplanation {
    pub pod: PodFacts,
    /// The container the explanation is for.
    pub container: String,
    /// The agent of the pod's node, as the issuer would know it from its
    /// SVID; `None` while the pod is not scheduled.
    pub agent: Option<AgentRecord>,
    /// The pod's Node; `None` when unscheduled or the Node is unknown.
    pub node: Option<NodeFacts>,
    /// Policy objects that do not compile (not in force).
    pub broken: Vec<ObjectReport>,
    /// The decision for every identity, or why the issuer would not get as
    /// far as deciding (the pod is not scheduled, is terminating, or the
    /// testimony is not acceptable).
    pub outcome: Result<Explanation, WorkloadRejection>,
}

/// Explains the issuer's decision for `container` (the pod's first
/// container when `None`) of pod `namespace/name`.
pub async fn explain_pod(
    client: &Client,
    trust_domain: &TrustDomain,
    namespace: &str,
    name: &str,
    container: Option<&str>,
    testimony: &BTreeMap<String, String>,
) -> Result<PodExplanation, ExplainError> {
    let api = |what: String| move |source| ExplainError::Api { what, source };
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(api(format!("pod {namespace}/{name}")))?
        .ok_or_else(|| ExplainError::PodNotFound {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    let first_container = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .map(|c| c.name.clone());
    let facts = PodFacts::from_pod(pod).ok_or_else(|| ExplainError::NoUid {
        namespace: namespace.into(),
        name: name.into(),
    })?;
    let container = match container {
        Some(wanted) => wanted.to_owned(),
        None => first_container.unwrap_or_default(),
    };
    if facts.container(&container).is_none() {
        let known: Vec<&str> = facts.containers.iter().map(|c| &*c.name).collect();
        return Err(ExplainError::NoContainer {
            namespace: namespace.into(),
            name: name.into(),
            container,
            known: known.join(", "),
        });
    }

    let (broken, policy) = compile_cluster_policy(client, trust_domain).await?;
    let node_name = facts.node_name.to_string();
    if node_name.is_empty() {
        return Ok(PodExplanation {
            outcome: Err(WorkloadRejection {
                reason: "pod_not_scheduled",
                message: format!(
                    "pod {namespace}/{name} is not bound to a node yet: no agent can ask for it"
                ),
                retryable: true,
            }),
            pod: facts,
            container,
            agent: None,
            node: None,
            broken,
        });
    }
    let node = Api::<Node>::all(client.clone())
        .get_metadata_opt(&node_name)
        .await
        .map_err(api(format!("node {node_name}")))?
        .map(|node| NodeFacts::new(&node_name, node.labels().clone()));
    let Some(agent) = AgentRecord::for_node(trust_domain, &node_name) else {
        return Ok(PodExplanation {
            outcome: Err(WorkloadRejection {
                reason: "pod_not_on_node",
                message: format!("node name {node_name:?} cannot be an agent's SPIFFE ID"),
                retryable: false,
            }),
            pod: facts,
            container,
            agent: None,
            node,
            broken,
        });
    };

    let mut attributes = testimony.clone();
    attributes.insert(
        Field::KubernetesContainerName.as_str().to_owned(),
        container.clone(),
    );
    let workload = pb::Workload {
        pod_uid: facts.uid.to_string(),
        attributes: attributes.into_iter().collect(),
        ..pb::Workload::default()
    };
    let outcome = check_workload(&agent, &workload, Some(&facts)).map(|attributes| {
        let attributes = attributes.with_context(&agent.context(node.clone()));
        policy.snapshot.explain_workload(&attributes)
    });
    Ok(PodExplanation {
        pod: facts,
        container,
        agent: Some(agent),
        node,
        broken,
        outcome,
    })
}

/// Every WorkloadIdentity and Role compiled as the reconciler compiles
/// them, and the objects that are not in force.
async fn compile_cluster_policy(
    client: &Client,
    trust_domain: &TrustDomain,
) -> Result<(Vec<ObjectReport>, PolicyState), ExplainError> {
    let api = |what: &str| {
        let what = what.to_owned();
        move |source| ExplainError::Api { what, source }
    };
    let identities = Api::<WorkloadIdentity>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api("WorkloadIdentities"))?;
    let roles = Api::<Role>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api("Roles"))?;
    let document = policy_document(identities.items.iter(), roles.items.iter());
    let state = PolicyState::compile(0, trust_domain, &document);
    let broken = state
        .reports
        .iter()
        .filter(|report| report.result.is_err())
        .cloned()
        .collect();
    Ok((broken, state))
}
