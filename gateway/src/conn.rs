//! One connection: read the ClientHello, decide, then either refuse (before
//! a single byte reaches anyone), answer a probe, or dial an endpoint from
//! the routing table, replay the ClientHello and splice.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshfed_api::sni::{self, Target};
use meshfed_runtime::Readiness;
use prometheus_client::metrics::counter::Counter;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::balance::pick;
use crate::hello::{ClientHello, HelloError, HelloReader};
use crate::metrics::{ByteLabels, ConnLabels, Metrics, Reason};
use crate::probe::serve_probe;
use crate::routes::{RouteTable, Upstream};
use crate::server::GatewayConfig;
use crate::splice::{ByteCounters, Ended, splice, write_all};

/// Endpoints tried per connection before giving up.
const MAX_ATTEMPTS: usize = 3;
/// Bytes read per call while the ClientHello comes in.
const HELLO_READ: usize = 4096;
/// TLS alerts sent when refusing a ClientHello (RFC 8446 §6.2).
const ALERT_UNRECOGNIZED_NAME: u8 = 112;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_DECODE_ERROR: u8 = 50;

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) routes: watch::Receiver<Arc<RouteTable>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) probe: Arc<TlsAcceptor>,
    pub(crate) ready: Readiness,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Where a routed connection goes.
enum Destination {
    /// Endpoints of an exported service port.
    Service(Arc<[Upstream]>),
    /// The local controller's federation listener.
    Federation(String),
}

/// Serves one accepted connection to its end.
pub(crate) async fn handle(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    // Everything before the splice is boxed and gone once done: the task
    // of a long-lived connection keeps only what splicing needs.
    let Some((tcp, routed)) = Box::pin(route(&shared, tcp, peer)).await else {
        return;
    };
    let counters = ByteCounters {
        ingress: &routed.ingress,
        egress: &routed.egress,
    };
    let ended = splice(&tcp, &routed.upstream, shared.config.idle_timeout, counters).await;
    if ended != Ended::Closed {
        tracing::debug!(%peer, ?ended, "connection ended");
    }
}

/// A connection whose upstream is connected and has been sent the ClientHello.
struct Routed {
    upstream: TcpStream,
    _active: Active,
    ingress: Counter,
    egress: Counter,
}

/// Reads the ClientHello and refuses, answers the probe (`None` either
/// way), or connects the upstream and replays the ClientHello to it.
async fn route(shared: &Shared, tcp: TcpStream, peer: SocketAddr) -> Option<(TcpStream, Routed)> {
    let accepted = Instant::now();
    set_options(&tcp, shared.config.liveness);
    let read = tokio::time::timeout(shared.config.handshake_timeout, read_hello(&tcp)).await;
    let (hello, bytes) = match read {
        Ok(Ok(h)) => h,
        Ok(Err(Failed::Closed)) => return None,
        Ok(Err(Failed::Hello(e))) => {
            let (reason, alert) = match e {
                HelloError::NotTls => (Reason::NotTls, None),
                _ => (Reason::BadHello, Some(ALERT_DECODE_ERROR)),
            };
            refuse(&shared.metrics, &tcp, peer, reason, alert).await;
            return None;
        }
        Err(_) => {
            refuse(&shared.metrics, &tcp, peer, Reason::HelloTimeout, None).await;
            return None;
        }
    };
    shared
        .metrics
        .hello_latency
        .observe(accepted.elapsed().as_secs_f64());
    let (destination, labels) = match classify(shared, hello) {
        Ok(Some(d)) => d,
        Ok(None) => {
            let ready = shared.ready.clone();
            let probe = shared.probe.clone();
            count(&shared.metrics, "probe".into(), "unknown".into());
            if let Err(e) = serve_probe(tcp, bytes, probe, ready).await {
                tracing::debug!(%peer, error = %e, "probe connection failed");
            }
            return None;
        }
        Err(reason) => {
            let alert = match reason {
                Reason::NoHealthyEndpoint | Reason::NoFederation => ALERT_INTERNAL_ERROR,
                _ => ALERT_UNRECOGNIZED_NAME,
            };
            refuse(&shared.metrics, &tcp, peer, reason, Some(alert)).await;
            return None;
        }
    };
    let Some((upstream, active)) = connect(shared, &destination).await else {
        let alert = Some(ALERT_INTERNAL_ERROR);
        refuse(
            &shared.metrics,
            &tcp,
            peer,
            Reason::UpstreamUnavailable,
            alert,
        )
        .await;
        return None;
    };
    // Owned handles: a family's guard must not be held across an await.
    let bytes_for = |direction| {
        shared
            .metrics
            .bytes
            .get_or_create(&ByteLabels {
                service: labels.service.clone(),
                direction,
            })
            .clone()
    };
    let (ingress, egress) = (bytes_for("ingress"), bytes_for("egress"));
    count(&shared.metrics, labels.service, labels.source_cluster);
    write_all(&upstream, &bytes).await.ok()?;
    ingress.inc_by(bytes.len() as u64);
    let routed = Routed {
        upstream,
        _active: active,
        ingress,
        egress,
    };
    Some((tcp, routed))
}

