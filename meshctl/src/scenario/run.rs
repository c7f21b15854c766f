//! Runs one scenario on this machine: a federation whose clusters each live
//! in a network namespace (`dev up` with a network), then the timeline step
//! by step, then teardown. The first failed step ends the timeline; the
//! traffic is summed up and everything is removed whatever happened.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use meshfed_mirror::{ManifestDir, ObjKey};
use rustix::process::Signal;

use super::probe::{self, Sample};
use super::report::{ScenarioResult, StepResult, StepStatus, TrafficSummary};
use super::spec::*;
use super::traffic::{self, Traffic};
use crate::dev::netns::{self, Network};
use crate::dev::{self, Caller, ClusterSpec, Kind, Net, SHOP, Subnet, Topology};

/// How long the federation may take to come up.
const UP_TIMEOUT: Duration = Duration::from_secs(90);
/// A `wait` without `timeout` or `within` gives up after this.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
/// A restarted process must answer within this.
const START_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Where scenario `name` runs under `work`.
pub fn dir_for(work: &Path, name: &str) -> PathBuf {
    work.join(name)
}

/// Removes what an earlier run in `dir` left (a killed runner leaves its
/// processes and namespaces). Returns what it removed, for the record.
pub async fn clean(dir: &Path) -> anyhow::Result<Option<String>> {
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

/// Runs `s` in `dir` and tears everything down. Never fails: what went
/// wrong is in the result.
pub async fn run(s: &Scenario, dir: &Path, say: &mut (dyn FnMut(&str) + Send)) -> ScenarioResult {
    let began = Instant::now();
    let mut result = ScenarioResult::new(s);
    match clean(dir).await {
        Ok(Some(what)) => say(&format!("removed what an earlier run left: {what}")),
        Ok(None) => {}
        Err(e) => {
            result.error(format!(
                "cleaning up an earlier run in {}: {e:#}",
                dir.display()
            ));
            return result.done(began);
        }
    }
    let names: Vec<String> = s.clusters.iter().map(|c| c.name.clone()).collect();
    let network = Network::plan(&netns::prefix_for(dir), &names);
    let spec = plan_spec(s, dir, Some(network.clone()));
    let up = dev::up(&spec, UP_TIMEOUT, &mut |l| say(l)).await;
    let t = match up {
        Ok(t) => t,
        Err(e) => {
            result.error(format!("the federation did not come up: {e:#}"));
            return result.done(began);
        }
    };
    result.startup_ms = Some(ms(began.elapsed()));
    match Runner::new(s, t, network, dir) {
        Ok(mut runner) => {
            let deadline = tokio::time::Instant::from_std(began + s.timeout);
            runner.timeline(&mut result, deadline, say).await;
            runner.finish(&mut result).await;
        }
        Err(e) => result.error(format!("{e:#}")),
    }
    if let Err(e) = dev::down(dir).await {
        result.error(format!("teardown: {e:#}"));
    }
    result.done(began)
}

/// What the runner remembers of a named step when it ended.
struct Mark {
    start: Instant,
    end: Instant,
    /// Metrics of the processes later assertions compare against.
    metrics: BTreeMap<(String, String), Vec<Sample>>,
    /// Mirror files by cluster: path → (content, modification time).
    mirrors: BTreeMap<String, Mirrors>,
}

type Mirrors = BTreeMap<PathBuf, (String, SystemTime)>;

pub(super) struct Runner<'a> {
    s: &'a Scenario,
    t: Topology,
    network: Network,
    dir: PathBuf,
    exe: PathBuf,
    nets: BTreeMap<String, Net>,
    admin: BTreeMap<String, Caller>,
    traffic: BTreeMap<String, (super::spec::Traffic, Traffic)>,
    marks: BTreeMap<String, Mark>,
    /// When the step before began: a budget is measured from it by default.
    last_start: Instant,
    /// Processes whose metrics named steps snapshot.
    watched_metrics: BTreeSet<(String, String)>,
    watched_mirrors: BTreeSet<String>,
    netem: Option<Result<(), String>>,
}

/// How a step went.
struct Done {
    status: StepStatus,
    message: Option<String>,
    measured: Option<Duration>,
}

impl Done {
    fn ok() -> Self {
        Self {
            status: StepStatus::Passed,
            message: None,
            measured: None,
        }
    }

    fn failed(message: String) -> Self {
        Self {
            status: StepStatus::Failed,
            message: Some(message),
            measured: None,
        }
    }
}

