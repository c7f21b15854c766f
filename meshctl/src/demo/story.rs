//! The demo's steps after the start: each breaks or mends something,
//! waits for the mesh to react, and records what it measured and what did
//! not behave.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::manifest_dir::ManifestDir;
use anyhow::{Context, bail};
use rustix::process::Signal;

use super::narrate::Narrator;
use super::report::{Step, ms, share_text, shares};
use super::traffic::{Call, Traffic};
use super::{CALLERS, PROPAGATION_BUDGET, SETTLED, STEADY};
use crate::dev::{self, Kind, SHOP, Topology};

pub(super) struct Story<'a> {
    pub(super) n: &'a Narrator,
    pub(super) lease_ttl: Duration,
    pub(super) traffic: &'a Traffic,
    pub(super) timings: &'a mut BTreeMap<String, u64>,
}

impl Story<'_> {
    /// Every step after the start; a step that misbehaves is recorded and
    /// the story goes on. `Err` only when the federation itself cannot be
    /// driven any more.
    pub(super) async fn tell(mut self, t: &mut Topology) -> anyhow::Result<Vec<Step>> {
        let exe = std::env::current_exe().context("finding the meshctl executable")?;
        let east = t.cluster("east")?.clone();
        let client_zone = east.zones[0].clone();
        let api_procs: Vec<String> = east
            .processes
            .iter()
            .filter(|p| {
                p.kind == Kind::Api || (p.kind == Kind::Sidecar && p.name.starts_with("api-"))
            })
            .map(|p| p.name.clone())
            .collect();
        let api_ips: Vec<IpAddr> = east
            .processes
            .iter()
            .filter(|p| p.kind == Kind::Api)
            .filter_map(|p| p.listen.values().next().map(|a| a.ip()))
            .collect();
        let mut steps = Vec::new();

        // --- 2: local
        let mut step = self.begin(
            "Call api from east",
            &format!(
                "east's client calls api.shop through its sidecar, {CALLERS} callers at a time. \
                 East has api in its own zone {client_zone}: the calls stay there."
            ),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let calls = self.traffic.since(step.from);
        let elsewhere = calls
            .iter()
            .filter_map(|c| c.result.as_ref().ok())
            .filter(|s| s.cluster != "east" || s.zone != client_zone)
            .count();
        if elsewhere > 0 {
            step.problems.push(format!(
                "{elsewhere} call(s) served outside east's zone {client_zone}"
            ));
        }
        step.measured.push(latency_text(&calls));
        if let Some(caller) = calls
            .iter()
            .find_map(|c| c.result.as_ref().ok())
            .and_then(|s| s.caller.clone())
        {
            self.n
                .detail(&format!("api saw the caller as {caller} (mTLS end to end)"));
        }
        steps.push(self.end(step).await);

        // --- 3: failover
        let mut step = self.begin(
            "Stop east's api",
            "Both of east's api pods crash. Their endpoints are marked not ready, as Kubernetes \
             would. Calls must go on without a single failure, served by the nearest other \
             cluster: central, in east's region.",
        );
        let procs: Vec<dev::Process> = api_procs
            .iter()
            .map(|name| east.process(name).cloned())
            .collect::<anyhow::Result<_>>()?;
        let refs: Vec<&dev::Process> = procs.iter().collect();
        let stopped = kill(&refs).await;
        dev::set_endpoint_ready(&east.state_dir, "api", &api_ips, false)?;
        if let Some(took) = self
            .moved(
                &mut step,
                stopped,
                "central",
                Duration::from_secs(15),
                "failover",
            )
            .await
        {
            step.measured
                .push(format!("failover to central in {} ms", ms(took)));
            step.measured
                .push(slowest(self.traffic, stopped, stopped + took));
        }
        steps.push(self.end(step).await);

        // --- 4: gateway dies
        let mut step = self.begin(
            "Kill central's gateway",
            "central's east-west gateway dies while it carries east's calls. Calls must move to \
             west, and east and west must withdraw central once its lease runs out.",
        );
        let gateway = t.cluster("central")?.process("gateway")?.clone();
        let killed = kill(&[&gateway]).await;
        if let Some(took) = self
            .moved(
                &mut step,
                killed,
                "west",
                Duration::from_secs(15),
                "gatewayFailover",
            )
            .await
        {
            step.measured
                .push(format!("calls on west in {} ms", ms(took)));
        }
        let budget = self.lease_ttl + Duration::from_secs(1);
        // Withdrawn: the mirror is gone, or none of its endpoints is ready.
        let withdrawn_ = |m: Option<bool>| m != Some(true);
        let withdrawn = wait_mirrors(t, &["east", "west"], "central", withdrawn_, budget * 3)
            .await
            .map(|at| at.saturating_duration_since(killed));
        match withdrawn {
            Some(took) => {
                self.timings.insert("withdrawal".into(), ms(took));
                step.measured.push(format!(
                    "central withdrawn in {:.1} s (lease {} s)",
                    took.as_secs_f64(),
                    self.lease_ttl.as_secs()
                ));
                if took > budget {
                    step.problems.push(format!(
                        "withdrawal took {:.1} s, past the lease TTL of {} s",
                        took.as_secs_f64(),
                        self.lease_ttl.as_secs()
                    ));
                }
            }
            None => step
                .problems
                .push("east and west did not withdraw central".into()),
        }
        steps.push(self.end(step).await);

        // --- 5: failback
        let mut step = self.begin(
            "Restore east's api",
            "east's api pods start again and become ready. Calls come home to east once it has \
             stayed healthy for the failback hold (10 s by default), so a flapping backend \
             cannot pull traffic back and forth.",
        );
        let east_mut = t
            .clusters
            .iter_mut()
            .find(|c| c.name == "east")
            .context("east")?;
        for name in &api_procs {
            dev::spawn(&exe, east_mut.process_mut(name)?, None)?;
        }
        t.save()?;
        let east_now = t.cluster("east")?.clone();
        for name in &api_procs {
            let p = east_now.process(name)?;
            wait_answers(p, Duration::from_secs(20)).await?;
        }
        let restored = Instant::now();
        dev::set_endpoint_ready(&east.state_dir, "api", &api_ips, true)?;
        if let Some(took) = self
            .moved(
                &mut step,
                restored,
                "east",
                Duration::from_secs(30),
                "failback",
            )
            .await
        {
            step.measured
                .push(format!("back on east in {:.1} s", took.as_secs_f64()));
        }
        steps.push(self.end(step).await);

        // --- 6: unexport
        let mut step = self.begin(
            "Unexport api in west",
            "west stops exporting api. Its mirror must disappear from east and central.",
        );
        let west = t.cluster("west")?.clone();
        let written = Instant::now();
        crate::target::FileCluster::open(&west.state_dir)?
            .set_exported(SHOP, "api", false)
            .await?;
        match wait_mirrors(
            t,
            &["east", "central"],
            "west",
            |m| m.is_none(),
            Duration::from_secs(10),
        )
        .await
        {
            Some(at) => {
                let took = at.saturating_duration_since(written);
                self.timings.insert("propagation".into(), ms(took));
                step.measured
                    .push(format!("gone from east and central in {} ms", ms(took)));
                if took > PROPAGATION_BUDGET {
                    step.problems.push(format!(
                        "propagation took {} ms, past the {} ms budget",
                        ms(took),
                        ms(PROPAGATION_BUDGET)
                    ));
                }
            }
            None => step
                .problems
                .push("west's api is still mirrored after 10 s".into()),
        }
        // Calls go on meanwhile, served at home.
        tokio::time::sleep(STEADY).await;
        steps.push(self.end(step).await);

        // --- 7: rejoin
        let mut step = self.begin(
            "Central's gateway returns",
            "central's gateway starts again. east and west must take central back.",
        );
        let central = t
            .clusters
            .iter_mut()
            .find(|c| c.name == "central")
            .context("central")?;
        dev::spawn(&exe, central.process_mut("gateway")?, None)?;
        t.save()?;
        let started = Instant::now();
        match wait_mirrors(
            t,
            &["east", "west"],
            "central",
            |m| m == Some(true),
            Duration::from_secs(30),
        )
        .await
        {
            Some(at) => {
                let took = at.saturating_duration_since(started);
                self.timings.insert("rejoin".into(), ms(took));
                step.measured
                    .push(format!("central back in {:.1} s", took.as_secs_f64()));
            }
            None => step
                .problems
                .push("east and west did not take central back within 30 s".into()),
        }
        steps.push(self.end(step).await);
        Ok(steps)
    }

    /// Waits for the calls sent after `since` to settle on `cluster`,
    /// records how long the first of them took to arrive as `timing`, then
    /// watches the calls stay there for [`STEADY`] (no flapping).
    async fn moved(
        &mut self,
        step: &mut Step,
        since: Instant,
        cluster: &str,
        within: Duration,
        timing: &str,
    ) -> Option<Duration> {
        let Some(first) = self.traffic.settle(since, cluster, SETTLED, within).await else {
            step.problems.push(format!(
                "calls did not move to {cluster} within {} s (lately: {})",
                within.as_secs(),
                share_text(&shares(&self.traffic.since(since)))
            ));
            return None;
        };
        let took = first.done.saturating_duration_since(since);
        self.timings.insert(timing.into(), ms(took));
        let settled = Instant::now();
        tokio::time::sleep(STEADY).await;
        let strays = self
            .traffic
            .since(settled)
            .iter()
            .filter(|c| c.served_by().is_some_and(|by| by != cluster))
            .count();
        if strays > 0 {
            step.problems.push(format!(
                "{strays} call(s) left {cluster} again after the switch"
            ));
        }
        Some(took)
    }

    fn begin(&self, name: &str, story: &str) -> Step {
        self.n.step(name, story);
        Step::new(name)
    }

    async fn end(&self, mut step: Step) -> Step {
        let to = Instant::now();
        step.to = Some(to);
        self.traffic.recorded_until(to).await;
        let calls = self.traffic.since(step.from);
        let mine: Vec<_> = calls
            .iter()
            .filter(|c| step.to.is_none_or(|to| c.sent < to))
            .collect();
        let failed = mine.iter().filter(|c| c.result.is_err()).count();
        self.n.detail(&format!(
            "{} calls, {failed} failed, served by {}{}",
            mine.len(),
            share_text(&shares(mine.iter().copied())),
            if step.measured.is_empty() {
                String::new()
            } else {
                format!("; {}", step.measured.join("; "))
            }
        ));
        for p in &step.problems {
            self.n.detail(&format!("✖ {p}"));
        }
        step
    }
}

