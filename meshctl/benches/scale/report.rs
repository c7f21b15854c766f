//! What a step measured, its tables, and the sweep's summary: the growth
//! curve (RSS per 1,000 services, CPU per change against N) and the
//! DESIGN.md section 10 budgets. MB = 10⁶ bytes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::controllers::{Phase, Sample};
use crate::step::Shape;
use crate::workload::Change;

/// One controller replica over a step.
#[derive(Debug, Clone, Default)]
pub struct ReplicaResult {
    pub cluster: String,
    pub name: String,
    /// Whether it held its cluster's Lease at the end of the mirror phase.
    pub leads: bool,
    pub exports: bool,
    /// Bench mirrors its cluster must hold.
    pub imports: usize,
    /// Once the federation was up, before any bench service.
    pub start: Sample,
    /// From writing the services to every mirror (or the timeout).
    pub mirrored: Option<Phase>,
    pub idle_pct: Option<f64>,
    /// CPU seconds over the whole change phase.
    pub changed: Option<Phase>,
}

/// The mirror phase.
#[derive(Debug, Clone)]
pub struct Mirrors {
    pub done: bool,
    pub elapsed: Duration,
    /// How long writing the manifest files took (the clock runs from the first).
    pub written: Duration,
    /// (importing cluster, mirrors it holds, mirrors it must hold)
    pub counts: Vec<(String, usize, usize)>,
}

/// The change phase: how long each change took to reach the subscriber.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub importer: String,
    pub exporter: String,
    pub planned: usize,
    pub export: Vec<Duration>,
    pub endpoint: Vec<Duration>,
    pub unexport: Vec<Duration>,
    /// Why the phase ended before `planned` changes of each kind.
    pub stopped: Option<String>,
    pub secs: f64,
}

/// Everything one step measured.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub shape: Shape,
    pub dir: PathBuf,
    pub up_secs: Option<f64>,
    pub processes: usize,
    /// Manifest files written for the bulk services.
    pub files: usize,
    pub mirrors: Option<Mirrors>,
    pub changes: Option<Changes>,
    pub replicas: Vec<ReplicaResult>,
    pub error: Option<String>,
}

impl StepResult {
    pub fn new(shape: Shape, dir: PathBuf) -> Self {
        Self {
            shape,
            dir,
            up_secs: None,
            processes: 0,
            files: 0,
            mirrors: None,
            changes: None,
            replicas: Vec::new(),
            error: None,
        }
    }

    fn mirrors_done(&self) -> bool {
        self.mirrors.as_ref().is_some_and(|m| m.done)
    }

    /// Controller CPU per change, ms, net of the replica's idle CPU over
    /// the phase; only when the mirrors were all written (else nothing was
    /// idle).
    fn cpu_per_change_ms(&self, x: &ReplicaResult) -> Option<f64> {
        let ch = self.changes.as_ref()?;
        let n = ch.export.len() + ch.endpoint.len() + ch.unexport.len();
        if n == 0 || !self.mirrors_done() {
            return None;
        }
        let idle = x.idle_pct? / 100.0 * ch.secs;
        Some((x.changed?.cpu_secs - idle).max(0.0) / n as f64 * 1e3)
    }

    /// Services a replica's cluster holds from the bench: its exports and
    /// the mirrors it got.
    fn held(&self, x: &ReplicaResult) -> usize {
        let exports = if x.exports { self.shape.services } else { 0 };
        let mirrors = self.mirrors.as_ref().map_or(0, |m| {
            m.counts
                .iter()
                .find(|(c, _, _)| *c == x.cluster)
                .map_or(0, |(_, got, _)| *got)
        });
        exports + mirrors
    }

    /// RSS grown over the mirror phase per 1,000 services held, MB.
    fn mb_per_thousand(&self, x: &ReplicaResult) -> Option<f64> {
        let held = self.held(x);
        let after = x.mirrored?.end;
        (held > 0).then(|| {
            (after.rss_kib as f64 - x.start.rss_kib as f64) * 1024.0 / 1e6 * 1e3 / held as f64
        })
    }

    fn leaders(&self) -> impl Iterator<Item = &ReplicaResult> {
        self.replicas.iter().filter(|x| x.leads)
    }

