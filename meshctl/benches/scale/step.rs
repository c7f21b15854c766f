//! One step of the sweep: `dev up` of K clusters, N services written into
//! each exporting cluster's store, then the phases — every mirror, idle,
//! changes — and `dev down`, whatever happened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshctl::dev::{FederationArgs, Subnet, Topology};

use crate::controllers::{Replica, sample_all, since};
use crate::report::{Changes, Mirrors, ReplicaResult, StepResult};
use crate::subscriber::{Subscriber, remote_healthy};
use crate::workload::{self, Change, Changing, Exporter};

/// Which clusters export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Exporters {
    /// The first cluster exports, the others import.
    One,
    /// Every cluster exports N and imports the others'.
    All,
}

/// What a step runs.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub services: usize,
    pub clusters: usize,
    pub exporters: Exporters,
}

impl Shape {
    pub fn exports(&self, cluster: usize) -> bool {
        self.exporters == Exporters::All || cluster == 0
    }

    /// The bench mirrors cluster `i` holds once everything is imported.
    pub fn expected(&self, i: usize) -> usize {
        let from = (0..self.clusters)
            .filter(|&c| c != i && self.exports(c))
            .count();
        from * self.services
    }

    fn names(&self) -> Vec<String> {
        (1..=self.clusters).map(|i| format!("c{i}")).collect()
    }

    /// `1,000 × 3`.
    pub fn short(&self) -> String {
        format!(
            "{} × {}{}",
            crate::report::thousands(self.services),
            self.clusters,
            if self.exporters == Exporters::All {
                " all"
            } else {
                ""
            }
        )
    }

    /// `1,000 services × 3 clusters, c1 exports, the others import`.
    pub fn long(&self) -> String {
        let who = match self.exporters {
            Exporters::One => "c1 exports, the others import",
            Exporters::All => "every cluster exports and imports the others'",
        };
        format!(
            "{} services × {} clusters, {who}",
            crate::report::thousands(self.services),
            self.clusters
        )
    }
}

/// How every step runs.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Each step's federation lives in a folder of its own below it.
    pub dir: PathBuf,
    pub subnet: Subnet,
    /// How long `dev up` may take.
    pub up_timeout: Duration,
    /// How long the mirror phase may take.
    pub step_timeout: Duration,
    /// Changes of each kind.
    pub changes: usize,
    /// How long one change may take to reach the subscriber.
    pub change_timeout: Duration,
    /// The window idle CPU is measured over.
    pub idle: Duration,
}

/// Quiet time before idle CPU is measured (statuses, the last pushes).
const SETTLE: Duration = Duration::from_secs(2);
/// Before each change, a random pause of up to this: changes land at any
/// moment of the stores' polling, not just after the last one noticed.
const JITTER_MS: u64 = 200;
/// How often progress is printed while mirrors are written.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The federation of a step: stopped with `dev down` when dropped too (an
/// error, a panic, Ctrl-C), so no process outlives the bench.
struct Federation {
    dir: PathBuf,
    up: bool,
}

impl Federation {
    async fn down(mut self) -> anyhow::Result<()> {
        self.up = false;
        if !Topology::path(&self.dir).exists() {
            return Ok(());
        }
        meshctl::dev::down(&self.dir).await.map(|_| ())
    }
}

impl Drop for Federation {
    fn drop(&mut self) {
        if !self.up || !Topology::path(&self.dir).exists() {
            return;
        }
        let dir = self.dir.clone();
        // `down` is async and this may run inside the runtime: a thread and
        // a runtime of its own.
        let stopped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(meshctl::dev::down(&dir))
        })
        .join();
        if let Ok(Err(e)) = stopped {
            eprintln!(
                "warning: stopping the federation in {}: {e:#}",
                self.dir.display()
            );
        }
    }
}