impl<'a> Runner<'a> {
    fn new(s: &'a Scenario, t: Topology, network: Network, dir: &Path) -> anyhow::Result<Self> {
        let nets = dev::nets(&t)?;
        let admin = nets
            .iter()
            .map(|(c, n)| (c.clone(), Caller::from(n, Duration::from_secs(3))))
            .collect();
        let mut watched_metrics = BTreeSet::new();
        let mut watched_mirrors = BTreeSet::new();
        let mut senders = BTreeMap::new();
        for st in &s.steps {
            match &st.action {
                Action::Traffic(tr) => {
                    senders.insert(
                        tr.name.clone(),
                        (tr.from.clone(), format!("{}-sidecar", tr.caller)),
                    );
                }
                Action::Assert(Assertion::NoRequestTo { traffic, .. }) => {
                    if let Some(p) = senders.get(traffic) {
                        watched_metrics.insert(p.clone());
                    }
                }
                Action::Assert(Assertion::Metric {
                    cluster,
                    process,
                    since: Some(_),
                    ..
                }) => {
                    watched_metrics.insert((cluster.clone(), process.clone()));
                }
                Action::Assert(Assertion::MirrorsUnchanged { cluster, .. }) => {
                    watched_mirrors.insert(cluster.clone());
                }
                _ => {}
            }
        }
        Ok(Self {
            s,
            t,
            network,
            dir: dir.to_owned(),
            exe: std::env::current_exe().context("finding the meshctl executable")?,
            nets,
            admin,
            traffic: BTreeMap::new(),
            marks: BTreeMap::new(),
            last_start: Instant::now(),
            watched_metrics,
            watched_mirrors,
            netem: None,
        })
    }

    async fn timeline(
        &mut self,
        result: &mut ScenarioResult,
        deadline: tokio::time::Instant,
        say: &mut (dyn FnMut(&str) + Send),
    ) {
        let origin = Instant::now();
        let steps = self.s.steps.clone();
        let mut stopped = false;
        for st in &steps {
            let what = describe(&st.action);
            if stopped {
                result.steps.push(StepResult::not_run(st, what));
                continue;
            }
            let started = Instant::now();
            let done = match tokio::time::timeout_at(deadline, self.step(st)).await {
                Ok(d) => d,
                Err(_) => Done::failed(format!(
                    "the scenario's timeout ({}) passed during this step",
                    humantime::format_duration(self.s.timeout)
                )),
            };
            let ended = Instant::now();
            say(&match (done.status, &done.message) {
                (StepStatus::Passed, None) => format!("✔ step {} {what}", st.number),
                (StepStatus::Passed, Some(m)) => format!("✔ step {} {what}: {m}", st.number),
                (StepStatus::Skipped, m) => {
                    format!("⚠ step {}: {}", st.number, m.as_deref().unwrap_or(""))
                }
                (_, m) => format!("✘ step {}: {}", st.number, m.as_deref().unwrap_or("")),
            });
            if done.status != StepStatus::Passed {
                stopped = true;
            }
            // Budgeted waits and rotations are what a run measures.
            let budgeted = st.within.is_some() || matches!(st.action, Action::Rotate(_));
            if let (Some(name), Some(m), true) = (&st.name, done.measured, budgeted) {
                result.measurements.insert(name.clone(), ms(m));
            }
            result.steps.push(StepResult {
                number: st.number,
                name: st.name.clone(),
                action: what,
                status: done.status,
                at_ms: ms(started - origin),
                duration_ms: ms(ended - started),
                measured_ms: done.measured.map(ms),
                budget_ms: st.within.map(ms),
                message: done.message,
            });
            if let Some(name) = &st.name {
                let mark = self.mark(started, ended).await;
                self.marks.insert(name.clone(), mark);
            }
            self.last_start = started;
        }
        result.settle_status();
    }

    async fn mark(&self, start: Instant, end: Instant) -> Mark {
        let mut metrics = BTreeMap::new();
        for (c, p) in &self.watched_metrics {
            if let Ok(m) = self.metrics(c, p).await {
                metrics.insert((c.clone(), p.clone()), m);
            }
        }
        let mut mirrors = BTreeMap::new();
        for c in &self.watched_mirrors {
            mirrors.insert(c.clone(), self.mirror_files(c).unwrap_or_default());
        }
        Mark {
            start,
            end,
            metrics,
            mirrors,
        }
    }

