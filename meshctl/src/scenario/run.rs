//! Runs one scenario: brings the federation up with the chosen provider,
//! then the timeline step by step, then teardown. The first failed step
//! ends the timeline; the traffic is summed up and everything is removed
//! whatever happened.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Provider;
use super::describe::{describe, fmt_ms, ms};
use super::env::{self, Env, Fault, Mirrors};
use super::probe::{self, Sample};
use super::report::{ScenarioResult, StepResult, StepStatus, TrafficSummary};
use super::spec::*;
use super::traffic::{self, Traffic};

/// A `wait` without `timeout` or `within` gives up after this.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// Where scenario `name` runs under `work`.
pub fn dir_for(work: &Path, name: &str) -> PathBuf {
    work.join(name)
}

/// Removes what an earlier run in `dir` left (a killed runner leaves its
/// processes and namespaces, or its kind clusters). Returns what it
/// removed, for the record.
pub async fn clean(dir: &Path) -> anyhow::Result<Option<String>> {
    env::clean(dir).await
}

/// Runs `s` in `dir` and tears everything down. Never fails: what went
/// wrong is in the result.
pub async fn run(
    provider: Provider,
    s: &Scenario,
    dir: &Path,
    say: &mut (dyn FnMut(&str) + Send),
) -> ScenarioResult {
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
    let mut env = match env::up(provider, s, dir, say).await {
        Ok(env) => env,
        Err(e) => {
            result.error(format!("{e:#}"));
            if let Err(e) = clean(dir).await {
                result.error(format!("teardown: {e:#}"));
            }
            return result.done(began);
        }
    };
    result.startup_ms = Some(ms(began.elapsed()));
    {
        let mut runner = Runner::new(s, &mut env);
        let deadline = tokio::time::Instant::from_std(began + s.timeout);
        runner.timeline(&mut result, deadline, say).await;
        runner.finish(&mut result).await;
    }
    if let Err(e) = env.down().await {
        result.error(format!("teardown: {e:#}"));
    }
    result.done(began)
}

/// What the runner remembers of a named step when it ended.
pub(super) struct Mark {
    pub(super) start: Instant,
    pub(super) end: Instant,
    /// Metrics of the processes later assertions compare against.
    pub(super) metrics: BTreeMap<(String, String), Vec<Sample>>,
    /// Mirror objects by cluster.
    pub(super) mirrors: BTreeMap<String, Mirrors>,
    /// The controller replica each watched cluster's Lease named when the
    /// step began.
    pub(super) leaders: BTreeMap<String, Option<String>>,
}

