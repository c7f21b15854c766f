//! Starting and stopping a local federation's processes. Each runs in its own
//! process group (a Ctrl-C at the terminal that started it does not reach
//! it) with its output in its log file, and is known by pid *and* kernel
//! start time, so a pid the kernel has since handed to an unrelated process
//! is never signalled.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use rustix::process::{Pid, Signal, WaitOptions};

use super::topology::Process;

/// Starts `p` as `EXE dev exec KIND ARGS...`, inside the network namespace
/// `netns` if given, and records its pid.
pub fn spawn(exe: &Path, p: &mut Process, netns: Option<&str>) -> anyhow::Result<()> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .with_context(|| format!("opening {}", p.log.display()))?;
    // `ip netns exec` enters the namespace and execs: the pid is the process's own.
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let child = command
        .args(["dev", "exec", p.kind.as_str()])
        .args(&p.args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} ({})", p.name, exe.display()))?;
    let pid = child.id();
    // Not reaped before this process waits for it, so /proc still has it.
    p.start_time = stat(pid).map(|(_, t)| t);
    p.pid = Some(pid);
    Ok(())
}

/// State letter and start time from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the process `p` recorded is still running (a zombie is not).
pub fn running(p: &Process) -> bool {
    let (Some(pid), Some(start)) = (p.pid, p.start_time) else {
        return false;
    };
    matches!(stat(pid), Some((state, t)) if t == start && !matches!(state, 'Z' | 'X'))
}

/// Sends `signal` to `p` if it is still the process that was started.
pub fn signal(p: &Process, signal: Signal) -> anyhow::Result<()> {
    if !running(p) {
        return Ok(());
    }
    let pid = pid_of(p)?;
    rustix::process::kill_process(pid, signal)
        .with_context(|| format!("signalling {} (pid {pid:?})", p.name))
}

fn pid_of(p: &Process) -> anyhow::Result<Pid> {
    p.pid
        .and_then(|n| i32::try_from(n).ok())
        .and_then(Pid::from_raw)
        .with_context(|| format!("{}: no valid pid recorded", p.name))
}

/// Collects the exit status of `p` if this process started it, so no
/// zombie is left behind; others are reaped by their new parent.
fn reap(p: &Process) {
    if let Ok(pid) = pid_of(p) {
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG);
    }
}

/// Stops every process in `procs`: SIGTERM, then SIGKILL for any still
/// running after `grace`. Returns the names of those that would not die.
pub async fn stop(procs: &[&Process], grace: Duration) -> Vec<String> {
    for p in procs {
        if let Err(e) = signal(p, Signal::TERM) {
            eprintln!("warning: {e:#}");
        }
    }
    if !wait_gone(procs, grace).await {
        for p in procs {
            let _ = signal(p, Signal::KILL);
        }
        wait_gone(procs, Duration::from_secs(3)).await;
    }
    procs
        .iter()
        .filter(|p| running(p))
        .map(|p| p.name.clone())
        .collect()
}

/// Whether `p` has not been reaped yet. A killed process's main thread can
/// be a zombie while its other threads still exit and hold its sockets: only
/// once the whole process is gone can it be reaped, and only then is a port
/// it listened on free for the process started in its place.
fn unreaped(p: &Process) -> bool {
    let (Some(pid), Some(start)) = (p.pid, p.start_time) else {
        return false;
    };
    stat(pid).is_some_and(|(_, t)| t == start)
}

async fn wait_gone(procs: &[&Process], within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        procs.iter().for_each(|p| reap(p));
        if !procs.iter().any(|p| running(p) || unreaped(p)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Listening TCP sockets on addresses `inside` accepts (from
/// `/proc/net/tcp`): what a stopped federation must not leave behind.
pub fn listening(inside: impl Fn(std::net::Ipv4Addr) -> bool) -> Vec<std::net::SocketAddrV4> {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN.
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (ip, port) = f.get(1)?.split_once(':')?;
            // The kernel prints the address in host byte order.
            let ip = std::net::Ipv4Addr::from(u32::from_be(u32::from_str_radix(ip, 16).ok()?));
            let port = u16::from_str_radix(port, 16).ok()?;
            inside(ip).then_some(std::net::SocketAddrV4::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_proc() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        let found = listening(|ip| ip.is_loopback());
        assert!(
            found.iter().any(|a| a.port() == port),
            "{port} not among {found:?}"
        );
        drop(l);
        let found = listening(|ip| ip.is_loopback());
        assert!(!found.iter().any(|a| a.port() == port));
    }

    #[test]
    fn own_process_is_running_and_a_changed_start_time_is_not() {
        let pid = std::process::id();
        let (_, start) = stat(pid).expect("own stat");
        let mut p = Process {
            name: "self".into(),
            kind: super::super::topology::Kind::Client,
            zone: None,
            listen: Default::default(),
            admin: None,
            identity: None,
            replica_of: None,
            service: None,
            log: "/dev/null".into(),
            args: Vec::new(),
            pid: Some(pid),
            start_time: Some(start),
        };
        assert!(running(&p));
        p.start_time = Some(start + 1);
        assert!(!running(&p), "a reused pid must not count");
    }
}
