//! What a path's proxies cost, from /proc: CPU time and context switches
//! over every thread of every process (nginx serves from worker processes,
//! the sidecars from threads).

use anyhow::Context;

/// `pid` and every process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(children(parent));
        i += 1;
    }
    all
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: state, then the parent's pid.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What the processes `pids` used so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Used {
    pub cpu_secs: f64,
    /// Voluntary and involuntary, every thread.
    pub switches: f64,
}

impl std::ops::Sub for Used {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            cpu_secs: self.cpu_secs - o.cpu_secs,
            switches: self.switches - o.switches,
        }
    }
}

impl std::ops::AddAssign for Used {
    fn add_assign(&mut self, o: Self) {
        self.cpu_secs += o.cpu_secs;
        self.switches += o.switches;
    }
}

pub fn used(pids: &[u32]) -> anyhow::Result<Used> {
    let mut total = Used::default();
    for pid in pids {
        total.cpu_secs += crate::procs::cpu_secs(*pid)?;
        total.switches += switches(*pid)?;
    }
    Ok(total)
}

/// Context switches of every thread of `pid` so far.
fn switches(pid: u32) -> anyhow::Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("threads of {pid}"))?;
    let mut n = 0u64;
    for task in tasks.filter_map(Result::ok) {
        // A thread that just ended has no status left: it switches no more.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            let count = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
            if let Some(c) = count {
                n += c.trim().parse::<u64>().context("ctxt_switches")?;
            }
        }
    }
    Ok(n as f64)
}
