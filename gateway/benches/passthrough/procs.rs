//! Child processes (backend, gateway, HAProxy) behind guards that kill them
//! when dropped — at the end, on an error or on a panic — and what /proc
//! says about them.

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
    /// Held open: the backend exits when it closes.
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
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the end of its log) if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("wait")? {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("; end of {}:\n{tail}", path.display())
    }

    /// Resident set size, from `VmRSS` in /proc/PID/status.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .with_context(|| format!("/proc status of {}", self.name))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line")
    }

    /// CPU time so far (see [`cpu_secs`]).
    pub fn cpu_secs(&self) -> anyhow::Result<f64> {
        cpu_secs(self.pid()).with_context(|| format!("CPU time of {}", self.name))
    }
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

/// A free loopback port (released at once: good enough on a quiet machine).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind")?;
    Ok(l.local_addr().context("addr")?.port())
}

fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let g = f.try_clone().context("dup log")?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// Starts the backend (this binary, `--serve-backend`); returns its ports.
pub fn spawn_backend(creds: &Path) -> anyhow::Result<(Proc, Vec<u16>)> {
    let exe = std::env::current_exe().context("current exe")?;
    let mut child = Command::new(exe)
        .arg("--serve-backend")
        .arg(creds)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn backend")?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("backend stdout")?;
    let mut proc = Proc {
        name: "backend",
        child,
        _stdin: stdin,
        log: None,
    };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("backend ports")?;
    let ports = line.trim().strip_prefix("ports ").map(|p| {
        p.split(' ')
            .map(str::parse)
            .collect::<Result<Vec<u16>, _>>()
    });
    match ports {
        Some(Ok(p)) if p.len() == super::backend::PATHS => Ok((proc, p)),
        _ => {
            proc.check_alive()?;
            bail!("backend said {line:?}, not its ports")
        }
    }
}

/// Where the gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `meshfed-gateway` and waits until `/ready` answers 200.
pub async fn spawn_gateway(
    creds: &Path,
    discovery: SocketAddr,
    log: &Path,
) -> anyhow::Result<(Proc, GatewayAddrs)> {
    let addrs = GatewayAddrs {
        listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let (out, err) = log_file(log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_meshfed-gateway"))
        .args(["--cluster", "east", "--name", "bench"])
        .arg("--listen")
        .arg(addrs.listen.to_string())
        .arg("--admin-listen")
        .arg(addrs.admin.to_string())
        .arg("--discovery")
        .arg(discovery.to_string())
        .arg("--credentials-dir")
        .arg(creds)
        .args(["--max-connections-per-source", "20000"])
        .args(["--drain-timeout", "1s"])
        .env("MESHFED_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawn meshfed-gateway")?;
    let mut proc = Proc {
        name: "meshfed-gateway",
        child,
        _stdin: None,
        log: Some(log.into()),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        proc.check_alive()?;
        if let Ok((200, _)) = http_get(addrs.admin, "/ready").await {
            return Ok((proc, addrs));
        }
        if Instant::now() > deadline {
            bail!("meshfed-gateway not ready within 20 s{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `haproxy` on the PATH or in the usual sbin directories.
pub fn find_haproxy() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// HAProxy in TCP mode: waits for the ClientHello, routes on its SNI to the
/// backend, and refuses anything else — the gateway's job, done the
/// HAProxy way.
pub async fn spawn_haproxy(
    exe: &Path,
    dir: &Path,
    backend: SocketAddr,
    maxconn: usize,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let sni = meshfed_api::sni::service("api", "shop", 443);
    let config = format!(
        "global
    maxconn {maxconn}
    # Few pipes: two descriptors each, under the same 20,000 limit.
    maxpipes 16
    nbthread 2

defaults
    mode tcp
    # Kernel splicing where it pays, as the gateway splices through pipes.
    option splice-auto
    timeout connect 1s
    timeout client 1h
    timeout server 1h

frontend east_west
    bind {listen}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    tcp-request content reject
    use_backend shop_api if {{ req_ssl_sni -i {sni} }}

backend shop_api
    server api {backend}
"
    );
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config).context("write haproxy.cfg")?;
    let log = dir.join("haproxy.log");
    let (out, err) = log_file(&log)?;
    let child = Command::new(exe)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("spawn haproxy")?;
    let mut proc = Proc {
        name: "haproxy",
        child,
        _stdin: None,
        log: Some(log),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        proc.check_alive()?;
        if TcpStream::connect(listen).await.is_ok() {
            return Ok((proc, listen));
        }
        if Instant::now() > deadline {
            bail!("haproxy not listening within 10 s{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
