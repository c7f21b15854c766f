//! Sidecar benchmark: the same HTTP/1.1 app reached four ways on loopback —
//! (a) directly; (b) same cluster: client sidecar (explicit upstream port) →
//! server sidecar (inbound mTLS port) → app; (c) cross-cluster: client
//! sidecar in `west` → east's `meshfed-gateway` (SNI passthrough) → server
//! sidecar in `east` → app, and the same to a Service whose HTTPRoute splits
//! it 50/50 between two backends that both take that path; (d) the peer: the same pair shape built from
//! nginx (TLS 1.3, client certificates verified, keep-alive pools; see
//! `nginx.rs`), when nginx is installed — measuring open-loop latency
//! at 2,000 req/s (from each request's scheduled send time), closed-loop
//! throughput, the proxies' CPU and context switches per request, and their
//! RSS idle and at a steady 1,000 req/s. Workloads alternate between paths
//! in short rounds so load from elsewhere on the machine spreads evenly
//! over them.
//!
//! `cargo build --release -p meshfed-sidecar -p meshfed-gateway`, then
//! `cargo bench -p meshfed-e2e --bench proxy [-- --quick]`
//! (`MESHFED_BENCH_BINS=<dir>`: the sidecars and the gateway run from
//! `dir`, such as the profile-guided build `deploy/pgo-build` makes)
//!
//! The app runs as this binary re-executed with `--serve-app`; the sidecars
//! and the gateway are child processes (so their RSS and CPU are their
//! own), all killed by guards when the bench ends or panics. The clusters'
//! controllers run in this process.

mod app;
mod cost;
mod load;
mod nginx;
mod report;
mod topology;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshfed_testkit::cluster;
use meshfed_testkit::load::Rounds;
use meshfed_testkit::procs;

use crate::cost::Used;
use crate::load::{Conn, Samples};
use crate::report::{CROSS_CLUSTER, CROSS_ROUTED, Mem, NGINX, PathResults, Report, SAME_CLUSTER};
use crate::topology::Topology;

/// How much of everything.
#[derive(Debug)]
struct Plan {
    base: Rounds,
    /// Requests due in the first part of each round are not counted.
    warmup_secs: f64,
    steady_rate: f64,
    steady_secs: f64,
    throughput_secs: f64,
    throughput_conns: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let base = Rounds::new(quick, 15.0, 8);
        Self {
            base,
            warmup_secs: 0.1,
            steady_rate: 1000.0,
            steady_secs: base.pick(2.0, 6.0),
            throughput_secs: base.pick(2.0, 6.0),
            throughput_conns: 32,
        }
    }
}

/// One way to the app.
struct Way {
    addr: SocketAddr,
    /// The proxies a request passes, by pid.
    proxies: Vec<u32>,
    results: PathResults,
}

impl Way {
    fn used(&self) -> anyhow::Result<Used> {
        cost::used(&self.proxies)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == app::FLAG) {
        return app::run();
    }
    let plan = Plan::new(Rounds::quick(&args));
    meshfed_testkit::load::block_on(run(plan))?
}

