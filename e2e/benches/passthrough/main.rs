//! Passthrough benchmark: the same mTLS backend reached three ways on
//! loopback — (a) directly, (b) through `meshfed-gateway` (SNI
//! `api.shop.443.svc.meshfed.local`, routes from an in-process controller),
//! (c) through HAProxy in TCP mode routing on `req_ssl_sni` — measuring
//! open-loop latency at 2,000 req/s, single-connection bulk throughput, new
//! connections per second, and the proxies' RSS with ~10,000 idle
//! connections. Workloads alternate between paths in short rounds so load
//! from elsewhere on the machine spreads evenly over them.
//!
//! `cargo build --release -p meshfed-gateway`, then
//! `cargo bench -p meshfed-e2e --bench passthrough [-- --quick]`
//! (`MESHFED_BENCH_BINS=<dir>`: the gateway runs from `dir`)
//!
//! The backend runs as this binary re-executed with `--serve-backend DIR`;
//! the gateway and HAProxy are child processes (so their RSS and CPU are
//! their own), all killed by guards when the bench ends or panics.

mod backend;
mod proxies;
mod report;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshfed_testkit::cluster::{self, Cluster, Mesh};
use meshfed_testkit::{load, procs};
use rustls::client::Resumption;
use tokio_rustls::TlsConnector;

use crate::load::Caller;
use crate::procs::Proc;
use crate::report::{Mem, PathResults, Report};

/// How much of everything.
#[derive(Debug)]
struct Plan {
    base: load::Rounds,
    bulk_bytes: u64,
    churn_secs: f64,
    churn_concurrency: usize,
    /// Idle connections held through each proxy (each costs the proxy two
    /// descriptors, and the hard limit is 20,000).
    idle: usize,
    idle_steps: usize,
    idle_concurrency: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let base = load::Rounds::new(quick, 5.0, 4);
        Self {
            base,
            bulk_bytes: base.pick(256 << 20, 1 << 30),
            churn_secs: base.pick(2.0, 5.0),
            churn_concurrency: 32,
            idle: base.pick(2_000, 9_900),
            idle_steps: 4,
            idle_concurrency: 64,
        }
    }
}

/// One way to the backend.
struct Way {
    caller: Caller,
    proxy: Option<Proc>,
    results: PathResults,
}

impl Way {
    fn cpu(&self) -> anyhow::Result<Option<f64>> {
        self.proxy
            .as_ref()
            .map(|p| procs::cpu_secs(p.pid()))
            .transpose()
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-backend") {
        let dir = args.get(i + 1).context("--serve-backend DIR")?;
        return backend::run(Path::new(dir));
    }
    let plan = Plan::new(load::Rounds::quick(&args));
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    load::block_on(run(plan))?
}

/// Everything started for the run; dropping it stops it all.
struct Bench {
    paths: Vec<Way>,
    gateway_admin: SocketAddr,
    backend: Proc,
    _east: Cluster,
    _dir: tempfile::TempDir,
}

/// The caller's TLS: mTLS as `west`'s frontend, expecting the backend's
/// identity whatever is in between. Resumption is off so every connection
/// pays a full handshake.
fn caller_tls(mesh: &Mesh) -> TlsConnector {
    let west = mesh.cluster_ca("west");
    let expected = meshfed_trust::ExpectedIds::one(cluster::id(cluster::API));
    let mut config =
        meshfed_trust::client_config(cluster::creds(&west, cluster::FRONTEND), expected);
    config.resumption = Resumption::disabled();
    TlsConnector::from(std::sync::Arc::new(config))
}

/// The mesh (east's controller on a file store exporting `shop/api` port
/// 443, a caller in west), backend, gateway and (when installed) HAProxy.
async fn start(plan: &Plan) -> anyhow::Result<Bench> {
    let gateway_bin = meshfed_e2e::binaries::gateway()?;
    let dir = tempfile::tempdir().context("tempdir")?;
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    cluster::write_credentials(&east.ca, cluster::API, &dir.path().join("backend"));
    cluster::write_credentials(&east.ca, cluster::GATEWAY, &dir.path().join("gateway"));
    let backend_dir = dir.path().join("backend");
    let (backend, ports) = Proc::spawn_self(
        "backend",
        &["--serve-backend".as_ref(), backend_dir.as_os_str()],
        backend::PATHS,
    )?;
    let upstream = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let endpoint = (upstream(1), "a", true);
    let api = cluster::service_manifest("api", ("tls", 443), true, &[endpoint]);
    east.write("api.yaml", &api);
    let (gateway, gw) = proxies::spawn_gateway(
        &gateway_bin,
        &dir.path().join("gateway"),
        east.discovery,
        &dir.path().join("gateway.log"),
    )
    .await?;
    let tls = caller_tls(&mesh);
    let caller = |addr| Caller {
        addr,
        tls: tls.clone(),
    };
    let mut paths = vec![
        Way {
            caller: caller(upstream(0)),
            proxy: None,
            results: PathResults::new("direct", true, false),
        },
        Way {
            caller: caller(gw.listen),
            proxy: Some(gateway),
            results: PathResults::new("gateway", true, true),
        },
    ];
    match procs::find_program("haproxy") {
        Some(exe) => {
            // Room for the idle connections and the workloads' few.
            let maxconn = plan.idle + 50;
            let (proc, addr) =
                proxies::spawn_haproxy(&exe, dir.path(), upstream(2), maxconn).await?;
            paths.push(Way {
                caller: caller(addr),
                proxy: Some(proc),
                results: PathResults::new("haproxy", true, true),
            });
        }
        None => {
            let bar = "!".repeat(72);
            eprintln!("{bar}\n!!! HAProxy NOT INSTALLED: path (c) is skipped.");
            eprintln!("!!! Install it (`apt-get install -y haproxy`) for the comparison.\n{bar}");
        }
    }
    Ok(Bench {
        paths,
        gateway_admin: gw.admin,
        backend,
        _east: east,
        _dir: dir,
    })
}

