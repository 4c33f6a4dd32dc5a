//! Signet as users install it (issue 7's suite): `helm install` of
//! `charts/signet` on the cluster `KUBECONFIG` points to, then pods that
//! mount the CSI volume and use the SPIFFE Workload API through it.
//!
//! - helm install: operator Deployment and agent+CSI DaemonSet Ready, the
//!   driver registered on the node; the agent process holds no capability
//!   and runs under seccomp with no_new_privs (read from the host's
//!   `/proc/<pid>/status`);
//! - a WorkloadIdentity + Role applied with kubectl: a pod gets an
//!   X.509-SVID whose SPIFFE ID and DNS SAN follow the template, and a
//!   JWT-SVID;
//! - two pods authenticate each other over mTLS (`signet-mtls-example`); a
//!   third, whose service account no identity allows, gets PermissionDenied;
//! - with 1-minute SVIDs and a 4-minute CA, a client connecting every second
//!   until past the CA's hand-over sees its SVID rotate (pushed on the
//!   Workload API stream) with no failed handshake, and later SVIDs chain
//!   only to the new CA;
//! - a files-mode pod (tmpfs with svid.pem, svid_key.pem, bundle.pem from
//!   the agent's delegated API) reads its SVID, renewed in place;
//! - the operator leader's pod is deleted: the Lease moves, the bundle is
//!   unchanged and new pods still get identities; the same after the agent
//!   pod is restarted;
//! - the chart's admission webhook refuses a WorkloadIdentity that does not
//!   compile (its caBundle set by the operator), and `kubectl signet
//!   explain pod` agrees with the issuer about a pod;
//! - helm uninstall leaves no Signet object behind (CRDs stay, as Helm
//!   never deletes CRDs).
//!
//! Needs the images `localhost/signet/{operator,agent,csi,mtls-example,probe}:dev`
//! in the node's containerd (`e2e/images/build-all.sh`, which `make e2e`
//! runs) and helm (`e2e/cluster/build-tools.sh helm`). The test runs on the
//! node itself: pods write what they fetched to a hostPath directory the
//! test reads. Runs only with `SIGNET_E2E_CLUSTER=1` and `KUBECONFIG`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use signet_e2e::cluster::{
    NodeFiles, helm, kubectl, kubectl_apply, kubectl_output, kubectl_signet, note, pod_field,
    run_to_completion, skip_reason, wait_for_daemonset,
};
use signet_e2e::standalone::wait_until_every;
use signet_identity::x509::{certs_from_pem, spiffe_id_from_cert};

const RELEASE: &str = "signet";
const NS: &str = "signet-system";
const APPS: &str = "signet-e2e-apps";
const TD: &str = "example.org";
const IMAGES: [&str; 5] = ["operator", "agent", "csi", "mtls-example", "probe"];
const POLL: Duration = Duration::from_millis(500);

fn image(name: &str) -> String {
    format!("localhost/signet/{name}:dev")
}