    /// Stops the traffic still running and sums every traffic up.
    async fn finish(&mut self, result: &mut ScenarioResult) {
        for (def, tr) in self.traffic.values_mut() {
            tr.stop().await;
            result.traffic.push(TrafficSummary::of(def, &tr.outcomes()));
        }
    }

    async fn step(&mut self, st: &Step) -> Done {
        match self.act(st).await {
            Ok(done) => done,
            Err(e) => Done::failed(format!("{e:#}")),
        }
    }

    async fn act(&mut self, st: &Step) -> anyhow::Result<Done> {
        match &st.action {
            Action::Traffic(def) => {
                let c = self.t.cluster(&def.from)?;
                let sidecar = c.process(&format!("{}-sidecar", def.caller))?;
                let key = format!("upstream {}.{SHOP}", def.service);
                let target = *sidecar
                    .listen
                    .get(&key)
                    .with_context(|| format!("{} has no {key}", sidecar.name))?;
                let protocol = def.protocol.unwrap_or(if def.service == "echo" {
                    Protocol::Tcp
                } else {
                    Protocol::Http
                });
                let tr = Traffic::start(
                    &self.nets[&def.from],
                    target,
                    protocol,
                    def.rate,
                    def.duration,
                );
                self.traffic.insert(def.name.clone(), (def.clone(), tr));
                Ok(Done::ok())
            }
            Action::StopTraffic(name) => {
                let (_, tr) = self.traffic.get_mut(name).context("no such traffic")?;
                tr.stop().await;
                Ok(Done::ok())
            }
            Action::Sleep(d) => {
                tokio::time::sleep(*d).await;
                Ok(Done::ok())
            }
            Action::Wait(c) => self.wait(st, c).await,
            Action::Kill(t) => self.signal(t, Signal::KILL).await,
            Action::Pause(t) => self.signal(t, Signal::STOP).await,
            Action::Resume(t) => self.signal(t, Signal::CONT).await,
            Action::Start(t) => self.start(t, false).await,
            Action::Restart(t) => self.start(t, true).await,
            Action::Partition(c) => {
                self.network.partition(&c.cluster, true)?;
                Ok(Done::ok())
            }
            Action::Heal(c) => {
                self.network.partition(&c.cluster, false)?;
                Ok(Done::ok())
            }
            Action::Degrade(d) => {
                let prefix = self.network.prefix.clone();
                let netem = self
                    .netem
                    .get_or_insert_with(|| {
                        netns::netem_available(&prefix).unwrap_or_else(|e| Err(format!("{e:#}")))
                    })
                    .clone();
                if let Err(why) = netem {
                    return Ok(Done {
                        status: StepStatus::Skipped,
                        message: Some(format!(
                            "NOT RUN: tc netem is not available on this machine, so latency and \
                             loss cannot be added ({why}); the rest of this scenario is skipped"
                        )),
                        measured: None,
                    });
                }
                self.network.impair(
                    &d.cluster,
                    d.latency.unwrap_or_default(),
                    d.loss.unwrap_or_default(),
                )?;
                Ok(Done::ok())
            }
            Action::Undegrade(c) => {
                self.network.unimpair(&c.cluster)?;
                Ok(Done::ok())
            }
            Action::Rotate(r) => {
                let began = Instant::now();
                super::rotate::rotate(self, r).await?;
                Ok(Done {
                    measured: Some(began.elapsed()),
                    ..Done::ok()
                })
            }
            Action::Export(r) | Action::Unexport(r) => {
                let on = matches!(st.action, Action::Export(_));
                let c = self.t.cluster(&r.cluster)?;
                let cluster = crate::target::open(None, Some(&c.state_dir)).await?;
                cluster.set_exported(SHOP, &r.service, on).await?;
                Ok(Done::ok())
            }
            Action::Link(l) => {
                let spec = plan_spec(self.s, &self.dir, Some(self.network.clone()));
                let (to, from) = (self.t.cluster(&l.cluster)?, self.t.cluster(&l.peer)?);
                dev::link(&spec, from, to).await?;
                Ok(Done::ok())
            }
            Action::Unlink(l) => {
                let c = self.t.cluster(&l.cluster)?;
                let cluster = crate::target::open(None, Some(&c.state_dir)).await?;
                if !cluster.delete_link(&l.peer).await? {
                    anyhow::bail!("cluster {} had no link to {}", l.cluster, l.peer);
                }
                Ok(Done::ok())
            }
            Action::Assert(a) => Ok(match self.check(a).await? {
                Ok(()) => Done::ok(),
                Err(why) => Done::failed(why),
            }),
            Action::Probe(p) => self.probe(p).await,
        }
    }

