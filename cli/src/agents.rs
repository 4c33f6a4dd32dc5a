//! `agents list` and `agents show NAME`: the operator's agent inventory,
//! from `Agent` objects in a cluster or from `<state_dir>/agents.json`
//! standalone, with each agent's revocation.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Serialize;
use signet_operator::cluster::agent_standing::REVOCATIONS_CONFIG_MAP;
use signet_operator::inventory::AgentEntry;
use signet_operator::revocation::{Revocation, RevocationList};
use signet_operator::standalone::agent_file::read_agents;
use signet_operator::standalone::agent_standing::{REVOKED_FILE, read_revocations};
use signet_policy::crd::Agent;
use signet_runtime::clock::Clock;

use crate::args::{Output, write_json};
use crate::cluster::{ClusterArgs, runtime};

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Every agent the operator has seen, one line each.
    List(AgentsArgs),
    /// One agent in full.
    Show {
        /// The agent's name: its node (in a cluster) or join name.
        name: String,
        #[command(flatten)]
        args: AgentsArgs,
    },
}

#[derive(Args)]
pub struct AgentsArgs {
    /// A standalone operator's state directory (reads its agents.json);
    /// without it, the cluster's Agent objects.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(command: &AgentsCommand, out: &mut dyn Write) -> Result<ExitCode, String> {
    let (args, wanted) = match command {
        AgentsCommand::List(args) => (args, None),
        AgentsCommand::Show { name, args } => (args, Some(name.as_str())),
    };
    let (mut agents, revocations) = match &args.state_dir {
        Some(dir) => (
            read_agents(dir).map_err(|e| e.to_string())?,
            read_revocations(&dir.join(REVOKED_FILE)).map_err(|e| e.to_string())?,
        ),
        None => runtime()?.block_on(from_cluster(&args.cluster))?,
    };
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    let now = Clock::new().now();
    let rows: Vec<AgentView<'_>> = agents
        .iter()
        .filter(|agent| wanted.is_none_or(|name| agent.name == name))
        .map(|agent| AgentView {
            entry: agent,
            revoked: revocations.get(&agent.name),
        })
        .collect();
    let written = match (wanted, args.output) {
        (Some(name), _) if rows.is_empty() => {
            return Err(format!("no agent {name:?} in the inventory"));
        }
        (Some(_), Output::Text) => write_show(out, &rows[0], now),
        (None, Output::Text) => write_list(out, &rows, now),
        (Some(_), Output::Json) => write_json(out, &rows[0]),
        (None, Output::Json) => write_json(out, &rows),
    };
    written.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

async fn from_cluster(args: &ClusterArgs) -> Result<(Vec<AgentEntry>, RevocationList), String> {
    let client = Client::try_from(args.config().await?).map_err(|e| e.to_string())?;
    let list = Api::<Agent>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing agents.signet.dev: {e}"))?;
    let agents = list
        .items
        .into_iter()
        .filter_map(|agent| {
            Some(AgentEntry {
                name: agent.metadata.name?,
                spec: agent.spec,
                status: agent.status.unwrap_or_default(),
            })
        })
        .collect();
    // Who may list agents but not read Signet's namespace still gets the list.
    let revocations = Api::<ConfigMap>::namespaced(client, &args.signet_namespace)
        .get_opt(REVOCATIONS_CONFIG_MAP)
        .await
        .ok()
        .flatten()
        .and_then(|config_map| config_map.data)
        .map(|data| RevocationList::from_config_map_data(&data))
        .unwrap_or_default();
    Ok((agents, revocations))
}

#[derive(Serialize)]
struct AgentView<'a> {
    #[serde(flatten)]
    entry: &'a AgentEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<&'a Revocation>,
}