/// SIGKILL, as a crash; returns when it was sent.
async fn kill(procs: &[&dev::Process]) -> Instant {
    let at = Instant::now();
    for p in procs {
        let _ = dev::signal(p, Signal::KILL);
    }
    // Reaps them (they are this process's children).
    dev::stop(procs, Duration::from_secs(2)).await;
    at
}

async fn wait_answers(p: &dev::Process, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        match dev::answers(&dev::Net::Host, p).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("{} did not start again: {e}", p.name)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until, in every cluster of `clusters`, `origin`'s api mirror is as
/// `want` says (given `Some(ready)`, or `None` for no mirror). Returns when
/// it first held everywhere.
async fn wait_mirrors(
    t: &Topology,
    clusters: &[&str],
    origin: &str,
    want: impl Fn(Option<bool>) -> bool,
    within: Duration,
) -> Option<Instant> {
    let dirs: Vec<ManifestDir> = clusters
        .iter()
        .filter_map(|c| t.cluster(c).ok())
        .filter_map(|c| ManifestDir::open(&c.state_dir).ok())
        .collect();
    let deadline = Instant::now() + within;
    loop {
        let now = Instant::now();
        if dirs
            .iter()
            .all(|d| dev::mirror_ready(d, origin).is_ok_and(&want))
        {
            return Some(now);
        }
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn latency_text(calls: &[Call]) -> String {
    let mut l: Vec<Duration> = calls
        .iter()
        .filter(|c| c.result.is_ok())
        .map(|c| c.done - c.sent)
        .collect();
    if l.is_empty() {
        return "no calls".into();
    }
    l.sort();
    let q = |f: f64| l[((l.len() - 1) as f64 * f) as usize];
    format!(
        "latency p50 {:.1} ms, p99 {:.1} ms",
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3
    )
}

/// The slowest call sent during a switch (retries make it slower, not failed).
fn slowest(traffic: &Traffic, from: Instant, to: Instant) -> String {
    let worst = traffic
        .since(from)
        .iter()
        .filter(|c| c.sent <= to)
        .map(|c| c.done - c.sent)
        .max()
        .unwrap_or_default();
    format!(
        "slowest call in the switch {:.0} ms",
        worst.as_secs_f64() * 1e3
    )
}
