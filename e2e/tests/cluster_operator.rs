//! The operator in Kubernetes mode against the real API server of the e2e
//! cluster (issue 5's "done when"):
//!
//! - the CRDs install and are Established;
//! - two replicas started together create the CA Secret exactly once and
//!   both serve certificates chaining to the one bundle in the ConfigMap;
//! - a bad WorkloadIdentity gets `Ready=False` with a useful message and a
//!   Warning Event while a good one is `Ready=True` and issues;
//! - an agent joins with a projected service-account token (TokenReview,
//!   bound to its pod's node); the issuer takes the pod's namespace and
//!   service account from its own watch, not from the agent;
//! - a pod's own service-account token (signet-csi files mode) is
//!   accepted only for that pod and audience;
//! - an agent whose token belongs to a pod on another node cannot get
//!   SVIDs for this node's pods, nor claim this node when joining;
//! - killing the leader moves the Lease to the other replica, which keeps
//!   signing with the same CA and takes over status writes;
//! - a deleted pod's identity is no longer issued;
//! - a leader whose calls to the API server hang (its connection frozen by
//!   a proxy that holds every byte) logs that it is no longer the leader
//!   before another replica takes the Lease;
//! - Role `Node` subjects follow the API server's labels of the agent's
//!   Node: with the other node labelled `pool=dmz`, a Role denying by that
//!   label refuses its pods (`role_denied`) and a grant with `NotIn [dmz]`
//!   does not reach them; relabelled `pool=web`, the grant does, and the
//!   agent's policy stream is pushed the new labels (this node's agent is
//!   not).
//! - `signet-operator agent revoke NODE --namespace NS` (the ConfigMap
//!   `signet-agent-revocations`) closes that node's agent's policy stream
//!   and both replicas refuse its signing, renewal and join, while this
//!   node's agent goes on; `unrevoke` lets it join again; once its agent
//!   pod is gone its SVID no longer renews.
//! - the agent inventory: `kubectl signet agents list` (and `kubectl get
//!   agents.signet.dev`) shows this node's agent with its join method,
//!   the version its policy stream reported, a last-seen within the
//!   minute, its SVID expiry and the pod it was signed for; `agents show`
//!   shows a revocation; an Agent record is deleted with its Node.
//!
//! Both replicas run as processes on the host with a kubeconfig holding
//! the `signet-operator` service account's token, bound to the RBAC of
//! `e2e/cluster/manifests/operator-rbac.yaml`: they run under that role,
//! not as admin. The agent side is this test speaking the issuer API, with
//! tokens minted by the API server for pods (`kubectl create token
//! --bound-object-kind Pod`). The "other node" is a Node object without a
//! kubelet: its pod is bound to it but never runs, which is all the
//! issuer looks at.
//!
//! Runs only with `SIGNET_E2E_CLUSTER=1` and `KUBECONFIG` set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use signet_e2e::cluster::{
    FreezableProxy, free_port, kubectl, kubectl_apply, kubectl_output, kubectl_signet, note,
    pod_field, skip_reason,
};
use signet_e2e::standalone::{Process, TRUST_DOMAIN, binary, http_get, wait_until_every};
use signet_identity::{BundleSet, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::issuer_client::IssuerClient;
use signet_tls::{PeerPolicy, SharedBundles, SpiffeServerVerifier, SvidResolver};
use tonic::transport::Channel;

const NS: &str = "signet-e2e-operator";
const WORK_NS: &str = "signet-e2e-work";
const OTHER_NODE: &str = "signet-e2e-other";
const AUDIENCE: &str = "signet-issuer";
const RBAC: &str = include_str!("../cluster/manifests/operator-rbac.yaml");
const PAUSE_IMAGE: &str = "localhost/signet/pause:dev";
const CRDS: [&str; 5] = [
    "../crds/signet.dev_workloadidentities.yaml",
    "../crds/signet.dev_roles.yaml",
    "../crds/signet.dev_agents.yaml",
    "../crds/signet.dev_federatedtrustdomains.yaml",
    "../crds/signet.dev_signingauthorities.yaml",
];
const POLL: Duration = Duration::from_millis(300);
/// The ValidatingWebhookConfiguration the replicas keep the caBundle of
/// (the chart's name, as the tested RBAC names it).
const WEBHOOK: &str = "signet-operator";

fn cleanup(wait: bool) {
    let wait = if wait { "--wait=true" } else { "--wait=false" };
    for args in [
        vec![
            "delete",
            "namespace",
            NS,
            WORK_NS,
            "--ignore-not-found",
            wait,
            "--timeout=120s",
        ],
        vec!["delete", "node", OTHER_NODE, "--ignore-not-found"],
        vec!["delete", "agents.signet.dev", "--all", "--ignore-not-found"],
        vec![
            "delete",
            "signingauthorities.signet.dev",
            "--all",
            "--ignore-not-found",
        ],
        vec![
            "delete",
            "validatingwebhookconfiguration",
            WEBHOOK,
            "--ignore-not-found",
        ],
        vec![
            "delete",
            "clusterrolebinding,clusterrole",
            &format!("{NS}-signet-operator"),
            "--ignore-not-found",
        ],
        vec![
            "delete",
            "workloadidentities,roles",
            "-l",
            "signet-e2e in (operator,operator-nodes)",
            "--ignore-not-found",
        ],
    ] {
        let _ = kubectl_output(&args, None);
    }
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let events = kubectl_output(&["get", "events", "-A", "--sort-by=.lastTimestamp"], None);
            note(&format!(
                "----- events -----\n{}",
                String::from_utf8_lossy(&events.stdout)
            ));
        }
        cleanup(false);
    }
}