async fn run(plan: Plan) -> anyhow::Result<()> {
    println!("== meshfed-sidecar proxy benchmark ==");
    println!("{}", procs::machine());
    println!("{plan:?}");
    let started = Instant::now();
    let stolen = steal_secs();
    let mut topo = Topology::start().await?;
    let p = |x: &topology::Proxy| x.proc.pid();
    let mut ways = vec![
        Way {
            addr: topo.app,
            proxies: Vec::new(),
            results: PathResults::new("direct", false),
        },
        Way {
            addr: topo.same_cluster,
            proxies: vec![p(&topo.client_east), p(&topo.server)],
            results: PathResults::new(SAME_CLUSTER, true),
        },
        Way {
            addr: topo.cross_cluster,
            proxies: vec![p(&topo.client_west), p(&topo.gateway), p(&topo.server)],
            results: PathResults::new(CROSS_CLUSTER, true),
        },
        Way {
            addr: topo.cross_routed,
            proxies: vec![p(&topo.client_west), p(&topo.gateway), p(&topo.server)],
            results: PathResults::new(CROSS_ROUTED, true),
        },
    ];
    let caller = cluster::id(cluster::FRONTEND).to_string();
    let mut expect = vec!["none", caller.as_str(), caller.as_str(), caller.as_str()];
    let mut nginx = match nginx::find() {
        Some(exe) => {
            let pair = nginx::Pair::start(&exe, topo.east_ca(), topo.app_behind, topo.dir())
                .await
                .context("nginx pair")?;
            ways.push(Way {
                addr: pair.listen,
                proxies: pair.pids(),
                results: PathResults::new(NGINX, true),
            });
            // The server side passes on whether the client's certificate
            // verified.
            expect.push("SUCCESS");
            Some(pair)
        }
        None => {
            let bar = "!".repeat(72);
            eprintln!("{bar}\n!!! nginx NOT INSTALLED: the nginx pair path is skipped.");
            eprintln!("!!! Install it (`apt-get install -y nginx`) for the comparison.\n{bar}");
            None
        }
    };
    for (w, expect) in ways.iter().zip(expect) {
        let who = whoami(w.addr).await?;
        if who != expect {
            bail!("{}: the app saw {who:?}, not {expect}", w.results.name);
        }
        println!("{:14} the app sees the caller as {who}", w.results.name);
    }
    let through = gateway_connections(&topo).await?;
    if through == 0.0 {
        bail!("cross-cluster: nothing went through the gateway");
    }
    println!("set up in {:.1} s", started.elapsed().as_secs_f64());
    if let Ok(hold) = std::env::var("MESHFED_BENCH_HOLD") {
        hold_for_profiling(&mut ways, &plan, &hold).await?;
        return topo.terminate();
    }

    // Idle: started, a few requests done, nothing else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pair_of = |x: &topology::Proxy| {
        [p(&topo.client_east), p(&topo.server)]
            .contains(&x.proc.pid())
            .then_some(SAME_CLUSTER)
    };
    let mut mem: Vec<Mem> = topo
        .proxies()
        .iter()
        .map(|x| Mem {
            role: x.role,
            sidecar: x.sidecar,
            pair: pair_of(x),
            pids: vec![x.proc.pid()],
            ..Mem::default()
        })
        .collect();
    if let Some(pair) = &nginx {
        for (role, proc) in [
            ("nginx client (all processes)", &pair.client),
            ("nginx server (all processes)", &pair.server),
        ] {
            mem.push(Mem {
                role,
                sidecar: false,
                pair: Some(NGINX),
                pids: cost::tree(proc.pid()),
                ..Mem::default()
            });
        }
    }
    for m in &mut mem {
        m.idle = rss(&m.pids)?;
    }

    let groups: Vec<Vec<u32>> = mem.iter().map(|m| m.pids.clone()).collect();
    let most = steady(&mut ways, &plan, &groups).await?;
    for (m, most) in mem.iter_mut().zip(most) {
        m.steady_max = most;
    }
    let pacer = latency(&mut ways, &plan).await?;
    let mut all: Vec<u32> = groups.concat();
    all.extend([topo.app_proc.pid(), std::process::id()]);
    throughput(&mut ways, &plan, &all).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for m in &mut mem {
        m.end = rss(&m.pids)?;
    }
    topo.check_alive()?;
    if let Some(pair) = &mut nginx {
        pair.check_alive()?;
    }
    counters(&topo).await?;

    for w in &mut ways {
        w.results.sort();
    }
    let paths: Vec<PathResults> = ways.into_iter().map(|w| w.results).collect();
    let report = Report {
        paths: &paths,
        mem: &mem,
        pacer: &pacer,
        rate: plan.base.rate,
        steady_rate: plan.steady_rate,
        latency_conns: plan.base.latency_conns,
        throughput_conns: plan.throughput_conns,
    };
    let took = started.elapsed().as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let stolen = steal_secs() - stolen;
    println!(
        "\n== results ==  ({}; run took {took:.0} s; the hypervisor took {stolen:.1} CPU s = {:.1} % of the cores)",
        procs::machine_load(),
        stolen / took / cores * 100.0,
    );
    print!("{}", report.render());
    println!("\n{}", report.budgets());
    for p in &paths {
        for (what, s) in [
            ("latency", &p.latency),
            ("steady", &p.steady),
            ("throughput", &p.throughput),
        ] {
            if let Some(e) = &s.first_error {
                println!("!!! {} {what}: {} failed, first: {e}", p.name, s.errors);
            }
        }
    }
    Ok(())
}