async fn run(plan: Plan) -> anyhow::Result<()> {
    println!("== meshfed-gateway passthrough benchmark ==");
    println!("{}", procs::machine());
    println!("{plan:?}");
    let mut bench = start(&plan).await?;
    let paths = &mut bench.paths;
    let client = cluster::id(cluster::FRONTEND).to_string();
    for p in paths.iter() {
        let who = retry(|| p.caller.whoami()).await?;
        if who != client {
            bail!("{}: backend saw {who:?}, not {client}", p.results.name);
        }
        println!("{:8} backend sees the caller as {who}", p.results.name);
    }

    // Memory first, while the proxies have carried nothing else.
    for p in paths.iter_mut().filter(|p| p.proxy.is_some()) {
        p.results.mem = Some(memory(p, &plan).await?);
    }
    latency(paths, &plan).await?;
    bulk(paths, &plan, bench.backend.pid()).await?;
    churn(paths, &plan).await?;
    // Whatever the proxies kept after all of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in paths.iter_mut() {
        if let (Some(proxy), Some(mem)) = (&p.proxy, &mut p.results.mem) {
            mem.end_kib = Some(proxy.rss_kib()?);
        }
    }

    for p in paths.iter_mut() {
        if let Some(proxy) = &mut p.proxy {
            proxy.check_alive()?;
        }
    }
    let metrics = procs::http_get(bench.gateway_admin, "/metrics").await?.1;
    println!("\nmeshfed-gateway metrics at the end:");
    for line in metrics.lines().filter(|l| {
        l.starts_with("meshfed_gateway_refused")
            || l.starts_with("meshfed_gateway_open_connections")
            || l.starts_with("meshfed_gateway_upstream_connect_failures")
            || l.starts_with("meshfed_gateway_connections_total")
    }) {
        println!("  {line}");
    }

    let log = paths[1]
        .proxy
        .as_ref()
        .map(Proc::log_text)
        .unwrap_or_default();
    let noted: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    println!(
        "meshfed-gateway log (warnings and errors): {} lines",
        noted.len()
    );
    for line in noted.iter().take(5) {
        println!("  {line}");
    }

    let missing = PathResults::new("haproxy", false, false);
    let report = Report {
        direct: &paths[0].results,
        gateway: &paths[1].results,
        haproxy: paths.get(2).map_or(&missing, |p| &p.results),
        rate: plan.base.rate,
        idle_target: 10_000,
    };
    println!("\n== results ==  ({})", procs::machine_load());
    print!("{}", report.render());
    println!("\n{}", report.budgets());
    if paths.len() < 3 {
        println!("!!! HAProxy was not installed: its column is empty.");
    }
    Ok(())
}

/// Retries `f` for up to 10 s (the gateway may be ready a moment before its
/// first route arrives).
async fn retry<T, F: Future<Output = anyhow::Result<T>>>(f: impl Fn() -> F) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// RSS of the proxy at 0, ¼, ½, ¾ and all of `plan.idle` idle connections.
async fn memory(p: &Way, plan: &Plan) -> anyhow::Result<Mem> {
    let proxy = p.proxy.as_ref().context("a proxy")?;
    let settle = Duration::from_millis(1500);
    tokio::time::sleep(settle).await;
    let mut mem = Mem {
        points: vec![(0, proxy.rss_kib()?)],
        ..Mem::default()
    };
    let mut conns = Vec::with_capacity(plan.idle);
    for step in 1..=plan.idle_steps {
        let target = plan.idle * step / plan.idle_steps;
        let more = load::open_idle(&p.caller, target - conns.len(), plan.idle_concurrency)
            .await
            .with_context(|| format!("{}: idle connection {}", p.results.name, conns.len()))?;
        conns.extend(more);
        tokio::time::sleep(settle).await;
        mem.points.push((conns.len(), proxy.rss_kib()?));
        println!(
            "{:8} {:>5} idle connections: RSS {:.1} MiB",
            p.results.name,
            conns.len(),
            proxy.rss_kib()? as f64 / 1024.0
        );
    }
    mem.fds = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .map(Iterator::count)
        .unwrap_or(0);
    drop(conns);
    tokio::time::sleep(Duration::from_secs(3)).await;
    mem.after_close_kib = proxy.rss_kib()?;
    Ok(mem)
}

