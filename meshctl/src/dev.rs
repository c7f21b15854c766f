//! `meshctl dev up|status|down`: a whole federation on one machine, every
//! identity service, controller, gateway, sample workload and sidecar its
//! own process on its own loopback address, with the file store as each
//! cluster's API. `topology.json` says where everything is. `meshctl demo`
//! tells its story on top of the same machinery.

mod call;
mod net;
pub mod netns;
mod plan;
mod process;
mod status;
mod topology;
mod up;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

pub use call::{Caller, Served};
pub use net::{Namespace, Net};
pub use plan::{
    CONTROLLER_PROCESS, CONTROLLER_REPLICAS, ClusterSpec, SHOP, Spec, link, plan, zone_name,
};
pub use process::{listening, running, signal, spawn, stop};
pub use topology::{ClusterTopology, Kind, Process, State, Subnet, Topology};
pub use up::{
    answers, default_dir, down, leader, log_tail, mirror_ready, net_of, nets, set_endpoint_ready,
    up,
};

use crate::output::Report;

/// Where the federation lives.
#[derive(Debug, Clone, Args)]
pub struct DirArgs {
    /// The federation's directory: topology.json, each cluster's state,
    /// CA, tokens and logs [default: $TMPDIR/meshfed-dev].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl DirArgs {
    fn dir(&self) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| default_dir("meshfed-dev"))
    }
}

/// The most clusters one federation runs: 10, the linked clusters of the
/// control-plane budget (DESIGN.md section 10), which `meshctl/benches/scale.rs`
/// measures. Each cluster has its own /24 and, with `--netns`, WAN address.
pub const MAX_CLUSTERS: usize = 10;

