//! `meshctl gateways`: every link of a cluster and the health of the remote
//! gateway behind it, as the cluster's controller last saw it.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::output::{Report, table};
use crate::target::{Cluster, TargetArgs};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl gateways --context east
  meshctl gateways --state ./east -o json
  meshctl gateways --context east --watch")]
pub struct GatewaysArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Report,
    /// Keep watching: print again whenever something changes (Ctrl-C stops).
    #[arg(short, long)]
    pub watch: bool,
    /// How often --watch looks.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// One link's gateway, as the controller reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRow {
    pub cluster: String,
    pub link: String,
    /// Probe and lease both good: the cluster takes traffic.
    pub alive: bool,
    pub federation_up: Option<bool>,
    pub gateway_alive: Option<bool>,
    pub addresses: Vec<String>,
    pub latency_p50: Option<String>,
    pub latency_p99: Option<String>,
    pub services: u32,
    pub last_error: Option<String>,
    /// Whether the controller has reported on the link at all.
    pub reported: bool,
}

pub async fn run(a: GatewaysArgs) -> anyhow::Result<()> {
    let cluster = a.target.open().await?;
    let mut last = None;
    loop {
        let rows = gateways(&cluster).await?;
        if last.as_ref() != Some(&rows) {
            if a.watch && last.is_some() {
                println!();
            }
            print!("{}", render(&rows, a.output)?);
            last = Some(rows);
        }
        if !a.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(a.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The rows, one per Link, sorted by cluster.
pub async fn gateways(cluster: &Cluster) -> anyhow::Result<Vec<GatewayRow>> {
    let mut rows: Vec<GatewayRow> = cluster
        .links()
        .await?
        .into_iter()
        .map(|l| {
            let s = l.status.clone();
            let s_ref = s.as_ref();
            GatewayRow {
                cluster: l.spec.cluster.clone(),
                link: format!(
                    "{}/{}",
                    l.metadata.namespace.as_deref().unwrap_or("default"),
                    l.metadata.name.as_deref().unwrap_or_default()
                ),
                alive: s_ref.and_then(|s| s.alive).unwrap_or(false),
                federation_up: s_ref.and_then(|s| s.federation_up),
                gateway_alive: s_ref.and_then(|s| s.gateway_alive),
                addresses: l
                    .spec
                    .gateway
                    .addresses
                    .iter()
                    .map(|a| format!("{a}:{}", l.spec.gateway.port))
                    .collect(),
                latency_p50: s_ref.and_then(|s| s.latency_p50.clone()),
                latency_p99: s_ref.and_then(|s| s.latency_p99.clone()),
                services: s_ref.map_or(0, |s| s.imported_services),
                last_error: s_ref.and_then(|s| s.last_error.clone()),
                reported: s.is_some(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.cluster, &a.link).cmp(&(&b.cluster, &b.link)));
    Ok(rows)
}

pub fn render(rows: &[GatewayRow], output: Report) -> anyhow::Result<String> {
    if output == Report::Json {
        return Ok(serde_json::to_string_pretty(rows)? + "\n");
    }
    if rows.is_empty() {
        return Ok("no links: this cluster imports from no other cluster (meshctl link)\n".into());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let alive = match (r.reported, r.alive) {
                (false, _) => "unknown".to_owned(),
                (true, true) => "yes".to_owned(),
                (true, false) => {
                    let why = match (r.federation_up, r.gateway_alive) {
                        (Some(true), _) => "probe failing",
                        (_, Some(true)) => "lease expired",
                        _ => "probe failing, lease expired",
                    };
                    format!("no ({why})")
                }
            };
            vec![
                r.cluster.clone(),
                alive,
                format!(
                    "{}/{}",
                    r.latency_p50.as_deref().unwrap_or("-"),
                    r.latency_p99.as_deref().unwrap_or("-")
                ),
                r.services.to_string(),
                r.addresses.join(","),
                r.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    Ok(table(
        &[
            "CLUSTER",
            "ALIVE",
            "LATENCY p50/p99",
            "SERVICES",
            "GATEWAY",
            "LAST ERROR",
        ],
        &cells,
    ))
}
