//! Network namespaces for a federation whose clusters truly cannot reach
//! each other: one namespace per cluster (its pods on the namespace's own
//! loopback) and a "WAN" namespace holding a bridge that every cluster's
//! `wan0` veth is plugged into. Only the gateways listen on the WAN, so
//! one cluster reaches another through its gateway or not at all.
//!
//! Every namespace of a federation is named `PREFIX-...`, the prefix
//! derived from the federation directory, so a run that was killed is
//! found and removed by the next one with the same directory. Nothing is
//! created in this machine's own network: both ends of each veth are made
//! inside the namespaces.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The WAN's addresses: `198.18.0.0/24` (RFC 2544's benchmarking range),
/// present only inside the namespaces; cluster N (from 0) gets `.N+1`.
const WAN_NET: [u8; 3] = [198, 18, 0];
const WAN_BRIDGE: &str = "br0";
/// A cluster's interface onto the WAN.
pub const WAN_IFACE: &str = "wan0";

/// The namespaces of one federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Every namespace's name starts with it.
    pub prefix: String,
    /// The WAN namespace (the bridge).
    pub wan: String,
    pub clusters: Vec<ClusterNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNet {
    pub cluster: String,
    pub netns: String,
    /// The cluster's address on the WAN (where its gateway listens).
    pub wan_ip: Ipv4Addr,
}

/// The path the kernel object of a named namespace is pinned at.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// `mfs-XXXXXX`: a short name that is the same for the same directory.
pub fn prefix_for(dir: &std::path::Path) -> String {
    // FNV-1a: stable across runs and builds (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("mfs-{:06x}", h & 0xff_ffff)
}

impl Network {
    /// The plan for `clusters` (nothing is created yet).
    pub fn plan(prefix: &str, clusters: &[String]) -> Self {
        Self {
            prefix: prefix.to_owned(),
            wan: format!("{prefix}-wan"),
            clusters: clusters
                .iter()
                .enumerate()
                .map(|(i, c)| ClusterNet {
                    cluster: c.clone(),
                    netns: format!("{prefix}-c-{c}"),
                    wan_ip: Ipv4Addr::new(
                        WAN_NET[0],
                        WAN_NET[1],
                        WAN_NET[2],
                        u8::try_from(i + 1).expect("at most 10 clusters (checked)"),
                    ),
                })
                .collect(),
        }
    }

    pub fn cluster(&self, name: &str) -> anyhow::Result<&ClusterNet> {
        self.clusters
            .iter()
            .find(|c| c.cluster == name)
            .with_context(|| format!("cluster {name} has no network namespace"))
    }

    /// Creates the namespaces, the bridge and the veths. On failure,
    /// removes whatever it made.
    pub fn create(&self) -> anyhow::Result<()> {
        preflight()?;
        let made = self.create_all();
        if made.is_err()
            && let Err(e) = destroy(&self.prefix)
        {
            eprintln!("warning: {e:#}");
        }
        made
    }

    fn create_all(&self) -> anyhow::Result<()> {
        let wan = self.wan.as_str();
        ip(&["netns", "add", wan])?;
        ip(&["-n", wan, "link", "set", "lo", "up"])?;
        ip(&["-n", wan, "link", "add", WAN_BRIDGE, "type", "bridge"])?;
        ip(&["-n", wan, "link", "set", WAN_BRIDGE, "up"])?;
        for (i, c) in self.clusters.iter().enumerate() {
            let ns = c.netns.as_str();
            let port = format!("c{i}");
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // Both ends are made inside namespaces: the WAN side first, its
            // peer moved straight into the cluster.
            ip(&[
                "-n", wan, "link", "add", &port, "type", "veth", "peer", "name", WAN_IFACE,
                "netns", ns,
            ])?;
            ip(&["-n", wan, "link", "set", &port, "master", WAN_BRIDGE])?;
            ip(&["-n", wan, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", c.wan_ip),
                "dev",
                WAN_IFACE,
            ])?;
            ip(&["-n", ns, "link", "set", WAN_IFACE, "up"])?;
        }
        Ok(())
    }

