//! `meshctl dev up` and `dev down`: start a planned federation phase by
//! phase — identity services, then controllers and gateways, then the
//! sample workloads and their sidecars — each phase ready before the next,
//! then wait until every cluster imports every other and a call through
//! each client sidecar is answered. Anything that fails (or Ctrl-C) stops
//! what was started; `down` stops it all from `topology.json`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshfed_controller::ObjKey;

use crate::manifest_dir::ManifestDir;

use std::collections::BTreeMap;

use super::call::Caller;
use super::net::{Namespace, Net};
use super::netns;
use super::plan::{self, SHOP, Spec};
use super::process;
use super::topology::{ClusterTopology, Kind, Process, State, Subnet, Topology};
use crate::gateways::gateways;
use crate::target::{Cluster, FileCluster};

/// How long a stopping process may drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The default federation directory.
pub fn default_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(name)
}

/// Makes `dir` ready for a new federation: creates it, or clears a stopped
/// one; refuses a running federation or a directory that is not one.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()));
    }
    let topology = Topology::path(dir);
    if !topology.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if empty {
            return Ok(());
        }
        bail!(
            "{} is not empty and holds no {}: not a meshctl dev directory (pick another --dir)",
            dir.display(),
            super::topology::FILE
        );
    }
    let old = Topology::load(dir)?;
    let live: Vec<String> = old
        .processes()
        .filter(|(_, p)| process::running(p))
        .map(|(c, p)| format!("{}/{}", c.name, p.name))
        .collect();
    if !live.is_empty() {
        bail!(
            "a federation is already running from {} ({} processes, e.g. {}): stop it first with \
             meshctl dev down --dir {}",
            dir.display(),
            live.len(),
            live[0],
            dir.display()
        );
    }
    for c in &old.clusters {
        let sub = dir.join(&c.name);
        if sub.exists() {
            std::fs::remove_dir_all(&sub).with_context(|| format!("clearing {}", sub.display()))?;
        }
    }
    for stale in [dir.join("trust"), topology] {
        if stale.is_dir() {
            std::fs::remove_dir_all(&stale)
        } else {
            std::fs::remove_file(&stale)
        }
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .with_context(|| format!("clearing {}", stale.display()))?;
    }
    Ok(())
}

