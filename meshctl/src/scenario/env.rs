//! Where a scenario's clusters run, and everything the timeline does to them
//! or reads from them. The runner speaks only to [`Env`]; each provider
//! answers in its own terms: processes and network namespaces on this
//! machine ([`Local`]), or kind clusters through kubectl and the scripts
//! under `scenarios/kind/` ([`Kind`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::kind::Kind;
use super::local::Local;
use super::probe::Sample;
use super::spec::{Degrade, ProbeTarget, Scenario, Target};
use crate::dev::Net;
use crate::dev::Served;

/// Mirror objects of a cluster: name → (what they say, a version that
/// changes whenever they are written).
pub(super) type Mirrors = BTreeMap<String, (String, String)>;

/// What a kill, pause or resume does to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// SIGKILL: gone until started again.
    Kill,
    /// SIGSTOP: frozen, connections open.
    Pause,
    /// SIGCONT.
    Resume,
}

/// A running federation.
pub(super) enum Env {
    Local(Box<Local>),
    Kind(Box<Kind>),
}

/// Dispatches to the provider.
macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Env::Local($e) => $body,
            Env::Kind($e) => $body,
        }
    };
}

impl Env {
    /// Where a caller's sidecar takes calls for `service`, and the network
    /// to dial it from.
    pub(super) async fn upstream(
        &mut self,
        cluster: &str,
        caller: &str,
        service: &str,
    ) -> anyhow::Result<(Net, SocketAddr)> {
        each!(self, e => e.upstream(cluster, caller, service).await)
    }

    pub(super) fn provider(&self) -> super::Provider {
        match self {
            Env::Local(_) => super::Provider::Local,
            Env::Kind(_) => super::Provider::Kind,
        }
    }

    /// A fault on the target, or on `replica` of it alone (a name
    /// [`Env::replicas`] gave).
    pub(super) async fn fault(
        &mut self,
        t: &Target,
        replica: Option<&str>,
        f: Fault,
    ) -> anyhow::Result<()> {
        each!(self, e => e.fault(t, replica, f).await)
    }

    /// Starts a killed target (a replicated process: its stopped replicas),
    /// or restarts a running one; or `replica` of it alone.
    pub(super) async fn start(
        &mut self,
        t: &Target,
        replica: Option<&str>,
        restart: bool,
    ) -> anyhow::Result<()> {
        each!(self, e => e.start(t, replica, restart).await)
    }

    /// Restarts the target's replicas one at a time, each ready before the next.
    pub(super) async fn rollout(&mut self, t: &Target) -> anyhow::Result<()> {
        each!(self, e => e.rollout(t).await)
    }

