//! The peer in the bench: a pair of nginx proxies shaped as a sidecar pair.
//! The client-side nginx takes the app's plain HTTP/1.1 and sends it over
//! TLS 1.3 with a client certificate to the server-side nginx, which
//! verifies it (and the client verifies the server's name and chain), then
//! passes the request to the same app the sidecars front. Both keep pools of
//! keep-alive connections upstream, as the sidecars do. Each runs two
//! worker processes, as each sidecar runs two runtime threads.
//!
//! The certificates come from the same cluster CA as the sidecars' (ECDSA
//! P-256, leaf and intermediate, depth 2 to the root); the server's names
//! `api.shop.svc.cluster.local` besides its SPIFFE ID, since nginx checks a
//! server by DNS name where a sidecar checks the SPIFFE ID.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshfed_ca::ClusterCa;
use meshfed_trust::paths;
use tokio::net::TcpStream;

use crate::procs::{Proc, free_port};

/// The server name the client-side nginx checks.
const SERVER_NAME: &str = "api.shop.svc.cluster.local";
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// `nginx`, if installed.
pub fn find() -> Option<PathBuf> {
    crate::procs::find_program("nginx")
}

/// The two nginx masters (each with its workers); dropping it stops them.
pub struct Pair {
    /// Where the app's requests go (the client-side nginx).
    pub listen: SocketAddr,
    pub client: Proc,
    pub server: Proc,
}

impl Pair {
    /// Starts the pair in front of `app` with certificates from `ca`
    /// (files and logs in `dir`), and waits until both listen.
    pub async fn start(
        exe: &Path,
        ca: &ClusterCa,
        app: SocketAddr,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let server_dir = dir.join("nginx-server");
        let client_dir = dir.join("nginx-client");
        credentials(
            ca,
            meshfed_testkit::cluster::API,
            &[SERVER_NAME.into()],
            &server_dir,
        )?;
        credentials(ca, meshfed_testkit::cluster::FRONTEND, &[], &client_dir)?;
        let tls_port = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));

        let server = server_config(&server_dir, tls_port, app);
        let server = spawn(exe, "nginx server", &server_dir, &server, tls_port).await?;
        let client = client_config(&client_dir, listen, tls_port);
        let client = spawn(exe, "nginx client", &client_dir, &client, listen).await?;
        Ok(Self {
            listen,
            client,
            server,
        })
    }

    /// Every process of the pair: masters and workers.
    pub fn pids(&self) -> Vec<u32> {
        [&self.client, &self.server]
            .into_iter()
            .flat_map(|p| crate::cost::tree(p.pid()))
            .collect()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.client.check_alive()?;
        self.server.check_alive()
    }
}

impl Drop for Pair {
    /// The masters' guards kill only the masters, and an nginx worker
    /// outlives a master killed outright: each master is stopped (so it
    /// starts no new worker), its workers killed, then the guard kills it.
    fn drop(&mut self) {
        use rustix::process::{Pid, Signal, kill_process};
        let signal = |pid: u32, sig| {
            if let Some(pid) = Pid::from_raw(pid.cast_signed()) {
                let _ = kill_process(pid, sig);
            }
        };
        for proc in [&self.client, &self.server] {
            let tree = crate::cost::tree(proc.pid());
            signal(proc.pid(), Signal::STOP);
            for worker in tree.into_iter().skip(1) {
                signal(worker, Signal::KILL);
            }
        }
    }
}

/// A key, its certificate chain (leaf, intermediate) and the root in
/// `dir`, as PEM files nginx reads.
fn credentials(ca: &ClusterCa, path: &str, dns_names: &[String], dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    // ECDSA P-256, as the mesh's own keys.
    let key = rcgen::KeyPair::generate().context("key")?;
    let id = meshfed_testkit::cluster::id(path);
    let chain = ca
        .issue_serving_leaf(&id, dns_names, &key, VALIDITY)
        .context("issue")?;
    meshfed_trust::write_key(&dir.join(paths::LEAF_KEY), &key.serialize_der(), true)?;
    meshfed_trust::write_certs(&dir.join(paths::LEAF_CERT), &chain, true)?;
    meshfed_trust::write_certs(&dir.join(paths::ROOT_CERT), ca.bundle().roots(), true)?;
    Ok(())
}

