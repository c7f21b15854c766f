//! Meshfed's sidecar: the workload's proxy. Outbound it sends the app's
//! calls to the nearest healthy endpoints of the service called — same zone
//! first, another cluster (through its gateway, still end-to-end mTLS) only
//! when it must — with retries, timeouts and circuit breaking; inbound it
//! terminates mesh mTLS, checks who is calling, and tells the app.
//!
//! ```text
//! app ─► upstream port / transparent listener ─► detect ─┬─ HTTP: per request, the stack ─┐
//!          route ─► retry ─► balance ─► breaker ─► endpoint (pool: h1 or h2, mTLS)      │
//!                                                        └─ TCP: per connection ──────────┤
//!        Dest: discovery stream ─► balancer (groups, P2C, outliers, failback hold)  ◄─────┘
//! caller's sidecar / gateway ─► inbound port / inbound transparent listener
//!        ─► TLS? ─┬─ mTLS + allow-list ─► app (caller's ID)
//!                 └─ plaintext: port policy ─► app (no ID) or closed
//! ```

mod balance;
mod binary;
mod body;
mod budget;
mod cancel;
mod config;
mod connect;
mod dest;
mod detect;
mod discovery;
mod headers;
mod inbound;
mod io;
mod iptables;
mod limits;
mod metrics;
mod opaque;
mod outbound;
mod pool;
mod reason;
mod routes;
mod stack;
mod trace;
mod upgrade;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_runtime::Readiness;
use meshfed_trust::CredentialsWatch;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use binary::binary_main;
pub use config::{
    Allow, AllowRule, Breakers, ConfigError, DEFAULT_WORKERS, Inbound, Locality, Plaintext,
    PlaintextPorts, PortPolicy, ServiceTarget, SidecarConfig, Timeouts, TransparentInbound,
    Upstream,
};
pub use discovery::DiscoverySource;
pub use headers::{CLIENT_ID, ERROR_HEADER, ORIG_PROTO};
pub use iptables::{CHAIN, INBOUND_CHAIN, IptablesError, Rules};
pub use metrics::Metrics;
pub use reason::Reason;

/// A map on the request path. Its keys come from discovery and the
/// sidecar's own configuration (endpoint addresses, localities, label
/// values), never from a peer's choosing: a fast hash rather than SipHash,
/// whose resistance to chosen keys is not needed here.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A set on the request path (see `FastMap`).
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use dest::Shared;
use discovery::Discovery;
use inbound::InboundPort;
use outbound::Router;

/// A sidecar, configured, not yet listening.
#[derive(Debug)]
pub struct Sidecar {
    config: SidecarConfig,
    creds: CredentialsWatch,
    shared: Arc<Shared>,
    discovery: Arc<Discovery>,
    router: Arc<Router>,
    ready: Readiness,
}

