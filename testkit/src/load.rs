//! The caller's workloads, each over one path (an address; whatever is
//! behind it passes the caller's mTLS through to the backend).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type Tls = TlsStream<TcpStream>;

/// Request and response size of the echo workloads.
pub const FRAME: usize = 64;

/// How the caller reaches the backend over one path.
#[derive(Clone)]
pub struct Caller {
    pub addr: SocketAddr,
    pub tls: TlsConnector,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// TCP connect and a full mTLS handshake.
    pub async fn connect(&self) -> anyhow::Result<Tls> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(meshfed_api::sni::service("api", "shop", 443))
            .context("server name")?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .context("mTLS handshake")?;
        Ok(tls)
    }

    /// A connection in echo mode that has completed one round trip (so the
    /// backend has finished its side of the handshake too).
    pub async fn echo_conn(&self) -> anyhow::Result<Tls> {
        let mut tls = self.connect().await?;
        tls.write_all(b"e").await?;
        round_trip(&mut tls).await?;
        Ok(tls)
    }

    /// The identity the backend sees: proof that mTLS is end to end.
    pub async fn whoami(&self) -> anyhow::Result<String> {
        let mut tls = self.connect().await?;
        tls.write_all(b"w").await?;
        tls.flush().await?;
        let mut who = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            tls.read_exact(&mut byte).await?;
            if byte[0] == b'\n' {
                break;
            }
            who.push(byte[0]);
        }
        let _ = tls.shutdown().await;
        Ok(String::from_utf8_lossy(&who).into_owned())
    }
}

async fn round_trip(tls: &mut Tls) -> anyhow::Result<()> {
    let mut frame = [0x42u8; FRAME];
    tls.write_all(&frame).await?;
    tls.flush().await?;
    tls.read_exact(&mut frame).await?;
    Ok(())
}

/// Open-loop echo: `rate` requests per second for `secs`, spread round-robin
/// over `conns` (pipelined: a request is sent on schedule whether or not
/// earlier answers came back, so queueing anywhere shows up as latency).
/// Latency is from just before the write to the complete response; the
/// first `warmup` of requests is left out. Returns the latencies (ns).
pub async fn open_loop(
    conns: &mut Vec<Tls>,
    rate: f64,
    secs: f64,
    warmup: f64,
) -> anyhow::Result<Vec<u64>> {
    let k = conns.len();
    let total = (rate * secs) as usize;
    let skip = (rate * warmup) as u64;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let mut senders = Vec::with_capacity(k);
    let mut tasks = Vec::with_capacity(k);
    for (i, tls) in conns.drain(..).enumerate() {
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
        senders.push(tx);
        let expect = (total + k - 1 - i) / k;
        let sent_w = sent.clone();
        let writer = tokio::spawn(async move {
            let mut frame = [0x42u8; FRAME];
            while let Some(seq) = rx.recv().await {
                frame[..8].copy_from_slice(&(seq as u64).to_le_bytes());
                sent_w[seq].store(nanos(base), Ordering::Relaxed);
                wr.write_all(&frame).await?;
                wr.flush().await?;
            }
            anyhow::Ok(wr)
        });
        let sent_r = sent.clone();
        let reader = tokio::spawn(async move {
            let mut lat = Vec::with_capacity(expect);
            let mut frame = [0u8; FRAME];
            for _ in 0..expect {
                rd.read_exact(&mut frame).await?;
                let now = nanos(base);
                let seq = u64::from_le_bytes(frame[..8].try_into().expect("8 bytes"));
                let at = sent_r
                    .get(usize::try_from(seq)?)
                    .context("echo of a request never sent")?
                    .load(Ordering::Relaxed);
                if seq >= skip {
                    lat.push(now.saturating_sub(at));
                }
            }
            anyhow::Ok((rd, lat))
        });
        tasks.push((writer, reader));
    }
    // tokio's timer ticks in milliseconds; the schedule needs 500 µs steps,
    // so it is paced by a thread (sleep granularity ~50 µs). The writers
    // stamp their own send time, so pacing jitter is not latency.
    let interval = Duration::from_secs_f64(1.0 / rate);
    let pacer = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(5);
        for seq in 0..total {
            let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if senders[seq % senders.len()].send(seq).is_err() {
                return;
            }
        }
    });
    let limit = Duration::from_secs_f64(secs + 30.0);
    let mut all = Vec::with_capacity(total);
    for (writer, reader) in tasks {
        let wr = tokio::time::timeout(limit, writer)
            .await
            .context("open loop: writer stuck")???;
        let (rd, lat) = tokio::time::timeout(limit, reader)
            .await
            .context("open loop: responses missing")???;
        all.extend(lat);
        conns.push(rd.unsplit(wr));
    }
    let _ = pacer.join();
    Ok(all)
}