    /// The replicas of a replicated process, in order (the index a step
    /// picks), each with whether it runs.
    pub(super) async fn replicas(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<(String, bool)>> {
        each!(self, e => e.replicas(cluster, process).await)
    }

    /// The controller replica `cluster`'s Lease names as leader.
    pub(super) async fn leader(&self, cluster: &str) -> anyhow::Result<Option<String>> {
        each!(self, e => e.leader(cluster).await)
    }

    /// Reads `cluster`'s mirror of `service` from `origin` over and over in
    /// the background, from now until the samples are dropped.
    pub(super) fn sample_mirror(
        &self,
        cluster: &str,
        service: &str,
        origin: &str,
    ) -> anyhow::Result<super::sample::Samples> {
        each!(self, e => e.sample_mirror(cluster, service, origin))
    }

    /// `Ok` when the process answers, else why not.
    pub(super) async fn ready(&self, cluster: &str, process: &str) -> Result<(), String> {
        each!(self, e => e.ready(cluster, process).await)
    }

    pub(super) async fn metrics(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<Sample>> {
        each!(self, e => e.metrics(cluster, process).await)
    }

    pub(super) async fn mirrors(&self, cluster: &str) -> anyhow::Result<Mirrors> {
        each!(self, e => e.mirrors(cluster).await)
    }

    /// Whether `cluster`'s mirror of `service` from `origin` has ready
    /// endpoints (`None`: no mirror).
    pub(super) async fn mirror_state(
        &self,
        cluster: &str,
        service: &str,
        origin: &str,
    ) -> anyhow::Result<Option<bool>> {
        each!(self, e => e.mirror_state(cluster, service, origin).await)
    }

    pub(super) async fn partition(&mut self, cluster: &str, cut: bool) -> anyhow::Result<()> {
        each!(self, e => e.partition(cluster, cut).await)
    }

    /// `Ok(Err(why))` when latency and loss cannot be added here.
    pub(super) async fn degrade(&mut self, d: &Degrade) -> anyhow::Result<Result<(), String>> {
        each!(self, e => e.degrade(d).await)
    }

    pub(super) async fn undegrade(&mut self, cluster: &str) -> anyhow::Result<()> {
        each!(self, e => e.undegrade(cluster).await)
    }

    pub(super) async fn set_exported(
        &self,
        cluster: &str,
        service: &str,
        on: bool,
    ) -> anyhow::Result<()> {
        each!(self, e => e.set_exported(cluster, service, on).await)
    }

    /// Applies an HTTPRoute in `cluster`.
    pub(super) async fn put_route(
        &self,
        cluster: &str,
        route: &meshfed_resources::route::HttpRoute,
    ) -> anyhow::Result<()> {
        each!(self, e => e.put_route(cluster, route).await)
    }

    /// `cluster` links to `peer` (imports its exports).
    pub(super) async fn link(&self, cluster: &str, peer: &str) -> anyhow::Result<()> {
        each!(self, e => e.link(cluster, peer).await)
    }

    pub(super) async fn unlink(&self, cluster: &str, peer: &str) -> anyhow::Result<()> {
        each!(self, e => e.unlink(cluster, peer).await)
    }

    /// A call to `service` through `caller`'s sidecar in `from`.
    pub(super) async fn call(
        &mut self,
        from: &str,
        caller: &str,
        service: &str,
    ) -> anyhow::Result<Result<Served, String>> {
        let (net, addr) = self.upstream(from, caller, service).await?;
        Ok(
            crate::dev::Caller::from(&net, std::time::Duration::from_secs(5))
                .get(addr, "/")
                .await,
        )
    }

    /// A connection from a pod of `from` without a mesh certificate: plain
    /// HTTP, or TLS as `sni` without a client certificate. `Ok(Ok(status
    /// line))` when it was answered with success; the text says what was
    /// dialled.
    pub(super) async fn probe(
        &mut self,
        from: &str,
        to: &ProbeTarget,
        sni: Option<&str>,
    ) -> anyhow::Result<(String, Result<String, String>)> {
        each!(self, e => e.probe(from, to, sni).await)
    }

    /// The directory of the federation's root CA.
    pub(super) fn root_dir(&self) -> PathBuf {
        each!(self, e => e.root_dir())
    }

    /// `cluster`'s CA directory (intermediate.crt, intermediate.key, root.crt).
    pub(super) fn ca_dir(&self, cluster: &str) -> anyhow::Result<PathBuf> {
        each!(self, e => e.ca_dir(cluster))
    }

    /// New CA files were written to `cluster`'s CA directory: hand them to
    /// the cluster (the identity service is restarted apart).
    pub(super) async fn ca_written(&mut self, cluster: &str) -> anyhow::Result<()> {
        each!(self, e => e.ca_written(cluster).await)
    }

    /// How many certificate holders renew from `cluster`'s identity service
    /// (the workloads' sidecars, the controller, the gateways).
    pub(super) async fn holders(&self, cluster: &str) -> anyhow::Result<usize> {
        each!(self, e => e.holders(cluster).await)
    }

    /// Stops everything the federation runs.
    pub(super) async fn down(&mut self) -> anyhow::Result<()> {
        each!(self, e => e.down().await)
    }
}

/// Brings up the federation `s` describes, in `dir`.
pub(super) async fn up(
    provider: super::Provider,
    s: &Scenario,
    dir: &Path,
    say: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<Env> {
    Ok(match provider {
        super::Provider::Local => Env::Local(Box::new(Local::up(s, dir, say).await?)),
        super::Provider::Kind => Env::Kind(Box::new(Kind::up(s, dir, say).await?)),
    })
}

/// Removes what an earlier run in `dir` left, whichever provider ran it.
/// Returns what it removed, for the record.
pub(super) async fn clean(dir: &Path) -> anyhow::Result<Option<String>> {
    let mut removed = Vec::new();
    if let Some(what) = Local::clean(dir).await? {
        removed.push(what);
    }
    if let Some(what) = Kind::clean(dir).await? {
        removed.push(what);
    }
    Ok((!removed.is_empty()).then(|| removed.join(" and ")))
}

/// Whether an EndpointSlice has an endpoint not marked unready.
pub(super) fn any_ready(slice: &serde_json::Value) -> bool {
    slice["endpoints"].as_array().is_some_and(|eps| {
        eps.iter()
            .any(|e| e["conditions"]["ready"].as_bool() != Some(false))
    })
}
