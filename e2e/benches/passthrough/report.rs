//! The results table, side by side per path, with ratios, and the
//! DESIGN.md section 10 budgets.

use std::fmt::Write as _;

use crate::load::{Churn, quantile};

/// Memory of a proxy process with idle connections through it.
#[derive(Debug, Default)]
pub struct Mem {
    /// (open connections, RSS KiB), from 0 to the most held.
    pub points: Vec<(usize, u64)>,
    /// Descriptors the proxy held at the most connections.
    pub fds: usize,
    /// RSS once every connection was closed again.
    pub after_close_kib: u64,
    /// RSS at the end of the run, after every workload.
    pub end_kib: Option<u64>,
}

impl Mem {
    pub fn held(&self) -> usize {
        self.points.last().map_or(0, |p| p.0)
    }

    fn rss_at(&self, i: usize) -> Option<f64> {
        self.points.get(i).map(|p| p.1 as f64 / 1024.0)
    }

    fn last_mib(&self) -> Option<f64> {
        self.points
            .len()
            .checked_sub(1)
            .and_then(|i| self.rss_at(i))
    }

    /// Least-squares slope, bytes per connection.
    pub fn slope_bytes(&self) -> Option<f64> {
        let n = self.points.len() as f64;
        if n < 2.0 {
            return None;
        }
        let (sx, sy) = self.points.iter().fold((0.0, 0.0), |(sx, sy), (x, y)| {
            (sx + *x as f64, sy + *y as f64 * 1024.0)
        });
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = self.points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
            let dx = *x as f64 - mx;
            (a + dx * (*y as f64 * 1024.0 - my), b + dx * dx)
        });
        (den > 0.0).then(|| num / den)
    }

    /// RSS at `n` connections: the most measured plus the slope for the rest.
    pub fn extrapolate_mib(&self, n: usize) -> Option<f64> {
        let extra = (n as f64 - self.held() as f64) * self.slope_bytes()? / (1024.0 * 1024.0);
        Some(self.last_mib()? + extra)
    }
}

/// Everything measured over one path.
#[derive(Debug, Default)]
pub struct PathResults {
    pub name: &'static str,
    pub present: bool,
    /// Open-loop latencies, ns (sorted once all are in).
    pub latency: Vec<u64>,
    pub latency_secs: f64,
    /// Upload throughputs, MB/s, one per repetition.
    pub bulk: Vec<f64>,
    pub bulk_bytes: u64,
    pub bulk_secs: f64,
    /// CPU seconds of caller, proxy and backend together during the uploads.
    pub cpu_bulk_all: f64,
    pub churn: Churn,
    pub mem: Option<Mem>,
    /// Proxy CPU seconds spent in each workload (None: no proxy).
    pub cpu_latency: Option<f64>,
    pub cpu_bulk: Option<f64>,
    pub cpu_churn: Option<f64>,
}

impl PathResults {
    pub fn new(name: &'static str, present: bool, proxied: bool) -> Self {
        let cpu = proxied.then_some(0.0);
        Self {
            name,
            present,
            cpu_latency: cpu,
            cpu_bulk: cpu,
            cpu_churn: cpu,
            ..Self::default()
        }
    }

    fn lat_us(&self, q: f64) -> Option<f64> {
        (!self.latency.is_empty()).then(|| quantile(&self.latency, q) as f64 / 1e3)
    }

    pub fn bulk_mbps(&self) -> Option<f64> {
        let mut v = self.bulk.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    fn conns_per_sec(&self) -> Option<f64> {
        let secs = self.churn.elapsed.as_secs_f64();
        (secs > 0.0).then(|| self.churn.ok as f64 / secs)
    }

    fn churn_ms(&self, q: f64) -> Option<f64> {
        (!self.churn.latencies.is_empty()).then(|| quantile(&self.churn.latencies, q) as f64 / 1e6)
    }
}

/// The three paths, in order: direct, gateway, haproxy.
#[derive(Debug)]
pub struct Report<'a> {
    pub direct: &'a PathResults,
    pub gateway: &'a PathResults,
    pub haproxy: &'a PathResults,
    pub rate: f64,
    pub idle_target: usize,
}

type Cell = Option<f64>;