fn missing_images() -> Vec<String> {
    let sock = std::env::var("SIGNET_CONTAINERD_SOCK")
        .unwrap_or_else(|_| "/run/signet-e2e/containerd/containerd.sock".into());
    let output = Command::new("ctr")
        .args(["-a", &sock, "-n", "k8s.io", "images", "ls", "-q"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    IMAGES
        .iter()
        .map(|name| image(name))
        .filter(|reference| !listed.lines().any(|line| line == reference))
        .collect()
}

/// Removes what the test makes, apps first: their CSI volumes can only be
/// unmounted while the driver still runs. Pods left by an interrupted run
/// whose driver is gone are deleted by force.
fn uninstall_and_clean() {
    let _ = kubectl_output(
        &[
            "delete",
            "namespace",
            APPS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ],
        None,
    );
    let _ = kubectl_output(
        &[
            "-n",
            APPS,
            "delete",
            "pods",
            "--all",
            "--force",
            "--grace-period=0",
        ],
        None,
    );
    let _ = kubectl_output(
        &[
            "delete",
            "workloadidentities.signet.dev,roles.signet.dev,federatedtrustdomains.signet.dev",
            "-l",
            "signet-e2e=helm",
            "--ignore-not-found",
        ],
        None,
    );
    // They outlive an uninstall (cluster-scoped, no owner).
    let _ = kubectl_output(
        &[
            "delete",
            "signingauthorities.signet.dev",
            "--all",
            "--ignore-not-found",
        ],
        None,
    );
    let _ = helm(&[
        "uninstall",
        RELEASE,
        "-n",
        NS,
        "--wait",
        "--timeout",
        "120s",
    ]);
    let _ = kubectl_output(
        &[
            "delete",
            "namespace",
            APPS,
            NS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=180s",
        ],
        None,
    );
}

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for selector in [
                "app.kubernetes.io/component=operator",
                "app.kubernetes.io/component=agent",
            ] {
                let logs = kubectl_output(
                    &[
                        "-n",
                        NS,
                        "logs",
                        "-l",
                        selector,
                        "--all-containers",
                        "--tail=60",
                        "--prefix",
                    ],
                    None,
                );
                note(&format!(
                    "----- {selector} logs -----\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                ));
            }
        }
        uninstall_and_clean();
    }
}

const POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-apps
  labels: {signet-e2e: helm}
spec:
  rules:
    allow:
      - conditions:
          - {attribute: workload.kubernetes.namespace, eq: signet-e2e-apps}
          - {attribute: workload.kubernetes.service_account, in: [client, server]}
  spiffe:
    id: /ns/{{ workload.kubernetes.namespace }}/sa/{{ workload.kubernetes.service_account }}
    x509:
      # Short, so SVIDs rotate (at half-life) while the test watches.
      ttl: 1m
      dnsSans: ["{{ workload.kubernetes.pod_name }}.apps.internal"]
  federatesWith: [partner.e2e]
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata:
  name: e2e-apps
  labels: {signet-e2e: helm}
spec:
  subjects:
    - {kind: Agent, name: "*"}
  allow:
    workloadIdentityLabels: {signet-e2e: [helm]}
"#;

/// [`signet_e2e::cluster::csi_pod`] in the test's namespace.
fn csi_pod(
    name: &str,
    sa: &str,
    image: &str,
    args: &[&str],
    out: Option<&Path>,
    restart: &str,
) -> String {
    signet_e2e::cluster::csi_pod(APPS, name, sa, image, args, out, restart)
}

/// [`csi_pod`] with the volume in files mode: `svid.pem`, `svid_key.pem`
/// and `bundle.pem` at /spiffe-workload-api instead of the socket.
fn files_pod(name: &str, sa: &str, image: &str, args: &[&str]) -> String {
    csi_pod(name, sa, image, args, None, "Never").replace(
        "csi: {driver: csi.signet.dev, readOnly: true}",
        "csi: {driver: csi.signet.dev, readOnly: true, volumeAttributes: {mode: files}}",
    )
}

/// The SVID `pod` was served (its chain as PEM) is the one the agent had
/// signed when the pod was bound: the operator's audit event for its serial
/// names the pod but no container (no process existed yet), and the pod's
/// `IdentityIssued` Event says it came before the containers started.
fn signed_ahead_for_the_pod(pod: &str, pem: &str) {
    let serial = String::from_utf8_lossy(&openssl_x509(pem, &["-serial"]).stdout)
        .trim()
        .trim_start_matches("serial=")
        .trim_start_matches('0')
        .to_ascii_lowercase();
    assert!(!serial.is_empty(), "no serial in {pem}");
    let mut issued = None;
    wait_until_every(
        "the audit event of the pod's SVID",
        Duration::from_secs(30),
        POLL,
        || {
            let logs = operator_logs();
            issued = logs
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find(|event| {
                    event["event"] == "svid.issued"
                        && event["serial"].as_str().is_some_and(|s| {
                            s.trim_start_matches('0').eq_ignore_ascii_case(&serial)
                        })
                });
            issued.is_some()
        },
    );
    let issued = issued.unwrap();
    let workload = &issued["workload"];
    assert_eq!(workload["workload.kubernetes.pod_name"], pod, "{issued}");
    assert!(
        workload["workload.kubernetes.container_name"].is_null()
            && workload["workload.unix.uid"].is_null(),
        "the pod was served an SVID signed for its process, not ahead: {issued}"
    );
    let mut event_note = String::new();
    wait_until_every(
        "the pod's IdentityIssued Event",
        Duration::from_secs(30),
        POLL,
        || {
            event_note = kubectl(&[
                "-n",
                APPS,
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason=IdentityIssued"),
                "-o",
                "jsonpath={.items[*].message}",
            ]);
            event_note.contains("before the pod's containers started")
        },
    );
    note(&format!("signed ahead for {pod}: {event_note}"));
}

/// Every replica's log: the audit events are its JSON lines.
fn operator_logs() -> String {
    stdout_of(&kubectl_output(
        &[
            "-n",
            NS,
            "logs",
            "-l",
            "app.kubernetes.io/component=operator",
            "--tail=-1",
        ],
        None,
    ))
}

/// `openssl x509 -noout ARGS` on a certificate given as PEM.
fn openssl_x509(pem: &str, args: &[&str]) -> std::process::Output {
    let mut openssl = Command::new("openssl")
        .args(["x509", "-noout"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut openssl.stdin.take().unwrap(), pem.as_bytes()).unwrap();
    openssl.wait_with_output().unwrap()
}

/// Runs a CSI pod that fetches its X.509-SVID; returns the SPIFFE ID and
/// the chain as PEM.
fn fetch_x509_pem(name: &str, sa: &str, out: &Path) -> (String, String) {
    let node = NodeFiles::from_env();
    let dir = out.join(name);
    node.create_dir(&dir);
    let args = [
        "api",
        "fetch",
        "x509",
        "--output",
        "json",
        "--timeout",
        "60s",
        "--write",
        "/out",
    ];
    kubectl_apply(&csi_pod(
        name,
        sa,
        &image("agent"),
        &args,
        Some(&dir),
        "Never",
    ));
    let (phase, log) = run_to_completion(APPS, name, Duration::from_secs(150));
    assert_eq!(phase, "Succeeded", "{name}: {log}");
    let leaf_pem = node.read(&dir.join("svid.pem"));
    let leaf = certs_from_pem(&leaf_pem).unwrap().remove(0);
    let id = spiffe_id_from_cert(&leaf).unwrap().to_string();
    (id, leaf_pem)
}

/// The chart's admission webhook, through the operator Service: the
/// leader has set the `caBundle` to the trust bundle, and a
/// WorkloadIdentity that does not compile is refused with the compiler's
/// message. (`failurePolicy: Ignore`, so until the API server reaches the
/// webhook a dry run is admitted; only dry runs are tried until then.)
fn chart_webhook_refuses_what_does_not_compile() {
    use base64::Engine;
    let webhook = format!("{RELEASE}-operator");
    let bundle = bundle_pem();
    wait_until_every(
        "the webhook caBundle to be the trust bundle",
        Duration::from_secs(60),
        POLL,
        || {
            let set = kubectl(&[
                "get",
                "validatingwebhookconfiguration",
                &webhook,
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ]);
            base64::engine::general_purpose::STANDARD
                .decode(set.trim())
                .is_ok_and(|pem| pem == bundle.as_bytes())
        },
    );
    let bad = "apiVersion: signet.dev/v1alpha1\nkind: WorkloadIdentity\nmetadata: {name: e2e-bad}\nspec:\n  spiffe: {id: \"/{{ workload.kubernetes.nope }}\"}\n";
    let mut refusal = String::new();
    wait_until_every(
        "the API server to call the webhook",
        Duration::from_secs(60),
        POLL,
        || {
            let output = kubectl_output(&["apply", "--dry-run=server", "-f", "-"], Some(bad));
            refusal = String::from_utf8_lossy(&output.stderr).into_owned();
            !output.status.success()
        },
    );
    assert!(
        refusal.contains("denied the request")
            && refusal.contains("WorkloadIdentity e2e-bad: UnknownAttribute"),
        "{refusal}"
    );
    let output = kubectl_output(&["apply", "-f", "-"], Some(bad));
    assert!(
        !output.status.success(),
        "a bad WorkloadIdentity was stored"
    );
}

/// WorkloadIdentities for people and pipelines, and the Role that lets
/// the cluster's administrators (group system:masters, the test's
/// client-certificate kubeconfig) and one CI service account (by its user
/// name, with a token kubeconfig) hold them.
const PEOPLE_POLICY: &str = r#"apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-admins
  labels: {signet-e2e: helm, audience: people}
spec:
  rules:
    allow:
      - conditions: [{attribute: user.groups.system:masters, eq: "true"}]
  spiffe:
    id: /people/{{ user.name }}
    x509: {ttl: 2h}
    jwt: {ttl: 5m}
---
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata:
  name: e2e-deployer
  labels: {signet-e2e: helm, audience: people}
spec:
  rules:
    allow:
      - conditions: [{attribute: user.name, eq: "system:serviceaccount:signet-e2e-apps:deployer"}]
  spiffe:
    id: /ci/deployer
    x509: {ttl: 1h}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata:
  name: e2e-people
  labels: {signet-e2e: helm}
spec:
  subjects:
    - {kind: Group, name: "system:masters"}
    - {kind: User, name: "system:serviceaccount:signet-e2e-apps:deployer"}
  allow:
    workloadIdentityLabels: {audience: [people]}
"#;

/// `kubectl signet ARGS` with the credentials of `kubeconfig` (the
/// environment's when `None`), as the user runs it.
fn kubectl_signet_as(kubeconfig: Option<&Path>, args: &[&str]) -> std::process::Output {
    let plugin = signet_e2e::standalone::binary("kubectl-signet");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![plugin.parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    let mut command = Command::new(signet_e2e::cluster::kubectl_path());
    command
        .arg("signet")
        .args(args)
        .env("PATH", std::env::join_paths(dirs).unwrap());
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    command.output().unwrap()
}

/// A field of the test's own kubeconfig (current context).
fn kubeconfig_field(jsonpath: &str) -> String {
    kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        &format!("jsonpath={jsonpath}"),
    ])
}

/// A kubeconfig authenticating with a token of `service_account` in APPS.
fn token_kubeconfig(dir: &Path, service_account: &str) -> PathBuf {
    let server = kubeconfig_field("{.clusters[0].cluster.server}");
    let ca = kubeconfig_field("{.clusters[0].cluster.certificate-authority-data}");
    let token = kubectl(&[
        "-n",
        APPS,
        "create",
        "token",
        service_account,
        "--duration=10m",
    ]);
    let file = dir.join(format!("{service_account}.kubeconfig"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: {server}, certificate-authority-data: {ca}}}}}]\nusers: [{{name: u, user: {{token: {}}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
            token.trim()
        ),
    )
    .unwrap();
    file
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `kubectl signet issue` end to end: the API server authenticates the
/// caller (a client certificate, then service-account tokens), RBAC lets
/// them ask, the aggregated API on the operator decides with Roles of kind
/// Group and User, and the SVIDs verify with openssl and Signet's own
/// verifier against the published bundle. Callers without a Role are
/// refused with the policy's reason, every outcome is audited, and the
/// operator's port refuses anyone but the API server's front proxy, even
/// with a client certificate of the cluster's own CA and forged headers.
fn people_issue_svids_through_the_api_server(dir: &Path) {
    use base64::Engine;
    let api_service = "v1alpha1.issuance.signet.dev";
    let available = || {
        kubectl(&[
            "get",
            "apiservice",
            api_service,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
        ]) == "True"
    };
    let deadline = signet_e2e::deadline::Deadline::after(Duration::from_secs(90));
    while !available() {
        if deadline.passed() {
            // What the API server saw, and what the Service answers now.
            let status = kubectl(&["get", "apiservice", api_service, "-o", "yaml"]);
            let slices = kubectl(&["-n", NS, "get", "endpointslices", "-o", "yaml"]);
            let ip = kubectl(&[
                "-n",
                NS,
                "get",
                "service",
                "signet-operator-issuance",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ]);
            let pki = Path::new("/var/lib/signet-e2e/pki");
            let probe = Command::new("curl")
                .args(["-sk", "-w", " HTTP %{http_code}", "--cert"])
                .arg(pki.join("front-proxy-client.crt"))
                .arg("--key")
                .arg(pki.join("front-proxy-client.key"))
                .arg(format!(
                    "https://{ip}:443/apis/issuance.signet.dev/v1alpha1"
                ))
                .output()
                .unwrap();
            panic!(
                "the APIService is not Available:\n{status}\n--- endpoint slices ---\n{slices}\n--- GET through the Service as the front proxy ---\n{}{}",
                stdout_of(&probe),
                stderr_of(&probe)
            );
        }
        std::thread::sleep(POLL);
    }
    let ca_bundle = kubectl(&[
        "get",
        "apiservice",
        api_service,
        "-o",
        "jsonpath={.spec.caBundle}",
    ]);
    let bundle = bundle_pem();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(ca_bundle.trim())
            .unwrap(),
        bundle.as_bytes(),
        "the leader keeps the APIService caBundle at the trust bundle"
    );
    kubectl_apply(PEOPLE_POLICY);
    for name in ["e2e-admins", "e2e-deployer"] {
        wait_until_every(
            &format!("{name} Ready"),
            Duration::from_secs(30),
            POLL,
            || {
                kubectl(&[
                    "get",
                    "workloadidentities.signet.dev",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[0].status}",
                ]) == "True"
            },
        );
    }

    // The administrator, with the client certificate of the test's kubeconfig.
    let admin_out = dir.join("admin-svid");
    let issued = kubectl_signet_as(
        None,
        &[
            "issue",
            "x509",
            "--identity",
            "e2e-admins",
            "--ttl",
            "3h",
            "--out",
            admin_out.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert!(issued.status.success(), "{}", stderr_of(&issued));
    let status: serde_json::Value = serde_json::from_slice(&issued.stdout).unwrap();
    assert_eq!(
        status["spiffeId"],
        format!("spiffe://{TD}/people/signet-e2e-admin")
    );
    let chain_pem = std::fs::read_to_string(admin_out.join("svid.pem")).unwrap();
    let verified = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(admin_out.join("svid_bundle.pem"))
        .arg(admin_out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "openssl verify: {}",
        stderr_of(&verified)
    );
    let spiffe_json = kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "signet-bundle",
        "-o",
        "jsonpath={.data.bundle\\.spiffe\\.json}",
    ]);
    let mut bundles = signet_identity::BundleSet::new();
    bundles.insert(
        signet_identity::TrustBundle::from_spiffe_json(
            signet_identity::TrustDomain::new(TD).unwrap(),
            spiffe_json.as_bytes(),
        )
        .unwrap(),
    );
    let chain = certs_from_pem(&chain_pem).unwrap();
    let svid = signet_identity::x509::verify_x509_svid(
        &chain,
        &bundles,
        signet_runtime::clock::Clock::new().now(),
    )
    .unwrap();
    assert_eq!(
        svid.spiffe_id.to_string(),
        format!("spiffe://{TD}/people/signet-e2e-admin")
    );
    // 3h asked, the chart's 10m maximum given (the identity allows 2h).
    let not_after = openssl_x509(&chain_pem, &["-noout", "-checkend", "660"]);
    assert!(
        !not_after.status.success(),
        "the SVID outlives the 10m maximum"
    );
    assert!(
        openssl_x509(&chain_pem, &["-noout", "-checkend", "0"])
            .status
            .success()
    );
    let key_mode = std::fs::metadata(admin_out.join("svid_key.pem"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(key_mode, 0o600);

    let jwt = kubectl_signet_as(
        None,
        &[
            "issue",
            "jwt",
            "--identity",
            "e2e-admins",
            "--audience",
            "vault",
        ],
    );
    assert!(jwt.status.success(), "{}", stderr_of(&jwt));
    note(&format!(
        "kubectl signet issue jwt (admin), stderr: {}",
        stderr_of(&jwt)
    ));
    let token = stdout_of(&jwt).trim().to_owned();
    let validated = signet_identity::jwt::validate_jwt_svid(
        &token,
        "vault",
        &bundles,
        signet_runtime::clock::Clock::new().now(),
    )
    .unwrap();
    assert_eq!(
        validated.spiffe_id.to_string(),
        format!("spiffe://{TD}/people/signet-e2e-admin")
    );

    // A pipeline's service account, by its user name, with a token kubeconfig.
    for sa in ["deployer", "visitor"] {
        kubectl(&["-n", APPS, "create", "serviceaccount", sa]);
    }
    let deployer = token_kubeconfig(dir, "deployer");
    let deployer_out = dir.join("deployer-svid");
    let issued = kubectl_signet_as(
        Some(&deployer),
        &[
            "issue",
            "x509",
            "--identity",
            "e2e-deployer",
            "--out",
            deployer_out.to_str().unwrap(),
        ],
    );
    assert!(issued.status.success(), "{}", stderr_of(&issued));
    note(&format!(
        "kubectl signet issue x509 (deployer):\n{}",
        stdout_of(&issued)
    ));
    assert!(
        stdout_of(&issued).starts_with(&format!("spiffe://{TD}/ci/deployer\n")),
        "{}",
        stdout_of(&issued)
    );
    // Its Role does not let it hold the administrators' identity...
    let refused = kubectl_signet_as(
        Some(&deployer),
        &[
            "issue",
            "x509",
            "--identity",
            "e2e-admins",
            "--out",
            deployer_out.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    assert!(
        stderr_of(&refused).contains("refused:")
            && stderr_of(&refused).contains("(no_matching_rule)"),
        "{}",
        stderr_of(&refused)
    );
    // ...and a service account no Role names holds nothing, whatever it asks.
    let visitor = token_kubeconfig(dir, "visitor");
    let refused = kubectl_signet_as(
        Some(&visitor),
        &[
            "issue",
            "jwt",
            "--identity",
            "e2e-deployer",
            "--audience",
            "vault",
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr_of(&refused));
    assert!(
        stdout_of(&refused).is_empty(),
        "no token for a refused caller"
    );
    let reason = stderr_of(&refused);
    assert!(reason.contains("refused:"), "{reason}");
    note(&format!("a caller without a Role: {}", reason.trim()));

    // The audit log (the operators' stdout) has every outcome with who asked.
    let mut logs = String::new();
    wait_until_every(
        "the audit events of users",
        Duration::from_secs(30),
        POLL,
        || {
            logs = operator_logs();
            logs.contains("\"user.name\":\"system:serviceaccount:signet-e2e-apps:visitor\"")
        },
    );
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["workload"]["user.name"].is_string())
        .collect();
    let of = |user: &str, outcome: &str| {
        events.iter().any(|e| {
            e["workload"]["user.name"] == user && e["outcome"] == outcome && e["agent"].is_null()
        })
    };
    assert!(of("signet-e2e-admin", "issued"), "{events:#?}");
    assert!(
        of("system:serviceaccount:signet-e2e-apps:deployer", "issued"),
        "{events:#?}"
    );
    assert!(
        of("system:serviceaccount:signet-e2e-apps:deployer", "denied"),
        "{events:#?}"
    );
    assert!(
        of("system:serviceaccount:signet-e2e-apps:visitor", "denied"),
        "{events:#?}"
    );

    // Straight to the operator's port, past the API server: a client
    // certificate from the cluster's CA (the admin's) and forged headers
    // do not pass the TLS handshake; no certificate does not either.
    let pod_ip = kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=operator",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let decode = |b64: String| {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap()
    };
    let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
    std::fs::write(
        &cert,
        decode(kubeconfig_field("{.users[0].user.client-certificate-data}")),
    )
    .unwrap();
    std::fs::write(
        &key,
        decode(kubeconfig_field("{.users[0].user.client-key-data}")),
    )
    .unwrap();
    let url = format!("https://{pod_ip}:9444/apis/issuance.signet.dev/v1alpha1/jwtsvidrequests");
    let body = r#"{"spec":{"workloadIdentity":"e2e-admins","audiences":["vault"]}}"#;
    for with_cert in [true, false] {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "-k",
            "-X",
            "POST",
            "-H",
            "X-Remote-User: signet-e2e-admin",
            "-H",
            "X-Remote-Group: system:masters",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ]);
        if with_cert {
            curl.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let forged = curl.arg(&url).output().unwrap();
        assert!(
            !forged.status.success() && !stdout_of(&forged).contains("token"),
            "forged request (client certificate: {with_cert}) answered: {}",
            stdout_of(&forged)
        );
    }
}

/// A FederatedTrustDomain for `partner.e2e` whose bundle is given in the
/// object (offline federation); returns the CA certificate as PEM. An
/// object the operator could not follow is refused by the webhook with
/// the operator's own message.
fn federate_with_a_partner() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://partner.e2e".try_into().unwrap(),
    ));
    let ca = params.self_signed(&key).unwrap().pem();
    let indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    kubectl_apply(&format!(
        "apiVersion: signet.dev/v1alpha1\nkind: FederatedTrustDomain\nmetadata: {{name: e2e-partner, labels: {{signet-e2e: helm}}}}\nspec:\n  trustDomain: partner.e2e\n  trustDomainBundle: |\n{indented}"
    ));
    wait_until_every("e2e-partner Ready", Duration::from_secs(30), POLL, || {
        kubectl(&[
            "get",
            "federatedtrustdomains.signet.dev",
            "e2e-partner",
            "-o",
            "jsonpath={.status.conditions[0].status}/{.status.bundleSequence}",
        ]) == "True/0"
    });
    // The bundle in force is kept in the status for restarted replicas.
    wait_until_every(
        "e2e-partner status.bundle",
        Duration::from_secs(30),
        POLL,
        || {
            kubectl(&[
                "get",
                "federatedtrustdomains.signet.dev",
                "e2e-partner",
                "-o",
                "jsonpath={.status.bundle}",
            ])
            .contains("\"x5c\"")
        },
    );
    let bad = "apiVersion: signet.dev/v1alpha1\nkind: FederatedTrustDomain\nmetadata: {name: e2e-bad-partner}\nspec:\n  trustDomain: spire.e2e\n  bundleEndpointURL: https://spire.e2e:8443/\n  bundleEndpointProfile: {type: https_spiffe}\n";
    let refused = kubectl_output(&["apply", "-f", "-"], Some(bad));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "an unusable FederatedTrustDomain was stored"
    );
    assert!(
        stderr.contains("FederatedTrustDomain e2e-bad-partner: spec: https_spiffe needs the endpoint's SPIFFE ID"),
        "{stderr}"
    );
    ca
}