/// Runs one step; what it measured, and the error that ended it early.
pub async fn run(shape: Shape, opts: &Opts) -> StepResult {
    let dir = opts.dir.join(format!(
        "{}x{}-{:?}",
        shape.services, shape.clusters, shape.exporters
    ));
    let mut result = StepResult::new(shape, dir.clone());
    let federation = Federation {
        dir: dir.clone(),
        up: true,
    };
    let outcome = phases(shape, opts, &dir, &mut result).await;
    if let Err(e) = outcome {
        eprintln!("  step failed: {e:#}");
        result.error = Some(format!("{e:#}"));
    }
    if let Err(e) = federation.down().await {
        let e = format!("dev down: {e:#}");
        eprintln!("  {e}");
        result.error.get_or_insert(e);
    }
    result
}

async fn phases(shape: Shape, opts: &Opts, dir: &Path, r: &mut StepResult) -> anyhow::Result<()> {
    let federation = FederationArgs {
        zones: 2,
        trust_domain: meshfed_trust::TrustDomain::new("mesh.local")?,
        // `meshctl link`'s default.
        lease_ttl: 5,
        timeout: opts.up_timeout,
    };
    let clusters = shape.names().into_iter().map(|c| (c.clone(), c)).collect();
    let spec = federation.spec(dir.to_owned(), opts.subnet, clusters)?;
    let began = Instant::now();
    let t = meshctl::dev::up(&spec, opts.up_timeout, &mut |l| eprintln!("  {l}")).await?;
    r.up_secs = Some(began.elapsed().as_secs_f64());
    r.processes = t.processes().count();
    eprintln!(
        "  federation up in {:.1} s ({} processes)",
        began.elapsed().as_secs_f64(),
        r.processes
    );

    let replicas = Replica::all(&t);
    let start = sample_all(&replicas)?;
    r.replicas = replicas
        .iter()
        .zip(&start)
        .map(|(p, s)| ReplicaResult {
            cluster: p.cluster.clone(),
            name: p.process.name.clone(),
            leads: false,
            exports: shape.exports(p.index),
            imports: shape.expected(p.index),
            start: *s,
            ..ReplicaResult::default()
        })
        .collect();

    let running = Running {
        shape,
        opts,
        t,
        replicas,
    };
    running.mirror_phase(r).await?;
    for c in &running.t.clusters {
        let leader = meshctl::dev::leader(&c.state_dir)?;
        for x in r.replicas.iter_mut().filter(|x| x.cluster == c.name) {
            x.leads = leader.as_deref() == Some(x.name.as_str());
        }
    }
    running.idle_phase(r).await?;
    running.change_phase(r).await
}

/// A step's federation, up.
struct Running<'a> {
    shape: Shape,
    opts: &'a Opts,
    t: Topology,
    replicas: Vec<Replica>,
}

