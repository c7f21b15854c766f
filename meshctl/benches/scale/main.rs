//! Control-plane scale benchmark (issue 20, DESIGN.md section 10): a
//! `meshctl dev` federation of K clusters on loopback — identity services,
//! two controller replicas per cluster, gateways, the sample workloads —
//! with N Services exported per exporting cluster, shaped as a cluster
//! holds them (namespace `bench`, label `meshfed.io/exported`, 2 Pods and
//! the EndpointSlice the endpoint-slice controller writes). Per step:
//! the time until every importer holds every mirror; each controller
//! replica's CPU seconds and RSS (now and peak) and its idle CPU; the time
//! for an export, an endpoint change and an unexport in c1 to reach a
//! discovery subscriber (what a sidecar holds) in another cluster, median
//! and p99 over 20 of each; and CPU per change.
//!
//! `cargo bench -p meshctl --bench scale -- [--services 100,1000,10000]
//! [--clusters 3] [--exporters one|all] [--quick] [--step-timeout 120s]`
//!
//! Every process of the federation is this binary re-executed as
//! `dev exec KIND ...`, as `meshctl dev up` starts `meshctl`; each step's
//! federation is stopped with `dev down` at its end, on an error, on a
//! panic and on Ctrl-C.

mod controllers;
mod report;
mod step;
mod subscriber;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use meshctl::dev::{MAX_CLUSTERS, Subnet};
use meshfed_testkit::procs;

use crate::step::{Exporters, Opts, Shape};

/// The control-plane scale benchmark. Without --services and --clusters it
/// sweeps 100, 1,000 and 10,000 services × 3 clusters (c1 exports, the
/// others import), then 1,000 × 10 clusters (every cluster exports and
/// imports the others'); --quick sweeps 100 and 1,000 × 3.
#[derive(Debug, Parser)]
#[command(name = "scale")]
struct Args {
    /// Services exported per exporting cluster, comma-separated.
    #[arg(long, value_delimiter = ',')]
    services: Vec<usize>,
    /// Clusters per step, comma-separated (2 to 10); each step is one of
    /// --services with one of --clusters.
    #[arg(long, value_delimiter = ',')]
    clusters: Vec<usize>,
    /// Which clusters export (default: c1 alone, or as the default sweep says).
    #[arg(long, value_enum)]
    exporters: Option<Exporters>,
    /// 5 changes of each kind, a 3 s idle window, and a shorter default sweep.
    #[arg(long)]
    quick: bool,
    /// How long a step may wait for every mirror.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    step_timeout: Duration,
    /// Changes of each kind per step [default: 20, 5 with --quick].
    #[arg(long)]
    changes: Option<usize>,
    /// How long one change may take to reach the subscriber; the step's
    /// changes stop at the first that does not.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    change_timeout: Duration,
    /// How long `dev up` may take.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    up_timeout: Duration,
    /// The loopback /16 the federations listen on.
    #[arg(long, default_value = "127.86.0.0/16")]
    subnet: Subnet,
    /// Where each step's federation lives (logs stay there) [default: $TMPDIR/meshfed-scale].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn sweep(&self) -> anyhow::Result<Vec<Shape>> {
        let shape = |services, clusters, exporters| Shape {
            services,
            clusters,
            exporters: self.exporters.unwrap_or(exporters),
        };
        if self.services.is_empty() && self.clusters.is_empty() {
            let mut sweep = vec![
                shape(100, 3, Exporters::One),
                shape(1_000, 3, Exporters::One),
            ];
            if !self.quick {
                sweep.push(shape(10_000, 3, Exporters::One));
                sweep.push(shape(1_000, 10, Exporters::All));
            }
            return Ok(sweep);
        }
        let services = match (&self.services[..], self.quick) {
            ([], true) => vec![100, 1_000],
            ([], false) => vec![100, 1_000, 10_000],
            (s, _) => s.to_vec(),
        };
        let clusters = if self.clusters.is_empty() {
            vec![3]
        } else {
            self.clusters.clone()
        };
        if let Some(k) = clusters.iter().find(|k| !(2..=MAX_CLUSTERS).contains(k)) {
            anyhow::bail!("--clusters {k}: give 2 to {MAX_CLUSTERS}");
        }
        if services.contains(&0) {
            anyhow::bail!("--services: give at least 1");
        }
        Ok(clusters
            .iter()
            .flat_map(|&k| services.iter().map(move |&n| (n, k)))
            .map(|(n, k)| shape(n, k, Exporters::One))
            .collect())
    }

    fn opts(&self) -> Opts {
        Opts {
            dir: self
                .dir
                .clone()
                .unwrap_or_else(|| meshctl::dev::default_dir("meshfed-scale")),
            subnet: self.subnet,
            up_timeout: self.up_timeout,
            step_timeout: self.step_timeout,
            changes: self.changes.unwrap_or(if self.quick { 5 } else { 20 }),
            change_timeout: self.change_timeout,
            idle: Duration::from_secs(if self.quick { 3 } else { 10 }),
        }
    }
}

fn main() -> ExitCode {
    // `dev up` starts every process as this executable's `dev exec KIND`.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "dev") && argv.get(2).is_some_and(|a| a == "exec") {
        return meshctl::run(meshctl::Cli::parse_from(argv));
    }
    let args = Args::parse();
    let bench = || -> anyhow::Result<()> {
        let sweep = args.sweep()?;
        meshfed_trust::install_crypto_provider();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                tokio::select! {
                    r = run(sweep, args.opts()) => r,
                    _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (the federation was stopped)"),
                }
            })
    };
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(sweep: Vec<Shape>, opts: Opts) -> anyhow::Result<()> {
    println!("== meshfed control plane at scale ==");
    println!("{}", procs::machine());
    println!(
        "steps: {}; {} changes of each kind, idle window {:?}, step timeout {:?}",
        sweep
            .iter()
            .map(Shape::short)
            .collect::<Vec<_>>()
            .join(", "),
        opts.changes,
        opts.idle,
        opts.step_timeout
    );
    let began = Instant::now();
    let mut results = Vec::new();
    for (i, shape) in sweep.iter().enumerate() {
        eprintln!(
            "\nstep {} of {}: {} ({})",
            i + 1,
            sweep.len(),
            shape.long(),
            procs::machine_load()
        );
        let r = step::run(*shape, &opts).await;
        print!("{}", r.render());
        results.push(r);
    }
    println!(
        "\n== results ==  ({}; {:.0} s in all)",
        procs::machine_load(),
        began.elapsed().as_secs_f64()
    );
    print!("{}", report::summary(&results));
    Ok(())
}