fn jsonpath(args: &[&str], path: &str) -> String {
    let mut all = args.to_vec();
    let expression = format!("jsonpath={path}");
    all.extend(["-o", &expression]);
    let output = kubectl_output(&all, None);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A kubeconfig for the operator's service account: same server and CA
/// as the admin's, authenticated by a TokenRequest token.
fn operator_kubeconfig(dir: &Path) -> PathBuf {
    operator_kubeconfig_for(dir, "operator.kubeconfig", &api_server())
}

/// The API server's URL in the admin kubeconfig.
fn api_server() -> String {
    jsonpath(
        &["config", "view", "--raw", "--minify"],
        "{.clusters[0].cluster.server}",
    )
}

/// [`operator_kubeconfig`] reaching the API server at `server`.
fn operator_kubeconfig_for(dir: &Path, file: &str, server: &str) -> PathBuf {
    let view = ["config", "view", "--raw", "--minify"];
    let ca = jsonpath(&view, "{.clusters[0].cluster.certificate-authority-data}");
    assert!(
        !server.is_empty() && !ca.is_empty(),
        "admin kubeconfig lacks server or CA data"
    );
    let token = kubectl(&[
        "-n",
        NS,
        "create",
        "token",
        "signet-operator",
        "--duration=2h",
    ]);
    let path = dir.join(file);
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster: {{server: \"{server}\", certificate-authority-data: \"{ca}\"}}\nusers:\n- name: signet-operator\n  user: {{token: \"{}\"}}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: signet-operator}}\ncurrent-context: e2e\n",
        token.trim()
    );
    std::fs::write(&path, config).unwrap();
    path
}

struct Replica {
    name: &'static str,
    process: Process,
    issuer_port: u16,
    admin_port: u16,
    webhook_port: u16,
}

fn audit_log(name: &str, dir: &Path) -> PathBuf {
    dir.join(format!("{name}-audit.log"))
}

fn start_replica(name: &'static str, kubeconfig: &Path, dir: &Path) -> Replica {
    let issuer_port = free_port();
    let admin_port = free_port();
    let webhook_port = free_port();
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "trust_domain: {TRUST_DOMAIN}\nkubernetes:\n  webhook: {{listen: \"127.0.0.1:{webhook_port}\", configuration: {WEBHOOK}}}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(binary("signet-operator"));
    command
        .args(["kubernetes", "--config"])
        .arg(&config)
        .args(["--trust-domain", TRUST_DOMAIN, "--namespace", NS])
        .args(["--identity", name, "--lease-duration", "4s"])
        .args(["--listen", &format!("127.0.0.1:{issuer_port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{admin_port}")])
        .arg("--audit-log")
        .arg(audit_log(name, dir))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    let process = Process::spawn(name, command, dir.join(format!("{name}.log")));
    Replica {
        name,
        process,
        issuer_port,
        admin_port,
        webhook_port,
    }
}

impl Replica {
    fn ready(&self) -> bool {
        http_get(self.admin_port, "/readyz").starts_with("HTTP/1.1 200")
    }
}

fn pod_yaml(namespace: &str, name: &str, service_account: &str, node: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  nodeName: {node}
  serviceAccountName: {service_account}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  tolerations: [{{operator: Exists}}]
  containers:
    - name: main
      image: {PAUSE_IMAGE}
      imagePullPolicy: Never
"#
    )
}

/// A token for the agent service account bound to pod `pod`.
fn agent_token(pod: &str, audience: &str) -> String {
    bound_token(NS, "signet-agent", pod, audience)
}

/// A token of `service_account` bound to pod `pod`, for `audience`.
fn bound_token(namespace: &str, service_account: &str, pod: &str, audience: &str) -> String {
    kubectl(&[
        "-n",
        namespace,
        "create",
        "token",
        service_account,
        "--audience",
        audience,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod,
        "--duration=10m",
    ])
    .trim()
    .to_owned()
}

fn ready_condition(kind: &str, name: &str) -> (String, String, String, String) {
    let get = |field: &str| {
        jsonpath(
            &["get", kind, name],
            &format!("{{.status.conditions[?(@.type==\"Ready\")].{field}}}"),
        )
    };
    let observed = jsonpath(&["get", kind, name], "{.status.observedGeneration}");
    let generation = jsonpath(&["get", kind, name], "{.metadata.generation}");
    let current = if observed == generation {
        "current"
    } else {
        "stale"
    };
    (
        get("status"),
        get("reason"),
        get("message"),
        current.to_owned(),
    )
}

fn wait_ready(kind: &str, name: &str, status: &str) -> (String, String, String, String) {
    let mut last = Default::default();
    wait_until_every(
        &format!("{kind}/{name} Ready={status}"),
        Duration::from_secs(30),
        POLL,
        || {
            last = ready_condition(kind, name);
            last.0 == status && last.3 == "current"
        },
    );
    last
}

fn lease_holder() -> String {
    jsonpath(
        &["-n", NS, "get", "lease", "signet-operator"],
        "{.spec.holderIdentity}",
    )
}

fn policy(bad_template: &str) -> String {
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-web
  labels: {{signet-e2e: operator}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.kubernetes.namespace, eq: {WORK_NS}}}]
  spiffe:
    id: /ns/{{{{ workload.kubernetes.namespace }}}}/sa/{{{{ workload.kubernetes.service_account }}}}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-broken
  labels: {{signet-e2e: operator}}
spec:
  spiffe:
    id: {bad_template}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata:
  name: e2e-agents
  labels: {{signet-e2e: operator}}
spec:
  subjects:
    - {{kind: Agent, name: "*"}}
  allow:
    workloadIdentityLabels: {{signet-e2e: [operator]}}
"#
    )
}

/// Roles by Node label: one denies the `e2e-web` identity on `pool=dmz`
/// nodes, one grants `e2e-node-web` (labelled apart, so `e2e-agents` does
/// not grant it) on nodes whose pool is not `dmz`.
fn node_policy() -> String {
    format!(
        r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-node-web
  labels: {{signet-e2e: operator-nodes}}
spec:
  rules:
    allow:
      - conditions: [{{attribute: workload.kubernetes.namespace, eq: {WORK_NS}}}]
  spiffe:
    id: /nodes/{{{{ node.name }}}}/pod/{{{{ workload.kubernetes.pod_name }}}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata:
  name: e2e-dmz-deny
  labels: {{signet-e2e: operator}}
spec:
  subjects:
    - {{kind: Node, selector: {{matchLabels: {{pool: dmz}}}}}}
  deny:
    workloadIdentityLabels: {{signet-e2e: [operator]}}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata:
  name: e2e-not-dmz
  labels: {{signet-e2e: operator}}
spec:
  subjects:
    - kind: Node
      selector:
        matchExpressions: [{{key: pool, operator: NotIn, values: [dmz]}}]
  allow:
    workloadIdentityLabels: {{signet-e2e: [operator-nodes]}}
"#
    )
}

/// The admission webhook, registered as the chart registers it but by URL
/// (the replicas run on the host): the leader fills in the `caBundle` with
/// the trust bundle, and then the API server refuses a WorkloadIdentity
/// that does not compile with the compiler's message (`--dry-run=server`
/// and a real apply), and admits a change that would take `e2e-web` from
/// the running `web` pod with a warning naming it. `failurePolicy: Fail`
/// here, so an unreachable webhook cannot pass for one that admits.
fn admission_refuses_what_does_not_compile(port: u16, bundle_pem: &str) {
    use base64::Engine;
    kubectl_apply(&format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {WEBHOOK}}}
webhooks:
  - name: validate.signet.dev
    admissionReviewVersions: [v1]
    sideEffects: None
    failurePolicy: Fail
    timeoutSeconds: 5
    rules:
      - apiGroups: [signet.dev]
        apiVersions: ["*"]
        resources: [workloadidentities, roles]
        operations: [CREATE, UPDATE, DELETE]
        scope: Cluster
    clientConfig: {{url: "https://127.0.0.1:{port}/validate"}}
"#
    ));
    let ca_bundle = || {
        jsonpath(
            &["get", "validatingwebhookconfiguration", WEBHOOK],
            "{.webhooks[0].clientConfig.caBundle}",
        )
    };
    signet_e2e::standalone::wait_until_every(
        "the leader to set the webhook caBundle",
        Duration::from_secs(30),
        POLL,
        || !ca_bundle().trim().is_empty(),
    );
    let set = base64::engine::general_purpose::STANDARD
        .decode(ca_bundle().trim())
        .unwrap();
    assert_eq!(String::from_utf8(set).unwrap(), bundle_pem);

    let bad = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-rejected
  labels: {signet-e2e: operator}