impl Report<'_> {
    /// Added latency over the direct path at quantile `q`, µs.
    fn added(&self, p: &PathResults, q: f64) -> Cell {
        Some(p.lat_us(q)? - self.direct.lat_us(q)?)
    }

    pub fn render(&self) -> String {
        let (d, g, h) = (self.direct, self.gateway, self.haproxy);
        let mut t = Table::default();
        let lat = |p: &PathResults, q| p.lat_us(q);
        t.section(&format!(
            "Latency, open loop at {} req/s, 64 B echo (µs)",
            self.rate
        ));
        t.row(
            "p50",
            [lat(d, 0.5), lat(g, 0.5), lat(h, 0.5)],
            1,
            Ratio::Both,
        );
        t.row(
            "p99",
            [lat(d, 0.99), lat(g, 0.99), lat(h, 0.99)],
            1,
            Ratio::Both,
        );
        t.row(
            "p99.9",
            [lat(d, 0.999), lat(g, 0.999), lat(h, 0.999)],
            1,
            Ratio::Both,
        );
        let samples = |p: &PathResults| (p.present).then_some(p.latency.len() as f64);
        t.row(
            "samples",
            [samples(d), samples(g), samples(h)],
            0,
            Ratio::None,
        );
        let add = |p, q| self.added(p, q);
        t.row(
            "added p50 vs direct",
            [None, add(g, 0.5), add(h, 0.5)],
            1,
            Ratio::Haproxy,
        );
        t.row(
            "added p99 vs direct",
            [None, add(g, 0.99), add(h, 0.99)],
            1,
            Ratio::Haproxy,
        );
        let cpu_pct = |p: &PathResults| Some(p.cpu_latency? / p.latency_secs * 100.0);
        t.row(
            "proxy CPU (% of a core)",
            [None, cpu_pct(g), cpu_pct(h)],
            1,
            Ratio::Haproxy,
        );

        t.section("Bulk upload, one connection, to a discarding backend");
        let mbps = |p: &PathResults| p.bulk_mbps();
        t.row("MB/s (median)", [mbps(d), mbps(g), mbps(h)], 0, Ratio::Both);
        let pct = |p: &PathResults| Some(p.bulk_mbps()? / d.bulk_mbps()? * 100.0);
        t.row("% of direct", [pct(d), pct(g), pct(h)], 1, Ratio::None);
        let gib = |p: &PathResults| p.bulk_bytes as f64 / f64::from(1u32 << 30);
        let cpu_gib = |p: &PathResults| Some(p.cpu_bulk? / gib(p));
        t.row(
            "proxy CPU s per GiB",
            [None, cpu_gib(g), cpu_gib(h)],
            2,
            Ratio::Haproxy,
        );
        let all_gib = |p: &PathResults| (p.bulk_bytes > 0).then(|| p.cpu_bulk_all / gib(p));
        t.row(
            "all processes CPU s per GiB",
            [all_gib(d), all_gib(g), all_gib(h)],
            2,
            Ratio::Both,
        );
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        let busy = |p: &PathResults| {
            (p.bulk_secs > 0.0).then(|| p.cpu_bulk_all / p.bulk_secs / cores * 100.0)
        };
        t.row(
            "CPU busy (% of all cores)",
            [busy(d), busy(g), busy(h)],
            0,
            Ratio::None,
        );

        t.section("New connections: full mTLS handshake + 64 B round trip + close");
        let cps = |p: &PathResults| p.conns_per_sec();
        t.row("connections/s", [cps(d), cps(g), cps(h)], 0, Ratio::Both);
        let ms = |p: &PathResults, q| p.churn_ms(q);
        t.row(
            "p50 (ms)",
            [ms(d, 0.5), ms(g, 0.5), ms(h, 0.5)],
            2,
            Ratio::Both,
        );
        t.row(
            "p99 (ms)",
            [ms(d, 0.99), ms(g, 0.99), ms(h, 0.99)],
            2,
            Ratio::Both,
        );
        let failed = |p: &PathResults| p.present.then_some(p.churn.failed as f64);
        t.row("failed", [failed(d), failed(g), failed(h)], 0, Ratio::None);
        let cpu_conn = |p: &PathResults| Some(p.cpu_churn? / p.churn.ok.max(1) as f64 * 1e6);
        t.row(
            "proxy CPU µs per conn",
            [None, cpu_conn(g), cpu_conn(h)],
            0,
            Ratio::Haproxy,
        );

        let held = g.mem.as_ref().or(h.mem.as_ref()).map_or(0, Mem::held);
        t.section(&format!(
            "Proxy memory (RSS), {held} idle mTLS connections held"
        ));
        let m = |p: &PathResults, f: &dyn Fn(&Mem) -> Cell| p.mem.as_ref().and_then(f);
        let rss = |p: &PathResults, first: bool| {
            m(p, &|x: &Mem| {
                if first { x.rss_at(0) } else { x.last_mib() }
            })
        };
        t.row(
            "RSS at 0 connections (MiB)",
            [None, rss(g, true), rss(h, true)],
            1,
            Ratio::Haproxy,
        );
        t.row(
            &format!("RSS at {held} (MiB)"),
            [None, rss(g, false), rss(h, false)],
            1,
            Ratio::Haproxy,
        );
        let slope = |p: &PathResults| m(p, &|x: &Mem| Some(x.slope_bytes()? / 1024.0));
        t.row(
            "slope (KiB per connection)",
            [None, slope(g), slope(h)],
            2,
            Ratio::Haproxy,
        );
        let ten = |p: &PathResults| m(p, &|x: &Mem| x.extrapolate_mib(self.idle_target));
        t.row(
            &format!("RSS at {} extrapolated (MiB)", self.idle_target),
            [None, ten(g), ten(h)],
            1,
            Ratio::Haproxy,
        );
        let closed = |p: &PathResults| m(p, &|x: &Mem| Some(x.after_close_kib as f64 / 1024.0));
        t.row(
            "RSS after closing all (MiB)",
            [None, closed(g), closed(h)],
            1,
            Ratio::Haproxy,
        );
        let end = |p: &PathResults| m(p, &|x: &Mem| Some(x.end_kib? as f64 / 1024.0));
        t.row(
            "RSS at the end of the run (MiB)",
            [None, end(g), end(h)],
            1,
            Ratio::Haproxy,
        );
        let fds = |p: &PathResults| m(p, &|x: &Mem| Some(x.fds as f64));
        t.row(
            &format!("descriptors at {held}"),
            [None, fds(g), fds(h)],
            0,
            Ratio::None,
        );
        t.out
    }

    pub fn budgets(&self) -> String {
        let g = self.gateway;
        let mut out = String::from("DESIGN.md section 10 budgets (gateway hop only):\n");
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        let mem = g
            .mem
            .as_ref()
            .and_then(|m| m.extrapolate_mib(self.idle_target));
        let mb = mem.map(|m| m * 1024.0 * 1024.0 / 1e6);
        let _ = writeln!(
            out,
            "  memory < 30 MB at {} connections: {} MB (extrapolated)  {}",
            self.idle_target,
            fmt(mb, 1),
            verdict(mb.map(|m| m < 30.0))
        );
        let ratio = g
            .bulk_mbps()
            .zip(self.direct.bulk_mbps())
            .map(|(a, b)| a / b * 100.0);
        let _ = writeln!(
            out,
            "  throughput >= 80% of direct TLS: {}%  {}",
            fmt(ratio, 1),
            verdict(ratio.map(|r| r >= 80.0))
        );
        let (p50, p99) = (self.added(g, 0.5), self.added(g, 0.99));
        let _ = writeln!(
            out,
            "  added p50 < 150 µs at {} req/s: {} µs  {}",
            self.rate,
            fmt(p50, 1),
            verdict(p50.map(|v| v < 150.0))
        );
        let _ = writeln!(
            out,
            "  added p99 < 1000 µs at {} req/s: {} µs  {}",
            self.rate,
            fmt(p99, 1),
            verdict(p99.map(|v| v < 1000.0))
        );
        out
    }
}