    /// Cuts (or restores) the cluster's WAN interface with netfilter: every
    /// packet in or out on `wan0` is dropped, as a network partition would.
    pub fn partition(&self, cluster: &str, cut: bool) -> anyhow::Result<()> {
        let ns = &self.cluster(cluster)?.netns;
        let op = if cut { "-I" } else { "-D" };
        for rule in [["INPUT", "-i"], ["OUTPUT", "-o"]] {
            in_netns(
                ns,
                "iptables",
                &["-w", op, rule[0], rule[1], WAN_IFACE, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Adds latency and loss to everything the cluster sends on the WAN
    /// (tc netem). `Err` says why it cannot: this kernel may lack netem.
    pub fn impair(&self, cluster: &str, latency: Duration, loss: f64) -> anyhow::Result<()> {
        let ns = &self.cluster(cluster)?.netns;
        let delay = format!("{}ms", latency.as_millis());
        let loss = format!("{loss}%");
        ip_tc(
            ns,
            &[
                "qdisc", "replace", "dev", WAN_IFACE, "root", "netem", "delay", &delay, "loss",
                &loss,
            ],
        )
    }

    /// Removes what [`Network::impair`] added.
    pub fn unimpair(&self, cluster: &str) -> anyhow::Result<()> {
        let ns = &self.cluster(cluster)?.netns;
        ip_tc(ns, &["qdisc", "del", "dev", WAN_IFACE, "root"])
    }
}

/// The local provider needs root and iproute2.
pub fn preflight() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "network namespaces need root: run the local provider as root (CI runs as root), \
             or use --provider kind"
        );
    }
    if Command::new("ip").arg("-V").output().is_err() {
        bail!("`ip` (iproute2) is not installed: apt-get install iproute2");
    }
    Ok(())
}

/// Whether this kernel can add latency and loss (`sch_netem`), tried on a
/// throwaway namespace's loopback.
pub fn netem_available(prefix: &str) -> anyhow::Result<Result<(), String>> {
    let ns = format!("{prefix}-probe");
    ip(&["netns", "add", &ns])?;
    let tried = ip_tc(
        &ns,
        &["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
    );
    ip(&["netns", "del", &ns])?;
    Ok(tried.map_err(|e| format!("{e:#}")))
}

fn ip_tc(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("tc", &full).map(|_| ())
}

/// `ip ARGS`, its stdout, or an error with what it said.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

fn in_netns(ns: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces whose names start with `prefix`.
pub fn existing(prefix: &str) -> anyhow::Result<Vec<String>> {
    let list = ip(&["netns", "list"])?;
    let mine = format!("{prefix}-");
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&mine))
        .map(str::to_owned)
        .collect())
}

/// Kills every process still inside a namespace named `PREFIX-...` and
/// deletes those namespaces (their veths go with them). Returns what it
/// removed.
pub fn destroy(prefix: &str) -> anyhow::Result<Vec<String>> {
    let found = existing(prefix)?;
    let mut problems = Vec::new();
    for ns in &found {
        if let Err(e) = kill_inside(ns) {
            problems.push(format!("{e:#}"));
        }
        if let Err(e) = ip(&["netns", "del", ns]) {
            problems.push(format!("{e:#}"));
        }
    }
    let left = existing(prefix)?;
    if !left.is_empty() || !problems.is_empty() {
        bail!(
            "could not remove network namespaces {}: {}",
            left.join(", "),
            problems.join("; ")
        );
    }
    Ok(found)
}

/// SIGKILLs every process inside `ns` and waits (up to 3 s) until none is left.
fn kill_inside(ns: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let pids: Vec<i32> = ip(&["netns", "pids", ns])?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in &pids {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("processes {pids:?} in {ns} would not die");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_short_and_per_directory() {
        let a = prefix_for(std::path::Path::new("/tmp/a"));
        assert_eq!(a, prefix_for(std::path::Path::new("/tmp/a")));
        assert_ne!(a, prefix_for(std::path::Path::new("/tmp/b")));
        assert_eq!(a.len(), "mfs-".len() + 6);
        let n = Network::plan(&a, &["east".into(), "west".into()]);
        assert_eq!(n.clusters[1].wan_ip, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(n.clusters[0].netns, format!("{a}-c-east"));
    }
}