fn lease_holder() -> String {
    let lease = format!("{RELEASE}-operator");
    kubectl(&[
        "-n",
        NS,
        "get",
        "lease",
        &lease,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

fn bundle_pem() -> String {
    kubectl(&[
        "-n",
        NS,
        "get",
        "configmap",
        "signet-bundle",
        "-o",
        "jsonpath={.data.bundle\\.pem}",
    ])
}

/// Whether a certificate's notAfter has passed (openssl's `-checkend 0`).
fn has_expired(cert: &[u8]) -> bool {
    let pem = signet_identity::x509::certs_to_pem(&[rustls_pki_types::CertificateDer::from(
        cert.to_vec(),
    )]);
    !openssl_x509(&pem, &["-checkend", "0"]).status.success()
}

/// `/proc/<pid>/status` of the DaemonSet's agent process, as the host sees
/// it (the test runs on the node, and the agent is the only process running
/// `signet-agent run --config /etc/signet/agent.yaml`).
fn agent_process_status() -> String {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let agent = args.first().is_some_and(|a| a.ends_with(b"signet-agent"))
            && args.get(1) == Some(&&b"run"[..])
            && args.contains(&&b"/etc/signet/agent.yaml"[..]);
        if agent {
            found.push(std::fs::read_to_string(entry.path().join("status")).unwrap_or_default());
        }
    }
    assert_eq!(found.len(), 1, "one agent process on the node");
    found.remove(0)
}

/// `signet-operator authority ARGS --json` in the leader replica, through
/// `kubectl exec`: (succeeded, the answer).
fn authority_in_cluster(args: &[&str]) -> (bool, serde_json::Value) {
    authority_in_pod(&lease_holder(), args)
}

/// [`authority_in_cluster`] in a given replica.
fn authority_in_pod(pod: &str, args: &[&str]) -> (bool, serde_json::Value) {
    let pod = pod.to_owned();
    let mut full = vec![
        "-n",
        NS,
        "exec",
        pod.as_str(),
        "--",
        "/signet-operator",
        "authority",
    ];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--state-dir", "/run/signet-operator/admin", "--json"]);
    let output = signet_e2e::cluster::kubectl_output(&full, None);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Not JSON: the exec itself failed (a replica restarting): say so.
    let answer = serde_json::from_str(stdout.trim()).unwrap_or_else(
        |_| serde_json::json!({"error": format!("exec in {pod}: {stdout}{}", stderr_of(&output))}),
    );
    (output.status.success(), answer)
}

/// Installs an organisation's issuing CA (under a root made here) as a
/// Secret in cert-manager's layout, points the chart at it, and moves the
/// trust domain to it at once with `authority prepare` / `activate`; the
/// bundle then carries the root, and a new pod's SVID (leaf and the trust
/// domain's CA) verifies against the root alone. The old CA is tainted.
fn upstream_ca_from_a_secret(chart: &Path, out: &Path) {
    let pki = signet_e2e::pki::CorporatePki::generate();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, contents: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        format!("--from-file={name}={}", path.display())
    };
    kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "corp-issuing-ca",
        &file("tls.crt", pki.chain_pem.clone()),
        &file("tls.key", pki.key_pem.clone()),
        &file("ca.crt", pki.root_pem.clone()),
    ]);
    let upgrade = helm(&[
        "upgrade",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NS,
        "--reuse-values",
        "--set",
        "operator.ca.upstream.secretName=corp-issuing-ca",
        "--wait",
        "--timeout",
        "5m",
    ]);
    if !upgrade.status.success() {
        let pods = kubectl(&["-n", NS, "get", "pods", "-o", "wide"]);
        let logs = signet_e2e::cluster::kubectl_output(
            &[
                "-n",
                NS,
                "logs",
                "-l",
                "app.kubernetes.io/component=operator",
                "--tail=20",
                "--all-containers",
                "--prefix",
            ],
            None,
        );
        panic!(
            "helm upgrade: {}{}\n{pods}\n{}{}",
            stdout_of(&upgrade),
            stderr_of(&upgrade),
            stdout_of(&logs),
            stderr_of(&logs)
        );
    }
    // The replicas restarted with the upstream; wait for a leader that has it.
    let root_der = pki.root_der.clone();
    wait_until_every(
        "a leader of the upgraded release with the admin socket",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || {
            // A replica of the old release (terminating, or not yet) has
            // no upstream: what it prepares would be self-signed.
            let holder = lease_holder();
            if holder.is_empty() {
                return false;
            }
            let pod = kubectl(&[
                "-n",
                NS,
                "get",
                "pod",
                &holder,
                "--ignore-not-found",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}|{.spec.volumes[*].name}",
            ]);
            let (deleting, volumes) = pod.split_once('|').unwrap_or(("", ""));
            if !deleting.is_empty() || !volumes.split(' ').any(|v| v == "upstream-ca") {
                return false;
            }
            authority_in_cluster(&["show"]).0
        },
    );
    let with_state = |answer: &serde_json::Value, state: &str| -> Option<String> {
        answer["authorities"].as_array()?.iter().find_map(|a| {
            (a["kind"] == "x509" && a["state"] == state)
                .then(|| a["id"].as_str().unwrap().to_owned())
        })
    };
    let upstream_signed = |answer: &serde_json::Value, state: &str| {
        answer["authorities"].as_array().is_some_and(|all| {
            all.iter()
                .any(|a| a["kind"] == "x509" && a["state"] == state && a["upstream_signed"] == true)
        })
    };
    // Move to a CA of the upstream now: activate a successor prepared
    // before the upgrade (self-signed) if there is one, prepare one (the
    // upgraded leader signs it with the upstream; the schedule may have
    // prepared it already), let agents get the root, activate. Repeated
    // while a replica of the old release may still have acted meanwhile.
    let mut log = Vec::new();
    let mut old = None;
    let mut new = None;
    for _ in 0..3 {
        let (_, shown) = authority_in_cluster(&["show"]);
        if with_state(&shown, "prepared").is_some() && !upstream_signed(&shown, "prepared") {
            let (_, answer) = authority_in_cluster(&["activate", "x509"]);
            log.push(answer);
        }
        let (_, answer) = authority_in_cluster(&["prepare", "x509"]);
        log.push(answer);
        wait_until_every(
            "the corporate root in the bundle ConfigMap",
            Duration::from_secs(60),
            POLL,
            || {
                certs_from_pem(&bundle_pem())
                    .unwrap()
                    .iter()
                    .any(|c| c.as_ref() == root_der.as_slice())
            },
        );
        // Agents have the root before the upstream's CA signs.
        std::thread::sleep(Duration::from_secs(5));
        let (ok, answer) = authority_in_cluster(&["activate", "x509"]);
        let done = ok && upstream_signed(&answer, "active");
        if ok {
            old = with_state(&answer, "retired");
            new = with_state(&answer, "active");
        }
        log.push(answer);
        if done {
            break;
        }
    }
    assert!(
        log.last().is_some_and(|a| upstream_signed(a, "active")),
        "the active CA is not the upstream's: {log:#?}"
    );
    // Other replicas adopt the saved keyset at their next rotation check
    // (every 10 s) and sign with the new CA from then on.
    wait_until_every(
        "every replica signing with the upstream's CA",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || {
            let pods = kubectl(&[
                "-n",
                NS,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/component=operator",
                "--field-selector=status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ]);
            pods.split_whitespace().all(|pod| {
                let (ok, answer) = authority_in_pod(pod, &["show"]);
                ok && with_state(&answer, "active") == new
            })
        },
    );

    let (id, pem) = fetch_x509_pem("under-upstream", "client", out);
    assert_eq!(id, format!("spiffe://{TD}/ns/{APPS}/sa/client"));
    let chain = certs_from_pem(&pem).unwrap();
    assert_eq!(
        chain.len(),
        3,
        "leaf, the trust domain's CA and the issuing CA (not the root): {pem}"
    );
    let trust_domain = signet_identity::TrustDomain::new(TD).unwrap();
    let root_only =
        signet_identity::TrustBundle::from_x509_pem(trust_domain, &pki.root_pem).unwrap();
    signet_identity::verify_x509_svid(&chain, &root_only, signet_e2e::deadline::wall_now())
        .unwrap_or_else(|e| panic!("the SVID does not chain to the corporate root: {e}\n{pem}"));

    // Distrust the CA before the upstream, through its SigningAuthority
    // object: agents re-issue what it signed. Every replica reports its
    // counts there, and the CA under the upstream says so.
    if let Some(old) = old {
        let object = format!("x509-{}", old.to_ascii_lowercase());
        kubectl(&[
            "patch",
            "signingauthorities.signet.dev",
            &object,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"taint":true}}"#,
        ]);
        wait_until_every("the old CA tainted", Duration::from_secs(60), POLL, || {
            let (ok, answer) = authority_in_cluster(&["show"]);
            ok && answer["authorities"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|a| a["id"] == old.as_str() && a["tainted"] == true)
            })
        });
        let mut seen = String::new();
        wait_until_every(
            "SigningAuthority status from the replicas",
            Duration::from_secs(60),
            POLL,
            || {
                seen = kubectl(&[
                    "get",
                    "signingauthorities.signet.dev",
                    "-o",
                    "jsonpath={range .items[?(@.spec.kind==\"x509\")]}{.metadata.name} {.status.state} {.status.tainted} {.status.upstreamSigned} {.status.liveSvids}{\"\\n\"}{end}",
                ]);
                let tainted = seen
                    .lines()
                    .any(|l| l.starts_with(&format!("{object} retired true false ")));
                let upstream = seen.lines().any(|l| {
                    let fields: Vec<&str> = l.split(' ').collect();
                    fields.len() == 5
                        && fields[1..4] == ["active", "false", "true"]
                        && fields[4].parse::<u64>().is_ok_and(|n| n > 0)
                });
                tainted && upstream
            },
        );
        note(&format!("SigningAuthorities (x509):\n{seen}"));
    }
}

