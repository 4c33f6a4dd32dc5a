//! The validating admission webhook: `kubectl apply` of a WorkloadIdentity
//! or Role that does not compile is refused with the compiler's message
//! (the one its `Ready=False` condition would carry), `--dry-run=server`
//! included, and a change that would stop issuing identities to running
//! pods is admitted with a warning naming them.
//!
//! The object is compiled together with the policy in force, as the
//! reconciler would compile it next (so a duplicate name is caught too);
//! the warning compares, for every cached pod and container, the
//! identities the issuer would decide with the policy in force and with
//! the change (the same `check_workload` and `evaluate` as the issuer).
//!
//! Served over HTTPS with the issuer's own certificate (from Signet's CA);
//! the leader keeps the `caBundle` of the ValidatingWebhookConfiguration
//! equal to the trust bundle, so rotations need nothing from the user.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use signet_identity::TrustDomain;
use signet_policy::snapshot::ObjectKind;
use signet_policy::{Field, PolicyDocument, PolicySnapshot, Role, WorkloadIdentity};
use signet_proto::issuer::v1 as pb;
use tokio::sync::watch;

use crate::agents::{AgentRecord, NodeDirectory};
use crate::cluster::nodes::NodeCache;
use crate::cluster::pods::{PodCache, check_workload};
use crate::cluster::reconciler::policy_document;
use crate::policy_state::PolicyState;

/// Where the webhook is served.
pub const VALIDATE_PATH: &str = "/validate";
/// The API server sends at most a 3 MiB object, twice for an update.
const MAX_REVIEW_BYTES: usize = 8 << 20;
/// Pods looked at for the warning; past this (or `WARNING_BUDGET`) the
/// warning says how many were checked.
const MAX_PODS_CHECKED: usize = 20_000;
/// Time spent looking for stripped pods, well inside the webhook timeout.
const WARNING_BUDGET: Duration = Duration::from_secs(2);
/// Pods named in warnings; the rest are counted.
const PODS_NAMED: usize = 5;

/// Decides admission reviews against the policy in force. Cheap to clone.
#[derive(Clone)]
pub struct Validator {
    pub trust_domain: TrustDomain,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub pods: Arc<PodCache>,
    pub nodes: Arc<NodeCache>,
}

impl Validator {
    /// The answer to one request.
    pub fn review(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let kind = match request.kind.kind.as_str() {
            "WorkloadIdentity" => ObjectKind::WorkloadIdentity,
            "Role" => ObjectKind::Role,
            "FederatedTrustDomain" => return self.review_federation(request, response),
            // Not ours: the configuration should not send it.
            _ => return response,
        };
        let in_force = self.policy.borrow().clone();
        let mut document = in_force.snapshot.document().clone();
        match (kind, &request.operation) {
            (_, Operation::Delete) => remove(&mut document, kind, &request.name),
            (_, Operation::Create | Operation::Update) => {
                let Some(object) = &request.object else {
                    return response.deny("the review carries no object");
                };
                if let Err(message) = insert(&mut document, kind, object) {
                    return response.deny(message);
                }
            }
            _ => return response,
        }
        let (changed, reports) = document.compile(0, &self.trust_domain);
        let name = match &request.operation {
            Operation::Delete => None,
            _ => request.object.as_ref().map(|o| o.name_any()),
        };
        if let Some(name) = &name
            && let Some(report) = reports.iter().find(|r| r.kind == kind && &r.name == name)
            && let Err(error) = &report.result
        {
            return response.deny(format!(
                "{} {name}: {}: {}",
                kind_name(kind),
                error.reason.as_str(),
                error.message
            ));
        }
        let warnings = self.stripped_warnings(&in_force.snapshot, &changed);
        let mut response = response;
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        response
    }