/// The identity the app is told its caller has, once the path serves.
async fn whoami(addr: SocketAddr) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut conn = Conn::open(addr).await?;
    loop {
        match conn.get("/whoami").await {
            Ok(body) => return Ok(String::from_utf8_lossy(&body).into_owned()),
            Err(e) if Instant::now() > deadline => return Err(e.context(format!("GET {addr}"))),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn gateway_connections(topo: &Topology) -> anyhow::Result<f64> {
    let metrics = procs::http_get(topo.gateway.admin, "/metrics").await?.1;
    Ok(cluster::metric(
        &metrics,
        "meshfed_gateway_connections_total",
    ))
}

/// Runs `f` for every path in every round, starting each round with the
/// next path so no path always goes first.
async fn rounds<F>(ways: &mut [Way], rounds: usize, mut f: F) -> anyhow::Result<()>
where
    F: AsyncFnMut(&mut Way, usize) -> anyhow::Result<()>,
{
    for round in 0..rounds {
        for k in 0..ways.len() {
            let i = (round + k) % ways.len();
            f(&mut ways[i], i)
                .await
                .with_context(|| format!("{} round {}", ways[i].results.name, round + 1))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("  round {}/{rounds} done", round + 1);
    }
    Ok(())
}

/// Open loop at the memory budget's rate while every proxy's RSS (each a
/// group of processes) is sampled; the most each reached.
async fn steady(ways: &mut [Way], plan: &Plan, groups: &[Vec<u32>]) -> anyhow::Result<Vec<u64>> {
    println!("\nsteady open loop at {} req/s", plan.steady_rate);
    let rounds_n = plan.base.rounds.min(3);
    let secs = plan.steady_secs / rounds_n as f64;
    let mut conns = open_all(ways, plan.base.latency_conns).await?;
    let mut most = vec![0; groups.len()];
    rounds(ways, rounds_n, async |w, i| {
        let done = AtomicBool::new(false);
        let (run, seen) = tokio::join!(
            async {
                let r = load::open_loop(&mut conns[i], plan.steady_rate, secs, plan.warmup_secs);
                let r = r.await;
                done.store(true, Ordering::Relaxed);
                r
            },
            sample_rss(groups, &done),
        );
        w.results.steady.add(run?.0);
        for (m, s) in most.iter_mut().zip(seen) {
            *m = (*m).max(s);
        }
        Ok(())
    })
    .await?;
    Ok(most)
}

/// The most RSS each group of processes had together, sampled every
/// 100 ms until `done`.
async fn sample_rss(groups: &[Vec<u32>], done: &AtomicBool) -> Vec<u64> {
    let mut most = vec![0; groups.len()];
    while !done.load(Ordering::Relaxed) {
        for (m, pids) in most.iter_mut().zip(groups) {
            *m = (*m).max(rss(pids).unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    most
}

/// RSS of the processes `pids` together, KiB.
fn rss(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|p| procs::rss_kib(*p)).sum()
}

/// `MESHFED_BENCH_HOLD=<path>:<secs>[:<rate>|closed]`: only an open loop
/// on one path for `secs`, at the latency rate or `rate` requests a
/// second (or the closed loop, `closed`), its proxies' pids printed first,
/// so a profiler (`perf record -p`, `strace -c -p`) can be attached to
/// them; a low rate lets one run under `valgrind --tool=callgrind`, whose
/// instruction counts per request do not vary with a noisy machine. The
/// proxies are then stopped with SIGTERM, so what a profiler gathered is
/// written: `deploy/pgo-build` trains its instrumented build this way.
async fn hold_for_profiling(ways: &mut [Way], plan: &Plan, hold: &str) -> anyhow::Result<()> {
    let mut fields = hold.split(':');
    let parsed = (|| {
        let name = fields.next()?;
        let secs = fields.next()?.parse::<f64>().ok()?;
        // `None`: the closed loop; no third field: the latency rate.
        let rate = match fields.next() {
            Some("closed") => None,
            Some(r) => Some(r.parse::<f64>().ok().filter(|r| *r > 0.0)?),
            None => Some(plan.base.rate),
        };
        fields.next().is_none().then_some((name, secs, rate))
    })();
    let (name, secs, rate) = parsed.context(
        "MESHFED_BENCH_HOLD is <path>:<secs>[:<rate>|closed], e.g. same-cluster:30, \
         same-cluster:20:50 or same-cluster:20:closed",
    )?;
    let names: Vec<&str> = ways.iter().map(|w| w.results.name).collect();
    let Some(w) = ways.iter_mut().find(|w| w.results.name == name) else {
        bail!("MESHFED_BENCH_HOLD: no path {name:?}; the paths are {names:?}");
    };
    let pids: Vec<String> = w.proxies.iter().map(u32::to_string).collect();
    let load = rate.map_or_else(
        || format!("a closed loop of {} connections", plan.throughput_conns),
        |r| format!("{r} req/s"),
    );
    println!(
        "holding {name} at {load} for {secs} s; proxies {}",
        pids.join(",")
    );
    let before = w.used()?;
    let s = match rate {
        Some(rate) => {
            let mut conns = Conn::open_many(w.addr, plan.base.latency_conns).await?;
            load::open_loop(&mut conns, rate, secs, plan.warmup_secs)
                .await?
                .0
        }
        None => {
            let mut conns = Conn::open_many(w.addr, plan.throughput_conns).await?;
            load::closed_loop(&mut conns, secs).await?
        }
    };
    let used = w.used()? - before;
    let n = s.ns.len() as f64;
    println!(
        "  {name}: {:.0} req/s, {}; proxies: {:.1} CPU us and {:.2} context switches per request",
        n / s.elapsed.as_secs_f64(),
        s.sorted().brief(),
        used.cpu_secs / n * 1e6,
        used.switches / n,
    );
    Ok(())
}

/// Open loop at the latency budget's rate; how late the pacer was.
async fn latency(ways: &mut [Way], plan: &Plan) -> anyhow::Result<Samples> {
    println!("\nopen loop at {} req/s", plan.base.rate);
    let secs = plan.base.latency_secs / plan.base.rounds as f64;
    let mut conns = open_all(ways, plan.base.latency_conns).await?;
    let mut pacer = Samples::default();
    rounds(ways, plan.base.rounds, async |w, i| {
        let before = w.used()?;
        let (s, late) =
            load::open_loop(&mut conns[i], plan.base.rate, secs, plan.warmup_secs).await?;
        let used = w.used()? - before;
        if let Some(u) = &mut w.results.used_latency {
            *u += used;
        }
        w.results.latency_sent += (plan.base.rate * secs).floor();
        let sorted = s.sorted();
        println!("  {:14} {}", w.results.name, sorted.brief());
        w.results.round_p99.extend(sorted.us(0.99));
        w.results.latency.add(s);
        pacer.add(late);
        Ok(())
    })
    .await?;
    pacer.ns.sort_unstable();
    Ok(pacer)
}

/// Closed loop; CPU of the path's proxies and of every process in `all`.
async fn throughput(ways: &mut [Way], plan: &Plan, all: &[u32]) -> anyhow::Result<()> {
    println!("\nclosed loop, {} connections", plan.throughput_conns);
    let rounds_n = plan.base.rounds.min(3);
    let secs = plan.throughput_secs / rounds_n as f64;
    let mut conns = open_all(ways, plan.throughput_conns).await?;
    let everything = || -> anyhow::Result<f64> { all.iter().map(|p| procs::cpu_secs(*p)).sum() };
    rounds(ways, rounds_n, async |w, i| {
        let (before, cpu_all) = (w.used()?, everything()?);
        let s = load::closed_loop(&mut conns[i], secs).await?;
        let (used, used_all) = (w.used()? - before, everything()? - cpu_all);
        if let Some(u) = &mut w.results.used_throughput {
            *u += used;
        }
        w.results.cpu_throughput_all += used_all;
        println!(
            "  {:14} {:.0} req/s",
            w.results.name,
            s.ns.len() as f64 / s.elapsed.as_secs_f64()
        );
        w.results.throughput.add(s);
        Ok(())
    })
    .await
}

async fn open_all(ways: &[Way], n: usize) -> anyhow::Result<Vec<Vec<Conn>>> {
    let mut all = Vec::with_capacity(ways.len());
    for w in ways {
        all.push(Conn::open_many(w.addr, n).await?);
    }
    Ok(all)
}

/// What the proxies counted and logged over the run.
async fn counters(topo: &Topology) -> anyhow::Result<()> {
    println!("\nproxy counters and logs (warnings and errors) at the end:");
    for x in topo.proxies() {
        let text = procs::http_get(x.admin, "/metrics").await?.1;
        // Counters that were never set sum to -0.
        let sum = |name: &str| cluster::metric(&text, name) + 0.0;
        let opaque = sum("meshfed_sidecar_tcp_connections_total");
        if opaque > 0.0 {
            println!(
                "!!! {}: {opaque} connections were proxied as opaque TCP, not as HTTP",
                x.role
            );
        }
        let counts = if x.sidecar {
            format!(
                "HTTP requests {}, opaque TCP connections {}, discovery updates {}, retries {}, endpoint failures {}, inbound refused {}",
                sum("meshfed_sidecar_requests_total"),
                opaque,
                sum("meshfed_sidecar_discovery_updates_total"),
                sum("meshfed_sidecar_retries_total"),
                sum("meshfed_sidecar_endpoint_failures_total"),
                sum("meshfed_sidecar_inbound_refused_total"),
            )
        } else {
            format!(
                "connections {} (to api {}), refused {}, upstream connect failures {}",
                sum("meshfed_gateway_connections_total"),
                sum("meshfed_gateway_connections_total{service=\"shop/api:80\""),
                sum("meshfed_gateway_refused_total"),
                sum("meshfed_gateway_upstream_connect_failures_total"),
            )
        };
        let log = x.proc.log_text();
        let noted: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        println!("  {:30} {counts}; log: {} lines", x.role, noted.len());
        for line in noted.iter().take(5) {
            println!("    {line}");
        }
    }
    Ok(())
}

/// CPU time the hypervisor gave to others so far (`steal` in /proc/stat,
/// all CPUs): noise this bench cannot see otherwise.
fn steal_secs() -> f64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?.strip_prefix("cpu ")?;
            cpu.split_whitespace().nth(7)?.parse::<f64>().ok()
        })
        .map_or(0.0, |ticks| ticks / 100.0)
}
