//! The results: the three paths side by side with their ratios to the
//! direct path, the proxies' memory, and the DESIGN.md section 10 budgets.

use std::fmt::Write as _;

use crate::load::Samples;

/// Everything measured over one path.
#[derive(Debug, Default)]
pub struct PathResults {
    pub name: &'static str,
    /// Open loop at the budget's rate.
    pub latency: Samples,
    /// Its p99 in each round, µs (how much the machine's noise moves it).
    pub round_p99: Vec<f64>,
    /// Open loop at the memory budget's rate.
    pub steady: Samples,
    /// Closed loop.
    pub throughput: Samples,
    /// CPU seconds of the path's proxies in each workload (None: none).
    pub cpu_latency: Option<f64>,
    pub cpu_throughput: Option<f64>,
    /// CPU seconds of every process (load generator, app, proxies) during
    /// the closed loop.
    pub cpu_throughput_all: f64,
}

impl PathResults {
    pub fn new(name: &'static str, proxied: bool) -> Self {
        Self {
            name,
            cpu_latency: proxied.then_some(0.0),
            cpu_throughput: proxied.then_some(0.0),
            ..Self::default()
        }
    }

    pub fn sort(&mut self) {
        for s in [&mut self.latency, &mut self.steady, &mut self.throughput] {
            s.ns.sort_unstable();
        }
    }

    fn req_per_sec(&self) -> Option<f64> {
        let secs = self.throughput.elapsed.as_secs_f64();
        (secs > 0.0).then(|| self.throughput.ns.len() as f64 / secs)
    }
}

/// RSS of one proxy process, KiB.
#[derive(Debug, Default)]
pub struct Mem {
    pub role: &'static str,
    pub sidecar: bool,
    pub idle: u64,
    /// The most sampled during the steady open loop.
    pub steady_max: u64,
    pub end: u64,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// The run's results, ready to print.
#[derive(Debug)]
pub struct Report<'a> {
    /// direct, same-cluster, cross-cluster.
    pub paths: &'a [PathResults; 3],
    pub mem: &'a [Mem],
    /// How late the pacer handed out requests (part of every latency).
    pub pacer: &'a Samples,
    pub rate: f64,
    pub steady_rate: f64,
    pub latency_conns: usize,
    pub throughput_conns: usize,
}

type Cells = [Option<f64>; 3];

