//! Fixtures: clusters (file store + real controller serving discovery and
//! federation, from the testkit); west's real gateway; HTTP apps behind
//! real server sidecars; a client sidecar; a steady request stream.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshfed_runtime::Readiness;
use meshfed_sidecar::{
    Breakers, DiscoverySource, Inbound, Locality, ServiceTarget, Sidecar, SidecarConfig, Timeouts,
    Upstream,
};
pub use meshfed_testkit::cluster::*;
use meshfed_trust::CredentialsWatch;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub fn api_target() -> ServiceTarget {
    ServiceTarget::new("api", "shop", 80).expect("target")
}

/// Where `cluster`'s controller serves discovery, as a sidecar is told.
pub fn source(cluster: &Cluster) -> DiscoverySource {
    DiscoverySource {
        addr: cluster.discovery.to_string(),
        controller_id: id(CONTROLLER),
    }
}

/// The cluster's east-west gateway (from the testkit), trusting a silent
/// controller for 1 s.
pub async fn gateway(cluster: &Cluster) -> Gateway {
    let any = "127.0.0.1:0".parse().expect("addr");
    Gateway::start(cluster.into(), any, Duration::from_secs(1)).await
}

/// An HTTP app answering every request with `<name> <meshfed-client-id>`.
pub struct App {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// The same, listening on `listen`.
    pub async fn start_on(name: &str, listen: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let name: Arc<str> = name.into();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let name = name.clone();
                        async move {
                            let caller = req
                                .headers()
                                .get(meshfed_sidecar::CLIENT_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("none")
                                .to_owned();
                            let trace = req
                                .headers()
                                .get("traceparent")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("none")
                                .to_owned();
                            // `/sleep/MS` answers late, `/status/CODE` with that status.
                            let path = req.uri().path().to_owned();
                            if let Some(ms) = path.strip_prefix("/sleep/") {
                                let ms = ms.parse().unwrap_or(0);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            let mut resp = http::Response::new(Full::new(Bytes::from(format!(
                                "{name} {caller}"
                            ))));
                            if let Some(code) = path.strip_prefix("/status/") {
                                *resp.status_mut() =
                                    code.parse().unwrap_or(http::StatusCode::BAD_REQUEST);
                            }
                            if let Ok(v) = http::HeaderValue::from_str(&trace) {
                                resp.headers_mut().insert("x-seen-traceparent", v);
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

/// A running sidecar; stopping it closes every connection it holds, as a
/// crash would.
pub struct Running {
    pub bound_inbound: Vec<SocketAddr>,
    pub upstream: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Running {
    pub async fn start(
        config: SidecarConfig,
        creds: CredentialsWatch,
        source: &DiscoverySource,
    ) -> Self {
        let mut registry = Registry::default();
        let sidecar = Sidecar::new(config, creds, source, Readiness::default(), &mut registry);
        let bound = sidecar.bind().await.expect("bind sidecar");
        let bound_inbound = bound.inbound_addrs();
        let upstream = bound.upstream_addr(&api_target());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            bound
                .serve(
                    async {
                        let _ = rx.await;
                    },
                    Duration::ZERO,
                )
                .await;
        });
        Self {
            bound_inbound,
            upstream,
            registry: Arc::new(registry),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }
}

/// An endpoint of api: an app and its sidecar.
pub struct Endpoint {
    pub addr: SocketAddr,
    _app: App,
    sidecar: Running,
}

impl Endpoint {
    /// Starts `name` in `cluster` on `listen` (port 0: any).
    pub async fn start(cluster: &Cluster, name: &str, listen: SocketAddr) -> Self {
        Self::start_allowing(cluster, name, listen, meshfed_sidecar::Allow::Mesh).await
    }

    pub async fn start_allowing(
        cluster: &Cluster,
        name: &str,
        listen: SocketAddr,
        allow: meshfed_sidecar::Allow,
    ) -> Self {
        let app = App::start(name).await;
        let sidecar = app_sidecar(cluster, listen, app.addr, allow).await;
        Self {
            addr: sidecar.bound_inbound[0],
            _app: app,
            sidecar,
        }
    }

    pub fn metrics(&self) -> String {
        self.sidecar.metrics()
    }

    /// Kills the endpoint: its sidecar stops, every connection closes.
    pub async fn kill(&mut self) {
        self.sidecar.stop().await;
    }
}

/// The sidecar of an api pod in `cluster`: inbound on `listen` (port 0:
/// any) to the app at `app`, open to `allow`.
pub async fn app_sidecar(
    cluster: &Cluster,
    listen: SocketAddr,
    app: SocketAddr,
    allow: meshfed_sidecar::Allow,
) -> Running {
    let config = SidecarConfig {
        locality: Locality {
            cluster: cluster.name.clone(),
            ..Locality::default()
        },
        inbound: vec![Inbound { listen, app, allow }],
        ..SidecarConfig::default()
    };
    Running::start(config, creds(&cluster.ca, API), &source(cluster)).await
}

/// The client workload's sidecar in `cluster`, zone `zone`, with api on an upstream port.
pub async fn client_sidecar(cluster: &Cluster, zone: &str, path: &str) -> Running {
    client_sidecar_with(
        cluster,
        zone,
        path,
        Timeouts::default(),
        Breakers::default(),
    )
    .await
}

/// The same, with its own timeouts and circuit breakers.
pub async fn client_sidecar_with(
    cluster: &Cluster,
    zone: &str,
    path: &str,
    timeouts: Timeouts,
    breakers: Breakers,
) -> Running {
    let config = SidecarConfig {
        locality: Locality {
            cluster: cluster.name.clone(),
            region: String::new(),
            zone: zone.into(),
        },
        upstreams: vec![Upstream {
            target: api_target(),
            listen: "127.0.0.1:0".parse().expect("addr"),
        }],
        timeouts,
        breakers,
        ..SidecarConfig::default()
    };
    Running::start(config, creds(&cluster.ca, path), &source(cluster)).await
}

/// A plain HTTP/1 client, as an unmodified app would be.
pub fn http_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One GET; the status and the body.
pub async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
) -> Result<(u16, String), String> {
    get_path(client, addr, "/").await.map(|(s, _, b)| (s, b))
}

/// One GET of `path`; the status, the `meshfed-error` header and the body.
pub async fn get_path(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Option<String>, String), String> {
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let resp = client.get(uri).await.map_err(|e| format!("{e}"))?;
    let status = resp.status().as_u16();
    let reason = resp
        .headers()
        .get(meshfed_sidecar::ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e}"))?
        .to_bytes();
    Ok((status, reason, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends GETs until each of `n` in a row is served by `name`'s prefix.
pub async fn until_served_by(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    prefix: &str,
    n: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    let mut last = String::new();
    while in_a_row < n {
        assert!(
            Instant::now() < deadline,
            "never served by {prefix}: last {last}"
        );
        match get(client, addr).await {
            Ok((200, body)) if body.starts_with(prefix) => in_a_row += 1,
            other => {
                in_a_row = 0;
                last = format!("{other:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One answer of a request stream.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When the request was sent.
    pub sent: Duration,
    /// When its answer (or error) came back.
    pub at: Duration,
    /// `Ok(serving app's name)` or `Err(what went wrong)`.
    pub result: Result<String, String>,
}

/// A steady stream of GETs, `concurrency` at a time, each worker pausing
/// `pause` between requests; runs until stopped.
pub struct Stream {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: tokio::sync::watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    t0: Instant,
}

impl Stream {
    pub fn start(addr: SocketAddr, concurrency: usize, pause: Duration) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let t0 = Instant::now();
        let workers = (0..concurrency)
            .map(|_| {
                let outcomes = outcomes.clone();
                let rx = rx.clone();
                tokio::spawn(async move {
                    let client = http_client();
                    while !*rx.borrow() {
                        let sent = t0.elapsed();
                        let result = match get(&client, addr).await {
                            Ok((200, body)) => {
                                Ok(body.split(' ').next().unwrap_or_default().to_owned())
                            }
                            Ok((status, body)) => Err(format!("{status} {body}")),
                            Err(e) => Err(e),
                        };
                        outcomes.lock().expect("outcomes").push(Outcome {
                            sent,
                            at: t0.elapsed(),
                            result,
                        });
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Self {
            outcomes,
            stop,
            workers,
            t0,
        }
    }

    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub fn len(&self) -> usize {
        self.outcomes.lock().expect("outcomes").len()
    }

    /// Waits until `n` more answers have come in.
    pub async fn wait_for(&self, n: usize) {
        let target = self.len() + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.len() < target {
            assert!(Instant::now() < deadline, "the stream stalled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The answers since `from`.
    pub fn since(&self, from: Duration) -> Vec<Outcome> {
        self.outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .filter(|o| o.at >= from)
            .cloned()
            .collect()
    }

    pub async fn finish(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        let mut all = self.outcomes.lock().expect("outcomes").clone();
        all.sort_by_key(|o| o.at);
        all
    }
}

/// A TCP relay that can be cut: every connection through it closes and no
/// new one gets through (a controller that went away); or frozen: every
/// connection stays open and nothing more crosses it either way, and new
/// ones are accepted but not served (a partition, which closes nothing, or
/// a SIGSTOPped process, whose kernel still accepts) — until thawed, when
/// what was held flows on.
pub struct Relay {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    pub async fn start(to: SocketAddr) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), to).await
    }

    /// The same, listening on `listen`.
    pub async fn start_on(listen: SocketAddr, to: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("bind relay");
        let addr = listener.local_addr().expect("addr");
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let held = tasks.clone();
        let freeze = frozen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let mut thawed = freeze.subscribe();
                let freeze = freeze.clone();
                let t = tokio::spawn(async move {
                    if thawed.wait_for(|f| !*f).await.is_err() {
                        return;
                    }
                    let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let (down_r, down_w) = down.into_split();
                    let (up_r, up_w) = up.into_split();
                    tokio::join!(
                        pipe(down_r, up_w, freeze.subscribe()),
                        pipe(up_r, down_w, freeze.subscribe()),
                    );
                });
                held.lock().expect("relay tasks").push(t);
            }
        });
        Self {
            addr,
            tasks,
            accept,
            frozen,
        }
    }

    pub fn cut(&self) {
        self.accept.abort();
        for t in self.tasks.lock().expect("relay tasks").drain(..) {
            t.abort();
        }
    }

    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

/// Copies one way, reading nothing while frozen and holding what was read.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // A read cancelled has taken nothing: the bytes stay queued.
            _ = frozen.wait_for(|f| *f) => continue,
        };
        if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}