    /// A FederatedTrustDomain is refused with the same check the operator
    /// applies when it follows the object.
    fn review_federation(
        &self,
        request: &AdmissionRequest<DynamicObject>,
        response: AdmissionResponse,
    ) -> AdmissionResponse {
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return response;
        }
        let Some(object) = &request.object else {
            return response.deny("the review carries no object");
        };
        let parsed: Result<signet_policy::crd::FederatedTrustDomain, _> =
            serde_json::to_value(object).and_then(serde_json::from_value);
        let checked = parsed
            .map_err(|e| e.to_string())
            .and_then(|o| crate::federation::from_object(&o.spec, &self.trust_domain));
        match checked {
            Ok(_) => response,
            Err(message) => {
                response.deny(format!("FederatedTrustDomain {}: {message}", request.name))
            }
        }
    }

    /// Warnings naming running pods that would lose an identity.
    fn stripped_warnings(&self, before: &PolicySnapshot, after: &PolicySnapshot) -> Vec<String> {
        if !*self.pods.synced().borrow() {
            return Vec::new();
        }
        let started = tokio::time::Instant::now();
        let pods = self.pods.all();
        let mut checked = 0;
        let mut stripped: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for pod in &pods {
            if checked >= MAX_PODS_CHECKED || started.elapsed() > WARNING_BUDGET {
                break;
            }
            checked += 1;
            if pod.node_name.is_empty() || pod.terminating {
                continue;
            }
            let Some(agent) = AgentRecord::for_node(&self.trust_domain, &pod.node_name) else {
                continue;
            };
            let context = agent.context(self.nodes.node(&pod.node_name));
            for container in &pod.containers {
                let workload = pb::Workload {
                    pod_uid: pod.uid.to_string(),
                    attributes: [(
                        Field::KubernetesContainerName.as_str().to_owned(),
                        container.name.to_string(),
                    )]
                    .into(),
                    ..pb::Workload::default()
                };
                let Ok(attributes) = check_workload(&agent, &workload, Some(pod)) else {
                    continue;
                };
                let attributes = attributes.with_context(&context);
                let kept: BTreeSet<String> = after
                    .evaluate(&attributes)
                    .into_iter()
                    .map(|i| i.workload_identity)
                    .collect();
                for had in before.evaluate(&attributes) {
                    if !kept.contains(&had.workload_identity) {
                        stripped
                            .entry(format!("{}/{}", pod.namespace, pod.name))
                            .or_default()
                            .insert(had.workload_identity);
                    }
                }
            }
        }
        if stripped.is_empty() {
            return Vec::new();
        }
        let mut warnings = vec![format!(
            "this change stops issuing identities to {} running pod(s){}",
            stripped.len(),
            if checked < pods.len() {
                format!(" (checked {checked} of {} pods)", pods.len())
            } else {
                String::new()
            }
        )];
        for (pod, identities) in stripped.iter().take(PODS_NAMED) {
            let names: Vec<&str> = identities.iter().map(String::as_str).collect();
            warnings.push(format!("pod {pod} loses {}", names.join(", ")));
        }
        if stripped.len() > PODS_NAMED {
            warnings.push(format!("and {} more pods", stripped.len() - PODS_NAMED));
        }
        warnings
    }
}

fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::WorkloadIdentity => "WorkloadIdentity",
        ObjectKind::Role => "Role",
    }
}

fn remove(document: &mut PolicyDocument, kind: ObjectKind, name: &str) {
    match kind {
        ObjectKind::WorkloadIdentity => document
            .workload_identities
            .retain(|o| o.name_any() != name),
        ObjectKind::Role => document.roles.retain(|o| o.name_any() != name),
    }
}

/// `document` with `object` in place of the object of its name.
fn insert(
    document: &mut PolicyDocument,
    kind: ObjectKind,
    object: &DynamicObject,
) -> Result<(), String> {
    let name = object.name_any();
    remove(document, kind, &name);
    let value = serde_json::to_value(object).map_err(|e| e.to_string())?;
    let invalid = |e: serde_json::Error| format!("{} {name}: {e}", kind_name(kind));
    let (identities, roles): (Vec<WorkloadIdentity>, Vec<Role>) = match kind {
        ObjectKind::WorkloadIdentity => (
            vec![serde_json::from_value(value).map_err(invalid)?],
            Vec::new(),
        ),
        ObjectKind::Role => (
            Vec::new(),
            vec![serde_json::from_value(value).map_err(invalid)?],
        ),
    };
    let mut merged = policy_document(
        document.workload_identities.iter().chain(&identities),
        document.roles.iter().chain(&roles),
    );
    std::mem::swap(document, &mut merged);
    Ok(())
}

