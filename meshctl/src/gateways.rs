//! `meshctl gateways`: every link of a cluster and the health of the remote
//! cluster behind it, as the cluster's controller last saw it — its control
//! plane (the federation lease) and its data plane (the gateway's probes)
//! apart, since either may fail alone.

use std::time::Duration;

use clap::Args;
use meshfed_controller::CONDITION_ALIVE;
use meshfed_resources::crd::UnwritableMirror;
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
    /// Probe and lease both good (or the lease in grace): the cluster takes traffic.
    pub alive: bool,
    /// The `Alive` condition's reason (`ProbeAndLease`, `ControlPlaneGrace`,
    /// `LeaseExpired`, `GraceExpired`, `ProbeFailing`, `Unresolved`, `NotLinked`).
    pub alive_reason: Option<String>,
    /// Control plane: the remote controller spoke within the lease.
    pub federation_up: Option<bool>,
    /// While the remote controller is silent but its gateway answers: until
    /// when (RFC 3339) its services are kept.
    pub imports_held_until: Option<String>,
    /// Data plane: the remote gateway answers probes.
    pub gateway_alive: Option<bool>,
    pub addresses: Vec<String>,
    pub latency_p50: Option<String>,
    pub latency_p99: Option<String>,
    pub services: u32,
    /// Imported services whose mirror cannot be written here.
    pub unwritable_mirror_count: u32,
    /// The first of them, with what the cluster answered.
    pub unwritable_mirrors: Vec<UnwritableMirror>,
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
                alive_reason: s_ref.and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == CONDITION_ALIVE)
                        .map(|c| c.reason.clone())
                }),
                federation_up: s_ref.and_then(|s| s.federation_up),
                imports_held_until: s_ref.and_then(|s| s.imports_held_until.clone()),
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
                unwritable_mirror_count: s_ref.map_or(0, |s| {
                    s.unwritable_mirror_count
                        .max(u32::try_from(s.unwritable_mirrors.len()).unwrap_or(u32::MAX))
                }),
                unwritable_mirrors: s_ref.map_or_else(Vec::new, |s| s.unwritable_mirrors.clone()),
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
            vec![
                r.cluster.clone(),
                alive(r),
                control_plane(r),
                match r.gateway_alive {
                    Some(true) => "alive".to_owned(),
                    Some(false) => "dead".to_owned(),
                    None => "-".to_owned(),
                },
                format!(
                    "{}/{}",
                    r.latency_p50.as_deref().unwrap_or("-"),
                    r.latency_p99.as_deref().unwrap_or("-")
                ),
                match r.unwritable_mirror_count {
                    0 => r.services.to_string(),
                    n => format!("{} ({n} unwritable)", r.services),
                },
                r.addresses.join(","),
                r.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    Ok(table(
        &[
            "CLUSTER",
            "ALIVE",
            "CONTROL PLANE",
            "GATEWAY",
            "LATENCY p50/p99",
            "SERVICES",
            "ADDRESSES",
            "LAST ERROR",
        ],
        &cells,
    ))
}

/// `yes`, or `no (why)`: whether the cluster takes traffic.
fn alive(r: &GatewayRow) -> String {
    if !r.reported {
        return "unknown".to_owned();
    }
    if r.alive {
        return "yes".to_owned();
    }
    let why = match r.alive_reason.as_deref() {
        Some("ProbeFailing") => "probe failing",
        Some("LeaseExpired") => "lease expired",
        Some("GraceExpired") => "grace expired",
        Some("Unresolved") => "gateway unresolved",
        Some("NotLinked") => "link invalid",
        _ => match (r.federation_up, r.gateway_alive) {
            (Some(true), _) => "probe failing",
            (_, Some(true)) => "lease expired",
            _ => "probe failing, lease expired",
        },
    };
    format!("no ({why})")
}

/// `up`, `silent, held until 12:03:04Z`, `silent` or `-`.
fn control_plane(r: &GatewayRow) -> String {
    match (r.federation_up, &r.imports_held_until) {
        (Some(true), _) => "up".to_owned(),
        (Some(false), Some(until)) => format!("silent, held until {}", time_of_day(until)),
        (Some(false), None) => "silent".to_owned(),
        (None, _) => "-".to_owned(),
    }
}

/// `12:03:04Z` of an RFC 3339 time (a grace is at most an hour, so the day
/// goes without saying); the time as written when it is not one.
fn time_of_day(t: &str) -> String {
    match t.parse::<k8s_openapi::jiff::Timestamp>() {
        Ok(ts) => ts.strftime("%H:%M:%SZ").to_string(),
        Err(_) => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> GatewayRow {
        GatewayRow {
            cluster: "west".into(),
            link: "meshfed-system/west".into(),
            alive: true,
            alive_reason: Some("ProbeAndLease".into()),
            federation_up: Some(true),
            imports_held_until: None,
            gateway_alive: Some(true),
            addresses: vec![format!("203.0.113.10:{}", meshfed_runtime::port::GATEWAY)],
            latency_p50: Some("1.2ms".into()),
            latency_p99: Some("4.8ms".into()),
            services: 2,
            unwritable_mirror_count: 0,
            unwritable_mirrors: Vec::new(),
            last_error: None,
            reported: true,
        }
    }

    #[test]
    fn the_table_shows_control_plane_and_gateway_apart() {
        let healthy = row();
        let grace = GatewayRow {
            cluster: "north".into(),
            alive_reason: Some("ControlPlaneGrace".into()),
            federation_up: Some(false),
            imports_held_until: Some("2025-01-15T12:03:04Z".into()),
            unwritable_mirror_count: 1,
            ..row()
        };
        let dead = GatewayRow {
            cluster: "south".into(),
            alive: false,
            alive_reason: Some("ProbeFailing".into()),
            gateway_alive: Some(false),
            ..row()
        };
        let text = render(&[healthy, grace, dead], Report::Text).expect("render");
        // Cells are two or more spaces apart.
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| {
                l.split("  ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            rows[0].join("|"),
            "CLUSTER|ALIVE|CONTROL PLANE|GATEWAY|LATENCY p50/p99|SERVICES|ADDRESSES|LAST ERROR"
        );
        assert_eq!(
            rows[1][..6],
            ["west", "yes", "up", "alive", "1.2ms/4.8ms", "2"]
        );
        assert_eq!(
            rows[2][..6],
            [
                "north",
                "yes",
                "silent, held until 12:03:04Z",
                "alive",
                "1.2ms/4.8ms",
                "2 (1 unwritable)"
            ]
        );
        assert_eq!(rows[3][..4], ["south", "no (probe failing)", "up", "dead"]);
    }
}