    /// The leaders of c1 (which exports) and of the first other cluster
    /// that imports (the subscriber's): the summary's two columns.
    fn roles(&self) -> (Option<&ReplicaResult>, Option<&ReplicaResult>) {
        let first = self.replicas.first().map(|x| x.cluster.as_str());
        let exporter = self.leaders().find(|x| Some(x.cluster.as_str()) == first);
        let importer = self
            .leaders()
            .find(|x| Some(x.cluster.as_str()) != first && x.imports > 0);
        (exporter, importer)
    }

    /// Most RSS any replica had when every mirror was written and after
    /// the changes (the budget's "at rest and after changes"), MB.
    fn at_rest_mb(&self) -> Option<f64> {
        self.replicas
            .iter()
            .flat_map(|x| [x.mirrored, x.changed])
            .flatten()
            .map(|p| mb(p.end.rss_kib))
            .max_by(f64::total_cmp)
    }

    /// Most RSS any replica had, MB.
    fn peak_mb(&self) -> Option<f64> {
        self.replicas
            .iter()
            .map(|x| mb(x.last().peak_kib))
            .max_by(f64::total_cmp)
    }

    /// The tables of this step.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\n== {} ==", self.shape.long());
        if let Some(up) = self.up_secs {
            let _ = writeln!(
                out,
                "federation up in {up:.1} s ({} processes, {})",
                self.processes,
                self.dir.display()
            );
        }
        if let Some(m) = &self.mirrors {
            let _ = writeln!(
                out,
                "{} (from the first of {} manifest files of up to 1,000 objects, all written in \
                 {:.0} ms)",
                m.summary(),
                self.files,
                m.written.as_secs_f64() * 1e3
            );
        }
        if !self.replicas.is_empty() {
            out.push_str(&self.replica_table());
        }
        if let Some(ch) = &self.changes {
            out.push_str(&ch.table());
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "!!! the step ended early: {e}");
        }
        out
    }

    fn replica_table(&self) -> String {
        let mut t = Table::new(
            &[
                "cluster",
                "replica",
                "role",
                "mirror-phase CPU s",
                "RSS start",
                "RSS mirrored",
                "RSS after changes",
                "peak RSS",
                "idle CPU %",
                "CPU/change ms",
            ],
            3,
        );
        for x in &self.replicas {
            let role = match (x.exports, x.imports > 0) {
                (true, true) => format!("exp+imp {}", thousands(x.imports)),
                (true, false) => "exports".into(),
                (false, _) => format!("imports {}", thousands(x.imports)),
            };
            let lead = if x.leads { " *" } else { "" };
            t.row(vec![
                x.cluster.clone(),
                format!("{}{lead}", x.name),
                role,
                opt(x.mirrored.map(|p| p.cpu_secs), 2),
                format!("{:.1}", mb(x.start.rss_kib)),
                opt(x.mirrored.map(|p| mb(p.end.rss_kib)), 1),
                opt(x.changed.map(|p| mb(p.end.rss_kib)), 1),
                format!("{:.1}", mb(x.last().peak_kib)),
                match (x.idle_pct, self.mirrors_done()) {
                    (Some(p), true) => format!("{p:.1}"),
                    (Some(p), false) => format!("busy {p:.0}"),
                    (None, _) => "-".into(),
                },
                opt(self.cpu_per_change_ms(x), 1),
            ]);
        }
        format!(
            "\nControllers (* leads; RSS in MB; idle over the idle window, \"busy\" when mirrors \
             were still being written; CPU per change net of idle)\n{}",
            t.render()
        )
    }

    /// One line of the sweep's summary.
    fn summary_row(&self) -> Vec<String> {
        let (exporter, importer) = self.roles();
        let rss = |x: Option<&ReplicaResult>| {
            x.map_or("-".into(), |x| format!("{:.0}", mb(x.last().peak_kib)))
        };
        let idle = self
            .replicas
            .iter()
            .filter_map(|x| x.idle_pct)
            .max_by(f64::total_cmp);
        let q = |v: Option<&Vec<Duration>>| v.map_or("-".into(), |v| quantiles(v));
        let ch = self.changes.as_ref();
        vec![
            self.shape.short(),
            self.mirrors.as_ref().map_or("-".into(), Mirrors::short),
            rss(exporter),
            rss(importer),
            match (idle, self.mirrors_done()) {
                (Some(p), true) => format!("{p:.1}"),
                (Some(p), false) => format!("busy {p:.0}"),
                (None, _) => "-".into(),
            },
            q(ch.map(|c| &c.export)),
            q(ch.map(|c| &c.endpoint)),
            q(ch.map(|c| &c.unexport)),
        ]
    }

    fn growth_row(&self) -> Vec<String> {
        let (exporter, importer) = self.roles();
        let per = |x: Option<&ReplicaResult>| opt(x.and_then(|x| self.mb_per_thousand(x)), 1);
        let cpu = |x: Option<&ReplicaResult>| opt(x.and_then(|x| self.cpu_per_change_ms(x)), 1);
        vec![
            self.shape.short(),
            per(exporter),
            per(importer),
            cpu(exporter),
            cpu(importer),
        ]
    }
}