fn write_list(out: &mut dyn Write, rows: &[AgentView<'_>], now: SystemTime) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(out, "No agents.");
    }
    let header = [
        "NAME",
        "NODE",
        "JOIN METHOD",
        "VERSION",
        "WORKLOADS",
        "LAST SEEN",
        "SVID EXPIRY",
        "STATE",
    ];
    let table: Vec<[String; 8]> = rows
        .iter()
        .map(|row| {
            let (spec, status) = (&row.entry.spec, &row.entry.status);
            [
                row.entry.name.clone(),
                spec.node_name.clone().unwrap_or_else(|| "-".into()),
                spec.join_method.clone(),
                status.version.clone().unwrap_or_else(|| "-".into()),
                status.workloads.unwrap_or(0).to_string(),
                relative(status.last_seen.as_deref(), now),
                relative(status.svid_expiry.as_deref(), now),
                if row.revoked.is_some() {
                    "revoked".into()
                } else {
                    "active".into()
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            table
                .iter()
                .map(|row| row[column].len())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, cells: &[&str]| -> std::io::Result<()> {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        writeln!(out, "{}", padded.join("  ").trim_end())
    };
    line(out, &header)?;
    for row in &table {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    Ok(())
}

fn write_show(out: &mut dyn Write, row: &AgentView<'_>, now: SystemTime) -> std::io::Result<()> {
    let (spec, status) = (&row.entry.spec, &row.entry.status);
    let time = |value: &Option<String>| match value {
        Some(text) => format!("{text} ({})", relative(Some(text), now)),
        None => "never".into(),
    };
    writeln!(out, "Name:          {}", row.entry.name)?;
    writeln!(out, "SPIFFE ID:     {}", spec.spiffe_id)?;
    writeln!(
        out,
        "Node:          {}",
        spec.node_name.as_deref().unwrap_or("-")
    )?;
    writeln!(out, "Join method:   {}", spec.join_method)?;
    writeln!(
        out,
        "Version:       {}",
        status.version.as_deref().unwrap_or("unknown")
    )?;
    writeln!(out, "First join:    {}", time(&status.first_join))?;
    writeln!(out, "Last join:     {}", time(&status.last_join))?;
    writeln!(out, "Last renewal:  {}", time(&status.last_renewal))?;
    writeln!(out, "Last seen:     {}", time(&status.last_seen))?;
    writeln!(out, "SVID expiry:   {}", time(&status.svid_expiry))?;
    writeln!(
        out,
        "Workloads:     {} (signed for in the last hour)",
        status.workloads.unwrap_or(0)
    )?;
    match row.revoked {
        None => writeln!(out, "Revoked:       no"),
        Some(revocation) if revocation.reason.is_empty() => writeln!(out, "Revoked:       yes"),
        Some(revocation) => writeln!(out, "Revoked:       yes: {}", revocation.reason),
    }
}

/// `5m ago` or `in 55m` for an RFC 3339 time; `-` when there is none.
fn relative(time: Option<&str>, now: SystemTime) -> String {
    let Some(parsed) = time.and_then(|text| humantime::parse_rfc3339_weak(text).ok()) else {
        return "-".into();
    };
    match parsed.duration_since(now) {
        Ok(ahead) => format!("in {}", short(ahead)),
        Err(behind) => format!("{} ago", short(behind.duration())),
    }
}

fn short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h{}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_policy::crd::{AgentSpec, AgentStatus};
    use signet_runtime::audit::rfc3339;

    #[test]
    fn the_list_is_a_table_with_relative_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let entry = AgentEntry {
            name: "node-a".into(),
            spec: AgentSpec {
                spiffe_id: "spiffe://example.org/signet/agent/k8s/node-a".into(),
                node_name: Some("node-a".into()),
                join_method: "kubernetes".into(),
            },
            status: AgentStatus {
                last_seen: Some(rfc3339(now - Duration::from_secs(12))),
                svid_expiry: Some(rfc3339(now + Duration::from_secs(3000))),
                version: Some("0.4.0".into()),
                workloads: Some(3),
                ..AgentStatus::default()
            },
        };
        let revocation = Revocation {
            revoked_at_unix: 1,
            reason: "node compromised".into(),
        };
        let rows = [AgentView {
            entry: &entry,
            revoked: Some(&revocation),
        }];
        let mut out = Vec::new();
        write_list(&mut out, &rows, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("NAME    NODE    JOIN METHOD"),
            "{text}"
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "node-a",
                "node-a",
                "kubernetes",
                "0.4.0",
                "3",
                "12s",
                "ago",
                "in",
                "50m",
                "revoked"
            ]
        );
        let mut out = Vec::new();
        write_show(&mut out, &rows[0], now).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Last renewal:  never\n"), "{text}");
        assert!(
            text.contains("Revoked:       yes: node compromised\n"),
            "{text}"
        );
    }
}
