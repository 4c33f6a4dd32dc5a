//! The Helm chart `charts/signet`, checked with the real helm (`helm lint`,
//! `helm template`): its CRDs are the generated ones, the configuration it
//! renders is accepted by the operator's and the agent's own parsers, and
//! the objects carry the properties users and the security model rely on
//! (two operator replicas with a PDB, least-privilege RBAC identical to the
//! tested manifest, privileges only for the CSI container, an agent with no
//! capabilities unless binary attributes or an engine attestor need
//! CAP_SYS_PTRACE, the optional operator NetworkPolicy, podInfoOnMount).
//!
//! helm comes from `$SIGNET_E2E_BIN_DIR`, `~/.cache/signet/bin` (built by
//! `e2e/cluster/build-tools.sh helm`, which `make test-setup` runs) or
//! `PATH`; without it the tests print SKIPPED, unless
//! `SIGNET_REQUIRE_HELM=1` makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml::Value;
use signet_e2e::cluster::note;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn helm() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SIGNET_E2E_BIN_DIR").map(|d| PathBuf::from(d).join("helm")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/signet/bin/helm")),
    ];
    let found = candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .or_else(|| {
            Command::new("helm")
                .arg("version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| PathBuf::from("helm"))
        });
    if found.is_none() {
        assert!(
            std::env::var("SIGNET_REQUIRE_HELM").as_deref() != Ok("1"),
            "helm is required (SIGNET_REQUIRE_HELM=1) but was not found"
        );
        note("SKIPPED: helm not found (e2e/cluster/build-tools.sh helm)");
    }
    found
}

/// `helm template` with `--set` values; Err(stderr) when helm refuses.
fn template(helm: &Path, sets: &[&str]) -> Result<Vec<Value>, String> {
    let mut command = Command::new(helm);
    command
        .args(["template", "signet", "--namespace", "signet-system"])
        .args(["--kube-version", "1.33.0"])
        .arg(repo().join("charts/signet"));
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn find<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        o["kind"] == kind
            && o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with(name_suffix))
    })
}

fn get<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    find(objects, kind, name_suffix)
        .unwrap_or_else(|| panic!("no {kind} named *{name_suffix} in the rendered chart"))
}

/// The operator's configuration file as the chart renders it.
fn rendered_operator_yaml(objects: &[Value]) -> &str {
    get(objects, "ConfigMap", "-operator")["data"]["operator.yaml"]
        .as_str()
        .unwrap()
}

/// The operator's configuration as the chart renders it, resolved by the
/// operator's own code.
fn operator_config(operator_yaml: &str) -> signet_operator::cluster::ClusterConfig {
    let file: signet_operator::config::FileConfig = serde_yaml::from_str(operator_yaml).unwrap();
    signet_operator::cluster::ClusterConfig::resolve(
        file,
        signet_operator::config::Overrides::default(),
        signet_operator::cluster::config::KubernetesOverrides {
            namespace: Some("signet-system".into()),
            identity: Some("operator-0".into()),
            lease_duration: None,
        },
    )
    .unwrap()
}

fn container<'a>(workload: &'a Value, name: &str) -> Option<&'a Value> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for entry in std::fs::read_dir(repo().join("crds")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let copy = repo()
                .join("charts/signet/crds")
                .join(path.file_name().unwrap());
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                std::fs::read_to_string(&copy).unwrap_or_default(),
                "{} is stale: run `make crds`",
                copy.display()
            );
        }
    }
}