/// What a federation is made of (shared by `dev up` and `demo`).
#[derive(Debug, Clone, Args)]
pub struct FederationArgs {
    /// Zones per cluster; `api` runs one replica in each.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub zones: u8,
    /// The federation's trust domain.
    #[arg(long, default_value = "mesh.local", value_parser = meshfed_trust::TrustDomain::new)]
    pub trust_domain: meshfed_trust::TrustDomain,
    /// Seconds a silent cluster keeps its traffic (every Link's lease TTL).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub lease_ttl: u32,
    /// How long to wait for the federation to answer end to end.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl FederationArgs {
    /// The spec for `clusters`, each `(name, region)`.
    pub fn spec(
        &self,
        dir: PathBuf,
        subnet: Subnet,
        clusters: Vec<(String, String)>,
    ) -> anyhow::Result<Spec> {
        if !(2..=MAX_CLUSTERS).contains(&clusters.len()) {
            bail!("--clusters: give 2 to {MAX_CLUSTERS} clusters");
        }
        for (i, (name, _)) in clusters.iter().enumerate() {
            if clusters[..i].iter().any(|(n, _)| n == name) {
                bail!("--clusters: {name} is named twice");
            }
        }
        Ok(Spec {
            dir,
            clusters: clusters
                .iter()
                .map(|(name, region)| ClusterSpec::sample(name, region, self.zones))
                .collect(),
            subnet,
            trust_domain: self.trust_domain.clone(),
            lease_ttl: self.lease_ttl,
            leaf_ttl: None,
            links: None,
            policies: Vec::new(),
            network: None,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start a federation on this machine, each component its own process.
    Up(UpArgs),
    /// Show whether every process is running and ready and every link alive.
    Status(StatusArgs),
    /// Stop every process the federation started.
    Down(DownArgs),
    /// Run one component or sample workload in this process (what `dev up` starts).
    #[command(hide = true)]
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl dev up                                  # east and west, 2 zones each
  meshctl dev up --clusters east,west,central --region east=us-east --region central=us-east
  curl http://127.77.1.30:8080/                   # api.shop, through east's client sidecar
  meshctl dev down")]
pub struct UpArgs {
    /// The clusters, comma-separated (2 to 10).
    #[arg(long, value_delimiter = ',', default_value = "east,west", value_parser = meshfed_runtime::cluster_name)]
    pub clusters: Vec<String>,
    /// A cluster's region, CLUSTER=REGION (default: the cluster's name).
    /// Linked clusters of the caller's region are preferred. Repeatable.
    #[arg(long = "region", value_parser = region_entry)]
    pub regions: Vec<(String, String)>,
    /// The loopback /16 the addresses come from; cluster N (from 1) gets 127.B.N.0/24.
    #[arg(long, default_value = "127.77.0.0/16")]
    pub subnet: Subnet,
    /// Run each cluster in its own network namespace, joined to the others
    /// only by a WAN segment on which the gateways listen (needs root).
    #[arg(long)]
    pub netns: bool,
    #[command(flatten)]
    pub federation: FederationArgs,
    #[command(flatten)]
    pub dir: DirArgs,
}

fn region_entry(s: &str) -> Result<(String, String), String> {
    let (c, r) = s
        .split_once('=')
        .ok_or("expected CLUSTER=REGION, e.g. east=us-east")?;
    meshfed_runtime::cluster_name(c)?;
    meshfed_runtime::cluster_name(r).map_err(|e| format!("region {r:?}: {e}"))?;
    Ok((c.to_owned(), r.to_owned()))
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl dev status
  meshctl dev status --dir ./fed -o json")]
pub struct StatusArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Report,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl dev down
  meshctl dev down --dir ./fed")]
pub struct DownArgs {
    #[command(flatten)]
    pub dir: DirArgs,
}

#[derive(Debug, Args)]
#[command(after_help = exec_examples())]
pub struct ExecArgs {
    /// What to run.
    #[arg(value_enum)]
    pub kind: Kind,
    /// Its flags, as its own binary takes them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<std::ffi::OsString>,
}

/// `dev exec`: runs before any runtime exists (each component builds its own).
pub fn exec(a: ExecArgs) -> anyhow::Result<()> {
    let with_name = |name: &str| std::iter::once(name.into()).chain(a.args.clone());
    match a.kind {
        Kind::Identity => meshfed_identity::binary_main(with_name("meshfed-identity")),
        Kind::Controller => meshfed_controller::binary_main(with_name("meshfed-controller")),
        Kind::Gateway => meshfed_gateway::binary_main(with_name("meshfed-gateway")),
        Kind::Sidecar => meshfed_sidecar::binary_main(with_name("meshfed-sidecar")),
        Kind::Api | Kind::Echo | Kind::Client => workload::run(a.kind, a.args),
    }
}

pub async fn run(cmd: DevCommand) -> anyhow::Result<()> {
    match cmd {
        DevCommand::Up(a) => run_up(a).await,
        DevCommand::Status(a) => {
            let t = Topology::load(&a.dir.dir())?;
            let s = status::status(&t).await?;
            match a.output {
                Report::Text => print!("{}", status::render(&s)),
                Report::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            if !s.healthy {
                bail!(
                    "the federation is not healthy (logs: {}/CLUSTER/logs)",
                    s.dir
                );
            }
            Ok(())
        }
        DevCommand::Down(a) => {
            let dir = a.dir.dir();
            let stopped = down(&dir).await?;
            println!(
                "stopped {} processes of {} clusters; nothing listens on the federation's \
                 addresses any more (logs kept in {})",
                stopped.processes,
                stopped.clusters,
                dir.display()
            );
            Ok(())
        }
        DevCommand::Exec(_) => unreachable!("exec runs before the runtime"),
    }
}

async fn run_up(a: UpArgs) -> anyhow::Result<()> {
    for (c, _) in &a.regions {
        if !a.clusters.contains(c) {
            bail!("--region {c}=...: {c} is not among --clusters");
        }
    }
    let clusters = a
        .clusters
        .iter()
        .map(|c| {
            let region = a
                .regions
                .iter()
                .rev()
                .find(|(n, _)| n == c)
                .map_or_else(|| c.clone(), |(_, r)| r.clone());
            (c.clone(), region)
        })
        .collect();
    let dir = a.dir.dir();
    let mut spec = a.federation.spec(dir.clone(), a.subnet, clusters)?;
    if a.netns {
        let names: Vec<String> = spec.clusters.iter().map(|c| c.name.clone()).collect();
        spec.network = Some(netns::Network::plan(&netns::prefix_for(&dir), &names));
    }
    let began = std::time::Instant::now();
    let t = up(&spec, a.federation.timeout, &mut |line| {
        eprintln!("  {line}")
    })
    .await?;
    let processes = t.processes().count();
    println!(
        "federation ready in {:.1} s: {} clusters, {processes} processes (topology: {})\n",
        began.elapsed().as_secs_f64(),
        t.clusters.len(),
        Topology::path(&dir).display()
    );
    print!("{}", summary(&t));
    Ok(())
}

/// Where to go from here, for a person.
fn summary(t: &Topology) -> String {
    let api = format!("api.{SHOP}");
    let rows: Vec<Vec<String>> = t
        .clusters
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.region.clone(),
                c.gateway.to_string(),
                c.client
                    .upstreams
                    .get(&api)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                c.state_dir.display().to_string(),
            ]
        })
        .collect();
    let mut out = crate::output::table(
        &["CLUSTER", "REGION", "GATEWAY", "CLIENT → API.SHOP", "STATE"],
        &rows,
    );
    let first = &t.clusters[0];
    let dir_flag = format!(" --dir {}", t.dir.display());
    let states: Vec<String> = t
        .clusters
        .iter()
        .map(|c| format!("--state {}", c.state_dir.display()))
        .collect();
    out.push_str(&format!(
        "\nTry:\n  curl http://{}/            # api.shop from {}'s client\n  \
         meshctl gateways --state {}\n  meshctl check {}\n  meshctl dev status{dir_flag}\n  \
         meshctl dev down{dir_flag}\n",
        first
            .client
            .upstreams
            .get(&api)
            .map(ToString::to_string)
            .unwrap_or_default(),
        first.name,
        first.state_dir.display(),
        states.join(" "),
    ));
    out
}

fn exec_examples() -> String {
    format!(
        "Example:\n  meshctl dev exec gateway --cluster east --listen 127.77.1.3:{} ...",
        meshfed_runtime::port::GATEWAY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<(String, String)> {
        (1..=n)
            .map(|i| (format!("c{i}"), format!("r{i}")))
            .collect()
    }

    /// Ten clusters plan: each has its own /24 and nothing listens twice;
    /// one or eleven are refused with the range.
    #[test]
    fn ten_clusters_plan_apart_and_eleven_are_refused() {
        let args = crate::parse_args::<FederationArgs>(&[]).expect("defaults");
        let spec = args
            .spec(PathBuf::from("/nonexistent/fed"), Subnet(77), names(10))
            .expect("10 clusters");
        let t = plan(&spec);
        assert_eq!(t.clusters.len(), 10);
        let mut seen = std::collections::BTreeMap::new();
        for (c, p) in t.processes() {
            for addr in p.listen.values().chain(p.admin.iter()) {
                // Controller replicas share their Service address, and only they.
                let owner = p.replica_of.clone().unwrap_or_else(|| p.name.clone());
                let before = seen.insert(*addr, (c.name.clone(), owner.clone()));
                assert!(
                    before.is_none_or(|b| b == (c.name.clone(), owner)),
                    "{addr} planned twice"
                );
            }
        }
        let tenth = &t.clusters[9];
        assert_eq!(tenth.gateway.ip().to_string(), "127.77.10.3");
        for n in [1, MAX_CLUSTERS + 1] {
            let e = args
                .spec(PathBuf::from("/nonexistent/fed"), Subnet(77), names(n))
                .expect_err("out of range");
            assert!(e.to_string().contains("2 to 10"), "{e}");
        }
    }

    #[test]
    fn ten_clusters_get_ten_wan_addresses() {
        let names: Vec<String> = names(10).into_iter().map(|(c, _)| c).collect();
        let n = netns::Network::plan("mfs-test", &names);
        let ips: std::collections::BTreeSet<_> = n.clusters.iter().map(|c| c.wan_ip).collect();
        assert_eq!(ips.len(), 10);
    }
}