spec:
  spiffe:
    id: /x/{{ workload.nope }}
"#;
    let apply = |yaml: &str, dry_run: bool| {
        let mut args = vec!["apply", "-f", "-"];
        if dry_run {
            args.push("--dry-run=server");
        }
        let output = kubectl_output(&args, Some(yaml));
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // The API server picks up the new configuration within a moment.
    let mut refusal = String::new();
    signet_e2e::standalone::wait_until_every(
        "the webhook to answer",
        Duration::from_secs(30),
        POLL,
        || {
            let (ok, stderr) = apply(bad, true);
            assert!(!ok, "a WorkloadIdentity that does not compile was admitted");
            refusal = stderr;
            refusal.contains("denied the request")
        },
    );
    assert!(
        refusal.contains("WorkloadIdentity e2e-rejected: UnknownAttribute")
            && refusal.contains("workload.nope"),
        "{refusal}"
    );
    let (ok, stderr) = apply(bad, false);
    assert!(!ok && stderr.contains("UnknownAttribute"), "{stderr}");
    let missing = kubectl_output(&["get", "workloadidentity", "e2e-rejected"], None);
    assert!(!missing.status.success(), "refused, so never stored");

    let narrowed = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-web
  labels: {signet-e2e: operator}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.kubernetes.namespace, eq: somewhere-else}]
  spiffe:
    id: /ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}
"#;
    let (ok, stderr) = apply(narrowed, true);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning: this change stops issuing identities to 1 running pod(s)")
            && stderr.contains(&format!("Warning: pod {WORK_NS}/web loses e2e-web")),
        "{stderr}"
    );

    // Later steps kill the replica the URL names.
    kubectl(&["delete", "validatingwebhookconfiguration", WEBHOOK]);
}