pub(super) struct Runner<'a> {
    pub(super) s: &'a Scenario,
    pub(super) env: &'a mut Env,
    pub(super) traffic: BTreeMap<String, (super::spec::Traffic, Traffic)>,
    pub(super) marks: BTreeMap<String, Mark>,
    /// When the step before began: a budget is measured from it by default.
    last_start: Instant,
    /// Processes whose metrics named steps snapshot.
    watched_metrics: BTreeSet<(String, String)>,
    watched_mirrors: BTreeSet<String>,
    /// Clusters whose leader named steps record (for `leader: {not}`).
    watched_leaders: BTreeSet<String>,
    /// Mirrors `mirror-never` looks at, sampled from the first step on:
    /// by (cluster, service, origin).
    pub(super) samples: BTreeMap<(String, String, String), super::sample::Samples>,
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

    /// Done, saying which replica the step picked, if it picked one.
    fn picked(replica: Option<String>) -> Self {
        Self {
            message: replica.map(|r| format!("picked {r}")),
            ..Self::ok()
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
    fn new(s: &'a Scenario, env: &'a mut Env) -> Self {
        let mut watched_metrics = BTreeSet::new();
        let mut watched_mirrors = BTreeSet::new();
        let mut watched_leaders = BTreeSet::new();
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
                Action::Wait(Condition::Leader {
                    cluster,
                    not: Some(_),
                }) => {
                    watched_leaders.insert(cluster.clone());
                }
                _ => {}
            }
        }
        Self {
            s,
            env,
            traffic: BTreeMap::new(),
            marks: BTreeMap::new(),
            last_start: Instant::now(),
            watched_metrics,
            watched_mirrors,
            watched_leaders,
            samples: BTreeMap::new(),
        }
    }

    /// A wait's budget on this run's provider.
    fn budget(&self, st: &Step) -> Option<Duration> {
        match self.env.provider() {
            Provider::Local => st.within,
            Provider::Kind => st.within_kind,
        }
    }

    /// Starts sampling every mirror a `mirror-never` looks at.
    fn start_samples(&mut self) -> anyhow::Result<()> {
        for st in &self.s.steps {
            if let Action::Assert(Assertion::MirrorNever {
                cluster,
                service,
                origin,
                ..
            }) = &st.action
            {
                let key = (cluster.clone(), service.clone(), origin.clone());
                if !self.samples.contains_key(&key) {
                    let samples = self.env.sample_mirror(cluster, service, origin)?;
                    self.samples.insert(key, samples);
                }
            }
        }
        Ok(())
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
        if let Err(e) = self.start_samples() {
            result.error(format!("sampling mirrors: {e:#}"));
            stopped = true;
        }
        for st in &steps {
            let what = describe(&st.action);
            if stopped {
                result
                    .steps
                    .push(StepResult::not_run(st, what, self.budget(st)));
                continue;
            }
            let mut leaders = BTreeMap::new();
            if st.name.is_some() {
                for c in &self.watched_leaders {
                    leaders.insert(c.clone(), self.env.leader(c).await.ok().flatten());
                }
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
            let budget = self.budget(st);
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
                budget_ms: budget.map(ms),
                message: done.message,
            });
            if let Some(name) = &st.name {
                let mut mark = self.mark(started, ended).await;
                mark.leaders = leaders;
                self.marks.insert(name.clone(), mark);
            }
            self.last_start = started;
        }
        result.settle_status();
    }

    async fn mark(&self, start: Instant, end: Instant) -> Mark {
        let mut metrics = BTreeMap::new();
        for (c, p) in &self.watched_metrics {
            if let Ok(m) = self.env.metrics(c, p).await {
                metrics.insert((c.clone(), p.clone()), m);
            }
        }
        let mut mirrors = BTreeMap::new();
        for c in &self.watched_mirrors {
            mirrors.insert(c.clone(), self.env.mirrors(c).await.unwrap_or_default());
        }
        Mark {
            start,
            end,
            metrics,
            mirrors,
            leaders: BTreeMap::new(),
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
                let (net, target) = self
                    .env
                    .upstream(&def.from, &def.caller, &def.service)
                    .await?;
                let protocol = def.protocol.unwrap_or(if def.service == "echo" {
                    Protocol::Tcp
                } else {
                    Protocol::Http
                });
                let headers = def.headers.clone().into_iter().collect();
                let tr = Traffic::start(&net, target, protocol, def.rate, def.duration, headers);
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
            Action::Kill(t) | Action::Pause(t) | Action::Resume(t) => {
                let f = match st.action {
                    Action::Kill(_) => Fault::Kill,
                    Action::Pause(_) => Fault::Pause,
                    _ => Fault::Resume,
                };
                let picked = super::replica::resolve(self.env, t).await?;
                self.env.fault(t, picked.as_deref(), f).await?;
                Ok(Done::picked(picked))
            }
            Action::Start(t) | Action::Restart(t) => {
                let restart = matches!(st.action, Action::Restart(_));
                let picked = super::replica::resolve(self.env, t).await?;
                self.env.start(t, picked.as_deref(), restart).await?;
                Ok(Done::picked(picked))
            }
            Action::Rollout(t) => {
                let began = Instant::now();
                self.env.rollout(t).await?;
                Ok(Done {
                    message: Some(format!("took {}", fmt_ms(began.elapsed()))),
                    ..Done::ok()
                })
            }
            Action::Partition(c) => self
                .env
                .partition(&c.cluster, true)
                .await
                .map(|()| Done::ok()),
            Action::Heal(c) => self
                .env
                .partition(&c.cluster, false)
                .await
                .map(|()| Done::ok()),
            Action::Degrade(d) => Ok(match self.env.degrade(d).await? {
                Ok(()) => Done::ok(),
                Err(why) => Done {
                    status: StepStatus::Skipped,
                    message: Some(format!(
                        "NOT RUN: tc netem is not available here, so latency and loss cannot be \
                         added ({why}); the rest of this scenario is skipped"
                    )),
                    measured: None,
                },
            }),
            Action::Undegrade(c) => self.env.undegrade(&c.cluster).await.map(|()| Done::ok()),
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
                self.env
                    .set_exported(&r.cluster, &r.service, on)
                    .await
                    .map(|()| Done::ok())
            }
            Action::Link(l) => self
                .env
                .link(&l.cluster, &l.peer)
                .await
                .map(|()| Done::ok()),
            Action::Route(r) => self
                .env
                .put_route(&r.cluster, &r.route)
                .await
                .map(|_| Done::ok()),
            Action::Unlink(l) => self
                .env
                .unlink(&l.cluster, &l.peer)
                .await
                .map(|()| Done::ok()),
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
        let within = self.budget(st);
        let timeout = st
            .timeout
            .unwrap_or_else(|| within.map_or(WAIT_TIMEOUT, |w| w + WAIT_TIMEOUT));
        let deadline = Instant::now() + timeout;
        let mut why;
        loop {
            match self.condition(c, since).await? {
                Ok(at) => {
                    let measured = at.saturating_duration_since(since);
                    if let Some(budget) = within
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
                let budget = within
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
                        super::check::shares(&seen[seen.len().saturating_sub(*calls)..])
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
                let found = self.env.mirror_state(cluster, service, origin).await?;
                if state.holds(found) {
                    Ok(now)
                } else {
                    Err(format!("the mirror is {}", MirrorState::describe(found)))
                }
            }
            Condition::Leader { cluster, not } => {
                let now = Instant::now();
                let before = not
                    .as_ref()
                    .and_then(|n| self.marks.get(n))
                    .and_then(|m| m.leaders.get(cluster).cloned().flatten());
                let leader = self.env.leader(cluster).await?;
                let replicas = self
                    .env
                    .replicas(cluster, crate::dev::CONTROLLER_PROCESS)
                    .await?;
                let running = |l: &str| replicas.iter().any(|(n, up)| n == l && *up);
                match leader {
                    None => Err("the Lease names no holder".into()),
                    Some(l) if before.as_deref() == Some(l.as_str()) => Err(format!(
                        "the Lease still names {l}, the leader at {}",
                        not.as_deref().unwrap_or_default()
                    )),
                    Some(l) if !running(&l) => Err(format!(
                        "the Lease names {l}, which is not a running replica"
                    )),
                    Some(_) => Ok(now),
                }
            }
            Condition::Ready { cluster, process } => self
                .env
                .ready(cluster, process)
                .await
                .map(|()| Instant::now()),
        })
    }

    async fn probe(&mut self, p: &Probe) -> anyhow::Result<Done> {
        let (what, got) = match (&p.caller, &p.to.service) {
            (Some(caller), Some(svc)) => {
                let got = self.env.call(&p.from, caller, svc).await?;
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
            _ => {
                let (addr, got) = self.env.probe(&p.from, &p.to, p.sni.as_deref()).await?;
                let got = got.and_then(|line| {
                    if probe::success(&line) {
                        Ok(line)
                    } else {
                        Err(format!("answered {line:?}"))
                    }
                });
                (
                    format!(
                        "{} of {} ({addr}) from a pod in {} without a mesh certificate{}",
                        p.to.process.as_deref().unwrap_or_default(),
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
}