impl crate::http_server::Handler for Validator {
    fn handle(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> {
        if request.uri().path() != VALIDATE_PATH {
            return Box::pin(async { plain(StatusCode::NOT_FOUND, "not found\n") });
        }
        if request.method() != Method::POST {
            return Box::pin(async { plain(StatusCode::METHOD_NOT_ALLOWED, "POST only\n") });
        }
        let validator = self.clone();
        Box::pin(async move {
            let body = match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "review too large\n"),
            };
            let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
                Ok(review) => review,
                Err(error) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        &format!("not an AdmissionReview: {error}\n"),
                    );
                }
            };
            let request: AdmissionRequest<DynamicObject> = match review.try_into() {
                Ok(request) => request,
                Err(_) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "the AdmissionReview has no request\n",
                    );
                }
            };
            let response = validator.review(&request);
            if !response.allowed {
                tracing::info!(kind = %request.kind.kind, name = %request.name, dry_run = request.dry_run, "admission refused");
            }
            match serde_json::to_vec(&response.into_review()) {
                Ok(json) => {
                    let mut response = Response::new(Full::new(Bytes::from(json)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(error) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
            }
        })
    }
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
    use kube::api::ObjectMeta;
    use std::collections::HashMap;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    const POLICY: &str = r#"
workloadIdentities:
  - apiVersion: signet.dev/v1alpha1
    kind: WorkloadIdentity
    metadata: {name: web, labels: {team: shop}}
    spec:
      rules: {allow: [{conditions: [{attribute: workload.kubernetes.namespace, eq: shop}]}]}
      spiffe: {id: "/ns/{{ workload.kubernetes.namespace }}"}
roles:
  - apiVersion: signet.dev/v1alpha1
    kind: Role
    metadata: {name: agents}
    spec:
      subjects: [{kind: Agent, name: "*"}]
      allow: {workloadIdentityLabels: {team: [shop]}}