fn fmt(v: Cell, decimals: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}

/// Which ratio columns a row gets.
#[derive(Debug, Clone, Copy)]
enum Ratio {
    None,
    /// gateway/haproxy only (the direct path has no such number).
    Haproxy,
    /// gateway/direct and gateway/haproxy.
    Both,
}

#[derive(Debug, Default)]
struct Table {
    out: String,
}

impl Table {
    const HEAD: [&'static str; 5] = ["direct", "gateway", "haproxy", "gw/direct", "gw/haproxy"];

    fn section(&mut self, title: &str) {
        let _ = writeln!(self.out, "\n{title}");
        let _ = write!(self.out, "  {:<34}", "");
        for h in Self::HEAD {
            let _ = write!(self.out, "{h:>12}");
        }
        self.out.push('\n');
    }

    fn row(&mut self, label: &str, v: [Cell; 3], decimals: usize, ratio: Ratio) {
        let div = |a: Cell, b: Cell| match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
            _ => None,
        };
        let (vs_direct, vs_haproxy) = match ratio {
            Ratio::None => (None, None),
            Ratio::Haproxy => (None, div(v[1], v[2])),
            Ratio::Both => (div(v[1], v[0]), div(v[1], v[2])),
        };
        let _ = write!(self.out, "  {label:<34}");
        for c in v {
            let _ = write!(self.out, "{:>12}", fmt(c, decimals));
        }
        for r in [vs_direct, vs_haproxy] {
            let _ = write!(
                self.out,
                "{:>12}",
                r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
            );
        }
        self.out.push('\n');
    }
}
