//! The load generator: HTTP/1.1 GETs over keep-alive connections to one
//! address (the app itself, or a client sidecar's upstream port), as an
//! unmodified app would send them.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One keep-alive HTTP/1.1 connection, made again if it closes.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    /// A connection that has carried one GET. Sent at once, as an app
    /// sends on a fresh connection: a sidecar takes a connection silent past
    /// its detect timeout (1 s) for a server-first protocol and proxies it
    /// as opaque TCP.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let mut conn = Self { addr, sender: None };
        conn.get("/").await?;
        Ok(conn)
    }

    /// `n` connections to `addr`.
    pub async fn open_many(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Self>> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Self::open(addr).await?);
        }
        Ok(conns)
    }

    async fn ready(&mut self) -> anyhow::Result<&mut SendRequest<Empty<Bytes>>> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            let tcp = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("connect {}", self.addr))?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        Ok(sender)
    }

    /// One GET of `path`: the body of a 200 answer, or an error naming the
    /// status and the sidecar's `meshfed-error`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Bytes> {
        let req = http::Request::get(path)
            .header(http::header::HOST, "api.shop")
            .body(Empty::new())?;
        let resp = self.ready().await?.send_request(req).await?;
        let status = resp.status();
        let reason = resp
            .headers()
            .get(meshfed_sidecar::ERROR_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let body = resp.into_body().collect().await?.to_bytes();
        if status != http::StatusCode::OK {
            bail!("{status} {}", reason.unwrap_or_default());
        }
        Ok(body)
    }
}

/// Latencies and failures of a workload.
#[derive(Debug, Default)]
pub struct Samples {
    /// Latencies of the answered requests, ns (sorted once all are in).
    pub ns: Vec<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Wall time the workload ran.
    pub elapsed: Duration,
}

impl Samples {
    fn push(&mut self, took: Duration) {
        self.ns
            .push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    fn record(&mut self, outcome: anyhow::Result<Bytes>, took: Duration) {
        match outcome {
            Ok(_) => self.push(took),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    pub fn add(&mut self, other: Self) {
        self.ns.extend(other.ns);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.elapsed += other.elapsed;
    }

    /// A sorted copy of the latencies (for quantiles of a part of a run).
    pub fn sorted(&self) -> Self {
        let mut ns = self.ns.clone();
        ns.sort_unstable();
        Self {
            ns,
            ..Self::default()
        }
    }

    /// p50, p99 and max (of sorted samples), for a progress line.
    pub fn brief(&self) -> String {
        let us = |q| self.us(q).map_or_else(|| "-".into(), |v| format!("{v:.0}"));
        format!("p50 {} / p99 {} / max {} µs", us(0.5), us(0.99), us(1.0))
    }

    /// The `q`-quantile in µs (None: no samples).
    pub fn us(&self, q: f64) -> Option<f64> {
        (!self.ns.is_empty()).then(|| meshfed_testkit::load::quantile(&self.ns, q) as f64 / 1e3)
    }
}

/// Open loop: `rate` GETs per second for `secs`, handed round-robin to
/// `conns`. A request is due at its place in the schedule whether or not
/// earlier ones were answered; one whose connection is still busy waits
/// for it, and its latency runs from when it was due to its complete
/// answer — so queueing anywhere counts, the pacer's own lateness too
/// (returned second), and nothing is coordinated away. Requests due in the
/// first `warmup` seconds are not counted.
pub async fn open_loop(
    conns: &mut Vec<Conn>,
    rate: f64,
    secs: f64,
    warmup: f64,
) -> anyhow::Result<(Samples, Samples)> {
    let total = (rate * secs) as usize;
    let skip = (rate * warmup) as usize;
    let mut senders = Vec::with_capacity(conns.len());
    let mut tasks = Vec::with_capacity(conns.len());
    for mut conn in conns.drain(..) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
        senders.push(tx);
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::default();
            while let Some((seq, due)) = rx.recv().await {
                let outcome = conn.get("/").await;
                if seq >= skip {
                    s.record(outcome, due.elapsed());
                }
            }
            (conn, s)
        }));
    }
    // tokio's timer ticks in milliseconds and the schedule needs 500 µs
    // steps: a thread paces it, with the kernel's timer slack (50 µs by
    // default) cut to the minimum so its sleeps end on time.
    let interval = Duration::from_secs_f64(1.0 / rate);
    let pacer = std::thread::spawn(move || {
        let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(1));
        let mut late = Samples::default();
        let start = Instant::now() + Duration::from_millis(5);
        for seq in 0..total {
            let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if seq >= skip {
                late.push(due.elapsed());
            }
            if senders[seq % senders.len()].send((seq, due)).is_err() {
                break;
            }
        }
        late
    });
    let started = Instant::now();
    let mut all = Samples::default();
    for t in tasks {
        let (conn, s) = tokio::time::timeout(Duration::from_secs_f64(secs + 30.0), t)
            .await
            .context("open loop: answers missing")?
            .context("open loop task")?;
        conns.push(conn);
        all.add(s);
    }
    all.elapsed = started.elapsed();
    let late = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("pacer panicked"))?;
    Ok((all, late))
}

/// Closed loop: every connection sends its next GET as soon as the last is
/// answered, for `secs`.
pub async fn closed_loop(conns: &mut Vec<Conn>, secs: f64) -> anyhow::Result<Samples> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = conns
        .drain(..)
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut s = Samples::default();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let outcome = conn.get("/").await;
                    let failed = outcome.is_err();
                    s.record(outcome, t.elapsed());
                    if failed {
                        // Not a busy loop against a refusing path.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                (conn, s)
            })
        })
        .collect();
    let mut all = Samples::default();
    for t in tasks {
        let (conn, s) = t.await.context("closed loop task")?;
        conns.push(conn);
        all.add(s);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}