impl ReplicaResult {
    /// The last sample taken.
    pub fn last(&self) -> Sample {
        self.changed
            .or(self.mirrored)
            .map(|p| p.end)
            .unwrap_or(self.start)
    }
}

impl Mirrors {
    /// `every mirror written in 18.7 s (c2 1,000 of 1,000, ...)`.
    pub fn summary(&self) -> String {
        let head = if self.done {
            format!(
                "every mirror written in {:.1} s",
                self.elapsed.as_secs_f64()
            )
        } else {
            format!("NOT every mirror after {:.0} s", self.elapsed.as_secs_f64())
        };
        format!("{head}: {}", mirror_counts(&self.counts))
    }

    fn short(&self) -> String {
        if self.done {
            return format!("{:.1} s", self.elapsed.as_secs_f64());
        }
        let (got, want) = self
            .counts
            .iter()
            .fold((0, 0), |(g, w), (_, got, n)| (g + got, w + n));
        format!(
            "{} of {} after {:.0} s",
            thousands(got),
            thousands(want),
            self.elapsed.as_secs_f64()
        )
    }
}

impl Changes {
    pub fn times_mut(&mut self, change: Change) -> &mut Vec<Duration> {
        match change {
            Change::Export => &mut self.export,
            Change::EndpointNotReady => &mut self.endpoint,
            Change::Unexport => &mut self.unexport,
        }
    }

    fn times(&self, change: Change) -> &[Duration] {
        match change {
            Change::Export => &self.export,
            Change::EndpointNotReady => &self.endpoint,
            Change::Unexport => &self.unexport,
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "changes seen in {}: {} exports, {} endpoint changes, {} unexports of {} each",
            self.importer,
            self.export.len(),
            self.endpoint.len(),
            self.unexport.len(),
            self.planned
        );
        if let Some(why) = &self.stopped {
            let _ = write!(s, "; stopped: {why}");
        }
        s
    }

    fn table(&self) -> String {
        let mut t = Table::new(&["change", "median ms", "p99 ms", "seen"], 1);
        for change in Change::ALL {
            let v = self.times(change);
            t.row(vec![
                change.name().into(),
                quantile(v, 0.5).map_or("-".into(), ms),
                quantile(v, 0.99).map_or("-".into(), ms),
                format!("{} of {}", v.len(), self.planned),
            ]);
        }
        let mut out = format!(
            "\nPropagation: a change in {} until a discovery subscriber in {} (as a sidecar \
             there) is sent it; changes start at random moments; p99 of up to 100 is the slowest\n{}",
            self.exporter,
            self.importer,
            t.render()
        );
        if let Some(why) = &self.stopped {
            let _ = writeln!(out, "  stopped: {why}");
        }
        out
    }
}

/// The sweep's summary, growth curve and budgets.
pub fn summary(steps: &[StepResult]) -> String {
    let mut t = Table::new(
        &[
            "step",
            "all mirrors",
            "exporter peak MB",
            "importer peak MB",
            "idle CPU % (max)",
            "export p50/p99 ms",
            "endpoint p50/p99 ms",
            "unexport p50/p99 ms",
        ],
        1,
    );
    for s in steps {
        t.row(s.summary_row());
    }
    let mut out = format!(
        "\nPer step (leaders; the importer is the first importing cluster, the exporter c1)\n{}",
        t.render()
    );
    let mut g = Table::new(
        &[
            "step",
            "exporter MB per 1,000",
            "importer MB per 1,000",
            "exporter CPU ms/change",
            "importer CPU ms/change",
        ],
        1,
    );
    for s in steps {
        g.row(s.growth_row());
    }
    let _ = write!(
        out,
        "\nGrowth with N (leaders): RSS grown over the mirror phase per 1,000 services held \
         (exports + mirrors); controller CPU per change, net of idle\n{}",
        g.render()
    );
    out.push_str(&budgets(steps));
    out
}