    /// Where a wait's budget is measured from: the start of the step it
    /// names (the moment a fault was injected), else of the step before.
    fn since(&self, st: &Step) -> Instant {
        st.since
            .as_ref()
            .and_then(|n| self.marks.get(n))
            .map_or(self.last_start, |m| m.start)
    }

    async fn wait(&mut self, st: &Step, c: &Condition) -> anyhow::Result<Done> {
        let since = self.since(st);
        let timeout = st
            .timeout
            .unwrap_or_else(|| st.within.map_or(WAIT_TIMEOUT, |w| w + WAIT_TIMEOUT));
        let deadline = Instant::now() + timeout;
        let mut why;
        loop {
            match self.condition(c, since).await? {
                Ok(at) => {
                    let measured = at.saturating_duration_since(since);
                    if let Some(budget) = st.within
                        && measured > budget
                    {
                        return Ok(Done {
                            measured: Some(measured),
                            ..Done::failed(format!(
                                "{}: expected within {}, observed {}",
                                describe(&st.action),
                                fmt_ms(budget),
                                fmt_ms(measured)
                            ))
                        });
                    }
                    return Ok(Done {
                        measured: Some(measured),
                        ..Done::ok()
                    });
                }
                Err(w) => why = w,
            }
            if Instant::now() >= deadline {
                let budget = st
                    .within
                    .map(|b| format!("expected within {}, ", fmt_ms(b)))
                    .unwrap_or_default();
                return Ok(Done::failed(format!(
                    "{}: {budget}not met after {}: {why}",
                    describe(&st.action),
                    fmt_ms(timeout)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `Ok(when it came true)`, or `Err(why not yet)`.
    async fn condition(
        &self,
        c: &Condition,
        since: Instant,
    ) -> anyhow::Result<Result<Instant, String>> {
        Ok(match c {
            Condition::ServedBy {
                traffic,
                cluster,
                calls,
            } => {
                let (_, tr) = &self.traffic[traffic];
                let seen = tr.since(since);
                match traffic::settled(&seen, cluster, *calls) {
                    Some(at) => Ok(at),
                    None => Err(format!(
                        "the last calls were served by {}",
                        shares(&seen[seen.len().saturating_sub(*calls)..])
                    )),
                }
            }
            Condition::Mirror {
                cluster,
                service,
                origin,
                state,
            } => {
                let now = Instant::now();
                let found = mirror_state(&self.t.cluster(cluster)?.state_dir, service, origin)?;
                let holds = match state {
                    MirrorState::Ready => found == Some(true),
                    MirrorState::Withdrawn => found != Some(true),
                    MirrorState::Absent => found.is_none(),
                };
                if holds {
                    Ok(now)
                } else {
                    Err(format!(
                        "the mirror is {}",
                        match found {
                            None => "absent",
                            Some(true) => "ready",
                            Some(false) => "present without ready endpoints",
                        }
                    ))
                }
            }
            Condition::Ready { cluster, process } => {
                let p = self.t.cluster(cluster)?.process(process)?;
                dev::answers(&self.nets[cluster], p)
                    .await
                    .map(|()| Instant::now())
            }
        })
    }

    /// The processes a target names (a pod: its app and its sidecar).
    fn targets(&self, t: &Target) -> anyhow::Result<Vec<String>> {
        Ok(match (&t.process, &t.pod) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(pod)) => vec![pod.clone(), format!("{pod}-sidecar")],
            (None, None) => anyhow::bail!("give process or pod"),
        })
    }

    async fn signal(&mut self, t: &Target, sig: Signal) -> anyhow::Result<Done> {
        let names = self.targets(t)?;
        let c = self.t.cluster(&t.cluster)?;
        for name in &names {
            let p = c.process(name)?;
            if !dev::running(p) {
                anyhow::bail!("{name} of cluster {} is not running", t.cluster);
            }
            dev::signal(p, sig)?;
        }
        if sig == Signal::KILL {
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
        Ok(Done::ok())
    }

    async fn start(&mut self, t: &Target, restart: bool) -> anyhow::Result<Done> {
        let names = self.targets(t)?;
        let net = self.nets[&t.cluster].clone();
        if restart {
            let c = self.t.cluster(&t.cluster)?;
            let procs: Vec<&dev::Process> =
                names.iter().filter_map(|n| c.process(n).ok()).collect();
            let stuck = dev::stop(&procs, Duration::from_secs(5)).await;
            if !stuck.is_empty() {
                anyhow::bail!("{} would not stop", stuck.join(", "));
            }
        }
        for name in &names {
            let c = self
                .t
                .clusters
                .iter_mut()
                .find(|c| c.name == t.cluster)
                .context("cluster")?;
            let ns = c.netns.clone();
            let p = c.process_mut(name)?;
            if dev::running(p) {
                anyhow::bail!("{name} of cluster {} is already running", t.cluster);
            }
            dev::spawn(&self.exe, p, ns.as_deref())?;
            self.t.save()?;
            let p = self.t.cluster(&t.cluster)?.process(name)?.clone();
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                match dev::answers(&net, &p).await {
                    Ok(()) => break,
                    Err(why) if Instant::now() >= deadline => anyhow::bail!(
                        "{name} did not answer within {}: {why}\n{}",
                        fmt_ms(START_TIMEOUT),
                        dev::log_tail(&p.log, 8)
                    ),
                    Err(_) if !dev::running(&p) => {
                        anyhow::bail!("{name} exited:\n{}", dev::log_tail(&p.log, 8))
                    }
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
        }
        if let Some(pod) = &t.pod {
            self.endpoint_ready(&t.cluster, pod, true)?;
        }
        Ok(Done::ok())
    }

    /// Marks pod `pod`'s endpoint ready or not in its Service's slice.
    fn endpoint_ready(&self, cluster: &str, pod: &str, ready: bool) -> anyhow::Result<()> {
        let c = self.t.cluster(cluster)?;
        let p = c.process(pod)?;
        let service = match p.kind {
            Kind::Api => "api",
            Kind::Echo => "echo",
            _ => return Ok(()),
        };
        let ip = p.listen.values().next().context("a workload listens")?.ip();
        dev::set_endpoint_ready(&c.state_dir, service, &[ip], ready)
    }

    pub(super) async fn metrics(
        &self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<Vec<Sample>> {
        let p = self.t.cluster(cluster)?.process(process)?;
        let admin = p
            .admin
            .with_context(|| format!("{process} has no admin listener"))?;
        let text = self.admin[cluster]
            .get_text(admin, "/metrics")
            .await
            .map_err(|e| anyhow::anyhow!("metrics of {process} in {cluster}: {e}"))?;
        Ok(probe::parse_metrics(&text))
    }

    fn mirror_files(&self, cluster: &str) -> anyhow::Result<Mirrors> {
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
                out.insert(f.path.clone(), (f.value.to_string(), modified));
            }
        }
        Ok(out)
    }

    async fn check(&self, a: &Assertion) -> anyhow::Result<Result<(), String>> {
        let window = |tr: &Traffic, since: &Option<String>| match since
            .as_ref()
            .and_then(|n| self.marks.get(n))
        {
            Some(m) => tr.since(m.end),
            None => tr.outcomes(),
        };
        Ok(match a {
            Assertion::SuccessRate {
                traffic,
                min,
                since,
            } => {
                let calls = window(&self.traffic[traffic].1, since);
                let failed: Vec<&traffic::Outcome> =
                    calls.iter().filter(|o| o.result.is_err()).collect();
                if calls.is_empty() {
                    Err(format!(
                        "success-rate of {traffic}: expected ≥ {min}%, observed no calls"
                    ))
                } else {
                    let rate = 100.0 * (calls.len() - failed.len()) as f64 / calls.len() as f64;
                    if rate + 1e-9 >= *min {
                        Ok(())
                    } else {
                        Err(format!(
                            "success-rate of {traffic}: expected ≥ {min}%, observed {rate:.2}% \
                             ({} of {} calls failed; first: {})",
                            failed.len(),
                            calls.len(),
                            failed[0].result.as_ref().err().map_or("", String::as_str)
                        ))
                    }
                }
            }
            Assertion::ServedBy {
                traffic,
                cluster,
                min,
                max,
                since,
            } => {
                let calls = window(&self.traffic[traffic].1, since);
                let ok: Vec<&traffic::Outcome> =
                    calls.iter().filter(|o| o.result.is_ok()).collect();
                let by = ok
                    .iter()
                    .filter(|o| o.served_by() == Some(cluster.as_str()))
                    .count();
                let share = if ok.is_empty() {
                    0.0
                } else {
                    100.0 * by as f64 / ok.len() as f64
                };
                let low = min.is_some_and(|m| share + 1e-9 < m);
                let high = max.is_some_and(|m| share - 1e-9 > m);
                if ok.is_empty() || low || high {
                    let expected = match (min, max) {
                        (Some(a), Some(b)) => format!("{a}% to {b}%"),
                        (Some(a), None) => format!("≥ {a}%"),
                        (None, Some(b)) => format!("≤ {b}%"),
                        (None, None) => String::new(),
                    };
                    Err(format!(
                        "served-by {cluster} of {traffic}: expected {expected}, observed {share:.2}% \
                         of {} answered calls (by cluster: {})",
                        ok.len(),
                        shares(&calls)
                    ))
                } else {
                    Ok(())
                }
            }
            Assertion::NoRequestTo {
                traffic,
                cluster,
                after,
            } => {
                let (def, tr) = &self.traffic[traffic];
                let mark = &self.marks[after];
                let served = tr
                    .since(mark.end)
                    .iter()
                    .filter(|o| o.served_by() == Some(cluster.as_str()))
                    .count();
                let sidecar = (def.from.clone(), format!("{}-sidecar", def.caller));
                let labels = BTreeMap::from([
                    ("direction".to_owned(), "outbound".to_owned()),
                    ("cluster".to_owned(), cluster.clone()),
                ]);
                const REQUESTS: &str = "meshfed_sidecar_requests_total";
                let before = mark
                    .metrics
                    .get(&sidecar)
                    .map(|m| probe::sum(m, REQUESTS, &labels));
                let now = probe::sum(
                    &self.metrics(&sidecar.0, &sidecar.1).await?,
                    REQUESTS,
                    &labels,
                );
                let sent = before.map(|b| now - b);
                if served > 0 || sent.is_some_and(|n| n > 0.0) {
                    Err(format!(
                        "no-request-to {cluster} after {after}: expected 0, observed {served} calls \
                         served by {cluster} and {} requests to it in {}'s metrics",
                        sent.unwrap_or_default(),
                        sidecar.1
                    ))
                } else if before.is_none() {
                    Err(format!(
                        "no-request-to {cluster}: {}'s metrics could not be read at {after}",
                        sidecar.1
                    ))
                } else {
                    Ok(())
                }
            }
            Assertion::Metric {
                cluster,
                process,
                name,
                labels,
                op,
                value,
                since,
            } => {
                let now = probe::sum(&self.metrics(cluster, process).await?, name, labels);
                let observed = match since {
                    Some(s) => match self.marks[s]
                        .metrics
                        .get(&(cluster.clone(), process.clone()))
                    {
                        Some(m) => now - probe::sum(m, name, labels),
                        None => {
                            return Ok(Err(format!(
                                "{process}'s metrics could not be read at {s}"
                            )));
                        }
                    },
                    None => now,
                };
                let holds = match op.as_str() {
                    ">" => observed > *value,
                    ">=" => observed >= *value,
                    "==" => (observed - value).abs() < 1e-9,
                    "<=" => observed <= *value,
                    _ => observed < *value,
                };
                let what = if since.is_some() { "growth of " } else { "" };
                if holds {
                    Ok(())
                } else {
                    Err(format!(
                        "metric {what}{name}{} of {process} in {cluster}: expected {op} {value}, observed {observed}",
                        if labels.is_empty() {
                            String::new()
                        } else {
                            format!("{labels:?}")
                        }
                    ))
                }
            }
            Assertion::MirrorsUnchanged { cluster, since } => {
                let before = self.marks[since]
                    .mirrors
                    .get(cluster)
                    .cloned()
                    .unwrap_or_default();
                let now = self.mirror_files(cluster)?;
                let mut changes = Vec::new();
                for (path, (content, modified)) in &now {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    match before.get(path) {
                        None => changes.push(format!("{name} added")),
                        Some((c, _)) if c != content => changes.push(format!("{name} changed")),
                        Some((_, m)) if m != modified => changes.push(format!("{name} rewritten")),
                        _ => {}
                    }
                }
                for path in before.keys().filter(|p| !now.contains_key(*p)) {
                    changes.push(format!("{} deleted", path.display()));
                }
                if before.is_empty() {
                    Err(format!(
                        "mirrors-unchanged in {cluster}: there were no mirrors at {since}"
                    ))
                } else if changes.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "mirrors-unchanged in {cluster} since {since}: expected no change, observed {}",
                        changes.join(", ")
                    ))
                }
            }
        })
    }

    async fn probe(&self, p: &Probe) -> anyhow::Result<Done> {
        let net = &self.nets[&p.from];
        let (what, got) = match (&p.caller, &p.to.service, &p.to.process) {
            (Some(caller), Some(svc), _) => {
                let sidecar = self
                    .t
                    .cluster(&p.from)?
                    .process(&format!("{caller}-sidecar"))?;
                let key = format!("upstream {svc}.{SHOP}");
                let addr = *sidecar
                    .listen
                    .get(&key)
                    .with_context(|| format!("no {key}"))?;
                let got = Caller::from(net, Duration::from_secs(5))
                    .get(addr, "/")
                    .await;
                if let Ok(served) = &got {
                    let caller_id = served.caller.as_deref().unwrap_or("nobody");
                    let wrong_cluster = p.served_by.as_ref().filter(|c| **c != served.cluster);
                    let wrong_id = p.identity.as_ref().filter(|i| i.as_str() != caller_id);
                    if wrong_cluster.is_some() || wrong_id.is_some() {
                        return Ok(Done::failed(format!(
                            "probe {svc} from {caller} in {}: expected served by {} for {}, \
                             observed served by {} for {caller_id}",
                            p.from,
                            p.served_by.as_deref().unwrap_or("any cluster"),
                            p.identity.as_deref().unwrap_or("any caller"),
                            served.cluster
                        )));
                    }
                }
                let got = got.map(|s| {
                    format!(
                        "served by {} for {}",
                        s.cluster,
                        s.caller.unwrap_or_default()
                    )
                });
                (format!("{svc} from {caller} in {}", p.from), got)
            }
            (_, _, Some(process)) => {
                let target = self.t.cluster(&p.to.cluster)?.process(process)?;
                let addr = match &p.to.listener {
                    Some(l) => target.listen[l],
                    None => *target
                        .listen
                        .values()
                        .next()
                        .context("it listens nowhere")?,
                };
                let got = probe::connect(net, addr, p.sni.as_deref())
                    .await
                    .and_then(|line| {
                        if probe::success(&line) {
                            Ok(line)
                        } else {
                            Err(format!("answered {line:?}"))
                        }
                    });
                (
                    format!(
                        "{process} of {} ({addr}) from a pod in {} without a mesh certificate{}",
                        p.to.cluster,
                        p.from,
                        p.sni
                            .as_ref()
                            .map(|s| format!(", TLS as {s}"))
                            .unwrap_or_else(|| ", plain HTTP".into())
                    ),
                    got,
                )
            }
            _ => anyhow::bail!("probe: caller and service, or process"),
        };
        let as_expected = matches!(
            (p.expect, &got),
            (Expect::Answered, Ok(_)) | (Expect::Refused, Err(_))
        );
        let observed = match &got {
            Ok(s) => format!("answered ({s})"),
            Err(e) => format!("refused ({e})"),
        };
        Ok(if as_expected {
            Done {
                message: Some(observed),
                ..Done::ok()
            }
        } else {
            Done::failed(format!(
                "probe {what}: expected {}, observed {observed}",
                match p.expect {
                    Expect::Answered => "an answer",
                    Expect::Refused => "refused",
                }
            ))
        })
    }

    // For the rotation module.
    pub(super) fn topology(&self) -> &Topology {
        &self.t
    }

    pub(super) fn scenario(&self) -> &Scenario {
        self.s
    }

    pub(super) async fn restart_process(
        &mut self,
        cluster: &str,
        process: &str,
    ) -> anyhow::Result<()> {
        let t = Target {
            cluster: cluster.to_owned(),
            process: Some(process.to_owned()),
            pod: None,
        };
        self.start(&t, true).await.map(|_| ())
    }
}

/// Whether cluster `state_dir`'s mirror of `service` from `origin` has ready
/// endpoints (`None`: no mirror).
fn mirror_state(state_dir: &Path, service: &str, origin: &str) -> anyhow::Result<Option<bool>> {
    let dir = ManifestDir::open(state_dir)?;
    let key = ObjKey::new(SHOP, format!("{service}-{origin}"));
    let svc = dir.get("v1", "Service", &key)?;
    let slice = dir.get("discovery.k8s.io/v1", "EndpointSlice", &key)?;
    Ok(match (svc, slice) {
        (None, None) => None,
        (_, None) => Some(false),
        (_, Some(f)) => Some(f.value["endpoints"].as_array().is_some_and(|eps| {
            eps.iter()
                .any(|e| e["conditions"]["ready"].as_bool() != Some(false))
        })),
    })
}

/// `east 80.0%, west 20.0%, failed 3`.
fn shares(calls: &[traffic::Outcome]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failed = 0;
    for c in calls {
        match &c.result {
            Ok(_) => *by.entry(c.served_by().unwrap_or("(tcp)")).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    let mut parts: Vec<String> = by.iter().map(|(c, n)| format!("{c} {n}")).collect();
    if failed > 0 {
        parts.push(format!("failed {failed}"));
    }
    if parts.is_empty() {
        "nobody (no calls yet)".into()
    } else {
        parts.join(", ")
    }
}

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn fmt_ms(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// One line for a step, as people read it.
pub fn describe(a: &Action) -> String {
    let target = |t: &Target| {
        format!(
            "{} of {}",
            t.pod
                .as_ref()
                .map(|p| format!("pod {p}"))
                .or(t.process.clone())
                .unwrap_or_default(),
            t.cluster
        )
    };
    match a {
        Action::Traffic(t) => format!(
            "traffic {}: {}/s from {}'s {} to {}",
            t.name, t.rate, t.from, t.caller, t.service
        ),
        Action::StopTraffic(n) => format!("stop traffic {n}"),
        Action::Sleep(d) => format!("sleep {}", fmt_ms(*d)),
        Action::Wait(c) => match c {
            Condition::ServedBy {
                traffic,
                cluster,
                calls,
            } => {
                format!("wait until {traffic} is served by {cluster} ({calls} calls in a row)")
            }
            Condition::Mirror {
                cluster,
                service,
                origin,
                state,
            } => format!("wait until {cluster}'s mirror of {service} from {origin} is {state:?}")
                .to_lowercase(),
            Condition::Ready { cluster, process } => {
                format!("wait until {process} of {cluster} is ready")
            }
        },
        Action::Kill(t) => format!("kill {}", target(t)),
        Action::Pause(t) => format!("pause (SIGSTOP) {}", target(t)),
        Action::Resume(t) => format!("resume (SIGCONT) {}", target(t)),
        Action::Start(t) => format!("start {}", target(t)),
        Action::Restart(t) => format!("restart {}", target(t)),
        Action::Partition(c) => format!("partition {} from the WAN", c.cluster),
        Action::Heal(c) => format!("heal {}'s partition", c.cluster),
        Action::Degrade(d) => format!("degrade {}'s WAN link", d.cluster),
        Action::Undegrade(c) => format!("restore {}'s WAN link", c.cluster),
        Action::Rotate(r) => match &r.cluster {
            Some(c) => format!("rotate {c}'s intermediate CA"),
            None => "rotate the root CA".into(),
        },
        Action::Export(r) => format!("export {} in {}", r.service, r.cluster),
        Action::Unexport(r) => format!("unexport {} in {}", r.service, r.cluster),
        Action::Link(l) => format!("link {} to {}", l.cluster, l.peer),
        Action::Unlink(l) => format!("unlink {} from {}", l.cluster, l.peer),
        Action::Assert(a) => match a {
            Assertion::SuccessRate { traffic, min, .. } => {
                format!("assert success-rate of {traffic} ≥ {min}%")
            }
            Assertion::ServedBy {
                traffic, cluster, ..
            } => format!("assert share of {traffic} served by {cluster}"),
            Assertion::NoRequestTo {
                traffic,
                cluster,
                after,
            } => {
                format!("assert no request of {traffic} to {cluster} after {after}")
            }
            Assertion::Metric {
                cluster,
                process,
                name,
                op,
                value,
                ..
            } => {
                format!("assert {name} of {process} in {cluster} {op} {value}")
            }
            Assertion::MirrorsUnchanged { cluster, since } => {
                format!("assert {cluster}'s mirrors unchanged since {since}")
            }
        },
        Action::Probe(p) => format!(
            "probe {} from {}: expect {:?}",
            p.to.service
                .clone()
                .or(p.to.process.clone())
                .unwrap_or_default(),
            p.from,
            p.expect
        )
        .to_lowercase(),
    }
}
