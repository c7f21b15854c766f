//! The mesh under test. Clusters `east` and `west` run in process (file
//! store + controller, the integration tests' fixtures); everything on a
//! request's path is a child process: the app, east's server sidecar in
//! front of it, east's `meshfed-gateway`, and one client sidecar in each
//! cluster.
//!
//! East exports `shop/api`, served by the server sidecar. West has a Service
//! `api` with no endpoints and a Link to east's gateway, so its discovery
//! offers only the remote group `east`; and a Service `api-split` whose
//! HTTPRoute splits it 50/50 between `api` and `api-east` (the mirror of
//! east's api), both served through east's gateway.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::procs::{Proc, free_port};
use meshfed_testkit::cluster::{self, Cluster};

/// The zone of every workload.
const ZONE: &str = "a";

/// A process on a request's path, and its admin listener.
#[derive(Debug)]
pub struct Proxy {
    pub proc: Proc,
    pub admin: SocketAddr,
    /// Which path(s) it serves, for the report.
    pub role: &'static str,
    pub sidecar: bool,
}

/// Everything started; dropping it stops it all.
pub struct Topology {
    /// The app's port for the load generator.
    pub app: SocketAddr,
    /// East's client sidecar upstream port for `api.shop:80`.
    pub same_cluster: SocketAddr,
    /// West's client sidecar upstream port for `api.shop:80`.
    pub cross_cluster: SocketAddr,
    /// West's client sidecar upstream port for `api-split.shop:80`.
    pub cross_routed: SocketAddr,
    /// The app's port behind the server side (the server sidecar's, or a
    /// peer proxy's).
    pub app_behind: SocketAddr,
    pub app_proc: Proc,
    pub client_east: Proxy,
    pub client_west: Proxy,
    pub server: Proxy,
    pub gateway: Proxy,
    east: Cluster,
    _west: Cluster,
    files: tempfile::TempDir,
}

impl Topology {
    pub async fn start() -> anyhow::Result<Self> {
        let sidecar_bin = meshfed_e2e::binaries::sidecar()?;
        let gateway_bin = meshfed_e2e::binaries::gateway()?;
        let dir = tempfile::tempdir().context("tempdir")?;
        let d = dir.path();
        let mesh = cluster::Mesh::new();
        let east = Cluster::start(&mesh, "east").await;
        let west = Cluster::start(&mesh, "west").await;
        cluster::write_credentials(&east.ca, cluster::API, &d.join("server"));
        cluster::write_credentials(&east.ca, cluster::FRONTEND, &d.join("client-east"));
        cluster::write_credentials(&west.ca, cluster::FRONTEND, &d.join("client-west"));
        cluster::write_credentials(&east.ca, cluster::GATEWAY, &d.join("gateway"));

        let (app_proc, ports) = Proc::spawn_self("app", &[crate::app::FLAG.as_ref()], 2)?;
        let (direct, behind) = (ports[0], ports[1]);

        let inbound = loopback(free_port()?);
        let server = Sidecar::new(&sidecar_bin, "server sidecar", &east, &d.join("server"))
            .role("east server (both paths)")
            .args(["--inbound", &format!("{inbound}={}", loopback(behind))])
            .spawn(d)
            .await?;
        east.write("api.yaml", &cluster::api_manifest(true, &[(inbound, ZONE)]));
        let gateway = spawn_gateway(&gateway_bin, &east, &d.join("gateway"), d).await?;
        west.write("api.yaml", &cluster::api_manifest(false, &[]));
        west.write("api-split.yaml", SPLIT);
        let gw_listen = gateway.listen;
        west.link("east", gw_listen);

        let upstream = |port: u16| format!("api.shop:80={}", loopback(port));
        let (same, cross, routed) = (free_port()?, free_port()?, free_port()?);
        let client_east = Sidecar::new(
            &sidecar_bin,
            "client sidecar east",
            &east,
            &d.join("client-east"),
        )
        .role("east client (same-cluster)")
        .args(["--upstream", &upstream(same)])
        .spawn(d)
        .await?;
        let client_west = Sidecar::new(
            &sidecar_bin,
            "client sidecar west",
            &west,
            &d.join("client-west"),
        )
        .role("west client (cross-cluster)")
        .args([
            "--upstream",
            &upstream(cross),
            "--upstream",
            &format!("api-split.shop:80={}", loopback(routed)),
        ])
        .spawn(d)
        .await?;
        tokio::time::timeout(
            Duration::from_secs(20),
            cluster::until_remote_group(&west, "east", ZONE),
        )
        .await
        .context("west never listed east's api")?;
        Ok(Self {
            app: loopback(direct),
            same_cluster: loopback(same),
            cross_cluster: loopback(cross),
            cross_routed: loopback(routed),
            app_behind: loopback(behind),
            app_proc,
            client_east,
            client_west,
            server,
            gateway: gateway.proxy,
            east,
            _west: west,
            files: dir,
        })
    }

