//! The agent as a DaemonSet on a real cluster (issue 4's first "done when"):
//! with `hostPID` and the kubernetes attestor (the kubelet's secure port, a
//! service-account token, webhook authorization), it issues pods identities
//! rendered from their Kubernetes attributes.
//!
//! The operator has no Kubernetes mode yet, so the standalone operator runs
//! on the host (this test's [`Stack`], listening on 127.0.0.1); the agent
//! DaemonSet (`e2e/cluster/manifests/agent-daemonset.yaml`) uses the host
//! network to reach it, joins with a reusable join token from a Secret and
//! bootstraps trust from a ConfigMap holding the operator's `bundle.pem`. It
//! serves the Workload API on a hostPath directory that the test pods mount
//! (no CSI driver here); the pods run `signet-agent api fetch x509` from the
//! agent image.
//!
//! Runs only with `SIGNET_E2E_CLUSTER=1` and `KUBECONFIG` set (see
//! `e2e/cluster/README.md`: `e2e/cluster/up.sh`, `e2e/images/build-all.sh`);
//! otherwise it prints SKIPPED and passes. kubectl is taken from
//! `$SIGNET_E2E_BIN_DIR`, else `PATH`.

use std::path::PathBuf;
use std::time::Duration;

use signet_e2e::cluster::{
    free_port, kubectl, kubectl_apply, kubectl_output, note, pod_field, run_to_completion,
    skip_reason, wait_for_daemonset,
};
use signet_e2e::standalone::{Stack, TRUST_DOMAIN};
use signet_identity::x509::{certs_from_pem, spiffe_id_from_cert};

const SYSTEM_NS: &str = "signet-e2e-agent";
const ALLOWED_NS: &str = "signet-e2e-allowed";
const DENIED_NS: &str = "signet-e2e-denied";
const CLUSTER_ROLE: &str = "signet-e2e-agent-kubelet";
/// Host directory of the agent's Workload API socket (hostPath).
const SOCKET_DIR: &str = "/run/signet-e2e-agent";
const AGENT_MANIFEST: &str = include_str!("../cluster/manifests/agent-daemonset.yaml");

/// Deletes what the test creates in the cluster (also what an interrupted
/// earlier run left) and the socket directory on the host.
fn delete_everything(wait: bool) {
    let wait = if wait { "--wait=true" } else { "--wait=false" };
    let _ = kubectl_output(
        &[
            "delete",
            "namespace",
            SYSTEM_NS,
            ALLOWED_NS,
            DENIED_NS,
            "--ignore-not-found",
            wait,
            "--timeout=180s",
        ],
        None,
    );
    let _ = kubectl_output(
        &[
            "delete",
            "clusterrolebinding,clusterrole",
            CLUSTER_ROLE,
            "--ignore-not-found",
        ],
        None,
    );
}

/// Cleans the cluster up when the test ends, passed or failed.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the agent said, for the failure report.
            let logs = kubectl_output(
                &[
                    "-n",
                    SYSTEM_NS,
                    "logs",
                    "daemonset/signet-agent",
                    "--tail=100",
                ],
                None,
            );
            note(&format!(
                "----- signet-agent pod log -----\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ));
        }
        delete_everything(false);
        // Only the socket (and the directory) the DaemonSet created.
        let _ = std::fs::remove_file(PathBuf::from(SOCKET_DIR).join("agent.sock"));
        let _ = std::fs::remove_dir(SOCKET_DIR);
    }
}

/// WorkloadIdentity `pods`: `/ns/<namespace>/sa/<sa>/pod/<pod>` for pods
/// labelled `app=fetch` in [`ALLOWED_NS`] only (an expression rule over the
/// pod's namespace and labels, as the kubelet reports them); every agent may
/// issue it.
fn pod_policy() -> String {
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: pods, labels: {{suite: e2e-cluster}}}}
spec:
  rules:
    allow:
      - expression: 'workload.kubernetes.namespace == "{ALLOWED_NS}" && workload.kubernetes.labels.app == "fetch"'
  spiffe:
    id: "/ns/{{{{ workload.kubernetes.namespace }}}}/sa/{{{{ workload.kubernetes.service_account }}}}/pod/{{{{ workload.kubernetes.pod_name }}}}"
    hint: pods
