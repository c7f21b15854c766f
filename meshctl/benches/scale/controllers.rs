//! The controller replicas of a running federation and what /proc says of
//! each: CPU seconds so far (utime + stime), RSS now (`VmRSS`) and at its
//! most (`VmHWM`).

use anyhow::{Context, bail};
use meshctl::dev::{Kind, Process, Topology};

use crate::procs;

/// One replica of a cluster's controller.
#[derive(Debug, Clone)]
pub struct Replica {
    pub cluster: String,
    /// Index of its cluster in the topology.
    pub index: usize,
    pub process: Process,
}

/// A replica at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub cpu_secs: f64,
    pub rss_kib: u64,
    pub peak_kib: u64,
}

impl Replica {
    /// Every controller replica, cluster by cluster.
    pub fn all(t: &Topology) -> Vec<Self> {
        t.clusters
            .iter()
            .enumerate()
            .flat_map(|(index, c)| {
                c.processes
                    .iter()
                    .filter(|p| p.kind == Kind::Controller)
                    .map(move |p| Self {
                        cluster: c.name.clone(),
                        index,
                        process: p.clone(),
                    })
            })
            .collect()
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.process
            .pid
            .with_context(|| format!("{}/{} has no pid", self.cluster, self.process.name))
    }

    /// Fails, with the end of its log, if the replica is gone.
    pub fn check_running(&self) -> anyhow::Result<()> {
        if !meshctl::dev::running(&self.process) {
            bail!(
                "{}/{} exited; the end of {}:\n{}",
                self.cluster,
                self.process.name,
                self.process.log.display(),
                meshctl::dev::log_tail(&self.process.log, 8)
            );
        }
        Ok(())
    }

    pub fn sample(&self) -> anyhow::Result<Sample> {
        self.check_running()?;
        let pid = self.pid()?;
        Ok(Sample {
            cpu_secs: procs::cpu_secs(pid)?,
            rss_kib: procs::rss_kib(pid)?,
            peak_kib: procs::status_kib(pid, "VmHWM")?,
        })
    }
}

/// Samples every replica.
pub fn sample_all(replicas: &[Replica]) -> anyhow::Result<Vec<Sample>> {
    replicas.iter().map(Replica::sample).collect()
}

/// A replica over a phase: the CPU it used and how it ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    pub cpu_secs: f64,
    pub end: Sample,
}

/// Every replica's phase from `before` (its samples) to now.
pub fn since(replicas: &[Replica], before: &[Sample]) -> anyhow::Result<Vec<Phase>> {
    let after = sample_all(replicas)?;
    Ok(before
        .iter()
        .zip(after)
        .map(|(b, end)| Phase {
            cpu_secs: end.cpu_secs - b.cpu_secs,
            end,
        })
        .collect())
}
