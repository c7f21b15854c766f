//! `meshctl dev status`: is every process of a local federation running and
//! ready, is every link alive, and what has each sample client seen.

use serde::Serialize;

use super::call::Caller;
use super::process;
use super::topology::{Kind, State, Topology};
use super::up::answers;
use super::workload::ClientStats;
use crate::gateways::{GatewayRow, gateways};
use crate::output::table;
use crate::target::{Cluster, FileCluster};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub dir: String,
    pub state: State,
    /// Every process running and ready, every link alive.
    pub healthy: bool,
    pub clusters: Vec<ClusterStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub name: String,
    pub processes: Vec<ProcessStatus>,
    /// As the controller last wrote them (stale when it is not running).
    pub links: Vec<GatewayRow>,
    pub controller_running: bool,
    /// The controller replica the cluster's Lease names as leader.
    pub leader: Option<String>,
    pub client: Option<ClientStats>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    pub name: String,
    pub kind: Kind,
    /// What it is a replica of (`controller`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,
    /// It is the replica the Lease names as leader.
    pub leader: bool,
    pub pid: Option<u32>,
    pub running: bool,
    /// `None` when ready, else why not.
    pub not_ready: Option<String>,
    pub address: Option<String>,
}

pub async fn status(t: &Topology) -> anyhow::Result<Status> {
    let mut clusters = Vec::new();
    let mut healthy = true;
    for c in &t.clusters {
        let net = super::up::net_of(c)?;
        let leader = super::up::leader(&c.state_dir)?;
        let mut processes = Vec::new();
        for p in &c.processes {
            let running = process::running(p);
            let not_ready = if running {
                answers(&net, p).await.err()
            } else {
                Some("not running".into())
            };
            healthy &= not_ready.is_none();
            processes.push(ProcessStatus {
                name: p.name.clone(),
                kind: p.kind,
                replica_of: p.replica_of.clone(),
                leader: p.replica_of.is_some() && leader.as_deref() == Some(p.name.as_str()),
                pid: p.pid,
                running,
                not_ready,
                // Replicas share their Service's listeners: each is told
                // apart by its own admin address.
                address: if p.replica_of.is_some() {
                    p.admin.as_ref()
                } else {
                    p.listen.values().next().or(p.admin.as_ref())
                }
                .map(ToString::to_string),
            });
        }
        let links = gateways(&Cluster::File(FileCluster::open(&c.state_dir)?)).await?;
        let controller_running = c
            .processes
            .iter()
            .any(|p| p.kind == Kind::Controller && process::running(p));
        // A cluster whose Lease names no running replica has nobody writing.
        let leading = processes.iter().any(|p| p.leader && p.running);
        healthy &= controller_running && leading && links.iter().all(|l| l.alive);
        let client = match c.processes.iter().find(|p| p.kind == Kind::Client) {
            Some(p) if process::running(p) => client_stats(&net, p.admin).await,
            _ => None,
        };
        clusters.push(ClusterStatus {
            name: c.name.clone(),
            processes,
            links,
            controller_running,
            leader,
            client,
        });
    }
    Ok(Status {
        dir: t.dir.display().to_string(),
        state: t.state,
        healthy: healthy && t.state == State::Ready,
        clusters,
    })
}

async fn client_stats(net: &super::Net, addr: Option<std::net::SocketAddr>) -> Option<ClientStats> {
    Caller::from(net, std::time::Duration::from_secs(2))
        .get_json(addr?, "/stats")
        .await
        .ok()
}

pub fn render(s: &Status) -> String {
    let mut out = format!("federation in {} ({:?})\n", s.dir, s.state).to_lowercase();
    for c in &s.clusters {
        out.push_str(&format!("\ncluster {}\n", c.name));
        let rows: Vec<Vec<String>> = c
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.pid.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
                    match (&p.running, &p.not_ready) {
                        (false, _) => "✖ not running".into(),
                        (true, None) if p.leader => "✔ ready, leader".into(),
                        (true, None) => "✔ ready".into(),
                        (true, Some(why)) => format!("✖ {why}"),
                    },
                    p.address.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(&["PROCESS", "PID", "STATE", "ADDRESS"], &rows));
        let running_leader = c.processes.iter().any(|p| p.leader && p.running);
        out.push_str(&match &c.leader {
            Some(l) if running_leader => format!("controller leader: {l} (from the Lease)\n"),
            Some(l) => format!(
                "controller leader: none running (the Lease still names {l}, which is not running)\n"
            ),
            None => "controller leader: none (no replica has written the Lease)\n".into(),
        });
        let links: Vec<Vec<String>> = c
            .links
            .iter()
            .map(|l| {
                vec![
                    format!("→ {}", l.cluster),
                    if l.alive { "alive" } else { "not alive" }.into(),
                    l.latency_p50.clone().unwrap_or_else(|| "-".into()),
                    l.services.to_string(),
                    l.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        if !c.controller_running {
            out.push_str(
                "(the controller is not running: the links below are as it last saw them)\n",
            );
        }
        out.push_str(&table(
            &["LINK", "STATE", "LATENCY", "SERVICES", "LAST ERROR"],
            &links,
        ));
        if let Some(stats) = &c.client {
            let by: Vec<String> = stats
                .served_by
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            out.push_str(&format!(
                "client → api.shop: {} calls, {} failed, served by {}\n",
                stats.requests,
                stats.failures,
                if by.is_empty() {
                    "-".into()
                } else {
                    by.join(", ")
                }
            ));
        }
    }
    out.push_str(if s.healthy {
        "\nhealthy\n"
    } else {
        "\nnot healthy\n"
    });
    out
}