fn nanos(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Uploads `len` bytes over `tls` to the discarding backend; the time until
/// the backend confirms it read all of them.
pub async fn upload(tls: &mut Tls, len: u64) -> anyhow::Result<Duration> {
    const CHUNK: usize = 256 * 1024;
    let chunk = vec![0x5au8; CHUNK];
    let start = Instant::now();
    tls.write_all(b"d").await?;
    tls.write_all(&len.to_le_bytes()).await?;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        tls.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    tls.flush().await?;
    let mut ack = [0u8; 1];
    tls.read_exact(&mut ack).await?;
    if ack[0] != b'k' {
        bail!("upload: bad acknowledgement {}", ack[0]);
    }
    Ok(start.elapsed())
}

/// What [`churn`] saw.
#[derive(Debug, Default)]
pub struct Churn {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Connect + handshake + one round trip, ns.
    pub latencies: Vec<u64>,
    pub elapsed: Duration,
}

/// New connections: `concurrency` callers each connect, handshake (no
/// resumption), do one 64-byte round trip and close, again and again for
/// `secs`.
pub async fn churn(caller: &Caller, concurrency: usize, secs: f64) -> Churn {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Churn::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let once = async {
                    let mut tls = caller.echo_conn().await?;
                    tls.shutdown().await?;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), once).await {
                    Ok(Ok(())) => {
                        out.ok += 1;
                        out.latencies.push(nanos(t));
                    }
                    failed => {
                        out.failed += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(match failed {
                                Ok(Err(e)) => format!("{e:#}"),
                                _ => "timed out after 10 s".into(),
                            });
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            out
        }));
    }
    let mut total = Churn::default();
    for t in tasks {
        match t.await {
            Ok(c) => {
                total.ok += c.ok;
                total.failed += c.failed;
                total.first_error = total.first_error.or(c.first_error);
                total.latencies.extend(c.latencies);
            }
            Err(e) => {
                total.failed += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Opens `n` echo connections (each after one round trip), `concurrency`
/// at a time, and keeps them.
pub async fn open_idle(caller: &Caller, n: usize, concurrency: usize) -> anyhow::Result<Vec<Tls>> {
    let mut tasks = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let share = n / concurrency + usize::from(w < n % concurrency);
        let caller = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut conns = Vec::with_capacity(share);
            for _ in 0..share {
                let conn = tokio::time::timeout(Duration::from_secs(10), caller.echo_conn())
                    .await
                    .context("idle connection: timed out")??;
                conns.push(conn);
            }
            anyhow::Ok(conns)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.context("opener panicked")??);
    }
    Ok(all)
}

/// The `q`-quantile (0..=1) of sorted `v`.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs a bench's `main` future on a runtime of two workers, the cores of
/// the machines these benches are compared on.
pub fn block_on<F: std::future::Future>(bench: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("runtime: {e}"))?
        .block_on(bench))
}

/// What every bench's plan starts from: how many interleaved rounds, and
/// the open-loop latency workload (its rate, its seconds per path over all
/// rounds, its connections). A quick run (`--quick`, for CI and for trying
/// a change) keeps every workload to a couple of seconds.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    /// A quick run.
    pub quick: bool,
    /// Interleaved rounds per workload.
    pub rounds: usize,
    /// Requests per second of the latency workload.
    pub rate: f64,
    /// Per path, over all rounds.
    pub latency_secs: f64,
    /// Connections the latency workload spreads over.
    pub latency_conns: usize,
}

impl Rounds {
    /// Whether a bench's arguments ask for a quick run: `cargo bench`
    /// passes `--bench`, and anything but `--quick` is ignored.
    pub fn quick(args: &[String]) -> bool {
        args.iter().any(|a| a == "--quick")
    }

    /// Five rounds and `latency_secs` of latency at 2,000 requests/s over
    /// `latency_conns` connections; two rounds and 2 s when `quick`.
    pub fn new(quick: bool, latency_secs: f64, latency_conns: usize) -> Self {
        Self {
            quick,
            rounds: if quick { 2 } else { 5 },
            rate: 2000.0,
            latency_secs: if quick { 2.0 } else { latency_secs },
            latency_conns,
        }
    }

    /// `full`, or `quick` in a quick run.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}