"#;

    fn validator(pods: &[(&str, &str)]) -> Validator {
        let document: PolicyDocument = serde_yaml::from_str(POLICY).unwrap();
        let state = PolicyState::compile(1, &td(), &document);
        let cache = PodCache::default();
        let mut fresh = HashMap::new();
        for (namespace, name) in pods {
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some((*name).into()),
                    namespace: Some((*namespace).into()),
                    uid: Some(format!("uid-{name}")),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    node_name: Some("node-a".into()),
                    containers: vec![Container {
                        name: "app".into(),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
                ..Pod::default()
            };
            let facts = crate::cluster::pods::PodFacts::from_pod(pod).unwrap();
            fresh.insert(facts.uid.clone(), Arc::new(facts));
        }
        cache.replace(fresh);
        Validator {
            trust_domain: td(),
            policy: watch::channel(Arc::new(state)).1,
            pods: Arc::new(cache),
            nodes: Arc::new(NodeCache::new().0),
        }
    }

    fn request(
        operation: &str,
        kind: &str,
        object: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let name = object["metadata"]["name"].clone();
        let (object, old) = if operation == "DELETE" {
            (serde_json::Value::Null, object)
        } else {
            (object, serde_json::Value::Null)
        };
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "signet.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "signet.dev", "version": "v1alpha1", "resource": "x"},
                "name": name,
                "operation": operation,
                "userInfo": {"username": "admin"},
                "object": object,
                "oldObject": old,
                "dryRun": false,
            }
        });
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(review).unwrap();
        review.try_into().unwrap()
    }

    fn identity(name: &str, id: &str, namespace: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "signet.dev/v1alpha1",
            "kind": "WorkloadIdentity",
            "metadata": {"name": name, "labels": {"team": "shop"}},
            "spec": {
                "rules": {"allow": [{"conditions": [{"attribute": "workload.kubernetes.namespace", "eq": namespace}]}]},
                "spiffe": {"id": id},
            }
        })
    }

    #[test]
    fn a_federated_trust_domain_the_operator_could_not_follow_is_refused() {
        let v = validator(&[]);
        let object = |spec: serde_json::Value| {
            serde_json::json!({
                "apiVersion": "signet.dev/v1alpha1",
                "kind": "FederatedTrustDomain",
                "metadata": {"name": "partner"},
                "spec": spec,
            })
        };
        let review = |spec| v.review(&request("CREATE", "FederatedTrustDomain", object(spec)));
        let no_id = review(serde_json::json!({
            "trustDomain": "partner.org",
            "bundleEndpointURL": "https://bundles.partner.org/",
            "bundleEndpointProfile": {"type": "https_spiffe"},
        }));
        assert!(!no_id.allowed);
        assert!(
            no_id
                .result
                .message
                .starts_with("FederatedTrustDomain partner: spec: https_spiffe needs"),
            "{}",
            no_id.result.message
        );
        let own =
            review(serde_json::json!({"trustDomain": "example.org", "trustDomainBundle": "{}"}));
        assert!(
            own.result.message.contains("own trust domain"),
            "{}",
            own.result.message
        );
        let nothing = review(serde_json::json!({"trustDomain": "partner.org"}));
        assert!(!nothing.allowed);
        let web = review(serde_json::json!({
            "trustDomain": "partner.org",
            "bundleEndpointURL": "https://bundles.partner.org/",
            "bundleEndpointProfile": {"type": "https_web"},
        }));
        assert!(web.allowed, "{}", web.result.message);
    }

    #[test]
    fn an_object_that_does_not_compile_is_refused_with_the_compilers_message() {
        let v = validator(&[]);
        let bad = v.review(&request(
            "CREATE",
            "WorkloadIdentity",
            identity("bad", "/x/{{ workload.nope }}", "shop"),
        ));
        assert!(!bad.allowed);
        let message = &bad.result.message;
        assert!(
            message.starts_with("WorkloadIdentity bad: UnknownAttribute:"),
            "{message}"
        );
        assert!(message.contains("workload.nope"), "{message}");
        let reserved = v.review(&request(
            "CREATE",
            "WorkloadIdentity",
            identity("agentish", "/signet/agent/k8s/x", "shop"),
        ));
        assert!(!reserved.allowed);
        assert!(
            reserved.result.message.contains("ReservedId"),
            "{}",
            reserved.result.message
        );
        let good = v.review(&request(
            "CREATE",
            "WorkloadIdentity",
            identity("batch", "/batch", "batch"),
        ));
        assert!(good.allowed, "{}", good.result.message);
        assert_eq!(good.warnings, None);
        // An unknown field the CRD schema would prune is not ours to judge;
        // a wrong type is.
        let mut wrong = identity("typed", "/t", "shop");
        wrong["spec"]["rules"] = serde_json::json!("everything");
        let wrong = v.review(&request("UPDATE", "WorkloadIdentity", wrong));
        assert!(!wrong.allowed);
        assert!(
            wrong.result.message.starts_with("WorkloadIdentity typed:"),
            "{}",
            wrong.result.message
        );
    }

    #[test]
    fn a_change_that_strips_running_pods_is_admitted_with_a_warning() {
        let v = validator(&[("shop", "web-1"), ("shop", "web-2"), ("other", "db-1")]);
        // Narrowing the rules to another namespace takes `web` from both shop pods.
        let narrowed = v.review(&request(
            "UPDATE",
            "WorkloadIdentity",
            identity(
                "web",
                "/ns/{{ workload.kubernetes.namespace }}",
                "elsewhere",
            ),
        ));
        assert!(narrowed.allowed);
        let warnings = narrowed.warnings.unwrap();
        assert_eq!(
            warnings[0],
            "this change stops issuing identities to 2 running pod(s)"
        );
        assert_eq!(
            warnings[1..],
            ["pod shop/web-1 loses web", "pod shop/web-2 loses web"]
        );
        // Deleting the Role that grants it too.
        let role = serde_json::json!({"apiVersion": "signet.dev/v1alpha1", "kind": "Role", "metadata": {"name": "agents"}, "spec": {}});
        let deleted = v.review(&request("DELETE", "Role", role));
        assert!(deleted.allowed);
        assert_eq!(deleted.warnings.unwrap().len(), 3);
        // A change that keeps every pod's identity says nothing.
        let same = v.review(&request(
            "UPDATE",
            "WorkloadIdentity",
            identity("web", "/ns/{{ workload.kubernetes.namespace }}/v2", "shop"),
        ));
        assert!(same.allowed);
        assert_eq!(same.warnings, None);
    }
}
