//! Fixtures: a cluster (file store + real controller serving discovery and
//! federation, from the testkit), the gateway in-process, TLS backends that
//! report who called them, and plain TCP recorders that prove nothing was
//! forwarded.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use meshfed_ca::ClusterCa;
use meshfed_gateway::{Gateway, GatewayConfig, Metrics, RoutesSource, bind_shared, follow_routes};
use meshfed_runtime::Readiness;
pub use meshfed_testkit::cluster::*;
use meshfed_trust::{CredentialsWatch, ExpectedIds, client_config, peer_id, server_config};
use prometheus_client::registry::Registry;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// One Service in namespace `shop` with a slice per endpoint (each endpoint
/// listens on its own port), all in one zone.
pub fn service_manifest(
    name: &str,
    port: u16,
    exported: bool,
    endpoints: &[(SocketAddr, bool)],
) -> String {
    let endpoints: Vec<_> = endpoints.iter().map(|&(a, r)| (a, "z1", r)).collect();
    meshfed_testkit::cluster::service_manifest(name, ("tls", port), exported, &endpoints)
}

/// A cluster (file store and controller, from the testkit) and its gateway.
pub struct Env {
    pub cluster: Cluster,
    pub gateway: SocketAddr,
    pub registry: Arc<Registry>,
    pub ready: Readiness,
    tasks: Vec<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<meshfed_gateway::Drained>>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = &self.served {
            s.abort();
        }
    }
}

impl Env {
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_with(config, |_| {}).await
    }

    /// Starts a cluster; `manifests` may write files before the controller reads them.
    pub async fn start_with(
        mut config: GatewayConfig,
        manifests: impl FnOnce(&std::path::Path),
    ) -> Self {
        let cluster = Cluster::start_with(&Mesh::new(), "east", manifests).await;
        config.federation_upstream = Some(cluster.federation.to_string());
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let listener = bind_shared(any).expect("bind gateway");
        let gateway = listener.local_addr().expect("addr");
        let mut env = Self {
            cluster,
            gateway,
            registry: Arc::new(Registry::default()),
            ready: Readiness::default(),
            tasks: Vec::new(),
            stop: None,
            served: None,
        };
        let (gw, registry, following) = env.gateway_on(config);
        env.tasks.push(following);
        env.registry = registry;
        let (stop, served) = serve(gw, listener);
        env.stop = Some(stop);
        env.served = Some(served);
        env.wait_ready().await;
        env
    }

    /// A cluster exporting `api.shop:443`, served by one backend named `a`.
    pub async fn with_api(config: GatewayConfig) -> (Self, Backend) {
        let env = Self::start(config).await;
        let a = Backend::start(&env.cluster.ca, "a").await;
        env.write(
            "api.yaml",
            &service_manifest("api", 443, true, &[(a.addr, true)]),
        )
        .await;
        env.until_metric("meshfed_gateway_routes ", 1.0).await;
        (env, a)
    }

    /// A gateway following this cluster's controller (not serving yet).
    pub fn gateway_on(&self, config: GatewayConfig) -> (Gateway, Arc<Registry>, JoinHandle<()>) {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let gw_creds = creds(&self.cluster.ca, GATEWAY);
        let source = RoutesSource {
            discovery: self.cluster.discovery.to_string(),
            controller_id: id(CONTROLLER),
            gateway: "test".into(),
        };
        let (routes, following) = follow_routes(source, gw_creds.clone(), metrics.clone());
        let gw = Gateway::new(config, routes, gw_creds, self.ready.clone(), metrics);
        (gw, Arc::new(registry), following)
    }

    pub async fn wait_ready(&self) {
        let t0 = tokio::time::Instant::now();
        while !self.ready.get() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes a manifest and waits until the gateway's routes include it.
    pub async fn write(&self, file: &str, text: &str) {
        let path = self.cluster.dir.path().join(file);
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    }

    /// Starts the drain; returns how it ended.
    pub async fn shutdown(&mut self) -> meshfed_gateway::Drained {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.served
            .take()
            .expect("serving")
            .await
            .expect("serve task")
    }

    pub fn metrics(&self) -> String {
        encode(&self.registry)
    }

    /// The value of the metric line starting with `prefix` (0 when absent).
    pub fn metric(&self, prefix: &str) -> f64 {
        metric_in(&self.metrics(), prefix)
    }

    /// Waits until `metric(prefix) >= at_least`.
    pub async fn until_metric(&self, prefix: &str, at_least: f64) {
        let t0 = tokio::time::Instant::now();
        while self.metric(prefix) < at_least {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{prefix} stayed below {at_least}:\n{}",
                self.metrics()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A mesh client as `path`, connecting through the gateway with `sni`
    /// and expecting the server to be `server`.
    pub async fn connect(
        &self,
        path: &str,
        sni: &str,
        server: &str,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.gateway).await?;
        tls_connect(creds(&self.cluster.ca, path), tcp, sni, server).await
    }
}

pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
    out
}

