//! The results: every path side by side with its ratios to the direct
//! path, the Meshfed pair against the nginx pair, the proxies' memory, and
//! the budgets of DESIGN.md section 10 and issue 21.

use std::fmt::Write as _;

use crate::cost::Used;
use crate::load::Samples;

/// The path through a Meshfed sidecar pair.
pub const SAME_CLUSTER: &str = "same-cluster";
/// Through the gateway as well.
pub const CROSS_CLUSTER: &str = "cross-cluster";
/// The cross-cluster path to a Service whose HTTPRoute splits it between
/// two backends, both served across the clusters as the plain path is.
pub const CROSS_ROUTED: &str = "routed cross";
/// The same pair shape built from nginx.
pub const NGINX: &str = "nginx pair";

/// Everything measured over one path.
#[derive(Debug, Default)]
pub struct PathResults {
    pub name: &'static str,
    /// Open loop at the budget's rate.
    pub latency: Samples,
    /// Requests sent in it, the unmeasured first part of each round too
    /// (what the proxies' CPU was spent on).
    pub latency_sent: f64,
    /// Its p99 in each round, µs (how much the machine's noise moves it).
    pub round_p99: Vec<f64>,
    /// Open loop at the memory budget's rate.
    pub steady: Samples,
    /// Closed loop.
    pub throughput: Samples,
    /// What the path's proxies used in each workload (None: no proxies).
    pub used_latency: Option<Used>,
    pub used_throughput: Option<Used>,
    /// CPU seconds of every process (load generator, app, proxies) during
    /// the closed loop.
    pub cpu_throughput_all: f64,
}

