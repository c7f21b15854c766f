//! The local provider: a federation on this machine (`dev up`), each cluster
//! in its own network namespace joined to the others by a WAN on which only
//! the gateways listen. Faults are signals to processes, iptables and tc
//! netem in the namespaces; the state is the clusters' file stores.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use meshfed_controller::ObjKey;

use crate::manifest_dir::ManifestDir;
use rustix::process::Signal;

use super::env::{Fault, Mirrors};
use super::probe::{self, Sample};
use super::spec::{Degrade, ProbeTarget, Scenario, Target};
use crate::dev::netns::{self, Network};
use crate::dev::{self, Caller, ClusterSpec, Kind, Net, SHOP, Subnet, Topology};

/// How long the federation may take to come up.
const UP_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(20);
/// A restarted process must answer within this.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often `mirror-never` reads a mirror.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Whether the mirror in store `state_dir` of `service` from `origin` has
/// ready endpoints (`None`: no mirror).
fn mirror_state_in(state_dir: &Path, service: &str, origin: &str) -> anyhow::Result<Option<bool>> {
    let dir = ManifestDir::open(state_dir)?;
    let key = ObjKey::new(SHOP, format!("{service}-{origin}"));
    let svc = dir.get("v1", "Service", &key)?;
    let slice = dir.get("discovery.k8s.io/v1", "EndpointSlice", &key)?;
    Ok(match (svc, slice) {
        (None, None) => None,
        (_, None) => Some(false),
        (_, Some(f)) => Some(super::env::any_ready(&f.value)),
    })
}

/// The federation a scenario describes, in `dir`.
pub fn plan_spec(s: &Scenario, dir: &Path, network: Option<Network>) -> dev::Spec {
    dev::Spec {
        dir: dir.to_owned(),
        clusters: s
            .clusters
            .iter()
            .map(|c| ClusterSpec {
                name: c.name.clone(),
                region: c.region.clone().unwrap_or_else(|| c.name.clone()),
                zones: c.zones,
                exported: c.exported.clone(),
                versions: c.versions.clone(),
                callers: c.callers.clone(),
            })
            .collect(),
        // Every cluster has its own namespace: the same range serves all runs.
        subnet: Subnet(77),
        trust_domain: meshfed_trust::TrustDomain::new("mesh.local").expect("a valid trust domain"),
        lease_ttl: u32::try_from(s.lease_ttl.as_secs()).expect("checked: at most 60 s"),
        leaf_ttl: s.leaf_ttl,
        links: s.links.clone(),
        policies: s.policies.clone(),
        network,
    }
}

pub(super) struct Local {
    spec: dev::Spec,
    t: Topology,
    network: Network,
    dir: PathBuf,
    exe: PathBuf,
    nets: BTreeMap<String, Net>,
    admin: BTreeMap<String, Caller>,
    netem: Option<Result<(), String>>,
}

