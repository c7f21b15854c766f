//! What every destination and inbound port of a sidecar shares: the
//! connector, metrics, limits, the data-plane threads, the connection pool
//! and the tasks a drain waits for.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Breakers, Timeouts};
use crate::connect::Connector;
use crate::metrics::Metrics;
use crate::workers::Workers;

/// What a destination shares with every other.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) connector: Arc<Connector>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) timeouts: Timeouts,
    pub(crate) breakers: Breakers,
    pub(crate) cluster: Arc<str>,
    /// Every connection's task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// Fired when the drain is over: what still runs is closed.
    pub(crate) stop: CancellationToken,
    /// The data plane's threads.
    pub(crate) workers: Arc<Workers>,
    /// Mirrored copies of requests in flight (bounded: a slow mirror
    /// backend must not pile them up).
    pub(crate) mirrors_in_flight: AtomicUsize,
    /// This pod's inbound rate limits.
    pub(crate) limits: Arc<crate::limits::Limits>,
    /// Connections to endpoints, whichever service listed them.
    pub(crate) pools: crate::pool::Pools,
}

impl Shared {
    /// Runs the work of an accepted connection on a worker, the connection
    /// registered with that worker's reactor rather than the acceptor's:
    /// its readiness then wakes no other thread.
    pub(crate) fn spawn_accepted<F, W>(&self, tcp: TcpStream, work: F)
    where
        F: FnOnce(TcpStream) -> W + Send + 'static,
        W: Future<Output = ()> + Send + 'static,
    {
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "accepted connection lost");
                return;
            }
        };
        self.spawn(async move {
            match TcpStream::from_std(tcp) {
                Ok(tcp) => work(tcp).await,
                Err(e) => tracing::debug!(error = %e, "accepted connection lost"),
            }
        });
    }

    /// Runs a connection's work on a worker until it ends or the sidecar
    /// stops.
    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        // Polled a few times per request: `cancel::until` looks at the
        // token without its lock.
        self.workers
            .spawn(self.tasks.track_future(crate::cancel::until(stop, work)));
    }
}