impl PathResults {
    pub fn new(name: &'static str, proxied: bool) -> Self {
        Self {
            name,
            used_latency: proxied.then(Used::default),
            used_throughput: proxied.then(Used::default),
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

    /// The proxies' CPU µs and context switches per request, open loop.
    fn per_request_open(&self) -> Option<(f64, f64)> {
        let u = self.used_latency?;
        let n = self.latency_sent.max(1.0);
        Some((u.cpu_secs / n * 1e6, u.switches / n))
    }

    /// The same in the closed loop.
    fn per_request_closed(&self) -> Option<(f64, f64)> {
        let u = self.used_throughput?;
        let n = (self.throughput.ns.len() as f64 + self.throughput.errors as f64).max(1.0);
        Some((u.cpu_secs / n * 1e6, u.switches / n))
    }
}

/// RSS of one proxy (all its processes), KiB.
#[derive(Debug, Default)]
pub struct Mem {
    pub role: &'static str,
    pub sidecar: bool,
    /// The pair it is half of, for the comparison: [`SAME_CLUSTER`] or
    /// [`NGINX`].
    pub pair: Option<&'static str>,
    /// Its processes (summed).
    pub pids: Vec<u32>,
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
    /// direct first, then the proxied paths.
    pub paths: &'a [PathResults],
    pub mem: &'a [Mem],
    /// How late the pacer handed out requests (part of every latency).
    pub pacer: &'a Samples,
    pub rate: f64,
    pub steady_rate: f64,
    pub latency_conns: usize,
    pub throughput_conns: usize,
}

impl Report<'_> {
    fn path(&self, name: &str) -> Option<&PathResults> {
        self.paths.iter().find(|p| p.name == name)
    }

    /// Added latency of `p` over the direct path at quantile `q`, µs.
    fn added(&self, p: &PathResults, q: f64) -> Option<f64> {
        Some(p.latency.us(q)? - self.paths.first()?.latency.us(q)?)
    }

    fn added_by(&self, name: &str, q: f64) -> Option<f64> {
        self.added(self.path(name)?, q)
    }

    fn each(&self, f: impl Fn(&PathResults) -> Option<f64>) -> Vec<Option<f64>> {
        self.paths.iter().map(f).collect()
    }

    pub fn render(&self) -> String {
        let names: Vec<&str> = self.paths.iter().map(|p| p.name).collect();
        let mut t = Table::new(names);
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
            t.row(
                label,
                self.each(|p| self.added(p, q).filter(|_| p.used_latency.is_some())),
                1,
                false,
            );
        }
        let cpu = |p: &PathResults| {
            Some(p.used_latency?.cpu_secs / p.latency.elapsed.as_secs_f64() * 100.0)
        };
        t.row("proxies' CPU (% of a core)", self.each(cpu), 1, false);
        self.per_request_rows(&mut t, PathResults::per_request_open);

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
        self.per_request_rows(&mut t, PathResults::per_request_closed);
        let all = |p: &PathResults| {
            Some(p.cpu_throughput_all / p.throughput.ns.len().max(1) as f64 * 1e6)
        };
        t.row("all processes' CPU µs per request", self.each(all), 1, true);

        let mut out = t.out;
        out.push_str(&self.against_nginx());
        let _ = writeln!(
            out,
            "\nProxy memory (RSS, MiB; a process group counts every process)\n  {:<44}{:>12}{:>18}{:>14}",
            "",
            "idle",
            format!("max at {}/s", self.steady_rate),
            "end of run"
        );
        for m in self.mem {
            let _ = writeln!(
                out,
                "  {:<44}{:>12.1}{:>18.1}{:>14.1}",
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

    /// The proxies' CPU and context switches per request, as `of` counts
    /// them for a workload.
    fn per_request_rows(&self, t: &mut Table, of: fn(&PathResults) -> Option<(f64, f64)>) {
        let cpu = self.each(|p| Some(of(p)?.0));
        t.row("proxies' CPU µs per request", cpu, 1, false);
        let switches = self.each(|p| Some(of(p)?.1));
        t.row("proxies' context switches per request", switches, 2, false);
    }

    /// The Meshfed pair (same-cluster) against the nginx pair, row by row.
    fn against_nginx(&self) -> String {
        let mut out = String::new();
        let (Some(m), Some(n)) = (self.path(SAME_CLUSTER), self.path(NGINX)) else {
            out.push_str(
                "\nNo nginx pair in this run: nothing to compare the sidecar pair with.\n",
            );
            return out;
        };
        let _ = writeln!(
            out,
            "\nThe Meshfed sidecar pair against the nginx pair (same shape: two proxies, mTLS between)\n  {:<44}{:>14}{:>14}{:>14}",
            "", "Meshfed", "nginx", "Meshfed/nginx"
        );
        let rss = |role_has: &str| {
            let kib: u64 = self
                .mem
                .iter()
                .filter(|x| x.pair == Some(role_has))
                .map(|x| x.steady_max)
                .sum();
            (kib > 0).then(|| mib(kib))
        };
        type Of<'a> = &'a dyn Fn(&PathResults) -> Option<f64>;
        let per_path: [(&str, Of, usize); 7] = [
            ("added p50 at {rate}/s (µs)", &|p| self.added(p, 0.5), 1),
            ("added p99 at {rate}/s (µs)", &|p| self.added(p, 0.99), 1),
            (
                "CPU µs per request at {rate}/s",
                &|p| Some(p.per_request_open()?.0),
                1,
            ),
            (
                "context switches per request at {rate}/s",
                &|p| Some(p.per_request_open()?.1),
                2,
            ),
            ("closed-loop requests/s", &PathResults::req_per_sec, 0),
            (
                "CPU µs per request, closed loop",
                &|p| Some(p.per_request_closed()?.0),
                1,
            ),
            (
                "context switches per request, closed loop",
                &|p| Some(p.per_request_closed()?.1),
                2,
            ),
        ];
        let mut rows: Vec<(&str, Option<f64>, Option<f64>, usize)> = per_path
            .iter()
            .map(|(label, f, d)| (*label, f(m), f(n), *d))
            .collect();
        rows.push((
            "RSS of the pair at {steady}/s (MiB)",
            rss(SAME_CLUSTER),
            rss(NGINX),
            1,
        ));
        rows.push((
            "failed requests, all workloads",
            Some(failed(m)),
            Some(failed(n)),
            0,
        ));
        for (label, a, b, d) in rows {
            let label = label
                .replace("{rate}", &self.rate.to_string())
                .replace("{steady}", &self.steady_rate.to_string());
            let ratio = a.zip(b).filter(|(_, b)| *b != 0.0).map(|(a, b)| a / b);
            let _ = writeln!(
                out,
                "  {label:<44}{:>14}{:>14}{:>14}",
                fmt(a, d),
                fmt(b, d),
                ratio.map_or("-".into(), |r| format!("{r:.2}x"))
            );
        }
        out
    }

    pub fn budgets(&self) -> String {
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let mut out = String::from("Budgets (DESIGN.md section 10, issue 21):\n");
        for (q, limit) in [(0.5, 150.0), (0.99, 1000.0)] {
            let added = self.added_by(CROSS_CLUSTER, q);
            let _ = writeln!(
                out,
                "  cross-cluster path adds < {limit} µs at p{} over direct, at {} req/s: {} µs  {}",
                q * 100.0,
                self.rate,
                fmt(added, 1),
                verdict(added.map(|a| a < limit)),
            );
        }
        let routed = self
            .added_by(CROSS_ROUTED, 0.5)
            .zip(self.added_by(CROSS_CLUSTER, 0.5))
            .map(|(r, c)| r - c);
        let _ = writeln!(
            out,
            "  a 2-backend HTTPRoute adds < 10 µs at p50 to the cross-cluster path (issue 22): {} µs  {}",
            fmt(routed, 1),
            verdict(routed.map(|r| r < 10.0)),
        );
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
        let (m, n) = (self.path(SAME_CLUSTER), self.path(NGINX));
        let ratio = |f: &dyn Fn(&PathResults) -> Option<f64>| {
            let (a, b) = (f(m?)?, f(n?)?);
            (b != 0.0).then(|| a / b)
        };
        let checks: [(&str, Option<f64>, bool); 4] = [
            (
                "Meshfed pair added p50 at 2,000 req/s <= 1.0x the nginx pair's (goal 0.7x)",
                ratio(&|p| self.added(p, 0.5)),
                true,
            ),
            (
                "Meshfed pair CPU per request at 2,000 req/s <= 1.0x nginx (goal 0.7x)",
                ratio(&|p| p.per_request_open().map(|o| o.0)),
                true,
            ),
            (
                "Meshfed pair CPU per request at saturation <= 1.0x nginx",
                ratio(&|p| p.per_request_closed().map(|c| c.0)),
                true,
            ),
            (
                "Meshfed pair closed-loop throughput >= 1.0x nginx",
                ratio(&PathResults::req_per_sec),
                false,
            ),
        ];
        for (what, r, at_most) in checks {
            let ok = r.map(|r| if at_most { r <= 1.0 } else { r >= 1.0 });
            let _ = writeln!(
                out,
                "  {what}: {}  {}",
                r.map_or("-".into(), |r| format!("{r:.2}x")),
                verdict(ok)
            );
        }
        out
    }
}

/// Failed requests over every workload of a path.
fn failed(p: &PathResults) -> f64 {
    (p.latency.errors + p.steady.errors + p.throughput.errors) as f64
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Rows of every path and the proxied ones' ratios to the first (direct).
#[derive(Debug)]
struct Table {
    names: Vec<&'static str>,
    out: String,
}

impl Table {
    fn new(names: Vec<&'static str>) -> Self {
        Self {
            names,
            out: String::new(),
        }
    }

    fn head(&mut self, title: &str) {
        let _ = write!(self.out, "\n{title}\n  {:<44}", "");
        for h in &self.names {
            let _ = write!(self.out, "{h:>14}");
        }
        for h in self.names.iter().skip(1) {
            let short = h.split(['-', ' ']).next().unwrap_or(h);
            let _ = write!(self.out, "{:>14}", format!("{short}/direct"));
        }
        self.out.push('\n');
    }

    /// A row; `ratios`: with each path's ratio to the direct one.
    fn row(&mut self, label: &str, cells: Vec<Option<f64>>, decimals: usize, ratios: bool) {
        let _ = write!(self.out, "  {label:<44}");
        for c in &cells {
            let _ = write!(self.out, "{:>14}", fmt(*c, decimals));
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
