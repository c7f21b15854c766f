//! Child processes behind guards that kill them when dropped — at the end,
//! on an error or on a panic — and what /proc says about them and the
//! machine. Shared by the gateway's, the sidecar's and meshctl's benches.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A child killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Child,
    /// Held open: a re-executed bench binary exits when it closes.
    _stdin: Option<ChildStdin>,
    log: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Starts `cmd` with stdout and stderr going to the file `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone().context("dup log")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Self {
            name,
            child,
            _stdin: None,
            log: Some(log.into()),
        })
    }

    /// Starts this binary again with `args` as a server that prints
    /// `ports P1 P2 ...` (`ports` of them) first and exits when its stdin
    /// closes (held open here until the guard drops).
    pub fn spawn_self(
        name: &'static str,
        args: &[&OsStr],
        ports: usize,
    ) -> anyhow::Result<(Self, Vec<u16>)> {
        let exe = std::env::current_exe().context("current exe")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let mut proc = Self {
            name,
            child,
            _stdin: stdin,
            log: None,
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("{name} ports"))?;
        let said = line.trim().strip_prefix("ports ").map(|p| {
            p.split(' ')
                .map(str::parse)
                .collect::<Result<Vec<u16>, _>>()
        });
        match said {
            Some(Ok(p)) if p.len() == ports => Ok((proc, p)),
            _ => {
                proc.check_alive()?;
                bail!("{name} said {line:?}, not its {ports} ports")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the child as an orchestrator does — SIGTERM, then up to
    /// `grace` to exit — so what it writes at exit (a profile) is written.
    /// Fails if it does not exit, or exits with a failure, in that time
    /// (the guard kills it then).
    #[allow(
        dead_code,
        reason = "the sidecar bench's holds end with it; this bench's do not"
    )]
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        use rustix::process::{Pid, Signal, kill_process};
        let pid = Pid::from_raw(self.pid() as i32).context("pid 0")?;
        if self.child.try_wait().context("wait")?.is_some() {
            bail!("{} had already exited{}", self.name, self.log_tail());
        }
        kill_process(pid, Signal::TERM).with_context(|| format!("SIGTERM {}", self.name))?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("wait")? {
                if !status.success() {
                    bail!("{} exited ({status}){}", self.name, self.log_tail());
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} was still running {grace:?} after SIGTERM", self.name)
    }

    /// Fails (with the end of its log) if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("wait")? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The end of its log, to say why it failed.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("; end of {}:\n{tail}", path.display())
    }

    /// Resident set size (see [`rss_kib`]).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid()).with_context(|| format!("RSS of {}", self.name))
    }

    /// Everything the child has logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Waits (up to 20 s) until the admin listener `admin` answers `/ready`
    /// with 200.
    pub async fn wait_ready(&mut self, admin: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = http_get(admin, "/ready").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready within 20 s{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Resident set size of process `pid`, from `VmRSS` in /proc/PID/status.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A kB field of /proc/PID/status: `VmRSS`, `VmHWM` (the peak RSS)...
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("/proc status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} line"))
}

/// User + system CPU time of process `pid` so far, all threads (in clock
/// ticks of 1/100 s).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("/proc stat")?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i).context("stat field")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Program `name` on the PATH or in the usual sbin directories (where
/// Debian puts daemons such as HAProxy and nginx).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free loopback port (released at once: good enough on a quiet machine).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    Ok(l.local_addr().context("addr")?.port())
}

/// A plain HTTP/1.1 GET: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut resp)).await??;
    let code = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// The machine, for the record.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cpus} CPUs ({model}), Linux {}, loopback; {}",
        kernel.trim(),
        machine_load()
    )
}

pub fn machine_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "load average {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    )
}