impl Running<'_> {
    /// Writes every exporter's N services and waits until every importer holds
    /// every mirror, or the step's time is up.
    async fn mirror_phase(&self, r: &mut StepResult) -> anyhow::Result<()> {
        let (shape, opts, t, replicas) = (self.shape, self.opts, &self.t, &self.replicas[..]);
        let generated = Instant::now();
        let mut files = Vec::new();
        for (i, c) in t.clusters.iter().enumerate() {
            if !shape.exports(i) {
                continue;
            }
            let at = Exporter {
                cluster: i,
                zones: c.zones.clone(),
            };
            for (name, text) in at.services(shape.services)? {
                files.push((c.state_dir.clone(), name, text));
            }
        }
        eprintln!(
            "  {} manifest files generated in {:.1} s",
            files.len(),
            generated.elapsed().as_secs_f64()
        );

        let importers: Vec<(&str, &Path, usize)> = t
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), c.state_dir.as_path(), shape.expected(i)))
            .filter(|(_, _, n)| *n > 0)
            .collect();
        let total: usize = importers.iter().map(|(_, _, n)| n).sum();
        // Counting directory entries costs the machine too: less often when
        // there are many.
        let poll = if total <= 10_000 {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(500)
        };
        let before = sample_all(replicas)?;
        let began = Instant::now();
        for (state_dir, name, text) in &files {
            workload::write(state_dir, name, text)?;
        }
        let written = began.elapsed();
        r.files = files.len();
        let mut said = Instant::now();
        let counts = loop {
            for p in replicas {
                p.check_running()?;
            }
            let counts: Vec<(String, usize, usize)> = importers
                .iter()
                .map(|(c, dir, n)| ((*c).to_owned(), workload::mirrors(dir), *n))
                .collect();
            let done = counts.iter().all(|(_, got, n)| got >= n);
            if done || began.elapsed() >= opts.step_timeout {
                break counts;
            }
            if said.elapsed() >= PROGRESS_EVERY {
                said = Instant::now();
                eprintln!(
                    "  {:.0} s: {}",
                    began.elapsed().as_secs_f64(),
                    crate::report::mirror_counts(&counts)
                );
            }
            tokio::time::sleep(poll).await;
        };
        let elapsed = began.elapsed();
        for (x, p) in r.replicas.iter_mut().zip(since(replicas, &before)?) {
            x.mirrored = Some(p);
        }
        let m = Mirrors {
            done: counts.iter().all(|(_, got, n)| got >= n),
            elapsed,
            written,
            counts,
        };
        eprintln!("  {}", m.summary());
        r.mirrors = Some(m);
        Ok(())
    }

    /// CPU over `opts.idle` with nothing changing, as % of a core (measured,
    /// and marked as not idle, when the mirrors were not all written).
    async fn idle_phase(&self, r: &mut StepResult) -> anyhow::Result<()> {
        let (opts, replicas) = (self.opts, &self.replicas[..]);
        tokio::time::sleep(SETTLE).await;
        let before = sample_all(replicas)?;
        let began = Instant::now();
        tokio::time::sleep(opts.idle).await;
        let secs = began.elapsed().as_secs_f64();
        for (x, p) in r.replicas.iter_mut().zip(since(replicas, &before)?) {
            x.idle_pct = Some(p.cpu_secs / secs * 100.0);
        }
        Ok(())
    }

    /// Exports, endpoint changes and unexports in c1, each timed until a
    /// discovery subscriber in another cluster sees it; stops at the first
    /// change not seen in time.
    async fn change_phase(&self, r: &mut StepResult) -> anyhow::Result<()> {
        let (shape, opts, t, replicas) = (self.shape, self.opts, &self.t, &self.replicas[..]);
        let exporter = &t.clusters[0];
        let importer = t
            .clusters
            .iter()
            .enumerate()
            .find(|(i, _)| *i != 0 && shape.expected(*i) > 0)
            .map(|(_, c)| c)
            .context("an importing cluster")?;
        let at = Exporter {
            cluster: 0,
            zones: exporter.zones.clone(),
        };
        let subscriber = Subscriber::new(t, importer)?;
        let mut ch = Changes {
            importer: importer.name.clone(),
            exporter: exporter.name.clone(),
            planned: opts.changes,
            ..Changes::default()
        };
        let before = sample_all(replicas)?;
        let began = Instant::now();
        let within = opts.change_timeout;
        let origin = exporter.name.as_str();
        'changes: for i in 0..opts.changes {
            let mut svc = Changing::new(&at, shape.services, i);
            let mut watch = subscriber.watch(&svc.name).await?;
            // The set before the change (the service does not exist yet).
            if watch.until(within, |_| true).await?.is_none() {
                ch.stopped = Some(format!(
                    "{}: no first endpoint set from {} within {within:?}",
                    svc.name, subscriber.addr
                ));
                break;
            }
            for change in Change::ALL {
                jitter().await;
                let wrote = svc.apply(change, &exporter.state_dir)?;
                let Some(seen) = watch
                    .until(within, |s| {
                        remote_healthy(s, origin) == change.remote_healthy()
                    })
                    .await?
                else {
                    ch.stopped = Some(not_seen(change, i, opts));
                    break 'changes;
                };
                ch.times_mut(change)
                    .push(seen.saturating_duration_since(wrote));
            }
        }
        ch.secs = began.elapsed().as_secs_f64();
        for (x, p) in r.replicas.iter_mut().zip(since(replicas, &before)?) {
            x.changed = Some(p);
        }
        eprintln!("  {}", ch.summary());
        r.changes = Some(ch);
        Ok(())
    }
}

async fn jitter() {
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..JITTER_MS))).await;
}

fn not_seen(change: Change, i: usize, opts: &Opts) -> String {
    format!(
        "{} {} of {}: not seen within {:?}",
        change.name(),
        i + 1,
        opts.changes,
        opts.change_timeout
    )
}