---
# The test itself (root on the host, outside any pod) validates the pod's
# JWT-SVID through the agent, which answers only callers with an identity.
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {{name: host-validator, labels: {{suite: e2e-cluster}}}}
spec:
  rules:
    allow:
      - expression: 'workload.unix.uid == "0" && !has(workload.kubernetes.pod_uid)'
  spiffe:
    id: /host/validator
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {{name: e2e-cluster-agents}}
spec:
  subjects: [{{kind: Agent, name: "*"}}]
  allow: {{workloadIdentityLabels: {{suite: [e2e-cluster]}}}}
"#
    )
}

/// A pod whose container `fetch` runs `signet-agent api fetch x509 --output
/// json --write /out` and whose container `fetch-jwt` runs `signet-agent api
/// fetch jwt --audience e2e-cluster --output json`, both against the agent's
/// socket (hostPath), then exits; `/out` is the host directory `out`, so the
/// test reads the certificates the pod received.
/// `labels` is the pod's label map in YAML flow form (`{app: fetch}`).
fn fetch_pod(
    namespace: &str,
    name: &str,
    labels: &str,
    service_account: &str,
    image: &str,
    out: &std::path::Path,
) -> String {
    let out = out.display();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}
spec:
  serviceAccountName: {service_account}
  restartPolicy: Never
  containers:
    - name: fetch
      image: "{image}"
      imagePullPolicy: Never
      args: [api, fetch, x509, --output, json, --timeout, 40s, --write, /out]
      env:
        - {{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///spiffe-workload-api/agent.sock"}}
      volumeMounts:
        - {{name: workload-api, mountPath: /spiffe-workload-api, readOnly: true}}
        - {{name: out, mountPath: /out}}
    - name: fetch-jwt
      image: "{image}"
      imagePullPolicy: Never
      args: [api, fetch, jwt, --audience, e2e-cluster, --output, json, --timeout, 40s]
      env:
        - {{name: SPIFFE_ENDPOINT_SOCKET, value: "unix:///spiffe-workload-api/agent.sock"}}
      volumeMounts:
        - {{name: workload-api, mountPath: /spiffe-workload-api, readOnly: true}}
  volumes:
    - name: workload-api
      hostPath: {{path: "{SOCKET_DIR}", type: Directory}}
    - name: out
      hostPath: {{path: "{out}", type: Directory}}
"#
    )
}

/// The log of one container of a finished pod.
fn container_log(namespace: &str, pod: &str, container: &str) -> String {
    let logs = kubectl_output(&["-n", namespace, "logs", pod, "-c", container], None);
    format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    )
}

