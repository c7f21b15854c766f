//! The proxies under test as child processes: `meshfed-gateway` and HAProxy.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpStream;

use crate::procs::{Proc, free_port};

/// Where the gateway listens.
#[derive(Debug, Clone, Copy)]
pub struct GatewayAddrs {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts `meshfed-gateway` and waits until `/ready` answers 200.
pub async fn spawn_gateway(
    exe: &Path,
    creds: &Path,
    discovery: SocketAddr,
    log: &Path,
) -> anyhow::Result<(Proc, GatewayAddrs)> {
    let addrs = GatewayAddrs {
        listen: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        admin: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
    };
    let mut cmd = Command::new(exe);
    cmd.args(["--cluster", "east", "--name", "bench"])
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
        .env(meshfed_runtime::env::LOG, "warn");
    let mut proc = Proc::spawn("meshfed-gateway", cmd, log)?;
    proc.wait_ready(addrs.admin).await?;
    Ok((proc, addrs))
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
    let mut cmd = Command::new(exe);
    cmd.arg("-db").arg("-f").arg(&cfg);
    let mut proc = Proc::spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
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