pub fn metric_in(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Serves `gw` on `listener` until the returned sender fires.
pub fn serve(
    gw: Gateway,
    listener: TcpListener,
) -> (oneshot::Sender<()>, JoinHandle<meshfed_gateway::Drained>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        gw.serve(listener, async {
            let _ = rx.await;
        })
        .await
    });
    (tx, task)
}

/// A TLS client handshake over any stream.
pub async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin>(
    creds: CredentialsWatch,
    io: S,
    sni: &str,
    server: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>> {
    let tls = client_config(creds, ExpectedIds::one(id(server)));
    let name = ServerName::try_from(sni.to_owned()).map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::new(tls)).connect(name, io).await
}

/// Sends a line and reads the answer line.
pub async fn ask<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S, line: &str) -> String {
    tls.write_all(format!("{line}\n").as_bytes())
        .await
        .expect("send");
    tls.flush().await.expect("flush");
    let mut answer = String::new();
    BufReader::new(tls)
        .read_line(&mut answer)
        .await
        .expect("answer");
    answer.trim_end().to_owned()
}

/// A mesh TLS server that answers each line with `<name> <caller's SPIFFE ID>`.
pub struct Backend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(ca: &ClusterCa, name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = TlsAcceptor::from(Arc::new(server_config(creds(ca, API))));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let caller = peer_id(tls.get_ref().1.peer_certificates())
                        .map_or_else(|| "none".to_owned(), |id| id.to_string());
                    let mut lines = BufReader::new(tls);
                    let mut line = String::new();
                    while lines.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                        let reply = format!("{name} {caller}\n");
                        if lines.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        line.clear();
                    }
                    let _ = lines.get_mut().shutdown().await;
                });
            }
        });
        Self { addr, task }
    }
}

/// A plain TCP listener that only counts: what a refusal must never reach.
pub struct Recorder {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                drop(tcp);
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Writes through to a TCP stream one byte per write, pausing between
/// writes, for the first `limit` bytes: a ClientHello arriving in many
/// small segments.
pub struct Trickle {
    pub inner: TcpStream,
    pub limit: usize,
    pub sent: usize,
    pub pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.sent >= self.limit {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if let Some(p) = self.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let n = match Pin::new(&mut self.inner).poll_write(cx, &buf[..buf.len().min(1)]) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        self.sent += n;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_micros(200))));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A minimal, well-formed TLS 1.2-style ClientHello naming `sni` (any bytes).
pub fn raw_hello(sni: Option<&str>) -> Vec<u8> {
    let mut exts = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let n = u16::try_from(name.len()).expect("short");
        let mut list = vec![0u8];
        list.extend_from_slice(&n.to_be_bytes());
        list.extend_from_slice(name);
        let mut data = (u16::try_from(list.len()).expect("short"))
            .to_be_bytes()
            .to_vec();
        data.extend_from_slice(&list);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&u16::try_from(data.len()).expect("short").to_be_bytes());
        exts.extend_from_slice(&data);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&u16::try_from(exts.len()).expect("short").to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![1];
    hs.extend_from_slice(&u32::try_from(body.len()).expect("short").to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&u16::try_from(hs.len()).expect("short").to_be_bytes());
    record.extend_from_slice(&hs);
    record
}