/// Open-loop latency, interleaved in rounds.
async fn latency(paths: &mut [Way], plan: &Plan) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(paths.len());
    for p in paths.iter() {
        let mut c = Vec::with_capacity(plan.base.latency_conns);
        for _ in 0..plan.base.latency_conns {
            c.push(p.caller.echo_conn().await?);
        }
        conns.push(c);
    }
    let secs = plan.base.latency_secs / plan.base.rounds as f64;
    for round in 0..plan.base.rounds {
        for (p, c) in paths.iter_mut().zip(&mut conns) {
            let cpu = p.cpu()?;
            let lat = load::open_loop(c, plan.base.rate, secs, 0.1)
                .await
                .with_context(|| format!("{}: latency", p.results.name))?;
            let after = p.cpu()?;
            add_cpu(&mut p.results.cpu_latency, cpu, after);
            p.results.latency.extend(lat);
            p.results.latency_secs += secs;
            println!(
                "{:8} latency round {}/{} done",
                p.results.name,
                round + 1,
                plan.base.rounds
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for p in paths.iter_mut() {
        p.results.latency.sort_unstable();
    }
    Ok(())
}

/// Single-connection uploads, interleaved in rounds (after one 64 MiB
/// warm-up per path).
async fn bulk(paths: &mut [Way], plan: &Plan, backend: u32) -> anyhow::Result<()> {
    // The caller's and the backend's CPU too: on two cores a proxy's copy
    // competes with the TLS at both ends.
    let ends = || -> anyhow::Result<f64> {
        Ok(procs::cpu_secs(backend)? + procs::cpu_secs(std::process::id())?)
    };
    let mut conns = Vec::with_capacity(paths.len());
    for p in paths.iter() {
        let mut c = p.caller.connect().await?;
        load::upload(&mut c, 64 << 20).await?;
        conns.push(c);
    }
    for round in 0..plan.base.rounds.min(3) {
        for (p, c) in paths.iter_mut().zip(&mut conns) {
            let (cpu, ends0) = (p.cpu()?, ends()?);
            let took = load::upload(c, plan.bulk_bytes)
                .await
                .with_context(|| format!("{}: upload", p.results.name))?;
            let (after, ends1) = (p.cpu()?, ends()?);
            add_cpu(&mut p.results.cpu_bulk, cpu, after);
            p.results.cpu_bulk_all += ends1 - ends0 + after.unwrap_or(0.0) - cpu.unwrap_or(0.0);
            p.results.bulk_secs += took.as_secs_f64();
            let mbps = plan.bulk_bytes as f64 / took.as_secs_f64() / 1e6;
            p.results.bulk.push(mbps);
            p.results.bulk_bytes += plan.bulk_bytes;
            println!(
                "{:8} upload round {}: {mbps:.0} MB/s",
                p.results.name,
                round + 1
            );
        }
    }
    Ok(())
}

/// New connections per second, interleaved in rounds.
async fn churn(paths: &mut [Way], plan: &Plan) -> anyhow::Result<()> {
    let secs = plan.churn_secs / plan.base.rounds as f64;
    for round in 0..plan.base.rounds {
        for p in paths.iter_mut() {
            let cpu = p.cpu()?;
            let c = load::churn(&p.caller, plan.churn_concurrency, secs).await;
            let after = p.cpu()?;
            add_cpu(&mut p.results.cpu_churn, cpu, after);
            println!(
                "{:8} connections round {}/{}: {:.0}/s{}",
                p.results.name,
                round + 1,
                plan.base.rounds,
                c.ok as f64 / c.elapsed.as_secs_f64(),
                c.first_error
                    .as_deref()
                    .map(|e| format!(" ({} failed, first: {e})", c.failed))
                    .unwrap_or_default()
            );
            let total = &mut p.results.churn;
            total.ok += c.ok;
            total.failed += c.failed;
            total.elapsed += c.elapsed;
            total.latencies.extend(c.latencies);
            total.first_error = total.first_error.take().or(c.first_error);
            // Let the closes settle before the next path.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for p in paths.iter_mut() {
        p.results.churn.latencies.sort_unstable();
    }
    Ok(())
}

fn add_cpu(total: &mut Option<f64>, before: Option<f64>, after: Option<f64>) {
    if let (Some(t), Some(b), Some(a)) = (total.as_mut(), before, after) {
        *t += a - b;
    }
}
