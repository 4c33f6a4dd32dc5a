//! The commands that ask a cluster: the caller's kubeconfig (or the pod's
//! service account in a pod), with whatever access it grants.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::config::KubeConfigOptions;
use kube::{Client, Config};
use serde::Serialize;
use signet_identity::TrustDomain;
use signet_operator::cluster::explain::{PodExplanation, explain_pod as explain_in_cluster};

use crate::args::{Output, trust_domain, write_json};
use crate::explain::{JsonExplanation, write_not_in_force, write_text};

/// Where the cluster and Signet's operator are.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// The kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    /// The trust domain; read from the operator's ConfigMap when not given.
    #[arg(long, env = "SIGNET_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// The namespace Signet is installed in.
    #[arg(long, env = "SIGNET_NAMESPACE", default_value = "signet-system")]
    pub signet_namespace: String,
    /// The operator's ConfigMap (the chart's `<release>-operator`).
    #[arg(long, default_value = "signet-operator")]
    pub operator_config: String,
}

impl ClusterArgs {
    pub(crate) async fn config(&self) -> Result<Config, String> {
        kube_config(self.context.as_deref()).await
    }

    /// `--trust-domain`, or the `trust_domain` of the operator's own
    /// configuration, so the answer cannot disagree with the issuer's.
    async fn trust_domain(&self, client: &Client) -> Result<TrustDomain, String> {
        if let Some(name) = &self.trust_domain {
            return trust_domain(name);
        }
        let (namespace, name) = (&self.signet_namespace, &self.operator_config);
        let config_map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| format!("reading ConfigMap {namespace}/{name} for the trust domain: {e} (or pass --trust-domain)"))?
            .ok_or_else(|| format!("no ConfigMap {namespace}/{name} to read the trust domain from: pass --trust-domain, or --signet-namespace/--operator-config"))?;
        let yaml = config_map
            .data
            .as_ref()
            .and_then(|data| data.get("operator.yaml"))
            .ok_or_else(|| format!("ConfigMap {namespace}/{name} has no operator.yaml"))?;
        #[derive(serde::Deserialize)]
        struct TrustDomainOnly {
            trust_domain: String,
        }
        let parsed: TrustDomainOnly = serde_yaml::from_str(yaml)
            .map_err(|e| format!("ConfigMap {namespace}/{name} operator.yaml: {e}"))?;
        trust_domain(&parsed.trust_domain)
    }
}

/// The kubeconfig's `context` (default: the current one), or the pod's
/// service account in a pod.
pub(crate) async fn kube_config(context: Option<&str>) -> Result<Config, String> {
    signet_tls::install_default_provider();
    match context {
        Some(context) => Config::from_kubeconfig(&KubeConfigOptions {
            context: Some(context.to_owned()),
            ..KubeConfigOptions::default()
        })
        .await
        .map_err(|e| format!("kubeconfig context {context:?}: {e}")),
        None => Config::infer().await.map_err(|e| {
            format!("no cluster to talk to (KUBECONFIG, ~/.kube/config or in-cluster): {e}")
        }),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))
}

fn parse_testimony(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .ok_or_else(|| format!("--attribute {pair:?}: expected NAME=VALUE"))
        })
        .collect()
}

#[derive(Args)]
pub struct PodArgs {
    /// NAMESPACE/NAME, or NAME in the current context's namespace.
    pub pod: String,
    /// The container that calls the Workload API (default: the first).
    #[arg(long, short)]
    pub container: Option<String>,
    /// What the agent would report about the calling process, which the
    /// API server cannot know (e.g. workload.unix.uid=1000); repeatable.
    #[arg(long = "attribute", value_name = "NAME=VALUE")]
    pub testimony: Vec<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// `explain pod NAMESPACE/NAME`.
pub fn explain_pod(args: &PodArgs, out: &mut dyn Write) -> Result<ExitCode, String> {
    let testimony = parse_testimony(&args.testimony)?;
    let explained = runtime()?.block_on(async {
        let config = args.cluster.config().await?;
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| e.to_string())?;
        let td = args.cluster.trust_domain(&client).await?;
        let (namespace, name) = match args.pod.split_once('/') {
            Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
            None => (default_namespace, args.pod.clone()),
        };
        explain_in_cluster(
            &client,
            &td,
            &namespace,
            &name,
            args.container.as_deref(),
            &testimony,
        )
        .await
        .map_err(|e| e.to_string())
    })?;
    let written = match args.output {
        Output::Text => write_pod_text(out, &explained),
        Output::Json => write_json(out, &JsonPodExplanation::new(&explained)),
    };
    written.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn write_pod_text(out: &mut dyn Write, explained: &PodExplanation) -> std::io::Result<()> {
    let pod = &explained.pod;
    writeln!(
        out,
        "Pod {}/{} (uid {}, service account {}), container {}",
        pod.namespace, pod.name, pod.uid, pod.service_account, explained.container
    )?;
    match &explained.agent {
        Some(agent) => writeln!(out, "Agent: {} (node {})", agent.spiffe_id, pod.node_name)?,
        None => writeln!(out, "Agent: none (the pod is not scheduled)")?,
    }
    match &explained.node {
        Some(node) => {
            let labels: Vec<String> = node
                .labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            writeln!(out, "Node labels: {}", labels.join(", "))?;
        }
        None if explained.agent.is_some() => writeln!(
            out,
            "Node: not found (node.* attributes are absent, Node subjects do not apply)"
        )?,
        None => {}
    }
    writeln!(
        out,
        "From the API server; what the agent reports about the calling process \
         (workload.unix.* and the like) is absent unless given with --attribute."
    )?;
    writeln!(out)?;
    write_not_in_force(out, &explained.broken)?;
    match &explained.outcome {
        Ok(explanation) => write_text(out, explanation),
        Err(rejection) => writeln!(
            out,
            "REFUSED before any policy: {} ({})",
            rejection.message, rejection.reason
        ),
    }
}

#[derive(Serialize)]
struct JsonPodExplanation<'a> {
    namespace: &'a str,
    pod: &'a str,
    uid: &'a str,
    service_account: &'a str,
    node: &'a str,
    container: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_labels: Option<&'a BTreeMap<String, String>>,
    not_in_force: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<JsonRefusal<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<JsonExplanation<'a>>,
}

#[derive(Serialize)]
struct JsonRefusal<'a> {
    reason: &'a str,
    message: &'a str,
}

impl<'a> JsonPodExplanation<'a> {
    fn new(explained: &'a PodExplanation) -> Self {
        let pod = &explained.pod;
        let (refused, explanation) = match &explained.outcome {
            Ok(explanation) => (None, Some(JsonExplanation::new(explanation))),
            Err(rejection) => (
                Some(JsonRefusal {
                    reason: rejection.reason,
                    message: &rejection.message,
                }),
                None,
            ),
        };
        JsonPodExplanation {
            namespace: &pod.namespace,
            pod: &pod.name,
            uid: &pod.uid,
            service_account: &pod.service_account,
            node: &pod.node_name,
            container: &explained.container,
            agent: explained.agent.as_ref().map(|a| a.spiffe_id.to_string()),
            node_labels: explained.node.as_ref().map(|n| &n.labels),
            not_in_force: explained
                .broken
                .iter()
                .filter_map(|r| {
                    r.result
                        .as_ref()
                        .err()
                        .map(|e| format!("{} {}: {e}", r.kind.as_str(), r.name))
                })
                .collect(),
            refused,
            explanation,
        }
    }
}