/// Every address the plan listens on must be free before anything starts
/// (an address replicas share is tried once).
fn check_free(t: &Topology, subnet: Subnet) -> anyhow::Result<()> {
    let mut tried = std::collections::BTreeSet::new();
    for (c, p) in t.processes() {
        for addr in p.listen.values().chain(p.admin.iter()) {
            if !tried.insert(*addr) {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind(addr) {
                bail!(
                    "{addr} ({} of cluster {}) cannot be bound: {e}; is another federation \
                     running on {subnet}? (meshctl dev down, or pick another --subnet)",
                    p.name,
                    c.name
                );
            }
        }
    }
    Ok(())
}

/// Starts the federation `spec` describes and waits until it answers end to
/// end. On failure or Ctrl-C, stops whatever it started.
pub async fn up(
    spec: &Spec,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Topology> {
    let exe = std::env::current_exe().context("finding the meshctl executable")?;
    prepare_dir(&spec.dir)?;
    let mut topology = plan::plan(spec);
    match &spec.network {
        // Fresh namespaces: nothing else can hold their addresses.
        Some(network) => {
            let old = netns::destroy(&network.prefix)?;
            if !old.is_empty() {
                progress(&format!(
                    "removed network namespaces an earlier run left: {}",
                    old.join(", ")
                ));
            }
            topology.save()?;
            network.create()?;
        }
        None => check_free(&topology, spec.subnet)?,
    }
    if let Err(e) = plan::write_materials(spec, &topology).await {
        if let Err(stop) = down(&spec.dir).await {
            eprintln!("warning: {stop:#}");
        }
        return Err(e);
    }
    topology.save()?;
    let deadline = Instant::now() + timeout;
    let started = tokio::select! {
        r = start(&exe, &mut topology, deadline, progress) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = started {
        progress("stopping what was started");
        // What was started is on disk; stop it from there, as `down` would.
        if let Err(stop) = down(&spec.dir).await {
            eprintln!("warning: {stop:#}");
        }
        return Err(e.context(format!(
            "the federation did not come up (logs: {}/CLUSTER/logs)",
            spec.dir.display()
        )));
    }
    topology.state = State::Ready;
    topology.save()?;
    Ok(topology)
}

async fn start(
    exe: &Path,
    t: &mut Topology,
    deadline: Instant,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let phases: [(&str, &[Kind]); 4] = [
        ("identity services", &[Kind::Identity]),
        (
            "controllers and gateways",
            &[Kind::Controller, Kind::Gateway],
        ),
        (
            "sample workloads and their sidecars",
            &[Kind::Api, Kind::Echo, Kind::Sidecar],
        ),
        ("client workloads", &[Kind::Client]),
    ];
    let nets = nets(t)?;
    for (what, kinds) in phases {
        let began = Instant::now();
        for c in &mut t.clusters {
            let ns = c.netns.clone();
            for p in c.processes.iter_mut().filter(|p| kinds.contains(&p.kind)) {
                process::spawn(exe, p, ns.as_deref())?;
            }
        }
        t.save()?;
        wait(t, deadline, what, async |t| {
            phase_ready(t, &nets, kinds).await
        })
        .await?;
        progress(&format!(
            "{what} ready ({:.1} s)",
            began.elapsed().as_secs_f64()
        ));
    }
    let began = Instant::now();
    let callers: BTreeMap<String, Caller> = nets
        .iter()
        .map(|(c, net)| (c.clone(), Caller::from(net, Duration::from_secs(2))))
        .collect();
    wait(t, deadline, "federation", async |t| {
        federated(t, &callers).await
    })
    .await?;
    progress(&format!(
        "every cluster imports every other; calls answered ({:.1} s)",
        began.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Polls `check` until it holds or the deadline passes, failing at once
/// when a started process has exited.
async fn wait<F>(t: &Topology, deadline: Instant, what: &str, check: F) -> anyhow::Result<()>
where
    F: AsyncFn(&Topology) -> Result<(), String>,
{
    loop {
        if let Some((c, p)) = t
            .processes()
            .find(|(_, p)| p.pid.is_some() && !process::running(p))
        {
            bail!(
                "{} of cluster {} exited; the end of {}:\n{}",
                p.name,
                c.name,
                p.log.display(),
                log_tail(&p.log, 8)
            );
        }
        let why = match check(t).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() >= deadline {
            bail!("{what} not ready in time: {why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where each cluster's processes are reached from: this machine's network,
/// or the cluster's namespace.
pub fn nets(t: &Topology) -> anyhow::Result<BTreeMap<String, Net>> {
    t.clusters
        .iter()
        .map(|c| Ok((c.name.clone(), net_of(c)?)))
        .collect()
}

/// Where `c`'s processes are reached from.
pub fn net_of(c: &ClusterTopology) -> anyhow::Result<Net> {
    Ok(match &c.netns {
        Some(ns) => Net::Ns(
            Namespace::open(&netns::path(ns))
                .with_context(|| format!("reaching cluster {}'s network", c.name))?,
        ),
        None => Net::Host,
    })
}

/// A process answers: its admin `/ready`, else a TCP connect to its listener.
pub async fn answers(net: &Net, p: &Process) -> Result<(), String> {
    let addr: SocketAddr = p
        .admin
        .or_else(|| p.listen.values().next().copied())
        .ok_or_else(|| format!("{} listens nowhere", p.name))?;
    let conn = net
        .connect_within(addr, Duration::from_secs(2))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    if p.kind != Kind::Client && p.admin.is_some() {
        return crate::target::ready_over(conn, &addr.to_string())
            .await
            .map(|_| ());
    }
    Ok(())
}

async fn phase_ready(
    t: &Topology,
    nets: &BTreeMap<String, Net>,
    kinds: &[Kind],
) -> Result<(), String> {
    for (c, p) in t.processes().filter(|(_, p)| kinds.contains(&p.kind)) {
        answers(&nets[&c.name], p)
            .await
            .map_err(|e| format!("{} of cluster {}: {e}", p.name, c.name))?;
    }
    Ok(())
}

/// Every cluster holds a ready mirror of every other's `api`, reports every
/// link alive, and a call through its client sidecar is served in the
/// cluster itself, by the client's identity.
async fn federated(t: &Topology, callers: &BTreeMap<String, Caller>) -> Result<(), String> {
    for c in &t.clusters {
        let caller = &callers[&c.name];
        let dir = ManifestDir::open(&c.state_dir).map_err(|e| e.to_string())?;
        let links = dir
            .list("meshfed.io/v1alpha1", "Link")
            .map_err(|e| e.to_string())?;
        let linked = |peer: &str| {
            links
                .iter()
                .any(|l| l.value["spec"]["cluster"].as_str() == Some(peer))
        };
        let exported = |peer: &ClusterTopology| -> Result<bool, String> {
            let dir = ManifestDir::open(&peer.state_dir).map_err(|e| e.to_string())?;
            let svc = dir
                .get("v1", "Service", &ObjKey::new(SHOP, "api"))
                .map_err(|e| e.to_string())?;
            Ok(svc.is_some_and(|s| {
                s.value["metadata"]["labels"][meshfed_api::labels::EXPORTED] == "true"
            }))
        };
        for peer in t.clusters.iter().filter(|p| p.name != c.name) {
            if !linked(&peer.name) || !exported(peer)? {
                continue;
            }
            if mirror_ready(&dir, &peer.name)? != Some(true) {
                return Err(format!(
                    "cluster {} has no ready mirror of api from {} yet",
                    c.name, peer.name
                ));
            }
        }
        // What `dev status` calls healthy: every Link's status, as the
        // controller writes it (once a second), says alive.
        let cluster = Cluster::File(FileCluster::open(&c.state_dir).map_err(|e| e.to_string())?);
        let rows = gateways(&cluster).await.map_err(|e| e.to_string())?;
        if let Some(r) = rows.iter().find(|r| !r.alive) {
            return Err(format!(
                "cluster {}'s link to {} is not reported alive yet",
                c.name, r.cluster
            ));
        }
        let upstream = c
            .upstream(&format!("api.{SHOP}"))
            .map_err(|e| e.to_string())?;
        let served = caller
            .get(upstream, "/")
            .await
            .map_err(|e| format!("calling api from {}: {e}", c.name))?;
        if served.cluster != c.name || served.caller.as_deref() != Some(&c.client.identity) {
            return Err(format!(
                "a call from {} was served by {} for {:?}",
                c.name, served.cluster, served.caller
            ));
        }
    }
    Ok(())
}

/// Whether cluster `dir`'s mirror of `api` from `origin` has ready
/// endpoints (`None`: no mirror).
pub fn mirror_ready(dir: &ManifestDir, origin: &str) -> Result<Option<bool>, String> {
    let key = ObjKey::new(SHOP, format!("api-{origin}"));
    let found = dir
        .get("discovery.k8s.io/v1", "EndpointSlice", &key)
        .map_err(|e| e.to_string())?;
    Ok(found.map(|f| {
        f.value["endpoints"].as_array().is_some_and(|eps| {
            !eps.is_empty()
                && eps
                    .iter()
                    .all(|e| e["conditions"]["ready"].as_bool() != Some(false))
        })
    }))
}

/// The replica the cluster's Lease names as the controller's leader (its
/// `spec.holderIdentity`, as the leader writes it into the store); `None`
/// when no replica has led yet.
pub fn leader(state_dir: &Path) -> anyhow::Result<Option<String>> {
    use crate::cluster::{CONTROLLER, NAMESPACE};
    let dir = ManifestDir::open(state_dir)?;
    let lease = dir.get(
        "coordination.k8s.io/v1",
        "Lease",
        &ObjKey::new(NAMESPACE, CONTROLLER),
    )?;
    Ok(lease.and_then(|l| {
        l.value["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
    }))
}

/// What `down` stopped.
#[derive(Debug)]
pub struct Stopped {
    pub processes: usize,
    pub clusters: usize,
}

/// Stops every process `DIR/topology.json` records and checks that nothing
/// listens on the federation's subnet any more.
pub async fn down(dir: &Path) -> anyhow::Result<Stopped> {
    let mut t = Topology::load(dir)?;
    let subnet: Subnet = t
        .subnet
        .parse()
        .map_err(|e: String| anyhow::anyhow!("{}: {e}", Topology::path(dir).display()))?;
    // Clients first, the identity services last: the reverse of start.
    let mut procs: Vec<&Process> = t.processes().map(|(_, p)| p).collect();
    procs.reverse();
    let running = procs.iter().filter(|p| process::running(p)).count();
    let stuck = process::stop(&procs, STOP_GRACE).await;
    if !stuck.is_empty() {
        bail!("could not stop: {}", stuck.join(", "));
    }
    t.state = State::Stopped;
    t.save()?;
    if let Some(network) = &t.network {
        // Whatever still runs inside goes with its namespace.
        netns::destroy(&network.prefix)?;
        return Ok(Stopped {
            processes: running,
            clusters: t.clusters.len(),
        });
    }
    let left = process::listening(|ip| subnet.contains(ip));
    if !left.is_empty() {
        let list: Vec<String> = left.iter().map(ToString::to_string).collect();
        bail!(
            "stopped {running} processes, but something still listens on {subnet}: {} \
             (not started by this federation?)",
            list.join(", ")
        );
    }
    Ok(Stopped {
        processes: running,
        clusters: t.clusters.len(),
    })
}

/// Rewrites the ready condition of every endpoint of `service` in cluster
/// `state_dir` whose address is `ip` (what the endpoint controller does when
/// a pod stops or starts).
pub fn set_endpoint_ready(
    state_dir: &Path,
    service: &str,
    ips: &[std::net::IpAddr],
    ready: bool,
) -> anyhow::Result<()> {
    let dir = ManifestDir::open(state_dir)?;
    for found in dir.list("discovery.k8s.io/v1", "EndpointSlice")? {
        let v = &found.value;
        if v["metadata"]["namespace"] != SHOP
            || v["metadata"]["labels"][meshfed_api::labels::SERVICE_NAME] != service
            || v["metadata"]["labels"]
                .get(meshfed_api::labels::ORIGIN_CLUSTER)
                .is_some()
        {
            continue;
        }
        let mut value = found.value.clone();
        if let Some(eps) = value["endpoints"].as_array_mut() {
            for ep in eps {
                let mine = ep["addresses"].as_array().is_some_and(|a| {
                    a.iter().any(|x| {
                        x.as_str()
                            .and_then(|s| s.parse().ok())
                            .is_some_and(|ip| ips.contains(&ip))
                    })
                });
                if mine {
                    // As the endpoint-slice controller writes a pod that is
                    // not ready and not terminating.
                    ep["conditions"]["ready"] = ready.into();
                    ep["conditions"]["serving"] = ready.into();
                }
            }
        }
        let file = found
            .path
            .strip_prefix(dir.dir())
            .unwrap_or(&found.path)
            .to_path_buf();
        dir.put(&value, &file)?;
    }
    Ok(())
}