/// One end's configuration: its process and files in `dir`, no access log
/// (a sidecar logs no request either), keep-alive without a request cap on
/// both sides, `server` (the listener and its TLS) passing every request to
/// `next` over a pool of keep-alive connections, with `proxy` (what the
/// hop to `next` adds).
fn config(dir: &Path, server: &str, next: &str, proxy: &str) -> String {
    let d = dir.display();
    // As root nginx would hand its workers to `nobody`, who cannot read
    // this directory; the sidecars run as the bench's user too.
    let user = if rustix::process::geteuid().is_root() {
        "user root;"
    } else {
        ""
    };
    format!(
        "{user}
daemon off;
master_process on;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    upstream next {{
        server {next};
        keepalive 32;
        keepalive_requests 10000000;
    }}
    server {{
{server}
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
{proxy}
        }}
    }}
}}
"
    )
}

/// The server side: mTLS in (the client's certificate verified against the
/// root), the verification result to the app as its caller.
fn server_config(dir: &Path, listen: SocketAddr, app: SocketAddr) -> String {
    let d = dir.display();
    let (cert, key, root) = (paths::LEAF_CERT, paths::LEAF_KEY, paths::ROOT_CERT);
    let client_id = meshfed_sidecar::CLIENT_ID;
    let server = format!(
        "        listen {listen} ssl;
        ssl_protocols TLSv1.3;
        ssl_certificate {d}/{cert};
        ssl_certificate_key {d}/{key};
        ssl_client_certificate {d}/{root};
        ssl_verify_client on;
        ssl_verify_depth 2;"
    );
    let proxy = format!(
        "            proxy_pass http://next;
            proxy_set_header {client_id} $ssl_client_verify;"
    );
    config(dir, &server, &app.to_string(), &proxy)
}

/// The client side: plain HTTP/1.1 in from the app, mTLS out to the server
/// side (its chain and name verified), TLS sessions reused.
fn client_config(dir: &Path, listen: SocketAddr, server_side: SocketAddr) -> String {
    let d = dir.display();
    let (cert, key, root) = (paths::LEAF_CERT, paths::LEAF_KEY, paths::ROOT_CERT);
    let proxy = format!(
        "            proxy_pass https://next;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate {d}/{cert};
            proxy_ssl_certificate_key {d}/{key};
            proxy_ssl_trusted_certificate {d}/{root};
            proxy_ssl_verify on;
            proxy_ssl_verify_depth 2;
            proxy_ssl_name {SERVER_NAME};
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;"
    );
    config(
        dir,
        &format!("        listen {listen};"),
        &server_side.to_string(),
        &proxy,
    )
}

/// Writes `config` to `dir`, starts nginx on it and waits (10 s) until it
/// accepts connections on `listen`.
async fn spawn(
    exe: &Path,
    name: &'static str,
    dir: &Path,
    config: &str,
    listen: SocketAddr,
) -> anyhow::Result<Proc> {
    let file = dir.join("nginx.conf");
    std::fs::write(&file, config).with_context(|| format!("write {}", file.display()))?;
    let mut cmd = Command::new(exe);
    // `-p`: relative paths and the start-up log stay in `dir`, not the
    // package's prefix.
    cmd.arg("-p").arg(dir).arg("-c").arg(&file);
    cmd.args(["-e", "stderr"]);
    let mut proc = Proc::spawn(name, cmd, &dir.join("stderr.log"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        proc.check_alive()
            .with_context(|| format!("{name}: see {}/error.log", dir.display()))?;
        if TcpStream::connect(listen).await.is_ok() {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!("{name} not listening within 10 s{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