/// `kubectl signet explain pod` gives the decisions the issuer gave above:
/// for the allowed pod, a pod no rule matches, and the pod a Node Role
/// denies, with the Role that decided and the object not in force.
fn explain_pods_as_the_issuer_decided(node: &str) {
    let explain = |pod: &str| -> serde_json::Value {
        let json = kubectl_signet(&[
            "explain",
            "pod",
            pod,
            "--trust-domain",
            TRUST_DOMAIN,
            "-o",
            "json",
        ]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
    };
    let identity = |explained: &serde_json::Value, name: &str| -> serde_json::Value {
        explained["explanation"]["identities"]
            .as_array()
            .and_then(|all| all.iter().find(|i| i["workload_identity"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {explained:#}"))
    };
    let role_applies = |explained: &serde_json::Value, name: &str| -> bool {
        explained["explanation"]["roles"]
            .as_array()
            .and_then(|all| all.iter().find(|r| r["role"] == name))
            .map(|r| r["applies"] == true)
            .unwrap_or_else(|| panic!("Role {name} in {explained:#}"))
    };

    let allowed = explain(&format!("{WORK_NS}/web"));
    assert_eq!(
        allowed["agent"],
        format!("spiffe://{TRUST_DOMAIN}/signet/agent/k8s/{node}")
    );
    let web = identity(&allowed, "e2e-web");
    assert_eq!(web["issued"], true, "{allowed:#}");
    assert_eq!(
        web["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/ns/{WORK_NS}/sa/web")
    );
    let by_node = identity(&allowed, "e2e-node-web");
    assert_eq!(
        by_node["spiffe_id"],
        format!("spiffe://{TRUST_DOMAIN}/nodes/{node}/pod/web"),
        "{allowed:#}"
    );
    assert!(
        allowed["not_in_force"].to_string().contains("e2e-broken"),
        "{allowed:#}"
    );

    let unmatched = explain(&format!("{NS}/agent-here"));
    let web = identity(&unmatched, "e2e-web");
    assert_eq!(web["issued"], false);
    assert_eq!(web["reason"], "no_matching_rule", "{unmatched:#}");

    let denied = explain(&format!("{WORK_NS}/web-dmz"));
    assert_eq!(denied["node_labels"]["pool"], "dmz", "{denied:#}");
    assert!(role_applies(&denied, "e2e-dmz-deny"), "{denied:#}");
    assert!(!role_applies(&denied, "e2e-not-dmz"), "{denied:#}");
    assert_eq!(identity(&denied, "e2e-web")["reason"], "role_denied");
    assert_eq!(
        identity(&denied, "e2e-node-web")["reason"],
        "no_role_allows"
    );

    // The same answer for a person.
    let text = kubectl_signet(&[
        "explain",
        "pod",
        &format!("{WORK_NS}/web-dmz"),
        "--trust-domain",
        TRUST_DOMAIN,
    ]);
    assert!(
        text.contains("REFUSED  e2e-web") && text.contains("(role_denied)"),
        "{text}"
    );
    assert!(
        text.contains("e2e-dmz-deny") && text.contains("pool=dmz"),
        "{text}"
    );
}

/// `kubectl signet agents list` (and `kubectl get agents.signet.dev`)
/// show this node's agent as the replicas saw it: joined with a
/// Kubernetes token, seen on its open policy stream within the minute,
/// the version it reported, the web pod it was signed for, its SVID's
/// expiry, and owned by its Node.
fn agents_list_shows_the_node_agent(node: &str) {
    let mut listed = serde_json::Value::Null;
    wait_until_every(
        "the node's Agent record with its stream and workload",
        Duration::from_secs(60),
        POLL,
        || {
            let json = kubectl_signet(&["agents", "list", "--signet-namespace", NS, "-o", "json"]);
            listed = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
            listed.as_array().is_some_and(|all| {
                all.iter().any(|a| {
                    a["name"] == node
                        && a["status"]["version"] == "e2e"
                        && a["status"]["workloads"].as_u64() >= Some(1)
                })
            })
        },
    );
    let agent = listed
        .as_array()
        .and_then(|all| all.iter().find(|a| a["name"] == node))
        .unwrap();
    assert_eq!(agent["spec"]["nodeName"], node, "{agent:#}");
    assert_eq!(agent["spec"]["joinMethod"], "kubernetes", "{agent:#}");
    assert_eq!(
        agent["spec"]["spiffeId"],
        format!("spiffe://{TRUST_DOMAIN}/signet/agent/k8s/{node}")
    );
    let now = signet_runtime::clock::Clock::new().now();
    let time = |field: &str| {
        humantime::parse_rfc3339(agent["status"][field].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{field}: {e}: {agent:#}"))
    };
    assert!(
        now.duration_since(time("lastSeen")).unwrap_or_default() < Duration::from_secs(60),
        "{agent:#}"
    );
    assert!(time("svidExpiry") > now, "{agent:#}");
    assert!(time("firstJoin") <= time("lastJoin"), "{agent:#}");

    let table = kubectl_signet(&["agents", "list", "--signet-namespace", NS]);
    note(&format!("kubectl signet agents list:\n{table}"));
    note(&format!(
        "kubectl signet agents show:\n{}",
        kubectl_signet(&["agents", "show", node, "--signet-namespace", NS])
    ));
    let row = table
        .lines()
        .find(|line| line.starts_with(&format!("{node} ")))
        .unwrap_or_else(|| panic!("{node} in\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..4], [node, node, "kubernetes", "e2e"], "{table}");
    assert_eq!(cells.last(), Some(&"active"), "{table}");
    let owner = jsonpath(
        &["get", "agents.signet.dev", node],
        "{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    );
    assert_eq!(owner, format!("Node/{node}"));
    let columns = kubectl(&["get", "agents.signet.dev", node]);
    assert!(
        columns.contains("LAST SEEN") && columns.contains("e2e"),
        "{columns}"
    );
}

// --- the issuer API, as an agent speaks it ---

struct IssuerConnection {
    verifier: Arc<SpiffeServerVerifier>,
}

impl IssuerConnection {
    fn new(bundle_pem: &str) -> Self {
        let trust_domain = TrustDomain::new(TRUST_DOMAIN).unwrap();
        let mut set = BundleSet::new();
        set.insert(TrustBundle::from_x509_pem(trust_domain.clone(), bundle_pem).unwrap());
        let verifier = Arc::new(SpiffeServerVerifier::new(
            SharedBundles::new(set),
            PeerPolicy::OneOf(vec![
                SpiffeId::from_path(&trust_domain, "/signet/issuer").unwrap(),
            ]),
        ));
        Self { verifier }
    }

    fn anonymous(&self, port: u16) -> IssuerClient<Channel> {
        let config = signet_tls::client_config(None, self.verifier.clone()).unwrap();
        let channel =
            signet_tls::connect_channel(&format!("127.0.0.1:{port}"), Arc::new(config)).unwrap();
        IssuerClient::new(channel)
    }

    fn with_svid(&self, port: u16, chain: &[Vec<u8>], key: &PrivateKey) -> IssuerClient<Channel> {
        let resolver = Arc::new(SvidResolver::new());
        let chain = chain.iter().cloned().map(CertificateDer::from).collect();
        resolver.set(chain, &key.to_pkcs8_der()).unwrap();
        let config = signet_tls::client_config(Some(resolver), self.verifier.clone()).unwrap();
        let channel =
            signet_tls::connect_channel(&format!("127.0.0.1:{port}"), Arc::new(config)).unwrap();
        IssuerClient::new(channel)
    }

    /// Joins as an agent; returns its mTLS client and SPIFFE ID.
    async fn join(
        &self,
        port: u16,
        token: &str,
        node: &str,
    ) -> Result<(IssuerClient<Channel>, String), tonic::Status> {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let csr = signet_identity::x509::create_csr(&key).unwrap();
        let joined = self
            .anonymous(port)
            .join(pb::JoinRequest {
                credential: Some(pb::join_request::Credential::ServiceAccountToken(
                    token.to_owned(),
                )),
                csr,
                node_name: node.to_owned(),
            })
            .await?
            .into_inner();
        Ok((
            self.with_svid(port, &joined.cert_chain, &key),
            joined.spiffe_id,
        ))
    }
}

/// Asks for `e2e-web` for the pod with `uid`, with the agent's (forged)
/// claim that it runs in kube-system; returns the SVID's ID or the denial.
async fn sign_for_pod(client: &mut IssuerClient<Channel>, uid: &str) -> Result<String, pb::Denial> {
    sign_for_pod_with_token(client, uid, "").await
}

/// [`sign_for_pod`] with the pod's own service-account token as proof
/// (what signet-csi files mode passes on).
async fn sign_for_pod_with_token(
    client: &mut IssuerClient<Channel>,
    uid: &str,
    pod_token: &str,
) -> Result<String, pb::Denial> {
    sign_identity_for_pod(client, uid, "e2e-web", pod_token).await
}

/// Asks for `identity` for the pod with `uid`, waiting out the denials the
/// agent would retry (the operator's pod watch lagging behind the test).
async fn sign_when_known(
    client: &mut IssuerClient<Channel>,
    uid: &str,
    identity: &str,
) -> Result<String, pb::Denial> {
    let mut result = Err(pb::Denial::default());
    for _ in 0..50 {
        result = sign_identity_for_pod(client, uid, identity, "").await;
        if !matches!(&result, Err(denial) if denial.retryable) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    result
}

/// The next update on a WatchPolicy stream for which `wanted` holds.
async fn update_where(
    updates: &mut tonic::Streaming<pb::PolicyUpdate>,
    what: &str,
    wanted: impl Fn(&pb::PolicyUpdate) -> bool,
) -> pb::PolicyUpdate {
    let deadline = Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        loop {
            let update = updates
                .message()
                .await
                .expect("the policy stream")
                .expect("the policy stream ended");
            if wanted(&update) {
                return update;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no policy update with {what} within {deadline:?}"))
}

/// The `pool` label of the Node an update carries.
fn pool(update: &pb::PolicyUpdate) -> Option<&str> {
    update
        .node
        .as_ref()
        .and_then(|node| node.labels.get("pool"))
        .map(String::as_str)
}

/// Asks for `identity` for the pod with `uid` (see [`sign_for_pod`]).
async fn sign_identity_for_pod(
    client: &mut IssuerClient<Channel>,
    uid: &str,
    identity: &str,
    pod_token: &str,
) -> Result<String, pb::Denial> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let request = pb::X509SvidRequest {
        workload: Some(pb::Workload {
            attributes: [(
                "workload.kubernetes.namespace".to_owned(),
                "kube-system".to_owned(),
            )]
            .into(),
            pod_uid: uid.to_owned(),
            pod_token: pod_token.to_owned(),
        }),
        workload_identity: identity.into(),
        csr: signet_identity::x509::create_csr(&key).unwrap(),
    };
    let response = client
        .sign_x509_svids(pb::SignX509SvidsRequest {
            requests: vec![request],
        })
        .await
        .unwrap()
        .into_inner();
    match response.results.into_iter().next().and_then(|r| r.result) {
        Some(pb::x509_svid_result::Result::Svid(svid)) => Ok(svid.spiffe_id),
        Some(pb::x509_svid_result::Result::Denial(denial)) => Err(denial),
        None => panic!("empty SignX509Svids result"),
    }
}

/// Runs `signet-operator agent ARGS --namespace NS` as the cluster admin
/// would (the test's kubeconfig); returns its stdout.
fn revocation_cli(args: &[&str]) -> String {
    let output = Command::new(binary("signet-operator"))
        .arg("agent")
        .args(args)
        .args(["--namespace", NS])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "signet-operator agent {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Renews the calling agent's SVID.
async fn renew(client: &mut IssuerClient<Channel>) -> Result<(), tonic::Status> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let csr = signet_identity::x509::create_csr(&key).unwrap();
    client
        .renew_agent(pb::RenewAgentRequest { csr })
        .await
        .map(|_| ())
}

/// Asks for `e2e-web` for the pod, returning the call's own status (a
/// revoked agent is refused the call, not given a denial).
async fn try_sign(client: &mut IssuerClient<Channel>, uid: &str) -> Result<(), tonic::Status> {
    let key = PrivateKey::generate(KeyType::EcP256).unwrap();
    let request = pb::X509SvidRequest {
        workload: Some(pb::Workload {
            pod_uid: uid.to_owned(),
            ..Default::default()
        }),
        workload_identity: "e2e-web".into(),
        csr: signet_identity::x509::create_csr(&key).unwrap(),
    };
    client
        .sign_x509_svids(pb::SignX509SvidsRequest {
            requests: vec![request],
        })
        .await
        .map(|_| ())
}

/// The active X.509 CA's SigningAuthority object (name, id).
fn signing_authority_in(state: &str) -> Option<(String, String)> {
    let rows = jsonpath(
        &["get", "signingauthorities.signet.dev"],
        "{range .items[*]}{.metadata.name} {.spec.kind} {.spec.id} {.status.state}{\"\\n\"}{end}",
    );
    rows.lines().find_map(|row| {
        let fields: Vec<&str> = row.split(' ').collect();
        (fields.len() == 4 && fields[1] == "x509" && fields[3] == state)
            .then(|| (fields[0].to_owned(), fields[2].to_owned()))
    })
}

/// Both replicas signed (each for the agent that joined it): the active
/// CA's object has an entry per replica, and liveSvids is their sum.
fn signing_authorities_count_every_replica() {
    let mut active = None;
    wait_until_every(
        "a SigningAuthority per authority",
        Duration::from_secs(30),
        POLL,
        || {
            active = signing_authority_in("active");
            let kinds = jsonpath(
                &["get", "signingauthorities.signet.dev"],
                "{.items[*].spec.kind}",
            );
            active.is_some() && kinds.contains("jwt")
        },
    );
    let (name, id) = active.unwrap();
    assert_eq!(name, format!("x509-{}", id.to_ascii_lowercase()));
    let mut seen = String::new();
    wait_until_every(
        "both replicas' counts summed",
        Duration::from_secs(30),
        POLL,
        || {
            seen = jsonpath(
                &["get", "signingauthorities.signet.dev", &name],
                "{range .status.replicas[*]}{.replica}={.liveSvids} {end}/{.status.liveSvids}",
            );
            let Some((entries, total)) = seen.split_once('/') else {
                return false;
            };
            let counts: Vec<u64> = entries
                .split_whitespace()
                .filter_map(|e| e.split_once('=')?.1.parse().ok())
                .collect();
            counts.len() == 2
                && counts.iter().all(|c| *c > 0)
                && total.parse::<u64>().ok() == Some(counts.iter().sum())
        },
    );
    note(&format!("{name}: {seen}"));
    assert!(
        seen.contains("operator-a-") && seen.contains("operator-b-"),
        "{seen}"
    );
    let table = String::from_utf8_lossy(
        &kubectl_output(&["get", "signingauthorities.signet.dev"], None).stdout,
    )
    .into_owned();
    assert!(
        table.contains("LIVE SVIDS") && table.contains("active"),
        "{table}"
    );
}

/// A rotation driven with kubectl alone: a prepare request that also asks
/// for activation, then taint and revoke of the old CA, which waits while
/// SVIDs it signed are live (the crashed replica's count stands until they
/// expire) until `revoke: Now`.
fn rotate_taint_and_revoke_with_kubectl(first_bundle: &str) {
    let (old_name, old_id) = signing_authority_in("active").unwrap();
    // Forged or impossible requests are refused by the API server.
    let bad_kind = kubectl_output(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: signet.dev/v1alpha1\nkind: SigningAuthority\nmetadata: {name: e2e-bad}\nspec: {kind: rsa}\n",
        ),
    );
    assert!(!bad_kind.status.success());
    kubectl_apply(
        "apiVersion: signet.dev/v1alpha1\nkind: SigningAuthority\nmetadata: {name: e2e-next}\nspec: {kind: x509, activate: true}\n",
    );
    let mut new_id = String::new();
    wait_until_every(
        "the requested CA prepared and active",
        Duration::from_secs(60),
        POLL,
        || {
            let seen = jsonpath(
                &["get", "signingauthorities.signet.dev", "e2e-next"],
                "{.spec.id} {.status.state}",
            );
            match seen.split_once(' ') {
                Some((id, "active")) if !id.is_empty() => {
                    new_id = id.to_owned();
                    true
                }
                _ => false,
            }
        },
    );
    assert_ne!(new_id, old_id);
    let changed = kubectl_output(
        &[
            "patch",
            "signingauthorities.signet.dev",
            "e2e-next",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"id":"00"}}"#,
        ],
        None,
    );
    assert!(!changed.status.success(), "the id cannot change");
    assert_eq!(
        jsonpath(
            &["get", "signingauthorities.signet.dev", &old_name],
            "{.status.state}"
        ),
        "retired"
    );
    // The bundle carries both CAs.
    wait_until_every(
        "the bundle with the new CA",
        Duration::from_secs(30),
        POLL,
        || {
            let pem = jsonpath(
                &["-n", NS, "get", "configmap", "signet-bundle"],
                "{.data.bundle\\.pem}",
            );
            pem.matches("BEGIN CERTIFICATE").count() == 2 && pem.contains(first_bundle.trim())
        },
    );

    kubectl(&[
        "patch",
        "signingauthorities.signet.dev",
        &old_name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"taint":true,"revoke":"WhenUnused"}}"#,
    ]);
    let mut condition = String::new();
    wait_until_every(
        "the taint and a pending revoke",
        Duration::from_secs(30),
        POLL,
        || {
            condition = jsonpath(
                &["get", "signingauthorities.signet.dev", &old_name],
                "{.status.tainted} {.status.conditions[0].reason} {.status.conditions[0].message}",
            );
            condition.starts_with("true RevokePending")
        },
    );
    note(&format!("{old_name}: {condition}"));
    assert!(condition.contains("live SVIDs"), "{condition}");
    let undo = kubectl_output(
        &[
            "patch",
            "signingauthorities.signet.dev",
            &old_name,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"taint":false}}"#,
        ],
        None,
    );
    assert!(!undo.status.success(), "a taint cannot be undone");
    assert!(
        String::from_utf8_lossy(&undo.stderr).contains("cannot be undone"),
        "{}",
        String::from_utf8_lossy(&undo.stderr)
    );
    kubectl(&[
        "patch",
        "signingauthorities.signet.dev",
        &old_name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"revoke":"Now"}}"#,
    ]);
    wait_until_every("the old CA revoked", Duration::from_secs(30), POLL, || {
        let gone = !kubectl_output(&["get", "signingauthorities.signet.dev", &old_name], None)
            .status
            .success();
        let pem = jsonpath(
            &["-n", NS, "get", "configmap", "signet-bundle"],
            "{.data.bundle\\.pem}",
        );
        gone && pem.matches("BEGIN CERTIFICATE").count() == 1 && !pem.contains(first_bundle.trim())
    });
    // The leader does not bring back an object for a revoked authority.
    std::thread::sleep(Duration::from_secs(6));
    assert!(signing_authority_in("retired").is_none());
}

#[test]
fn operator_reconciles_signs_and_fails_over_on_a_real_cluster() {
    if let Some(reason) = skip_reason() {
        note(&format!("SKIPPED: {reason}"));
        return;
    }
    cleanup(true);
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();

    // CRDs install and become Established.
    let crd_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in CRDS {
        let path = crd_dir.join(crd);
        kubectl(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
    }
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/workloadidentities.signet.dev",
        "crd/roles.signet.dev",
        "crd/agents.signet.dev",
    ]);

    // Namespaces, service accounts, and the operator's RBAC.
    kubectl(&["create", "namespace", NS]);
    kubectl(&["create", "namespace", WORK_NS]);
    kubectl_apply(&RBAC.replace("NAMESPACE", NS));
    kubectl(&["-n", NS, "create", "serviceaccount", "signet-agent"]);
    kubectl(&["-n", WORK_NS, "create", "serviceaccount", "web"]);
    let operator_sa = format!("system:serviceaccount:{NS}:signet-operator");
    for (verb, resource, allowed) in [
        ("list", "secrets", "no"),
        ("get", "secrets/signet-ca", "yes"),
        ("get", "secrets/other", "no"),
        ("delete", "pods", "no"),
        ("create", "tokenreviews.authentication.k8s.io", "yes"),
        ("watch", "nodes", "yes"),
        ("patch", "nodes", "no"),
        ("watch", "configmaps/signet-agent-revocations", "yes"),
        ("patch", "configmaps/signet-agent-revocations", "no"),
        ("list", "configmaps", "no"),
        ("create", "agents.signet.dev", "yes"),
        ("patch", "agents.signet.dev", "no"),
        ("patch", "signingauthorities.signet.dev/status", "yes"),
        ("update", "signingauthorities.signet.dev", "no"),
    ] {
        let output = kubectl_output(
            &[
                "-n",
                NS,
                "auth",
                "can-i",
                verb,
                resource,
                "--as",
                &operator_sa,
            ],
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            allowed,
            "can the operator {verb} {resource}?"
        );
    }
    kubectl_apply(&policy("/ns/{{ workload.kubernetes.nope }}"));

    // Two replicas start together.
    let kubeconfig = operator_kubeconfig(dir.path());
    let mut replicas = vec![
        start_replica("operator-a", &kubeconfig, dir.path()),
        start_replica("operator-b", &kubeconfig, dir.path()),
    ];
    wait_until_every("both replicas ready", Duration::from_secs(60), POLL, || {
        replicas.iter().all(Replica::ready)
    });
    let created: Vec<&str> = replicas
        .iter()
        .filter(|r| r.process.log().contains("created a new CA keyset"))
        .map(|r| r.name)
        .collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one replica creates the CA: {created:?}"
    );
    let secret_version = jsonpath(
        &["-n", NS, "get", "secret", "signet-ca"],
        "{.metadata.resourceVersion}",
    );

    // The leader publishes the bundle; both replicas chain to it.
    let mut bundle_pem = String::new();
    wait_until_every(
        "the bundle ConfigMap",
        Duration::from_secs(30),
        POLL,
        || {
            bundle_pem = jsonpath(
                &["-n", NS, "get", "configmap", "signet-bundle"],
                "{.data.bundle\\.pem}",
            );
            bundle_pem.contains("BEGIN CERTIFICATE")
        },
    );
    wait_until_every("a leader", Duration::from_secs(30), POLL, || {
        replicas.iter().any(|r| r.name == lease_holder())
    });
    let leader = lease_holder();
    note(&format!("leader: {leader}"));

    // Status: the bad object says what is wrong, the good one is in force.
    let (_, reason, message, _) =
        wait_ready("workloadidentities.signet.dev", "e2e-broken", "False");
    assert!(message.contains("nope"), "{reason}: {message}");
    wait_ready("workloadidentities.signet.dev", "e2e-web", "True");
    wait_ready("roles.signet.dev", "e2e-agents", "True");
    let events = jsonpath(
        &[
            "-n",
            "default",
            "get",
            "events.events.k8s.io",
            "--field-selector",
            "regarding.name=e2e-broken",
        ],
        "{.items[*].reason}",
    );
    assert!(!events.trim().is_empty(), "a Warning Event for e2e-broken");

    // Pods: an agent and a workload on this node, an agent on another.
    let node = std::env::var("SIGNET_E2E_NODE_NAME").unwrap_or_else(|_| "vm".into());
    kubectl_apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {OTHER_NODE}}}\n"
    ));
    kubectl_apply(&pod_yaml(NS, "agent-here", "signet-agent", &node));
    kubectl_apply(&pod_yaml(NS, "agent-other", "signet-agent", OTHER_NODE));
    kubectl_apply(&pod_yaml(WORK_NS, "web", "web", &node));
    let web_uid = pod_field(WORK_NS, "web", ".metadata.uid");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let issuer = IssuerConnection::new(&bundle_pem);
    let here_token = agent_token("agent-here", AUDIENCE);
    let other_token = agent_token("agent-other", AUDIENCE);
    let wrong_audience = agent_token("agent-here", "somebody-else");
    let [first, second] = [replicas[0].issuer_port, replicas[1].issuer_port];

    runtime.block_on(async {
        // Both replicas admit the agent: the same CA behind both.
        let (mut here, id) = issuer.join(first, &here_token, &node).await.unwrap();
        assert_eq!(
            id,
            format!("spiffe://{TRUST_DOMAIN}/signet/agent/k8s/{node}")
        );
        let (_, id) = issuer.join(second, &here_token, "").await.unwrap();
        assert_eq!(
            id,
            format!("spiffe://{TRUST_DOMAIN}/signet/agent/k8s/{node}")
        );

        // The pod's attributes come from the API server.
        let mut issued = Err(pb::Denial::default());
        for _ in 0..50 {
            issued = sign_for_pod(&mut here, &web_uid).await;
            if !matches!(&issued, Err(d) if d.retryable) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            issued.unwrap(),
            format!("spiffe://{TRUST_DOMAIN}/ns/{WORK_NS}/sa/web")
        );

        // A pod's own token (files mode) must be that pod's.
        let web_token = bound_token(WORK_NS, "web", "web", "signet-csi");
        assert_eq!(
            sign_for_pod_with_token(&mut here, &web_uid, &web_token)
                .await
                .unwrap(),
            format!("spiffe://{TRUST_DOMAIN}/ns/{WORK_NS}/sa/web")
        );
        let someone_elses = bound_token(NS, "signet-agent", "agent-here", "signet-csi");
        let denial = sign_for_pod_with_token(&mut here, &web_uid, &someone_elses)
            .await
            .unwrap_err();
        assert_eq!(denial.reason, "invalid_pod_token", "{denial:?}");
        let agent_audience = bound_token(WORK_NS, "web", "web", AUDIENCE);
        let denial = sign_for_pod_with_token(&mut here, &web_uid, &agent_audience)
            .await
            .unwrap_err();
        assert_eq!(denial.reason, "invalid_pod_token", "{denial:?}");

        // Forged joins are refused.
        let claim = issuer
            .join(first, &here_token, OTHER_NODE)
            .await
            .unwrap_err();
        assert_eq!(claim.code(), tonic::Code::Unauthenticated, "{claim:?}");
        let audience = issuer
            .join(first, &wrong_audience, &node)
            .await
            .unwrap_err();
        assert_eq!(
            audience.code(),
            tonic::Code::Unauthenticated,
            "{audience:?}"
        );

        // The other node's agent cannot get this node's pod identities.
        let (mut other, id) = issuer.join(first, &other_token, OTHER_NODE).await.unwrap();
        assert!(id.ends_with(OTHER_NODE), "{id}");
        let denial = sign_for_pod(&mut other, &web_uid).await.unwrap_err();
        assert_eq!(denial.reason, "pod_not_on_node", "{denial:?}");
    });

    signing_authorities_count_every_replica();

    // `kubectl describe pod` shows the identity's state: the first issuance
    // and the refusal of a token that was not the pod's, as Events on the
    // pod (found by its UID in the operator's pod watch).
    let events_of_web = || {
        kubectl(&[
            "-n",
            WORK_NS,
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.uid={web_uid}"),
            "-o",
            "json",
        ])
    };
    signet_e2e::standalone::wait_until(
        "the web pod's identity Events",
        Duration::from_secs(30),
        || {
            let events = events_of_web();
            events.contains("IdentityIssued") && events.contains("IdentityRefused")
        },
    );
    let described = kubectl(&["-n", WORK_NS, "describe", "pod", "web"]);
    assert!(
        described.contains("IdentityIssued")
            && described.contains(&format!("spiffe://{TRUST_DOMAIN}/ns/{WORK_NS}/sa/web"))
            && described.contains("IdentityRefused")
            && described.contains("invalid_pod_token"),
        "kubectl describe pod web:\n{described}"
    );
    // Issued once, whatever the number of signings since.
    let issued_events = events_of_web().matches("\"IdentityIssued\"").count();
    assert_eq!(issued_events, 1, "{}", events_of_web());

    admission_refuses_what_does_not_compile(replicas[0].webhook_port, &bundle_pem);

    // Node labels, from the API server, decide Role Node subjects.
    kubectl(&["label", "node", OTHER_NODE, "pool=dmz", "--overwrite"]);
    kubectl_apply(&node_policy());
    wait_ready("workloadidentities.signet.dev", "e2e-node-web", "True");
    wait_ready("roles.signet.dev", "e2e-dmz-deny", "True");
    wait_ready("roles.signet.dev", "e2e-not-dmz", "True");
    kubectl_apply(&pod_yaml(WORK_NS, "web-dmz", "web", OTHER_NODE));
    let dmz_uid = pod_field(WORK_NS, "web-dmz", ".metadata.uid");
    runtime.block_on(async {
        let (mut other, _) = issuer.join(first, &other_token, OTHER_NODE).await.unwrap();
        let mut other_updates = other
            .watch_policy(pb::WatchPolicyRequest {
                known_version: 0,
                agent_version: "e2e".into(),
                accepts_policy_deltas: false,
                accepts_policy_parts: false,
            })
            .await
            .unwrap()
            .into_inner();
        // The agent's stream names its Node, with the labels the operator
        // saw, once the replica compiled the Node Roles.
        let current = update_where(&mut other_updates, "pool=dmz and the Node Roles", |u| {
            pool(u) == Some("dmz") && String::from_utf8_lossy(&u.policy).contains("e2e-not-dmz")
        })
        .await;
        assert_eq!(current.node.as_ref().unwrap().name, OTHER_NODE);

        let denial = sign_when_known(&mut other, &dmz_uid, "e2e-web")
            .await
            .unwrap_err();
        assert_eq!(denial.reason, "role_denied", "{denial:?}");
        let denial = sign_when_known(&mut other, &dmz_uid, "e2e-node-web")
            .await
            .unwrap_err();
        assert_eq!(
            denial.reason, "no_role_allows",
            "NotIn [dmz] does not reach a dmz node: {denial:?}"
        );

        explain_pods_as_the_issuer_decided(&node);

        // This node's agent follows its own Node only.
        let (mut here, _) = issuer.join(first, &here_token, &node).await.unwrap();
        let mut here_updates = here
            .watch_policy(pb::WatchPolicyRequest {
                known_version: 0,
                agent_version: "e2e".into(),
                accepts_policy_deltas: false,
                accepts_policy_parts: false,
            })
            .await
            .unwrap()
            .into_inner();
        let here_first = update_where(&mut here_updates, "this node's first update", |u| {
            String::from_utf8_lossy(&u.policy).contains("e2e-not-dmz")
        })
        .await;
        assert_eq!(
            here_first.node.as_ref().map(|n| n.name.as_str()),
            Some(node.as_str())
        );

        // Relabelled: the operator pushes the new labels to that node's agent.
        kubectl(&["label", "node", OTHER_NODE, "pool=web", "--overwrite"]);
        let relabelled =
            update_where(&mut other_updates, "pool=web", |u| pool(u) == Some("web")).await;
        assert_eq!(
            relabelled.version, current.version,
            "the same policy, a new Node"
        );
        assert_eq!(
            sign_when_known(&mut other, &dmz_uid, "e2e-node-web")
                .await
                .unwrap(),
            format!("spiffe://{TRUST_DOMAIN}/nodes/{OTHER_NODE}/pod/web-dmz")
        );
        assert_eq!(
            sign_when_known(&mut other, &dmz_uid, "e2e-web")
                .await
                .unwrap(),
            format!("spiffe://{TRUST_DOMAIN}/ns/{WORK_NS}/sa/web"),
            "no longer denied"
        );
        let pushed = tokio::time::timeout(Duration::from_secs(3), here_updates.message()).await;
        assert!(
            pushed.is_err(),
            "another Node's labels are not pushed here: {pushed:?}"
        );

        // With this node's policy stream open, the inventory has its agent.
        agents_list_shows_the_node_agent(&node);
    });

    // Revocation: `signet-operator agent revoke` writes the ConfigMap; both
    // replicas refuse the node's agent at once and close its stream.
    runtime.block_on(async {
        let (mut other, _) = issuer.join(first, &other_token, OTHER_NODE).await.unwrap();
        let (mut other_on_second, _) = issuer.join(second, &other_token, OTHER_NODE).await.unwrap();
        let mut updates = other
            .watch_policy(pb::WatchPolicyRequest {
                known_version: 0,
                agent_version: "e2e".into(),
                accepts_policy_deltas: false,
                accepts_policy_parts: false,
            })
            .await
            .unwrap()
            .into_inner();
        update_where(&mut updates, "a first update", |_| true).await;
        assert!(
            revocation_cli(&["revoke", OTHER_NODE, "--reason", "node compromised"])
                .contains("revoked")
        );
        let listed = revocation_cli(&["revoked"]);
        assert!(listed.contains("node compromised"), "{listed}");
        let shown = kubectl_signet(&["agents", "show", OTHER_NODE, "--signet-namespace", NS]);
        assert!(
            shown.contains("Revoked:       yes: node compromised"),
            "{shown}"
        );

        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match updates.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the revoked agent's stream closes");
        let status = closed.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("node compromised"), "{status:?}");

        // The second replica's watch of the ConfigMap may trail the first's.
        let mut refused = None;
        for _ in 0..100 {
            match try_sign(&mut other_on_second, &dmz_uid).await {
                Err(status) => {
                    refused = Some(status);
                    break;
                }
                Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let refused = refused.expect("the second replica refuses the revoked agent");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let refused = renew(&mut other_on_second).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let refused = issuer
            .join(first, &other_token, OTHER_NODE)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        // The agent of this node is untouched.
        let (mut here, _) = issuer.join(first, &here_token, &node).await.unwrap();
        renew(&mut here).await.unwrap();

        assert!(revocation_cli(&["unrevoke", OTHER_NODE]).contains("no longer revoked"));
        let mut rejoined = None;
        for _ in 0..100 {
            if let Ok((client, _)) = issuer.join(second, &other_token, OTHER_NODE).await {
                rejoined = Some(client);
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut rejoined = rejoined.expect("unrevoked, the agent joins again");
        renew(&mut rejoined).await.unwrap();

        // Without an agent pod on its node, the agent's SVID stops renewing.
        kubectl(&[
            "-n",
            NS,
            "delete",
            "pod",
            "agent-other",
            "--force",
            "--grace-period=0",
        ]);
        let mut refused = None;
        for _ in 0..100 {
            match renew(&mut rejoined).await {
                Err(status) => {
                    refused = Some(status);
                    break;
                }
                Ok(()) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let refused = refused.expect("renewal refused once the agent pod is gone");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("no agent pod"), "{refused:?}");
    });
    let audit = replicas
        .iter()
        .map(|r| std::fs::read_to_string(audit_log(r.name, dir.path())).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        audit.contains("agent.refused") && audit.contains("agent_revoked"),
        "the refusals are audited"
    );
    assert!(
        audit.contains("agent_pod_gone"),
        "the renewal refusal is audited"
    );

    // An Agent record goes with its Node (the API server's garbage
    // collector follows the owner reference).
    wait_until_every(
        "the other node's Agent record",
        Duration::from_secs(30),
        POLL,
        || {
            kubectl_output(&["get", "agents.signet.dev", OTHER_NODE], None)
                .status
                .success()
        },
    );
    kubectl(&["delete", "node", OTHER_NODE, "--wait=true"]);
    wait_until_every(
        "the Agent record to go with its Node",
        Duration::from_secs(60),
        POLL,
        || {
            !kubectl_output(&["get", "agents.signet.dev", OTHER_NODE], None)
                .status
                .success()
        },
    );

    // Failover: the leader crashes; the other takes the Lease, keeps the CA.
    let leader_index = replicas.iter().position(|r| r.name == leader).unwrap();
    let mut crashed = replicas.remove(leader_index);
    crashed.process.kill();
    let survivor = &replicas[0];
    wait_until_every(
        "the survivor to lead",
        Duration::from_secs(20),
        POLL,
        || lease_holder() == survivor.name,
    );
    assert_eq!(
        jsonpath(
            &["-n", NS, "get", "secret", "signet-ca"],
            "{.metadata.resourceVersion}"
        ),
        secret_version,
        "failover does not make a new CA"
    );
    // The new leader writes status: fixing the broken object shows it.
    kubectl_apply(&policy("/fixed/{{ workload.kubernetes.pod_name }}"));
    wait_ready("workloadidentities.signet.dev", "e2e-broken", "True");

    runtime.block_on(async {
        let (mut here, _) = issuer
            .join(survivor.issuer_port, &here_token, &node)
            .await
            .unwrap();
        assert_eq!(
            sign_for_pod(&mut here, &web_uid).await.unwrap(),
            format!("spiffe://{TRUST_DOMAIN}/ns/{WORK_NS}/sa/web"),
            "signing continues after failover, verified against the original bundle"
        );

        // A deleted pod's identity is no longer issued.
        kubectl(&["-n", WORK_NS, "delete", "pod", "web", "--wait=true"]);
        let mut denial = pb::Denial::default();
        for _ in 0..50 {
            match sign_for_pod(&mut here, &web_uid).await {
                Err(d) if d.reason == "pod_not_found" => {
                    denial = d;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        assert_eq!(denial.reason, "pod_not_found");
    });

    rotate_taint_and_revoke_with_kubectl(&bundle_pem);

    // A leader whose API calls hang steps down before anyone may take over.
    let upstream = api_server();
    let upstream = upstream.trim_start_matches("https://").to_owned();
    let proxy = FreezableProxy::start(upstream);
    let proxied = operator_kubeconfig_for(
        dir.path(),
        "operator-c.kubeconfig",
        &format!("https://127.0.0.1:{}", proxy.port),
    );
    let stalled = start_replica("operator-c", &proxied, dir.path());
    wait_until_every("operator-c ready", Duration::from_secs(60), POLL, || {
        stalled.ready()
    });
    replicas[0].process.kill();
    wait_until_every("operator-c to lead", Duration::from_secs(30), POLL, || {
        lease_holder() == stalled.name
    });
    let successor = start_replica("operator-d", &kubeconfig, dir.path());
    wait_until_every("operator-d ready", Duration::from_secs(60), POLL, || {
        successor.ready()
    });
    let log_before = stalled.process.log().len();
    proxy.freeze(true);
    wait_until_every(
        "operator-d to take over",
        Duration::from_secs(60),
        POLL,
        || lease_holder() == successor.name,
    );
    let stalled_log = stalled.process.log();
    let since_freeze = &stalled_log[log_before..];
    assert!(
        since_freeze.contains("no longer the leader"),
        "the hung leader had stepped down before operator-d took over:\n{since_freeze}"
    );
    assert!(since_freeze.contains("timed out"), "{since_freeze}");
}