impl Sidecar {
    /// Builds the sidecar, starting its data-plane threads; metrics go
    /// into `registry`.
    ///
    /// # Panics
    ///
    /// If the system cannot start a thread.
    pub fn new(
        config: SidecarConfig,
        creds: CredentialsWatch,
        discovery: &DiscoverySource,
        ready: Readiness,
        registry: &mut Registry,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(registry));
        let stop = CancellationToken::new();
        let workers = Arc::new(
            workers::Workers::start(config.workers)
                .expect("the system refused to start the sidecar's worker threads"),
        );
        let shared = Arc::new(Shared {
            connector: Arc::new(connect::Connector::new(
                creds.clone(),
                config.timeouts.connect,
                config.timeouts.liveness,
                config.mark,
                stop.clone(),
            )),
            metrics: metrics.clone(),
            timeouts: config.timeouts,
            breakers: config.breakers,
            cluster: config.locality.cluster.as_str().into(),
            tasks: TaskTracker::new(),
            stop,
            workers: workers.clone(),
            mirrors_in_flight: std::sync::atomic::AtomicUsize::new(0),
            limits: Arc::default(),
            pools: pool::Pools::new(&workers, config.timeouts.liveness),
        });
        shared
            .limits
            .metrics
            .register(registry.sub_registry_with_prefix("meshfed_sidecar"));
        let discovery = Discovery::new(
            discovery,
            creds.clone(),
            config.locality.clone(),
            metrics,
            shared.stop.clone(),
        );
        let router = Router::new(discovery.clone(), shared.clone());
        Self {
            config,
            creds,
            shared,
            discovery,
            router,
            ready,
        }
    }

    /// Binds every listener the configuration names.
    pub async fn bind(self) -> std::io::Result<Bound> {
        let mut upstreams = Vec::new();
        for u in &self.config.upstreams {
            upstreams.push((u.target.clone(), bind(u.listen).await?));
        }
        let transparent = match self.config.transparent {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut inbound = Vec::new();
        for i in &self.config.inbound {
            inbound.push((i.clone(), bind(i.listen).await?));
        }
        let transparent_inbound = match &self.config.transparent_inbound {
            Some(t) => Some(bind(t.listen).await?),
            None => None,
        };
        Ok(Bound {
            sidecar: self,
            upstreams,
            transparent,
            inbound,
            transparent_inbound,
        })
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind {addr}: {e}")))
}

/// A sidecar with its listeners bound.
#[derive(Debug)]
pub struct Bound {
    sidecar: Sidecar,
    upstreams: Vec<(ServiceTarget, TcpListener)>,
    transparent: Option<TcpListener>,
    inbound: Vec<(Inbound, TcpListener)>,
    transparent_inbound: Option<TcpListener>,
}

impl Bound {
    /// Where the app reaches `target`.
    pub fn upstream_addr(&self, target: &ServiceTarget) -> Option<SocketAddr> {
        self.upstreams
            .iter()
            .find(|(t, _)| t == target)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// The transparent listener's address.
    pub fn transparent_addr(&self) -> Option<SocketAddr> {
        self.transparent.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The inbound transparent listener's address.
    pub fn transparent_inbound_addr(&self) -> Option<SocketAddr> {
        self.transparent_inbound
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The inbound listeners' addresses, in configuration order.
    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        self.inbound
            .iter()
            .filter_map(|(_, l)| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown`; then stops accepting, gives open calls up
    /// to `drain` to finish, and closes the rest.
    pub async fn serve(self, shutdown: impl Future<Output = ()>, drain: Duration) {
        let Self {
            sidecar,
            upstreams,
            transparent,
            inbound,
            transparent_inbound,
        } = self;
        let shared = sidecar.shared.clone();
        if !inbound.is_empty() || transparent_inbound.is_some() {
            match sidecar.config.pod_ip {
                Some(ip) => sidecar.discovery.watch_limits(ip, shared.limits.clone()),
                None => tracing::info!("no pod IP (--pod-ip): no RateLimitPolicy applies here"),
            }
        }
        let mut accepting = Vec::new();
        for (target, listener) in upstreams {
            let router = sidecar.router.clone();
            accepting.push(tokio::spawn(outbound::serve_upstream(
                listener, router, target,
            )));
        }
        if let Some(listener) = transparent {
            let router = sidecar.router.clone();
            accepting.push(tokio::spawn(outbound::serve_transparent(listener, router)));
        }
        for (cfg, listener) in inbound {
            let port = listener
                .local_addr()
                .map_or(cfg.listen.port(), |a| a.port());
            let config = &sidecar.config;
            let p = InboundPort::explicit(
                &cfg,
                port,
                &config.plaintext_ports,
                sidecar.creds.clone(),
                shared.clone(),
            );
            accepting.push(tokio::spawn(p.serve(listener)));
        }
        if let (Some(listener), Some(cfg)) =
            (transparent_inbound, &sidecar.config.transparent_inbound)
        {
            let p = InboundPort::transparent(
                cfg,
                sidecar.config.plaintext_ports.clone(),
                sidecar.creds.clone(),
                shared.clone(),
            );
            accepting.push(tokio::spawn(p.serve(listener)));
        }
        sidecar.ready.set(true);
        shutdown.await;
        sidecar.ready.set(false);
        for a in &accepting {
            a.abort();
        }
        shared.tasks.close();
        if tokio::time::timeout(drain, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = shared.tasks.len(),
                "drain time over; closing what is left"
            );
        }
        shared.stop.cancel();
        shared.tasks.wait().await;
    }
}