/// DESIGN.md section 10 and issue 20's acceptance, step by step.
fn budgets(steps: &[StepResult]) -> String {
    let mut t = Table::new(&["step", "budget", "measured", "met"], 2);
    for s in steps {
        let step = s.shape.short();
        let mut row = |budget: &str, measured: String, met: Option<bool>| {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            t.row(vec![step.clone(), budget.into(), measured, met.into()]);
        };
        if let Some(m) = &s.mirrors {
            let done = m.done.then_some(m.elapsed.as_secs_f64());
            row(
                "all mirrors < 60 s",
                m.short(),
                Some(done.is_some_and(|d| d < 60.0)),
            );
        }
        let limit = if s.shape.clusters >= 10 { 300.0 } else { 150.0 };
        if let Some(rest) = s.at_rest_mb() {
            row(
                &format!("every controller < {limit:.0} MB at rest, after changes"),
                format!("{rest:.1} MB at most"),
                Some(rest < limit),
            );
        }
        // Stricter than the budget: the most ever resident, mid-import too.
        if let Some(peak) = s.peak_mb() {
            row(
                &format!("every controller's peak < {limit:.0} MB"),
                format!("{peak:.1} MB at most"),
                Some(peak < limit),
            );
        }
        let idle = s
            .replicas
            .iter()
            .filter_map(|x| x.idle_pct)
            .max_by(f64::total_cmp);
        if let Some(idle) = idle {
            row(
                "idle CPU < 2% of a core",
                format!("{idle:.1}% at most"),
                Some(s.mirrors_done() && idle < 2.0),
            );
        }
        if let Some(ch) = &s.changes {
            let all = ch.export.len() == ch.planned
                && ch.endpoint.len() == ch.planned
                && ch.unexport.len() == ch.planned;
            let worst = [&ch.export, &ch.endpoint, &ch.unexport]
                .into_iter()
                .filter_map(|v| quantile(v, 0.99))
                .max();
            row(
                "changes reach a remote sidecar < 1 s p99",
                worst.map_or("none seen".into(), |w| format!("{} ms worst p99", ms(w))),
                Some(all && worst.is_some_and(|w| w < Duration::from_secs(1))),
            );
        }
    }
    format!("\nBudgets (DESIGN.md section 10, issue 20)\n{}", t.render())
}

/// `3,800 of 5,000` per importer.
pub fn mirror_counts(counts: &[(String, usize, usize)]) -> String {
    counts
        .iter()
        .map(|(c, got, n)| format!("{c} {} of {}", thousands(*got), thousands(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Nearest rank.
fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = v.to_vec();
    sorted.sort_unstable();
    let last = sorted.len().checked_sub(1)?;
    Some(sorted[(last as f64 * q).round() as usize])
}

fn quantiles(v: &[Duration]) -> String {
    match (quantile(v, 0.5), quantile(v, 0.99)) {
        (Some(a), Some(b)) => format!("{} / {}", ms(a), ms(b)),
        _ => "-".into(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// `10,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Columns two spaces apart: the first `left` left-aligned (names), the
/// rest right-aligned (numbers).
struct Table {
    rows: Vec<Vec<String>>,
    left: usize,
}

impl Table {
    fn new(header: &[&str], left: usize) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            left,
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width = |i: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let mut out = String::new();
        for r in &self.rows {
            for (i, (cell, w)) in r.iter().zip(&widths).enumerate() {
                if i < self.left {
                    let _ = write!(out, "  {cell:<w$}");
                } else {
                    let _ = write!(out, "  {cell:>w$}");
                }
            }
            out.truncate(out.trim_end_matches(' ').len());
            out.push('\n');
        }
        out
    }
}
