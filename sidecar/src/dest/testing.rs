//! A destination for unit tests of the request path: real credentials from
//! a test CA, fed endpoint sets by hand; and mesh servers (real mTLS, the
//! same CA) for tests that dial.

use std::sync::Arc;
use std::time::Duration;

use meshfed_api::discovery::{Endpoint, EndpointSet, Locality, Policy, PriorityGroup};
use meshfed_ca::{ClusterCa, KeyAlgorithm, RootCa};
use meshfed_trust::{CredentialsWatch, SpiffeId, TrustDomain};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Dest, Shared};
use crate::balance::EndpointInfo;
use crate::config::{Breakers, ServiceTarget, Timeouts};
use crate::connect::Connector;
use crate::metrics::Metrics;

/// The identity every test endpoint serves with.
pub(crate) const ID: &str = "spiffe://mesh.test/ns/shop/sa/api";

pub(crate) type Sets = watch::Sender<Option<Arc<EndpointSet>>>;

fn ca() -> &'static ClusterCa {
    static CA: std::sync::OnceLock<ClusterCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| {
        meshfed_trust::install_crypto_provider();
        let td = TrustDomain::new("mesh.test").expect("td");
        RootCa::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(3600))
            .expect("root")
            .issue_cluster("east", Duration::from_secs(3600), Vec::new())
            .expect("cluster ca")
    })
}

/// Credentials for `id`, issued by the test CA.
pub(crate) fn creds(id: &str) -> CredentialsWatch {
    let w = ca()
        .issue_workload(&SpiffeId::parse(id).expect("id"), Duration::from_secs(3600))
        .expect("workload");
    w.into_credentials().expect("credentials").into_watch().1
}

/// A destination (api.shop:80) fed by the returned sender, at most
/// `max_waiting` requests waiting for an endpoint.
pub(crate) fn dest(max_waiting: usize) -> (Arc<Dest>, Sets) {
    dest_with(Breakers {
        max_waiting,
        ..Breakers::default()
    })
}

/// The same, with `breakers`.
pub(crate) fn dest_with(breakers: Breakers) -> (Arc<Dest>, Sets) {
    dest_full(breakers, Timeouts::default())
}

/// The same, with `breakers` and `timeouts`.
pub(crate) fn dest_full(breakers: Breakers, timeouts: Timeouts) -> (Arc<Dest>, Sets) {
    let shared = shared(breakers, timeouts);
    let (tx, rx) = watch::channel(None);
    let target = ServiceTarget::new("api", "shop", 80).expect("target");
    (Dest::new(target, rx, shared), tx)
}

/// A destination of `target` beside others sharing `shared`.
pub(crate) fn dest_of(target: &str, shared: &Arc<Shared>) -> (Arc<Dest>, Sets) {
    let (tx, rx) = watch::channel(None);
    let target: ServiceTarget = target.parse().expect("target");
    (Dest::new(target, rx, shared.clone()), tx)
}

/// What a sidecar's destinations and ports share, with one worker, as
/// the frontend of `web`.
pub(crate) fn shared(breakers: Breakers, timeouts: Timeouts) -> Arc<Shared> {
    let creds = creds("spiffe://mesh.test/ns/web/sa/frontend");
    let stop = CancellationToken::new();
    let workers = Arc::new(crate::workers::Workers::start(1).expect("a worker"));
    Arc::new(Shared {
        connector: Arc::new(Connector::new(
            creds,
            timeouts.connect,
            timeouts.liveness,
            None,
            stop.clone(),
        )),
        metrics: Arc::new(Metrics::new(&mut Registry::default())),
        timeouts,
        breakers,
        cluster: "east".into(),
        tasks: TaskTracker::new(),
        stop,
        mirrors_in_flight: std::sync::atomic::AtomicUsize::new(0),
        limits: Arc::default(),
        pools: crate::pool::Pools::new(&workers, timeouts.liveness),
        workers,
    })
}

/// api in one group of east: `(address, ready)` each, serving as `ID`;
/// one failure ejects for a second, and every endpoint may be ejected.
pub(crate) fn set(endpoints: &[(&str, bool)]) -> Option<Arc<EndpointSet>> {
    let endpoints: Vec<Endpoint> = endpoints
        .iter()
        .map(|(addr, ready)| Endpoint {
            address: (*addr).into(),
            weight: 1,
            identities: vec![ID.into()],
            locality: None,
            ready: *ready,
            sni: String::new(),
        })
        .collect();
    Some(Arc::new(EndpointSet {
        exists: true,
        groups: vec![PriorityGroup {
            locality: Some(Locality {
                cluster: "east".into(),
                region: String::new(),
                zone: "a".into(),
            }),
            remote: false,
            total: endpoints.len() as u32,
            healthy: endpoints.iter().filter(|e| e.ready).count() as u32,
            endpoints,
            spill_threshold: 0.7,
            load_permille: 0,
        }],
        policy: Some(Policy {
            spill_threshold: 0.7,
            consecutive_failures: 1,
            ejection_time_ms: 1000,
            max_ejected_percent: 100,
            failback_hold_ms: 0,
            retry_budget_percent: 20,
            min_retries_per_second: 10,
            hash_header: String::new(),
            hash_cookie: String::new(),
        }),
        revision: 1,
        routes: Vec::new(),
    }))
}

/// An endpoint at `addr` as the balancer would list it (serving as `ID`).
pub(crate) fn endpoint(addr: &str) -> Arc<EndpointInfo> {
    let id = SpiffeId::parse(ID).expect("id");
    Arc::new(EndpointInfo {
        key: format!("{addr}/api.shop").into(),
        addr: addr.parse().expect("addr"),
        sni: "api.shop".into(),
        expected: meshfed_trust::ExpectedIds::one(id),
        ids_key: ID.into(),
        cluster: "east".into(),
        zone: "a".into(),
    })
}

/// A mesh server as a sidecar's inbound side is one (mTLS as `ID`, the
/// ALPN protocols `alpn`), answering every request with the HTTP version
/// it came in, after the milliseconds its path names (`/sleep/250`).
/// Counts the connections it accepted.
pub(crate) struct MeshServer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl MeshServer {
    pub(crate) async fn start(alpn: &[&[u8]]) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};

        let mut config = meshfed_trust::server_config(creds(ID));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        |req: http::Request<hyper::body::Incoming>| async move {
                            let ms: u64 = req
                                .uri()
                                .path()
                                .strip_prefix("/sleep/")
                                .and_then(|m| m.parse().ok())
                                .unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let body = format!("{:?}", req.version());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                });
            }
        });
        Self { addr, accepted }
    }

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A TCP relay to `to` that can go silent, as a partitioned peer does:
/// frozen, it holds every connection open and passes no byte.
pub(crate) struct Relay {
    pub(crate) addr: std::net::SocketAddr,
    frozen: CancellationToken,
}

impl Relay {
    pub(crate) async fn start(to: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let frozen = CancellationToken::new();
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(mut b) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        () = f.cancelled() => {
                            // Silent: the sockets stay open, nothing passes.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self { addr, frozen }
    }

    pub(crate) fn freeze(&self) {
        self.frozen.cancel();
    }
}