#[test]
fn chart_lints_and_renders_what_the_binaries_accept() {
    let Some(helm) = helm() else { return };
    let lint = Command::new(&helm)
        .args(["lint", "--strict", "--kube-version", "1.33.0"])
        .arg(repo().join("charts/signet"))
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let objects = template(&helm, &[]).unwrap();

    // The operator's and the agent's configuration parse with their own code.
    let operator_yaml = rendered_operator_yaml(&objects);
    let config = operator_config(operator_yaml);
    assert_eq!(config.kubernetes.ca_secret, "signet-ca");
    assert_eq!(config.kubernetes.agent_service_account, "signet-agent");
    let webhook = config.kubernetes.webhook.as_ref().unwrap();
    assert_eq!(webhook.listen.port(), 9443);
    assert_eq!(webhook.configuration.as_deref(), Some("signet-operator"));
    let agent_yaml = get(&objects, "ConfigMap", "-agent")["data"]["agent.yaml"]
        .as_str()
        .unwrap();
    let agent = signet_agent::config::AgentConfig::parse(agent_yaml).unwrap();
    assert!(agent.issuer.service_account_token_path.is_some());

    // Two operator replicas, kept available through node drains.
    let deployment = get(&objects, "Deployment", "-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        get(&objects, "PodDisruptionBudget", "-operator")["spec"]["minAvailable"],
        1
    );
    let operator = container(deployment, "operator").unwrap();
    assert_eq!(operator["securityContext"]["readOnlyRootFilesystem"], true);

    // Only the CSI container is privileged; the agent sees host PIDs.
    let daemonset = get(&objects, "DaemonSet", "-agent");
    assert_eq!(daemonset["spec"]["template"]["spec"]["hostPID"], true);
    assert!(container(daemonset, "agent").unwrap()["securityContext"]["privileged"].is_null());
    // The agent keeps no capability unless a feature needs ptrace access.
    let agent_security = &container(daemonset, "agent").unwrap()["securityContext"];
    assert_eq!(agent_security["capabilities"]["drop"][0], "ALL");
    assert!(agent_security["capabilities"]["add"].is_null());
    assert_eq!(agent_security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(agent_security["allowPrivilegeEscalation"], false);
    for set in [
        "agent.binaryAttributes=true",
        "agent.attestors.docker.enabled=true",
        "agent.attestors.podman.enabled=true",
    ] {
        let objects = template(&helm, &[set]).unwrap();
        let daemonset = get(&objects, "DaemonSet", "-agent");
        let added = &container(daemonset, "agent").unwrap()["securityContext"]["capabilities"];
        assert_eq!(
            added["add"],
            serde_yaml::from_str::<Value>("[SYS_PTRACE]").unwrap(),
            "{set}"
        );
    }

    // The optional NetworkPolicy admits only this release's agents to the
    // issuer port, and metrics only from the peers named.
    assert!(find(&objects, "NetworkPolicy", "-operator").is_none());
    let fenced = template(
        &helm,
        &[
            "operator.networkPolicy.enabled=true",
            "operator.networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
        ],
    )
    .unwrap();
    let policy = &get(&fenced, "NetworkPolicy", "-operator")["spec"];
    assert_eq!(
        policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    let ingress = policy["ingress"].as_sequence().unwrap();
    assert_eq!(
        ingress.len(),
        3,
        "issuer, metrics and the webhook, no OIDC: {ingress:?}"
    );
    assert_eq!(ingress[0]["ports"][0]["port"], "issuer");
    assert_eq!(
        ingress[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "agent"
    );
    assert_eq!(ingress[1]["ports"][0]["port"], "metrics");
    assert_eq!(
        ingress[1]["from"][0]["namespaceSelector"]["matchLabels"]["name"],
        "monitoring"
    );
    // The API server is no pod: the webhook port is open to all.
    assert_eq!(ingress[2]["ports"][0]["port"], "webhook");
    assert!(ingress[2]["from"].is_null());

    // The admission webhook: Signet's objects only, never blocking while no
    // operator answers, served by the operator Service, caBundle left to
    // the operator.
    let webhook = &get(&objects, "ValidatingWebhookConfiguration", "-operator")["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(webhook["rules"][0]["apiGroups"][0], "signet.dev");
    assert_eq!(webhook["clientConfig"]["service"]["port"], 9443);
    assert!(webhook["clientConfig"]["caBundle"].is_null());
    let service = get(&objects, "Service", "-operator");
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 9443 && p["targetPort"] == "webhook"),
        "{service:?}"
    );
    let off = template(&helm, &["operator.webhook.enabled=false"]).unwrap();
    assert!(find(&off, "ValidatingWebhookConfiguration", "-operator").is_none());
    let off_config = rendered_operator_yaml(&off);
    assert!(!off_config.contains("webhook"), "{off_config}");

    let csi = container(daemonset, "csi").unwrap();
    assert_eq!(csi["securityContext"]["privileged"], true);
    let kubelet_mount = csi["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "kubelet-dir")
        .unwrap();
    assert_eq!(kubelet_mount["mountPropagation"], "Bidirectional");

    // signet-csi trusts pod info only because the kubelet fills it in.
    let driver = get(&objects, "CSIDriver", "csi.signet.dev");
    assert_eq!(driver["spec"]["podInfoOnMount"], true);
    assert_eq!(driver["spec"]["tokenRequests"][0]["audience"], "signet-csi");

    // The operator's RBAC is the one the cluster test runs it under.
    let tested: Vec<Value> =
        serde_yaml::Deserializer::from_str(include_str!("../cluster/manifests/operator-rbac.yaml"))
            .map(|doc| Value::deserialize(doc).unwrap())
            .collect();
    for kind in ["ClusterRole", "Role"] {
        let rendered = &get(&objects, kind, "-operator")["rules"];
        let manifest = &tested.iter().find(|o| o["kind"] == kind).unwrap()["rules"];
        assert_eq!(
            rendered, manifest,
            "{kind} rules differ from the tested manifest"
        );
    }

    // The default policy can be switched off; so can the CSI driver.
    assert!(find(&objects, "WorkloadIdentity", "-default").is_some());
    let bare = template(&helm, &["defaultPolicy.enabled=false", "csi.enabled=false"]).unwrap();
    assert!(find(&bare, "WorkloadIdentity", "-default").is_none());
    assert!(find(&bare, "CSIDriver", "csi.signet.dev").is_none());
    assert!(container(get(&bare, "DaemonSet", "-agent"), "csi").is_none());

    // OIDC needs an issuer URL; with one, the operator serves discovery.
    let missing = template(&helm, &["operator.oidc.enabled=true"]).unwrap_err();
    assert!(missing.contains("issuerUrl is required"), "{missing}");
    let oidc = template(
        &helm,
        &[
            "operator.oidc.enabled=true",
            "operator.oidc.issuerUrl=https://oidc.example.org",
        ],
    )
    .unwrap();
    let config = rendered_operator_yaml(&oidc);
    assert!(
        config.contains("issuer_url: \"https://oidc.example.org\""),
        "{config}"
    );

    // The schema refuses what would break at runtime.
    for bad in [
        "trustDomain=Example.ORG",
        "image.tag=latest",
        "operator.ca.keyType=dsa",
        "operator.oidc.issuerUrl=http://plain.example.org",
        "csi.podTokenAudience=signet-issuer",
    ] {
        let error = template(&helm, &[bad]).unwrap_err();
        assert!(
            error.contains("values don't meet the specifications"),
            "{bad}: {error}"
        );
    }
}

/// `operator.userIssuance.enabled`: the APIService routes the group to the
/// operator Service's port, the operator's configuration parses, and the
/// extra RBAC is exactly what it needs (its own APIService by name, the
/// front-proxy settings through Kubernetes' reader Role) plus `create`
/// on the two request resources for the requester groups.
#[test]
fn chart_user_issuance_is_off_by_default_and_complete_when_on() {
    let Some(helm) = helm() else { return };
    let off = template(&helm, &[]).unwrap();
    assert!(find(&off, "APIService", "issuance.signet.dev").is_none());
    let on = template(
        &helm,
        &[
            "operator.userIssuance.enabled=true",
            "operator.userIssuance.maxTtl=30m",
        ],
    )
    .unwrap();
    let api_service = get(&on, "APIService", "v1alpha1.issuance.signet.dev");
    assert_eq!(api_service["spec"]["group"], "issuance.signet.dev");
    assert_eq!(
        api_service["spec"]["service"]["name"],
        "signet-operator-issuance"
    );
    assert_eq!(api_service["spec"]["service"]["port"], 443);
    assert!(
        api_service["spec"]["caBundle"].is_null(),
        "the operator sets it"
    );
    assert!(api_service["spec"]["insecureSkipTLSVerify"].is_null());
    let service = get(&on, "Service", "-operator-issuance");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "user-issuance");

    let operator_yaml = rendered_operator_yaml(&on);
    let config = operator_config(operator_yaml);
    assert!(
        config
            .base
            .issuer_names
            .dns
            .contains(&"signet-operator-issuance.signet-system.svc".to_owned()),
        "the APIService's Service name is on the serving certificate"
    );
    let users = config.kubernetes.user_issuance.unwrap();
    assert_eq!(users.listen.port(), 9444);
    assert_eq!(
        users.api_service.as_deref(),
        Some("v1alpha1.issuance.signet.dev")
    );
    assert_eq!(users.ttls.max, std::time::Duration::from_secs(30 * 60));
    assert_eq!(users.ttls.default, std::time::Duration::from_secs(15 * 60));

    let rules = get(&on, "ClusterRole", "signet-operator")["rules"]
        .as_sequence()
        .unwrap();
    let api_services = rules
        .iter()
        .find(|r| r["apiGroups"][0] == "apiregistration.k8s.io")
        .unwrap();
    assert_eq!(
        api_services["resourceNames"][0],
        "v1alpha1.issuance.signet.dev"
    );
    assert_eq!(api_services["verbs"].as_sequence().unwrap().len(), 2);
    let reader = get(&on, "RoleBinding", "-authentication-reader");
    assert_eq!(reader["metadata"]["namespace"], "kube-system");
    assert_eq!(
        reader["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
    let requester = get(&on, "ClusterRole", "-svid-requester");
    assert_eq!(
        serde_yaml::to_string(&requester["rules"]).unwrap(),
        "- apiGroups:\n  - issuance.signet.dev\n  resources:\n  - x509svidrequests\n  - jwtsvidrequests\n  verbs:\n  - create\n"
    );
    let binding = get(&on, "ClusterRoleBinding", "-svid-requester");
    assert_eq!(binding["subjects"][0]["name"], "system:authenticated");
    let nobody = template(
        &helm,
        &[
            "operator.userIssuance.enabled=true",
            "operator.userIssuance.requesterGroups=null",
        ],
    )
    .unwrap();
    assert!(find(&nobody, "ClusterRoleBinding", "-svid-requester").is_none());
}

/// Federation values: the bundle endpoint (Service port, https_web with
/// its Secret mounted) and `federation` entries reach operator.yaml in a
/// shape the operator accepts.
#[test]
fn chart_federation_values_render_what_the_operator_accepts() {
    let Some(helm) = helm() else { return };
    let missing = template(
        &helm,
        &[
            "operator.bundleEndpoint.enabled=true",
            "operator.bundleEndpoint.profile=https_web",
        ],
    )
    .unwrap_err();
    assert!(missing.contains("tlsSecret is required"), "{missing}");
    let on = template(
        &helm,
        &[
            "operator.bundleEndpoint.enabled=true",
            "operator.bundleEndpoint.profile=https_web",
            "operator.bundleEndpoint.tlsSecret=bundle-tls",
            "operator.federation.partner\\.org.bundle_endpoint_url=https://bundles.partner.org/",
            "operator.federation.partner\\.org.profile=https_web",
            "operator.federationConfigMap=foreign-bundles",
        ],
    )
    .unwrap();
    let operator_yaml = rendered_operator_yaml(&on);
    let config = operator_config(operator_yaml);
    let endpoint = config.base.bundle_endpoint.as_ref().unwrap();
    assert_eq!(endpoint.listen.port(), 8445);
    assert_eq!(
        endpoint.tls_cert.as_deref(),
        Some(Path::new("/etc/signet/bundle-endpoint-tls/tls.crt"))
    );
    let partner = signet_identity::TrustDomain::new("partner.org").unwrap();
    assert!(
        config.base.federation.contains_key(&partner),
        "{operator_yaml}"
    );
    let deployment = get(&on, "Deployment", "-operator");
    let volumes =
        serde_yaml::to_string(&deployment["spec"]["template"]["spec"]["volumes"]).unwrap();
    assert!(volumes.contains("secretName: bundle-tls"), "{volumes}");
    assert!(volumes.contains("name: foreign-bundles"), "{volumes}");
    let service = get(&on, "Service", "-operator");
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 8445)
    );
    let off = template(&helm, &[]).unwrap();
    let off_yaml = rendered_operator_yaml(&off);
    assert!(!off_yaml.contains("bundle_endpoint") && !off_yaml.contains("federation"));
}

#[test]
fn chart_upstream_ca_mounts_the_secret_the_config_names() {
    let Some(helm) = helm() else { return };
    let on = template(&helm, &["operator.ca.upstream.secretName=corp-issuing-ca"]).unwrap();
    let operator_yaml = rendered_operator_yaml(&on);
    // The files exist only in the pod, so this checks the parsed file
    // configuration rather than resolving it.
    let file: signet_operator::config::FileConfig = serde_yaml::from_str(operator_yaml).unwrap();
    let upstream = file.ca.upstream.expect("ca.upstream rendered");
    assert_eq!(
        upstream.cert_file,
        Path::new("/etc/signet/upstream/tls.crt")
    );
    assert_eq!(upstream.key_file, Path::new("/etc/signet/upstream/tls.key"));
    assert_eq!(
        upstream.bundle_file.as_deref(),
        Some(Path::new("/etc/signet/upstream/ca.crt"))
    );
    let deployment = get(&on, "Deployment", "-operator");
    let spec = &deployment["spec"]["template"]["spec"];
    let volumes = serde_yaml::to_string(&spec["volumes"]).unwrap();
    assert!(volumes.contains("secretName: corp-issuing-ca"), "{volumes}");
    let mounts =
        serde_yaml::to_string(&container(deployment, "operator").unwrap()["volumeMounts"]).unwrap();
    assert!(
        mounts.contains("mountPath: /etc/signet/upstream"),
        "{mounts}"
    );
    assert!(
        !mounts.contains("subPath"),
        "a subPath mount never sees the Secret's updates"
    );

    // A chain file that ends with the root needs no bundle key.
    let no_bundle = template(
        &helm,
        &[
            "operator.ca.upstream.secretName=corp-issuing-ca",
            "operator.ca.upstream.bundleKey=",
        ],
    )
    .unwrap();
    let file: signet_operator::config::FileConfig =
        serde_yaml::from_str(rendered_operator_yaml(&no_bundle)).unwrap();
    assert_eq!(file.ca.upstream.unwrap().bundle_file, None);
    // Off by default.
    let off = template(&helm, &[]).unwrap();
    assert!(!rendered_operator_yaml(&off).contains("upstream"));
    let mounts = serde_yaml::to_string(
        &container(get(&off, "Deployment", "-operator"), "operator").unwrap()["volumeMounts"],
    )
    .unwrap();
    assert!(!mounts.contains("upstream"));
}

/// The Kubernetes examples users copy are valid policy.
#[test]
fn kubernetes_examples_compile() {
    let text = std::fs::read_to_string(repo().join("examples/kubernetes/policy.yaml")).unwrap();
    let objects: Vec<_> = signet_policy::parse_yaml_documents(&text)
        .into_iter()
        .map(|o| o.unwrap())
        .collect();
    assert_eq!(objects.len(), 2);
    let document = signet_policy::PolicyDocument::from_objects(objects);
    let trust_domain = signet_identity::TrustDomain::new("example.org").unwrap();
    let (_, reports) = document.compile(1, &trust_domain);
    for report in reports {
        assert!(
            report.result.is_ok(),
            "{}: {:?}",
            report.name,
            report.result
        );
    }
    // The pods parse as YAML and use the driver the chart installs.
    let pods = std::fs::read_to_string(repo().join("examples/kubernetes/pods.yaml")).unwrap();
    let drivers = serde_yaml::Deserializer::from_str(&pods)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|o| o["kind"] == "Pod")
        .map(|o| o["spec"]["volumes"][0]["csi"]["driver"].clone())
        .collect::<Vec<_>>();
    assert_eq!(drivers, vec![Value::from("csi.signet.dev"); 2]);
}