    /// East's cluster CA (the server side's).
    pub fn east_ca(&self) -> &meshfed_ca::ClusterCa {
        &self.east.ca
    }

    /// Where the run's files and logs are.
    pub fn dir(&self) -> &Path {
        self.files.path()
    }

    /// The processes on request paths, client sidecars first.
    pub fn proxies(&self) -> [&Proxy; 4] {
        [
            &self.client_east,
            &self.client_west,
            &self.server,
            &self.gateway,
        ]
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.app_proc.check_alive()?;
        for p in self.proxies_mut() {
            p.proc.check_alive()?;
        }
        Ok(())
    }

    /// Stops every proxy as an orchestrator does (SIGTERM, then time to
    /// exit): what a profiler or an instrumented build (`deploy/pgo-build`)
    /// gathered, it writes at exit, and the guards' kill would lose it.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        for p in self.proxies_mut() {
            p.proc.terminate(Duration::from_secs(30))?;
        }
        Ok(())
    }

    fn proxies_mut(&mut self) -> [&mut Proxy; 4] {
        [
            &mut self.client_east,
            &mut self.client_west,
            &mut self.server,
            &mut self.gateway,
        ]
    }
}

/// West's `api-split`: a Service of its own (no endpoints) whose route
/// splits it between `api` and `api-east`.
const SPLIT: &str = r#"apiVersion: v1
kind: Service
metadata: {name: api-split, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api-split, port: 80}]
  rules:
  - backendRefs:
    - {name: api, port: 80, weight: 50}
    - {name: api-east, port: 80, weight: 50}
"#;

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A `meshfed-sidecar run` command line.
struct Sidecar {
    name: &'static str,
    role: &'static str,
    cmd: Command,
}

impl Sidecar {
    fn new(exe: &Path, name: &'static str, cluster: &Cluster, creds: &Path) -> Self {
        // `MESHFED_BENCH_SIDECAR_WRAP`: a command line the sidecars run
        // under, a profiler's (`valgrind --tool=callgrind
        // --callgrind-out-file=/tmp/cg.%p`, with `MESHFED_BENCH_HOLD`).
        let mut cmd = match std::env::var("MESHFED_BENCH_SIDECAR_WRAP") {
            Ok(wrap) if !wrap.trim().is_empty() => {
                let mut words = wrap.split_whitespace();
                let mut cmd = Command::new(words.next().unwrap_or_default());
                cmd.args(words).arg(exe);
                cmd
            }
            _ => Command::new(exe),
        };
        cmd.args(["run", "--cluster", &cluster.name, "--zone", ZONE])
            .arg("--discovery")
            .arg(cluster.discovery.to_string())
            .arg("--controller-id")
            .arg(cluster::id(cluster::CONTROLLER).to_string())
            .arg("--credentials-dir")
            .arg(creds)
            .args(["--drain-timeout", "0s"])
            .env(meshfed_runtime::env::LOG, "warn");
        Self {
            name,
            role: name,
            cmd,
        }
    }

    fn role(mut self, role: &'static str) -> Self {
        self.role = role;
        self
    }

    fn args<const N: usize>(mut self, args: [&str; N]) -> Self {
        self.cmd.args(args);
        self
    }

    /// Starts it (log in `dir`) and waits until it is ready.
    async fn spawn(mut self, dir: &Path) -> anyhow::Result<Proxy> {
        let admin = loopback(free_port()?);
        self.cmd.arg("--admin-listen").arg(admin.to_string());
        let log = dir.join(format!("{}.log", self.name.replace(' ', "-")));
        let mut proc = Proc::spawn(self.name, self.cmd, &log)?;
        proc.wait_ready(admin).await?;
        Ok(Proxy {
            proc,
            admin,
            role: self.role,
            sidecar: true,
        })
    }
}

struct Gateway {
    proxy: Proxy,
    listen: SocketAddr,
}

/// Starts east's `meshfed-gateway`: routes from east's discovery, peers'
/// federation streams passed to east's controller.
async fn spawn_gateway(
    exe: &Path,
    east: &Cluster,
    creds: &Path,
    dir: &Path,
) -> anyhow::Result<Gateway> {
    let listen = loopback(free_port()?);
    let admin = loopback(free_port()?);
    let mut cmd = Command::new(exe);
    cmd.args(["--cluster", "east", "--name", "bench"])
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--admin-listen")
        .arg(admin.to_string())
        .arg("--discovery")
        .arg(east.discovery.to_string())
        .arg("--federation-upstream")
        .arg(east.federation.to_string())
        .arg("--credentials-dir")
        .arg(creds)
        .args(["--drain-timeout", "1s"])
        .env(meshfed_runtime::env::LOG, "warn");
    let mut proc = Proc::spawn("meshfed-gateway", cmd, &dir.join("gateway.log"))?;
    proc.wait_ready(admin).await?;
    Ok(Gateway {
        proxy: Proxy {
            proc,
            admin,
            role: "east gateway (cross-cluster)",
            sidecar: false,
        },
        listen,
    })
}