impl Report<'_> {
    /// Added latency over the direct path at quantile `q`, µs.
    fn added(&self, i: usize, q: f64) -> Option<f64> {
        Some(self.paths[i].latency.us(q)? - self.paths[0].latency.us(q)?)
    }

    fn each(&self, f: impl Fn(&PathResults) -> Option<f64>) -> Cells {
        [0, 1, 2].map(|i| f(&self.paths[i]))
    }

    pub fn render(&self) -> String {
        let mut t = Table::default();
        t.head(&format!(
            "Latency, open loop at {} req/s over {} keep-alive connections, from each request's scheduled send time (µs)",
            self.rate, self.latency_conns
        ));
        for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            t.row(label, self.each(|p| p.latency.us(q)), 1, true);
        }
        let best = |p: &PathResults| p.round_p99.iter().copied().reduce(f64::min);
        let worst = |p: &PathResults| p.round_p99.iter().copied().reduce(f64::max);
        t.row("p99 of the best round", self.each(best), 1, false);
        t.row("p99 of the worst round", self.each(worst), 1, false);
        let max = |s: &Samples| s.ns.last().map(|n| *n as f64 / 1e3);
        t.row("max", self.each(|p| max(&p.latency)), 1, false);
        let count = |s: &Samples| Some(s.ns.len() as f64);
        t.row("answered", self.each(|p| count(&p.latency)), 0, false);
        let errors = |s: &Samples| Some(s.errors as f64);
        t.row("failed", self.each(|p| errors(&p.latency)), 0, false);
        for (label, q) in [("added p50 vs direct", 0.5), ("added p99 vs direct", 0.99)] {
            t.row(label, [None, self.added(1, q), self.added(2, q)], 1, false);
        }
        let cpu = |p: &PathResults| Some(p.cpu_latency? / p.latency.elapsed.as_secs_f64() * 100.0);
        t.row("proxies' CPU (% of a core)", self.each(cpu), 1, false);

        t.head(&format!(
            "Latency, open loop at {} req/s (while memory was sampled) (µs)",
            self.steady_rate
        ));
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            t.row(label, self.each(|p| p.steady.us(q)), 1, true);
        }
        t.row("failed", self.each(|p| errors(&p.steady)), 0, false);

        t.head(&format!(
            "Throughput, closed loop over {} keep-alive connections",
            self.throughput_conns
        ));
        t.row("requests/s", self.each(PathResults::req_per_sec), 0, true);
        let ms = |p: &PathResults, q| Some(p.throughput.us(q)? / 1e3);
        t.row("p50 (ms)", self.each(|p| ms(p, 0.5)), 2, true);
        t.row("p99 (ms)", self.each(|p| ms(p, 0.99)), 2, true);
        t.row("failed", self.each(|p| errors(&p.throughput)), 0, false);
        let per_req = |cpu: Option<f64>, p: &PathResults| {
            Some(cpu? / p.throughput.ns.len().max(1) as f64 * 1e6)
        };
        t.row(
            "proxies' CPU µs per request",
            self.each(|p| per_req(p.cpu_throughput, p)),
            1,
            false,
        );
        t.row(
            "all processes' CPU µs per request",
            self.each(|p| per_req(Some(p.cpu_throughput_all), p)),
            1,
            true,
        );

        let mut out = t.out;
        let _ = writeln!(
            out,
            "\nProxy memory (RSS, MiB)\n  {:<40}{:>12}{:>18}{:>14}",
            "",
            "idle",
            format!("max at {}/s", self.steady_rate),
            "end of run"
        );
        for m in self.mem {
            let _ = writeln!(
                out,
                "  {:<40}{:>12.1}{:>18.1}{:>14.1}",
                m.role,
                mib(m.idle),
                mib(m.steady_max),
                mib(m.end)
            );
        }
        let _ = writeln!(
            out,
            "\nHarness: the pacer handed requests out {} µs (p50) / {} µs (p99) after they were due; that is part of every path's latency.",
            fmt(self.pacer.us(0.5), 1),
            fmt(self.pacer.us(0.99), 1),
        );
        out
    }

    pub fn budgets(&self) -> String {
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let mut out = String::from("DESIGN.md section 10 budgets:\n");
        for (q, limit) in [(0.5, 150.0), (0.99, 1000.0)] {
            let added = self.added(2, q);
            let _ = writeln!(
                out,
                "  cross-cluster path adds < {limit} µs at p{} over direct, at {} req/s: {} µs  {}",
                q * 100.0,
                self.rate,
                fmt(added, 1),
                verdict(added.map(|a| a < limit)),
            );
        }
        let sidecars: Vec<&Mem> = self.mem.iter().filter(|m| m.sidecar).collect();
        let worst = sidecars.iter().map(|m| m.steady_max).max();
        let each: Vec<String> = sidecars
            .iter()
            .map(|m| format!("{} {:.1}", m.role, mb(m.steady_max)))
            .collect();
        let _ = writeln!(
            out,
            "  sidecar < 15 MB RSS at {} req/s: {} MB at most ({})  {}",
            self.steady_rate,
            fmt(worst.map(mb), 1),
            each.join(", "),
            verdict(worst.map(|w| mb(w) < 15.0)),
        );
        out
    }
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Rows of three paths and their ratios to the first.
#[derive(Debug, Default)]
struct Table {
    out: String,
}

impl Table {
    fn head(&mut self, title: &str) {
        let _ = write!(self.out, "\n{title}\n  {:<40}", "");
        for h in [
            "direct",
            "same-cluster",
            "cross-cluster",
            "same/direct",
            "cross/direct",
        ] {
            let _ = write!(self.out, "{h:>14}");
        }
        self.out.push('\n');
    }

    /// A row; `ratios`: with each path's ratio to the direct one.
    fn row(&mut self, label: &str, cells: Cells, decimals: usize, ratios: bool) {
        let _ = write!(self.out, "  {label:<40}");
        for c in cells {
            let _ = write!(self.out, "{:>14}", fmt(c, decimals));
        }
        if ratios {
            for c in &cells[1..] {
                let r = c
                    .zip(cells[0])
                    .filter(|(_, d)| *d != 0.0)
                    .map(|(c, d)| c / d);
                let _ = write!(
                    self.out,
                    "{:>14}",
                    r.map_or("-".into(), |r| format!("{r:.2}x"))
                );
            }
        }
        self.out.push('\n');
    }
}
