//! The accept loop: admission (caps and shedding), a task per connection,
//! and the drain on shutdown — stop accepting, report not ready, let open
//! connections finish until the drain deadline, then close what is left.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_runtime::Readiness;
use meshfed_trust::{CredentialsWatch, server_config};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{Shared, handle};
use crate::limits::{Admission, Limits};
use crate::metrics::Metrics;
use crate::routes::RouteTable;

/// How the gateway behaves.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Connection caps.
    pub limits: Limits,
    /// How long a client may take to send its whole ClientHello.
    pub handshake_timeout: Duration,
    /// How long one upstream connect may take before another endpoint is tried.
    pub connect_timeout: Duration,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A peer silent this long gets TCP keepalive probes, as far apart;
    /// two unanswered (or data unacknowledged for three times this) close
    /// the connection and the one spliced to it.
    pub liveness: Duration,
    /// How long open connections may run on after shutdown begins.
    pub drain_timeout: Duration,
    /// The local controller's federation listener (`host:port`); without
    /// it the federation name is refused.
    pub federation_upstream: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(3600),
            liveness: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            federation_upstream: None,
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open at the deadline, closed by force.
    pub forced: usize,
}

/// The east-west gateway.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    admission: Arc<Admission>,
}

impl Gateway {
    /// A gateway routing by `routes`, answering probes with `creds`, and
    /// reporting readiness (routes synced and not draining) through `ready`.
    pub fn new(
        config: GatewayConfig,
        routes: watch::Receiver<Arc<RouteTable>>,
        creds: CredentialsWatch,
        ready: Readiness,
        metrics: Arc<Metrics>,
    ) -> Self {
        let probe = Arc::new(TlsAcceptor::from(Arc::new(server_config(creds))));
        let admission = Admission::new(config.limits);
        Self {
            shared: Arc::new(Shared {
                config,
                routes,
                metrics,
                probe,
                ready,
            }),
            admission,
        }
    }

    /// Serves `listener` until `shutdown`, then drains.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Drained {
        let tracker = TaskTracker::new();
        let force = CancellationToken::new();
        let mut routes = self.shared.routes.clone();
        let ready = self.shared.ready.clone();
        let readiness = tokio::spawn(async move {
            if routes.wait_for(|t| t.is_synced()).await.is_ok() {
                ready.set(true);
            }
        });
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let permit = match self.admission.admit(peer.ip()) {
                Ok(p) => p,
                Err(reason) => {
                    // Shed at once: a queued connection only times out later.
                    self.shared.metrics.refuse(reason);
                    drop(tcp);
                    continue;
                }
            };
            let shared = self.shared.clone();
            let force = force.clone();
            tracker.spawn(async move {
                shared.metrics.open.inc();
                tokio::select! {
                    () = handle(shared.clone(), tcp, peer) => {}
                    () = force.cancelled() => {}
                }
                shared.metrics.open.dec();
                drop(permit);
            });
        }
        readiness.abort();
        self.shared.ready.set(false);
        drop(listener);
        tracker.close();
        let open = self.admission.open();
        tracing::info!(open, deadline = ?self.shared.config.drain_timeout, "draining");
        let forced =
            match tokio::time::timeout(self.shared.config.drain_timeout, tracker.wait()).await {
                Ok(()) => 0,
                Err(_) => {
                    let left = self.admission.open();
                    force.cancel();
                    tracker.wait().await;
                    left
                }
            };
        tracing::info!(forced, "drained");
        Drained { forced }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.admission.open()
    }
}

/// A listener on `addr` that other gateway processes may share
/// (SO_REUSEPORT): replicas behind one address, and a new gateway taking
/// over while the old one drains.
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