#[test]
fn helm_install_gives_pods_identities_through_the_csi_driver() {
    if let Some(reason) = skip_reason() {
        note(&format!("SKIPPED: {reason}"));
        return;
    }
    if NodeFiles::from_env().is_local() {
        let missing = missing_images();
        assert!(
            missing.is_empty(),
            "images missing from the node: {missing:?}; run e2e/images/build-all.sh"
        );
    }
    uninstall_and_clean();
    let _cleanup = Cleanup;
    // A fresh directory on the node for what pods fetch.
    let out = PathBuf::from(format!("/tmp/signet-e2e-helm-{}", std::process::id()));
    NodeFiles::from_env().create_dir(&out);

    // helm install: everything Ready. Helm installs CRDs but never
    // upgrades them, and they outlive an uninstall: apply this build's, as
    // users upgrading do, so a cluster that ran an older suite is current.
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/signet");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        chart.join("crds").to_str().unwrap(),
    ]);
    let install_started = signet_e2e::deadline::Stopwatch::start();
    let install = helm(&[
        "install",
        RELEASE,
        chart.to_str().unwrap(),
        "-n",
        NS,
        "--create-namespace",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "defaultPolicy.enabled=false",
        "--set",
        "operator.leaseDuration=6s",
        // A CA that rotates during the test: its successor is published
        // after 2 minutes and signs from 3m20s on.
        "--set",
        "operator.ca.ttl=4m",
        "--set",
        "operator.agentSvidTtl=1m",
        "--set",
        "operator.userIssuance.enabled=true",
        "--set",
        "operator.userIssuance.maxTtl=10m",
        // More values for other clusters (kind: agent.kubelet.skipVerify=true).
        "--set",
        &std::env::var("SIGNET_E2E_HELM_SET").unwrap_or_else(|_| "agent.logFormat=json".into()),
        "--wait",
        "--timeout",
        "5m",
    ]);
    assert!(
        install.status.success(),
        "helm install: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    assert!(
        String::from_utf8_lossy(&install.stdout).contains("csi: {driver: csi.signet.dev"),
        "NOTES tell the user how to mount the volume"
    );
    wait_for_daemonset(
        NS,
        "signet-agent",
        "app.kubernetes.io/component=agent",
        Duration::from_secs(120),
    );
    let ready = kubectl(&[
        "-n",
        NS,
        "get",
        "deployment",
        "signet-operator",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]);
    assert_eq!(ready, "2", "both operator replicas Ready");

    // The agent runs with no capabilities, under seccomp, unable to gain
    // privileges: what a compromised agent could do on the host is bounded.
    let status = agent_process_status();
    for (field, expected) in [
        ("CapEff:", "0000000000000000"),
        ("CapPrm:", "0000000000000000"),
        ("NoNewPrivs:", "1"),
        ("Seccomp:", "2"),
    ] {
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .map(str::trim);
        assert_eq!(value, Some(expected), "agent {field}\n{status}");
    }
    let node = std::env::var("SIGNET_E2E_NODE_NAME").unwrap_or_else(|_| "vm".into());
    wait_until_every(
        "the driver on the node's CSINode",
        Duration::from_secs(60),
        POLL,
        || {
            kubectl(&[
                "get",
                "csinode",
                &node,
                "-o",
                "jsonpath={.spec.drivers[*].name}",
            ])
            .contains("csi.signet.dev")
        },
    );

    // Policy, then pods.
    kubectl_apply(POLICY);
    let partner_ca = federate_with_a_partner();
    wait_until_every("e2e-apps Ready", Duration::from_secs(30), POLL, || {
        kubectl(&[
            "get",
            "workloadidentities.signet.dev",
            "e2e-apps",
            "-o",
            "jsonpath={.status.conditions[0].status}",
        ]) == "True"
    });
    chart_webhook_refuses_what_does_not_compile();
    kubectl(&["create", "namespace", APPS]);
    for sa in ["client", "server", "intruder"] {
        kubectl(&["-n", APPS, "create", "serviceaccount", sa]);
    }
    let people_dir = std::env::temp_dir().join(format!("signet-e2e-people-{}", std::process::id()));
    std::fs::create_dir_all(&people_dir).unwrap();
    people_issue_svids_through_the_api_server(&people_dir);
    let first_bundle = bundle_pem();
    let (id, client_pem) = fetch_x509_pem("fetch-client", "client", &out);
    let sans =
        String::from_utf8_lossy(&openssl_x509(&client_pem, &["-ext", "subjectAltName"]).stdout)
            .into_owned();
    assert_eq!(id, format!("spiffe://{TD}/ns/{APPS}/sa/client"));
    signed_ahead_for_the_pod("fetch-client", &client_pem);
    // The pod's Workload API stream carried the partner's bundle.
    let federated =
        NodeFiles::from_env().read(&out.join("fetch-client/federated_bundle.partner.e2e.pem"));
    assert_eq!(
        certs_from_pem(&federated).unwrap(),
        certs_from_pem(&partner_ca).unwrap()
    );
    assert!(sans.contains("DNS:fetch-client.apps.internal"), "{sans}");

    let jwt_args = [
        "api",
        "fetch",
        "jwt",
        "--audience",
        "e2e",
        "--output",
        "json",
        "--timeout",
        "60s",
    ];
    kubectl_apply(&csi_pod(
        "jwt-client",
        "client",
        &image("agent"),
        &jwt_args,
        None,
        "Never",
    ));
    let (phase, log) = run_to_completion(APPS, "jwt-client", Duration::from_secs(120));
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(
        log.contains(&format!("spiffe://{TD}/ns/{APPS}/sa/client")),
        "{log}"
    );
    // kubectl signet finds the trust domain in the chart's operator
    // ConfigMap and agrees with the issuer.
    let explained = kubectl_signet(&["explain", "pod", &format!("{APPS}/jwt-client")]);
    assert!(
        explained.contains(&format!(
            "ISSUED   e2e-apps -> spiffe://{TD}/ns/{APPS}/sa/client"
        )),
        "{explained}"
    );
    // The real agent is in the inventory, with its own version and its
    // stream open; the pods it was signed for count.
    let node = std::env::var("SIGNET_E2E_NODE_NAME").unwrap_or_else(|_| "vm".into());
    let mut table = String::new();
    wait_until_every(
        "the node's agent in kubectl signet agents list",
        Duration::from_secs(60),
        POLL,
        || {
            table = kubectl_signet(&["agents", "list"]);
            table.lines().any(|line| {
                let cells: Vec<&str> = line.split_whitespace().collect();
                cells.len() > 5
                    && cells[..4]
                        == [
                            node.as_str(),
                            node.as_str(),
                            "kubernetes",
                            env!("CARGO_PKG_VERSION"),
                        ]
                    && cells[4]
                        .parse::<u32>()
                        .is_ok_and(|workloads| workloads >= 1)
                    && cells[5] != "-"
                    && cells.last() == Some(&"active")
            })
        },
    );
    note(&format!("kubectl signet agents list:\n{table}"));

    // mTLS between two pods; the intruder gets no identity at all.
    let client_id = format!("spiffe://{TD}/ns/{APPS}/sa/client");
    let server_id = format!("spiffe://{TD}/ns/{APPS}/sa/server");
    kubectl_apply(&csi_pod(
        "server",
        "server",
        &image("mtls-example"),
        &["server", "--listen", "0.0.0.0:7443", "--allow", &client_id],
        None,
        "Always",
    ));
    kubectl(&[
        "-n",
        APPS,
        "wait",
        "--for=condition=Ready",
        "pod/server",
        "--timeout=120s",
    ]);
    let mut server_ip = String::new();
    wait_until_every(
        "the server listening",
        Duration::from_secs(60),
        POLL,
        || {
            server_ip = pod_field(APPS, "server", ".status.podIP");
            let logs = kubectl_output(&["-n", APPS, "logs", "server"], None);
            !server_ip.is_empty() && String::from_utf8_lossy(&logs.stdout).contains("listening on")
        },
    );
    let connect = format!("{server_ip}:7443");
    let mtls = |name: &str, repeat: &str| {
        kubectl_apply(&csi_pod(
            name,
            "client",
            &image("mtls-example"),
            &[
                "client",
                "--connect",
                &connect,
                "--server-id",
                &server_id,
                "--repeat",
                repeat,
                "--interval",
                "1s",
            ],
            None,
            "Never",
        ));
        // The pod starts, then connects `repeat` times a second apart.
        let seconds = repeat.parse::<u64>().unwrap_or(1) + 120;
        run_to_completion(APPS, name, Duration::from_secs(seconds))
    };
    let (phase, log) = mtls("mtls-client", "1");
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(
        log.contains(&format!("hello {client_id}, this is {server_id}")),
        "{log}"
    );

    // Rotation: 1-minute SVIDs rotate every 30 s and the CA's successor
    // takes over 3m20s after install; a client connecting every second
    // until past that point never fails a handshake (one failure fails the
    // pod), and its SVID changes on the Workload API stream.
    let past_ca_activation = Duration::from_secs(200 + 40);
    let repeat = past_ca_activation
        .saturating_sub(install_started.elapsed())
        .as_secs()
        .max(75)
        .to_string();
    // Meanwhile a files-mode pod prints its svid.pem three times, 35 s
    // apart: the 1-minute SVID is replaced in place.
    let probe_args = ["cat", "/spiffe-workload-api/svid.pem", "3", "35"];
    kubectl_apply(&files_pod(
        "files-client",
        "client",
        &image("probe"),
        &probe_args,
    ));
    let (phase, log) = mtls("mtls-rotation", &repeat);
    assert_eq!(
        phase, "Succeeded",
        "a handshake failed during rotation: {log}"
    );
    let svids: std::collections::BTreeSet<&str> = log
        .lines()
        .filter_map(|line| line.split("client svid ").nth(1))
        .collect();
    assert!(
        svids.len() >= 2,
        "the client's SVID rotated on its stream: {log}"
    );
    let fetch_args = ["api", "fetch", "x509", "--timeout", "20s"];
    kubectl_apply(&csi_pod(
        "intruder",
        "intruder",
        &image("agent"),
        &fetch_args,
        None,
        "Never",
    ));
    let (phase, log) = run_to_completion(APPS, "intruder", Duration::from_secs(120));
    assert_eq!(phase, "Failed", "{log}");
    assert!(
        log.contains("PermissionDenied")
            || log.contains("permission denied")
            || log.contains("no identity"),
        "{log}"
    );

    // Operator failover: the leader's pod goes; signing goes on, same CA.
    let bundle = bundle_pem();
    let leader = lease_holder();
    assert!(leader.starts_with("signet-operator-"), "{leader}");
    kubectl(&[
        "-n",
        NS,
        "delete",
        "pod",
        &leader,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    wait_until_every("a new leader", Duration::from_secs(60), POLL, || {
        let holder = lease_holder();
        !holder.is_empty() && holder != leader
    });
    // Every authority published before the failover is still published
    // (unless it expired meanwhile: the CA rotates every 2 minutes here).
    // A new leader that published its own stale copy of the keyset would
    // take out a successor CA its predecessor had already announced.
    let after_failover = certs_from_pem(&bundle_pem()).unwrap();
    for ca in certs_from_pem(&bundle).unwrap() {
        assert!(
            after_failover.contains(&ca) || has_expired(&ca),
            "failover keeps every published CA: before {bundle}, after {}",
            bundle_pem()
        );
    }
    let (id, leaf_pem) = fetch_x509_pem("after-failover", "client", &out);
    assert_eq!(id, format!("spiffe://{TD}/ns/{APPS}/sa/client"));
    // Signed by the new CA: the first bundle no longer verifies it.
    let chain = certs_from_pem(&leaf_pem).unwrap();
    let trust_domain = signet_identity::TrustDomain::new(TD).unwrap();
    let verify = |bundle: &str| {
        let bundle =
            signet_identity::TrustBundle::from_x509_pem(trust_domain.clone(), bundle).unwrap();
        signet_identity::verify_x509_svid(&chain, &bundle, signet_e2e::deadline::wall_now())
    };
    assert!(
        verify(&bundle_pem()).is_ok(),
        "the SVID chains to the published bundle"
    );
    assert!(
        verify(&first_bundle).is_err(),
        "the SVID is signed by the successor CA"
    );

    // The trust domain moves under an upstream CA from a Secret, at once,
    // through `signet-operator authority` in a replica (kubectl exec).
    upstream_ca_from_a_secret(&chart, &out);
    let (phase, log) = mtls("mtls-under-upstream", "1");
    assert_eq!(phase, "Succeeded", "mTLS under the upstream CA: {log}");

    // Agent restart: a new agent pod serves the next pod.
    kubectl(&[
        "-n",
        NS,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=agent",
        "--wait=true",
    ]);
    wait_for_daemonset(
        NS,
        "signet-agent",
        "app.kubernetes.io/component=agent",
        Duration::from_secs(120),
    );
    let (phase, log) = mtls("mtls-after-agent-restart", "1");
    assert_eq!(phase, "Succeeded", "mTLS after the agent restarted: {log}");

    // Uninstall leaves nothing of Signet behind.
    kubectl(&["delete", "namespace", APPS, "--wait=true", "--timeout=120s"]);
    kubectl(&[
        "delete",
        "workloadidentities.signet.dev,roles.signet.dev",
        "-l",
        "signet-e2e=helm",
    ]);
    // The upstream CA's Secret is the user's, not the chart's.
    kubectl(&[
        "-n",
        NS,
        "delete",
        "secret",
        "corp-issuing-ca",
        "--ignore-not-found",
    ]);
    let uninstall = helm(&[
        "uninstall",
        RELEASE,
        "-n",
        NS,
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    wait_until_every(
        "the namespace to empty",
        Duration::from_secs(90),
        POLL,
        || {
            let left = kubectl(&[
                "-n",
                NS,
                "get",
                "deployment,daemonset,pod,service,configmap,secret,lease,serviceaccount,role,rolebinding,poddisruptionbudget",
                "-o",
                "name",
            ]);
            left.lines().all(|name| {
                name == "configmap/kube-root-ca.crt" || name == "serviceaccount/default"
            })
        },
    );
    for object in [
        "clusterrole/signet-operator",
        "clusterrole/signet-agent",
        "clusterrolebinding/signet-operator",
        "clusterrolebinding/signet-agent",
        "csidriver/csi.signet.dev",
        "validatingwebhookconfiguration/signet-operator",
    ] {
        let found = kubectl(&["get", object, "--ignore-not-found", "-o", "name"]);
        assert!(found.trim().is_empty(), "left behind: {object}");
    }
}