fn count(metrics: &Metrics, service: String, source_cluster: String) {
    metrics
        .connections
        .get_or_create(&ConnLabels {
            service,
            source_cluster,
        })
        .inc();
}

enum Failed {
    Closed,
    Hello(HelloError),
}

/// Reads until the ClientHello is complete; returns it and every byte read.
async fn read_hello(tcp: &TcpStream) -> Result<(ClientHello, Vec<u8>), Failed> {
    let mut reader = HelloReader::new();
    loop {
        tcp.readable().await.map_err(|_| Failed::Closed)?;
        let buf = reader.buffer(HELLO_READ).map_err(Failed::Hello)?;
        match tcp.try_read_buf(buf) {
            Ok(0) => return Err(Failed::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(Failed::Closed),
        }
        if let Some(hello) = reader.advance().map_err(Failed::Hello)? {
            return Ok((hello, reader.into_bytes()));
        }
    }
}

/// Decides where a ClientHello goes: `Ok(None)` is the probe endpoint.
fn classify(
    shared: &Shared,
    hello: ClientHello,
) -> Result<Option<(Destination, ConnLabels)>, Reason> {
    let name = hello.server_name.ok_or(Reason::NoSni)?;
    if name.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Err(Reason::IpLiteral);
    }
    match sni::parse(&name).map_err(|_| Reason::UnknownSni)? {
        Target::Probe => Ok(None),
        Target::Federation => {
            let addr = shared
                .config
                .federation_upstream
                .clone()
                .ok_or(Reason::NoFederation)?;
            let labels = ConnLabels {
                service: "federation".into(),
                source_cluster: "unknown".into(),
            };
            Ok(Some((Destination::Federation(addr), labels)))
        }
        Target::Service {
            name,
            namespace,
            port,
            source,
        } => {
            let table = shared.routes.borrow().clone();
            let endpoints = table.lookup(&namespace, &name, port)?;
            let source_cluster = source
                .filter(|s| table.is_peer(s))
                .unwrap_or_else(|| "unknown".into());
            let labels = ConnLabels {
                service: format!("{namespace}/{name}:{port}"),
                source_cluster,
            };
            Ok(Some((Destination::Service(endpoints), labels)))
        }
    }
}

/// Decrements an endpoint's load when the connection ends.
struct Active(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(a) = &self.0 {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Connects to the destination, trying other endpoints on failure.
async fn connect(shared: &Shared, dest: &Destination) -> Option<(TcpStream, Active)> {
    let timeout = shared.config.connect_timeout;
    match dest {
        Destination::Federation(addr) => {
            let tcp = dial(shared, timeout, addr.as_str()).await?;
            Some((tcp, Active(None)))
        }
        Destination::Service(endpoints) => {
            let mut tried = Vec::with_capacity(MAX_ATTEMPTS);
            while tried.len() < MAX_ATTEMPTS {
                let i = pick(endpoints, &tried)?;
                let ep = &endpoints[i];
                if let Some(tcp) = dial(shared, timeout, ep.addr).await {
                    ep.active.fetch_add(1, Ordering::Relaxed);
                    return Some((tcp, Active(Some(ep.active.clone()))));
                }
                tried.push(i);
            }
            None
        }
    }
}

async fn dial(
    shared: &Shared,
    timeout: Duration,
    addr: impl tokio::net::ToSocketAddrs + std::fmt::Display + Copy,
) -> Option<TcpStream> {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => {
            shared
                .metrics
                .connect_latency
                .observe(start.elapsed().as_secs_f64());
            set_options(&tcp, shared.config.liveness);
            Some(tcp)
        }
        Ok(Err(e)) => {
            shared.metrics.connect_failures.inc();
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            None
        }
        Err(_) => {
            shared.metrics.connect_failures.inc();
            tracing::debug!(%addr, "upstream connect timed out");
            None
        }
    }
}

/// No Nagle delay (the bytes are someone else's TLS records), and
/// liveness checks so a peer gone silent (a partition closes nothing) does
/// not hold the connection, nor the one spliced to it: after `liveness` of
/// silence a keepalive probe goes out, `liveness` apart, and two
/// unanswered close it, as does data unacknowledged for three times
/// `liveness`.
fn set_options(tcp: &TcpStream, liveness: Duration) {
    let _ = tcp.set_nodelay(true);
    // The kernel counts keepalive times in whole seconds.
    let every = liveness.max(Duration::from_secs(1));
    let keepalive = TcpKeepalive::new()
        .with_time(every)
        .with_interval(every)
        .with_retries(2);
    let sock = SockRef::from(tcp);
    let _ = sock.set_tcp_keepalive(&keepalive);
    let _ = sock.set_tcp_user_timeout(Some(every * 3));
}

/// Counts the refusal and closes: a TLS alert to a TLS client, nothing to
/// anyone else.
async fn refuse(
    metrics: &Metrics,
    tcp: &TcpStream,
    peer: SocketAddr,
    reason: Reason,
    alert: Option<u8>,
) {
    metrics.refuse(reason);
    tracing::debug!(%peer, ?reason, "refused");
    if let Some(desc) = alert {
        let record = [21, 3, 3, 0, 2, 2, desc];
        let _ = tokio::time::timeout(Duration::from_secs(1), write_all(tcp, &record)).await;
    }
}