impl Local {
    pub(super) async fn up(
        s: &Scenario,
        dir: &Path,
        say: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<Self> {
        let names: Vec<String> = s.clusters.iter().map(|c| c.name.clone()).collect();
        let network = Network::plan(&netns::prefix_for(dir), &names);
        let spec = plan_spec(s, dir, Some(network.clone()));
        let t = dev::up(&spec, UP_TIMEOUT, &mut |l| say(l))
            .await
            .context("the federation did not come up")?;
        let nets = dev::nets(&t)?;
        let admin = nets
            .iter()
            .map(|(c, n)| (c.clone(), Caller::from(n, Duration::from_secs(3))))
            .collect();
        Ok(Self {
            spec,
            t,
            network,
            dir: dir.to_owned(),
            exe: std::env::current_exe().context("finding the meshctl executable")?,
            nets,
            admin,
            netem: None,
        })
    }

    /// Removes the processes and namespaces a killed run left in `dir`.
    pub(super) async fn clean(dir: &Path) -> anyhow::Result<Option<String>> {
        let mut removed = Vec::new();
        if Topology::path(dir).exists() {
            let t = Topology::load(dir)?;
            let live = t.processes().filter(|(_, p)| dev::running(p)).count();
            if live > 0 {
                removed.push(format!("{live} processes"));
            }
            dev::down(dir).await?;
        }
        let left = netns::destroy(&netns::prefix_for(dir))?;
        if !left.is_empty() {
            removed.push(format!("network namespaces {}", left.join(", ")));
        }
        Ok((!removed.is_empty()).then(|| removed.join(" and ")))
    }

    pub(super) async fn down(&mut self) -> anyhow::Result<()> {
        dev::down(&self.dir).await.map(|_| ())
    }

    pub(super) async fn upstream(
        &mut self,
        cluster: &str,
        caller: &str,
        service: &str,
    ) -> anyhow::Result<(Net, SocketAddr)> {
        let sidecar = self
            .t
            .cluster(cluster)?
            .process(&format!("{caller}-sidecar"))?;
        let key = format!("upstream {service}.{SHOP}");
        let addr = *sidecar
            .listen
            .get(&key)
            .with_context(|| format!("{} has no {key}", sidecar.name))?;
        Ok((self.nets[cluster].clone(), addr))
    }

    /// The processes a target names: a pod's app and its sidecar, every
    /// replica of a replicated process, or the one `replica` picked.
    fn targets(&self, t: &Target, replica: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(match (&t.process, &t.pod, replica) {
            (_, _, Some(r)) => vec![r.to_owned()],
            (Some(p), _, None) => {
                let group = self.t.cluster(&t.cluster)?.group(p);
                if group.is_empty() {
                    anyhow::bail!("cluster {} has no process {p}", t.cluster);
                }
                group.iter().map(|p| p.name.clone()).collect()
            }
            (None, Some(pod), None) => vec![pod.clone(), format!("{pod}-sidecar")],
            (None, None, None) => anyhow::bail!("give process or pod"),
        })
    }

    pub(super) async fn fault(
        &mut self,
        t: &Target,
        replica: Option<&str>,
        f: Fault,
    ) -> anyhow::Result<()> {
        let sig = match f {
            Fault::Kill => Signal::KILL,
            Fault::Pause => Signal::STOP,
            Fault::Resume => Signal::CONT,
        };
        let names = self.targets(t, replica)?;
        let c = self.t.cluster(&t.cluster)?;
        for name in &names {
            let p = c.process(name)?;
            if !dev::running(p) {
                anyhow::bail!("{name} of cluster {} is not running", t.cluster);
            }
            dev::signal(p, sig)?;
        }
        if f == Fault::Kill {
            let procs: Vec<&dev::Process> =
                names.iter().filter_map(|n| c.process(n).ok()).collect();
            let stuck = dev::stop(&procs, Duration::from_secs(3)).await;
            if !stuck.is_empty() {
                anyhow::bail!("{} would not die", stuck.join(", "));
            }
            // What the endpoint controller does when a pod dies.
            if let Some(pod) = &t.pod {
                self.endpoint_ready(&t.cluster, pod, false)?;
            }
        }
        Ok(())
    }

    pub(super) async fn start(
        &mut self,
        t: &Target,
        replica: Option<&str>,
        restart: bool,
    ) -> anyhow::Result<()> {
        let mut names = self.targets(t, replica)?;
        let c = self.t.cluster(&t.cluster)?;
        if restart {
            let procs: Vec<&dev::Process> =
                names.iter().filter_map(|n| c.process(n).ok()).collect();
            let stuck = dev::stop(&procs, Duration::from_secs(5)).await;
            if !stuck.is_empty() {
                anyhow::bail!("{} would not stop", stuck.join(", "));
            }
        } else if names.len() > 1 && t.process.is_some() {
            // As a Deployment scaled back: the replicas that are down.
            names.retain(|n| c.process(n).is_ok_and(|p| !dev::running(p)));
            if names.is_empty() {
                anyhow::bail!(
                    "every replica of {} of cluster {} is already running",
                    t.process.as_deref().unwrap_or_default(),
                    t.cluster
                );
            }
        }
        for name in &names {
            self.spawn_ready(&t.cluster, name).await?;
        }
        if let Some(pod) = &t.pod {
            self.endpoint_ready(&t.cluster, pod, true)?;
        }
        Ok(())
    }

    /// SIGTERM one replica, start it again, wait until it is ready; then
    /// the next.
    pub(super) async fn rollout(&mut self, t: &Target) -> anyhow::Result<()> {
        for name in self.targets(t, None)? {
            let p = self.t.cluster(&t.cluster)?.process(&name)?;
            let stuck = dev::stop(&[p], Duration::from_secs(5)).await;
            if !stuck.is_empty() {
                anyhow::bail!("{name} would not stop");
            }
            self.spawn_ready(&t.cluster, &name).await?;
        }
        Ok(())
    }

    /// Starts process `name` of `cluster` and waits until it answers.
    async fn spawn_ready(&mut self, cluster: &str, name: &str) -> anyhow::Result<()> {
        let net = self.nets[cluster].clone();
        let c = self
            .t
            .clusters
            .iter_mut()
            .find(|c| c.name == cluster)
            .context("cluster")?;
        let ns = c.netns.clone();
        let p = c.process_mut(name)?;
        if dev::running(p) {
            anyhow::bail!("{name} of cluster {cluster} is already running");
        }
        dev::spawn(&self.exe, p, ns.as_deref())?;
        self.t.save()?;
        let p = self.t.cluster(cluster)?.process(name)?.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match dev::answers(&net, &p).await {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() >= deadline => anyhow::bail!(
                    "{name} did not answer within {} s: {why}\n{}",
                    START_TIMEOUT.as_secs(),
                    dev::log_tail(&p.log, 8)
                ),
                Err(_) if !dev::running(&p) => {
                    anyhow::bail!("{name} exited:\n{}", dev::log_tail(&p.log, 8))
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    pub(super) async fn replicas(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<(String, bool)>> {
        let c = self.t.cluster(cluster)?;
        if !c.replicated(process) {
            anyhow::bail!("{process} of cluster {cluster} runs as one process, not as replicas");
        }
        Ok(c.group(process)
            .iter()
            .map(|p| (p.name.clone(), dev::running(p)))
            .collect())
    }

    pub(super) async fn leader(&self, cluster: &str) -> anyhow::Result<Option<String>> {
        dev::leader(&self.t.cluster(cluster)?.state_dir)
    }

    pub(super) fn sample_mirror(
        &self,
        cluster: &str,
        service: &str,
        origin: &str,
    ) -> anyhow::Result<super::sample::Samples> {
        let dir = self.t.cluster(cluster)?.state_dir.clone();
        let (service, origin) = (service.to_owned(), origin.to_owned());
        Ok(super::sample::Samples::start(SAMPLE_EVERY, move || {
            let got = mirror_state_in(&dir, &service, &origin);
            async move { got }
        }))
    }

    /// Marks pod `pod`'s endpoint ready or not in its Service's slice.
    fn endpoint_ready(&self, cluster: &str, pod: &str, ready: bool) -> anyhow::Result<()> {
        let c = self.t.cluster(cluster)?;
        let p = c.process(pod)?;
        let Some(service) = p.service.as_deref() else {
            return Ok(());
        };
        let ip = p.listen.values().next().context("a workload listens")?.ip();
        dev::set_endpoint_ready(&c.state_dir, service, &[ip], ready)
    }

    /// Every process `process` stands for answers (every replica).
    pub(super) async fn ready(&self, cluster: &str, process: &str) -> Result<(), String> {
        let c = self.t.cluster(cluster).map_err(|e| format!("{e:#}"))?;
        let group = c.group(process);
        if group.is_empty() {
            return Err(format!("cluster {cluster} has no process {process}"));
        }
        for p in group {
            dev::answers(&self.nets[cluster], p)
                .await
                .map_err(|e| format!("{}: {e}", p.name))?;
        }
        Ok(())
    }

    pub(super) async fn metrics(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<Sample>> {
        let c = self.t.cluster(cluster)?;
        let group = c.group(process);
        // A replicated process: every running replica's, summed by sample
        // (as the kind provider reads every running pod).
        let running: Vec<&&dev::Process> = group
            .iter()
            .filter(|p| group.len() == 1 || dev::running(p))
            .collect();
        if running.is_empty() {
            anyhow::bail!("metrics of {process} in {cluster}: no replica is running");
        }
        let mut samples = Vec::new();
        for p in running {
            let admin = p
                .admin
                .with_context(|| format!("{} has no admin listener", p.name))?;
            let text = self.admin[cluster]
                .get_text(admin, "/metrics")
                .await
                .map_err(|e| anyhow::anyhow!("metrics of {} in {cluster}: {e}", p.name))?;
            samples.extend(probe::parse_metrics(&text));
        }
        Ok(samples)
    }

    pub(super) async fn mirrors(&self, cluster: &str) -> anyhow::Result<Mirrors> {
        let dir = ManifestDir::open(&self.t.cluster(cluster)?.state_dir)?;
        let mut out = BTreeMap::new();
        for kind in [("v1", "Service"), ("discovery.k8s.io/v1", "EndpointSlice")] {
            for f in dir.list(kind.0, kind.1)? {
                if f.value["metadata"]["labels"]
                    .get(meshfed_api::labels::ORIGIN_CLUSTER)
                    .is_none()
                {
                    continue;
                }
                let modified = std::fs::metadata(&f.path)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let name = f
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.insert(name, (f.value.to_string(), format!("{modified:?}")));
            }
        }
        Ok(out)
    }

    pub(super) async fn mirror_state(
        &self,
        cluster: &str,
        service: &str,
        origin: &str,
    ) -> anyhow::Result<Option<bool>> {
        mirror_state_in(&self.t.cluster(cluster)?.state_dir, service, origin)
    }

    pub(super) async fn partition(&mut self, cluster: &str, cut: bool) -> anyhow::Result<()> {
        self.network.partition(cluster, cut)
    }

    pub(super) async fn degrade(&mut self, d: &Degrade) -> anyhow::Result<Result<(), String>> {
        let prefix = self.network.prefix.clone();
        let netem = self
            .netem
            .get_or_insert_with(|| {
                netns::netem_available(&prefix).unwrap_or_else(|e| Err(format!("{e:#}")))
            })
            .clone();
        if netem.is_ok() {
            self.network.impair(
                &d.cluster,
                d.latency.unwrap_or_default(),
                d.loss.unwrap_or_default(),
            )?;
        }
        Ok(netem)
    }

    pub(super) async fn undegrade(&mut self, cluster: &str) -> anyhow::Result<()> {
        self.network.unimpair(cluster)
    }

    pub(super) async fn set_exported(
        &self,
        cluster: &str,
        service: &str,
        on: bool,
    ) -> anyhow::Result<()> {
        let c = self.t.cluster(cluster)?;
        let cluster = crate::target::open(None, Some(&c.state_dir)).await?;
        cluster.set_exported(SHOP, service, on).await.map(|_| ())
    }

    pub(super) async fn put_route(
        &self,
        cluster: &str,
        route: &meshfed_resources::route::HttpRoute,
    ) -> anyhow::Result<()> {
        let c = self.t.cluster(cluster)?;
        let store = crate::target::open(None, Some(&c.state_dir)).await?;
        store.put_route(route).await.map(|_| ())
    }

    pub(super) async fn link(&self, cluster: &str, peer: &str) -> anyhow::Result<()> {
        let (to, from) = (self.t.cluster(cluster)?, self.t.cluster(peer)?);
        dev::link(&self.spec, from, to).await
    }

    pub(super) async fn unlink(&self, cluster: &str, peer: &str) -> anyhow::Result<()> {
        let c = self.t.cluster(cluster)?;
        let store = crate::target::open(None, Some(&c.state_dir)).await?;
        if !store.delete_link(peer).await? {
            anyhow::bail!("cluster {cluster} had no link to {peer}");
        }
        Ok(())
    }

    pub(super) async fn probe(
        &mut self,
        from: &str,
        to: &ProbeTarget,
        sni: Option<&str>,
    ) -> anyhow::Result<(String, Result<String, String>)> {
        let process = to
            .process
            .as_deref()
            .context("probe: caller and service, or process")?;
        // Replicas share their listeners (their Service's address).
        let target = *self
            .t
            .cluster(&to.cluster)?
            .group(process)
            .first()
            .with_context(|| format!("cluster {} has no process {process}", to.cluster))?;
        let addr = match &to.listener {
            Some(l) => *target
                .listen
                .get(l)
                .with_context(|| format!("{process} has no listener {l}"))?,
            None => *target
                .listen
                .values()
                .next()
                .context("it listens nowhere")?,
        };
        let got = probe::connect(&self.nets[from], addr, sni).await;
        Ok((addr.to_string(), got))
    }

    pub(super) fn root_dir(&self) -> PathBuf {
        self.t.dir.join("trust")
    }

    pub(super) fn ca_dir(&self, cluster: &str) -> anyhow::Result<PathBuf> {
        Ok(self.t.cluster(cluster)?.ca_dir.clone())
    }

    /// The identity service reads its CA directory when it starts.
    pub(super) async fn ca_written(&mut self, _cluster: &str) -> anyhow::Result<()> {
        Ok(())
    }

    pub(super) async fn holders(&self, cluster: &str) -> anyhow::Result<usize> {
        Ok(self
            .t
            .cluster(cluster)?
            .processes
            .iter()
            .filter(|p| p.identity.is_some() && !matches!(p.kind, Kind::Identity | Kind::Client))
            .count())
    }
}