#[test]
fn daemonset_agent_issues_pod_identities_from_kubelet_attributes() {
    if let Some(reason) = skip_reason() {
        note(&format!(
            "SKIPPED daemonset_agent_issues_pod_identities_from_kubelet_attributes: {reason}"
        ));
        return;
    }
    let started = signet_e2e::deadline::Stopwatch::start();
    let image = std::env::var("SIGNET_AGENT_IMAGE")
        .unwrap_or_else(|_| "localhost/signet/agent:dev".to_owned());

    delete_everything(true);
    let _cleanup = Cleanup;

    // The operator on the host, with a reusable token for the DaemonSet.
    let stack = Stack::operator_only_with_config(&pod_policy(), |stack| {
        let token = stack.operator_cli(
            &["token", "generate", "--name", "k8s-agents", "--out"],
            &[stack.path("k8s-join-token")],
        );
        assert!(token.status.success(), "token generate: {token:?}");
        format!(
            "join_tokens:\n  - {{name: k8s-agents, token_file: {}, reusable: true}}\n",
            stack.path("k8s-join-token").display()
        )
    });

    kubectl(&["create", "namespace", SYSTEM_NS]);
    kubectl(&["create", "namespace", ALLOWED_NS]);
    kubectl(&["create", "namespace", DENIED_NS]);
    kubectl(&[
        "-n",
        SYSTEM_NS,
        "create",
        "secret",
        "generic",
        "signet-join",
        &format!(
            "--from-file=token={}",
            stack.path("k8s-join-token").display()
        ),
    ]);
    kubectl(&[
        "-n",
        SYSTEM_NS,
        "create",
        "configmap",
        "signet-bundle",
        &format!(
            "--from-file=bundle.pem={}",
            stack.bundle_pem_path().display()
        ),
    ]);
    let manifest = AGENT_MANIFEST
        .replace("@NAMESPACE@", SYSTEM_NS)
        .replace("@AGENT_IMAGE@", &image)
        .replace("@ISSUER@", &format!("127.0.0.1:{}", stack.port))
        .replace("@SOCKET_DIR@", SOCKET_DIR)
        .replace("@METRICS_PORT@", &free_port().to_string())
        .replace("@CLUSTER_ROLE@", CLUSTER_ROLE);
    kubectl_apply(&manifest);
    wait_for_daemonset(
        SYSTEM_NS,
        "signet-agent",
        "app=signet-agent",
        Duration::from_secs(180),
    );
    let agent_ready = started.elapsed();

    // A pod in the allowed namespace, with its own service account.
    kubectl(&["-n", ALLOWED_NS, "create", "serviceaccount", "workload"]);
    let allowed_out = tempfile::Builder::new()
        .prefix("signet-e2e-allowed-")
        .tempdir()
        .unwrap();
    kubectl_apply(&fetch_pod(
        ALLOWED_NS,
        "fetch-allowed",
        "{app: fetch}",
        "workload",
        &image,
        allowed_out.path(),
    ));
    let (phase, log) = run_to_completion(ALLOWED_NS, "fetch-allowed", Duration::from_secs(120));
    assert_eq!(phase, "Succeeded", "the allowed pod's fetch failed:\n{log}");
    let uid = pod_field(ALLOWED_NS, "fetch-allowed", ".metadata.uid");
    let node = pod_field(ALLOWED_NS, "fetch-allowed", ".spec.nodeName");
    assert!(!uid.is_empty() && !node.is_empty());

    let response: serde_json::Value = container_log(ALLOWED_NS, "fetch-allowed", "fetch")
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON in the fetch output:\n{log}"));
    let expected_id =
        format!("spiffe://{TRUST_DOMAIN}/ns/{ALLOWED_NS}/sa/workload/pod/fetch-allowed");
    let ids: Vec<&str> = response["svids"]
        .as_array()
        .unwrap_or_else(|| panic!("no svids in {response}"))
        .iter()
        .filter_map(|svid| svid["spiffe_id"].as_str())
        .collect();
    assert_eq!(ids, [expected_id.as_str()], "response: {response}");
    // The certificate the pod holds names it, and chains to the operator's CA.
    let read = |name: &str| {
        std::fs::read_to_string(allowed_out.path().join(name))
            .unwrap_or_else(|e| panic!("the pod wrote no {name}: {e}"))
    };
    let chain = certs_from_pem(&read("svid.pem")).unwrap();
    assert_eq!(
        spiffe_id_from_cert(&chain[0]).unwrap().to_string(),
        expected_id
    );
    assert!(read("svid_key.pem").contains("PRIVATE KEY"));
    let operator_bundle =
        certs_from_pem(&std::fs::read_to_string(stack.bundle_pem_path()).unwrap()).unwrap();
    assert_eq!(
        certs_from_pem(&read("bundle.pem")).unwrap(),
        operator_bundle
    );

    // The JWT-SVID the pod's second container received names it too, and the
    // agent validates it for the audience it was minted for.
    let jwt_log = container_log(ALLOWED_NS, "fetch-allowed", "fetch-jwt");
    let jwt_response: serde_json::Value = jwt_log
        .lines()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON in the fetch-jwt output:\n{jwt_log}"));
    let token = jwt_response["svids"][0]["svid"]
        .as_str()
        .unwrap_or_else(|| panic!("no JWT-SVID in {jwt_response}"));
    assert_eq!(jwt_response["svids"][0]["spiffe_id"], expected_id.as_str());
    let validated = std::process::Command::new(signet_e2e::standalone::binary("signet-agent"))
        .args([
            "api",
            "validate",
            "jwt",
            "--audience",
            "e2e-cluster",
            "--output",
            "json",
        ])
        .args(["--socket-path", &format!("unix://{SOCKET_DIR}/agent.sock")])
        .args(["--svid", token])
        .output()
        .unwrap();
    assert!(validated.status.success(), "validate: {validated:?}");
    let validated: serde_json::Value = serde_json::from_slice(&validated.stdout).unwrap();
    assert_eq!(validated["spiffe_id"], expected_id.as_str());
    assert_eq!(validated["claims"]["aud"], "e2e-cluster");

    // The operator signed it for this pod: the attributes it evaluated are
    // the pod's real UID, node, namespace, service account and name.
    let events = stack.audit_events();
    let issued = events
        .iter()
        .find(|e| {
            e["event"] == "svid.issued"
                && e["credential"] == "x509_svid"
                && e["spiffe_id"] == expected_id.as_str()
        })
        .unwrap_or_else(|| panic!("no issuance of {expected_id} in the audit log: {events:?}"));
    assert!(
        events.iter().any(|e| e["event"] == "svid.issued"
            && e["credential"] == "jwt_svid"
            && e["spiffe_id"] == expected_id.as_str()),
        "no JWT-SVID issuance of {expected_id} in the audit log: {events:?}"
    );
    let workload = &issued["workload"];
    assert_eq!(workload["workload.kubernetes.pod_uid"], uid.as_str());
    assert_eq!(workload["workload.kubernetes.node_name"], node.as_str());
    assert_eq!(workload["workload.kubernetes.namespace"], ALLOWED_NS);
    assert_eq!(workload["workload.kubernetes.service_account"], "workload");
    assert_eq!(workload["workload.kubernetes.pod_name"], "fetch-allowed");
    assert_eq!(workload["workload.kubernetes.container_name"], "fetch");
    assert_eq!(workload["workload.kubernetes.labels.app"], "fetch");
    assert_eq!(issued["agent"], "k8s-agents");
    assert_eq!(issued["workload_identity"], "pods");
    note(&format!(
        "cluster agent: issued {expected_id}; audit: agent={} workload={workload}",
        issued["agent"]
    ));

    // A pod in a namespace the rule does not allow gets no SVID.
    let denied_out = tempfile::Builder::new()
        .prefix("signet-e2e-denied-")
        .tempdir()
        .unwrap();
    kubectl_apply(&fetch_pod(
        DENIED_NS,
        "fetch-denied",
        "{app: fetch}",
        "default",
        &image,
        denied_out.path(),
    ));
    let (phase, log) = run_to_completion(DENIED_NS, "fetch-denied", Duration::from_secs(120));
    assert_eq!(phase, "Failed", "the denied pod got an answer:\n{log}");
    assert!(
        log.contains("PermissionDenied"),
        "expected PermissionDenied, got:\n{log}"
    );
    assert!(!denied_out.path().join("svid.pem").exists());
    assert!(
        !stack.audit_events().iter().any(|e| {
            e["event"] == "svid.issued"
                && e["workload"]["workload.kubernetes.namespace"] == DENIED_NS
        }),
        "the operator issued an SVID to the denied namespace"
    );
    let denied_answer = log.trim().to_owned();

    // A pod in the allowed namespace without the label gets no SVID either:
    // the rule chooses pods by their labels, not only by where they run.
    let unlabelled_out = tempfile::Builder::new()
        .prefix("signet-e2e-unlabelled-")
        .tempdir()
        .unwrap();
    kubectl_apply(&fetch_pod(
        ALLOWED_NS,
        "fetch-unlabelled",
        "{tier: batch}",
        "workload",
        &image,
        unlabelled_out.path(),
    ));
    let (phase, log) = run_to_completion(ALLOWED_NS, "fetch-unlabelled", Duration::from_secs(120));
    assert_eq!(phase, "Failed", "the unlabelled pod got an answer:\n{log}");
    assert!(
        log.contains("PermissionDenied"),
        "expected PermissionDenied, got:\n{log}"
    );
    assert!(!unlabelled_out.path().join("svid.pem").exists());
    assert!(
        !stack.audit_events().iter().any(|e| {
            e["event"] == "svid.issued"
                && e["workload"]["workload.kubernetes.pod_name"] == "fetch-unlabelled"
        }),
        "the operator issued an SVID to the unlabelled pod"
    );
    note(&format!(
        "cluster agent: denied pod answered: {denied_answer}; unlabelled pod answered: {}; \
         agent Ready after {agent_ready:?}, test took {:?}",
        log.trim(),
        started.elapsed()
    ));
}
