//! `topology.json`: where every process of a local federation listens, which
//! pid it runs as, how to start it again, and where each cluster keeps its
//! state. `dev up` plans it before starting anything and rewrites it as
//! processes start, so `dev down` can stop whatever was started even when
//! `up` failed half way.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The file's name inside the federation directory.
pub const FILE: &str = "topology.json";

/// The whole federation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Format version of this file.
    pub version: u32,
    /// The federation directory (everything below it belongs to it).
    pub dir: PathBuf,
    pub trust_domain: String,
    /// The loopback /16 the federation's addresses come from; cluster N
    /// (from 1) uses the /24 `127.B.N.0`.
    pub subnet: String,
    pub state: State,
    pub clusters: Vec<ClusterTopology>,
    /// The network namespaces the clusters run in (none: this machine's
    /// loopback, every cluster reachable from every other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<super::netns::Network>,
}

/// Where `dev up` got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Processes are being started.
    Starting,
    /// Everything started and the federation answered end to end.
    Ready,
    /// `dev down` stopped it (or `up` failed and stopped what it started).
    Stopped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTopology {
    pub name: String,
    pub region: String,
    pub zones: Vec<String>,
    /// The network namespace its processes run in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The cluster's manifest directory (the controller's file store): use it
    /// as `--state` with meshctl link, export, check, gateways.
    pub state_dir: PathBuf,
    /// The cluster CA (intermediate and root).
    pub ca_dir: PathBuf,
    /// Where other clusters reach this cluster.
    pub gateway: SocketAddr,
    /// The sample client workload: its identity and its sidecar's upstream
    /// listeners, by service (`api.shop`, `echo.shop`).
    pub client: ClientTopology,
    /// In start order.
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTopology {
    pub identity: String,
    pub upstreams: BTreeMap<String, SocketAddr>,
}

/// One process: a component, a sample workload, or a workload's sidecar.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Unique within its cluster, e.g. `gateway`, `api-a`, `api-a-sidecar`.
    pub name: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Data listeners by role (`grpc`, `federation`, `discovery`, `gateway`,
    /// `http`, `tcp`, `inbound`, `upstream api.shop`, ...).
    pub listen: BTreeMap<String, SocketAddr>,
    /// Admin listener (`/live`, `/ready`, `/metrics`), or for the client
    /// workload its `/stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// The SPIFFE ID it serves as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// What it is a replica of, as a pod is of its Deployment (`controller`
    /// for `controller-0`): a step naming that acts on every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,
    /// For a workload: the Service whose endpoint it is (`api`, `api-v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// `meshctl dev exec KIND` followed by these starts it again.
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The kernel's start time of `pid` (clock ticks since boot), so a pid
    /// reused by an unrelated process is never signalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Identity,
    Controller,
    Gateway,
    Sidecar,
    /// The sample HTTP echo service `api.shop`.
    Api,
    /// The sample TCP echo service `echo.shop`.
    Echo,
    /// The sample client: calls `api.shop` through its sidecar.
    Client,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Identity => "identity",
            Kind::Controller => "controller",
            Kind::Gateway => "gateway",
            Kind::Sidecar => "sidecar",
            Kind::Api => "api",
            Kind::Echo => "echo",
            Kind::Client => "client",
        }
    }
}

// === impl Topology ===

impl Topology {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE)
    }

    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {}: no local federation there (start one with meshctl dev up --dir {})",
                path.display(),
                dir.display()
            )
        })?;
        let t: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a meshctl dev topology", path.display()))?;
        Ok(t)
    }

    /// Writes the file atomically (a reader never sees half of it).
    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::path(&self.dir);
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    pub fn cluster(&self, name: &str) -> anyhow::Result<&ClusterTopology> {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no cluster {name} in {}", Self::path(&self.dir).display()))
    }

    pub fn processes(&self) -> impl Iterator<Item = (&ClusterTopology, &Process)> {
        self.clusters
            .iter()
            .flat_map(|c| c.processes.iter().map(move |p| (c, p)))
    }
}

impl ClusterTopology {
    pub fn process(&self, name: &str) -> anyhow::Result<&Process> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("cluster {} has no process {name}", self.name))
    }

    /// The processes `name` stands for: the process of that name, or every
    /// replica of `name` (`controller`: `controller-0`, `controller-1`), in
    /// start order. Empty when it names nothing.
    pub fn group(&self, name: &str) -> Vec<&Process> {
        self.processes
            .iter()
            .filter(|p| p.name == name || p.replica_of.as_deref() == Some(name))
            .collect()
    }

    /// Whether `name` is replicated: a step may then pick one replica.
    pub fn replicated(&self, name: &str) -> bool {
        self.processes
            .iter()
            .any(|p| p.replica_of.as_deref() == Some(name))
    }

    pub fn process_mut(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        let cluster = self.name.clone();
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("cluster {cluster} has no process {name}"))
    }

    /// The client sidecar's listener for `service` (e.g. `api.shop`).
    pub fn upstream(&self, service: &str) -> anyhow::Result<SocketAddr> {
        self.client
            .upstreams
            .get(service)
            .copied()
            .with_context(|| {
                format!(
                    "cluster {}'s client has no upstream for {service}",
                    self.name
                )
            })
    }
}

/// A loopback /16 given as `127.B.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet(pub u8);

impl Subnet {
    /// Host `host` of cluster number `cluster` (from 0).
    pub fn ip(self, cluster: usize, host: u8) -> Ipv4Addr {
        let c = u8::try_from(cluster + 1).expect("at most 254 clusters (checked by dev up)");
        Ipv4Addr::new(127, self.0, c, host)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let o = ip.octets();
        o[0] == 127 && o[1] == self.0
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "127.{}.0.0/16", self.0)
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected a loopback /16 such as 127.77.0.0/16");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let o = ip.octets();
        if len != "16" || o[0] != 127 || o[2] != 0 || o[3] != 0 || o[1] == 0 {
            return Err(bad());
        }
        Ok(Subnet(o[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_loopback_sixteens_apart_from_127_0() {
        assert_eq!("127.77.0.0/16".parse(), Ok(Subnet(77)));
        for bad in [
            "10.77.0.0/16",
            "127.77.0.0/24",
            "127.77.1.0/16",
            "127.0.0.0/16",
            "127.77.0.0",
            "x",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad} accepted");
        }
        let s = Subnet(77);
        assert_eq!(s.ip(0, 3), Ipv4Addr::new(127, 77, 1, 3));
        assert!(s.contains(Ipv4Addr::new(127, 77, 9, 9)));
        assert!(!s.contains(Ipv4Addr::new(127, 78, 1, 1)));
        assert_eq!(s.to_string(), "127.77.0.0/16");
    }
}
