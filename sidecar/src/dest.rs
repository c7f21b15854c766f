//! One destination service port as the outbound side sees it: its live
//! endpoint set, the balancer fed from it, the retry budget and its routes
//! (connections are the sidecar's, in `Shared`'s pool, shared by every
//! destination listing the same endpoint). Outbound HTTP (through the
//! layers of `stack`) and TCP both go through here.

mod flight;
mod shared;
#[cfg(test)]
pub(crate) mod testing;
mod wait;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use meshfed_api::discovery::EndpointSet;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::balance::{Balancer, EndpointInfo, NoPick, Pick};
use crate::budget::Budget;
use crate::config::ServiceTarget;
use crate::connect::Alpn;
use crate::metrics::ServiceLabels;
use crate::reason::Reason;
use crate::routes::RouteTable;
use crate::stack::Next;
use crate::stack::breaker::{self, Kind};

pub(crate) use flight::InFlight;
pub(crate) use shared::Shared;

/// Connects per opaque connection (or upgrade), the first included.
const MAX_CONNECTS: usize = 5;

/// A service port being called.
#[derive(Debug)]
pub(crate) struct Dest {
    pub(crate) target: ServiceTarget,
    /// `name.namespace:port`, the metric label.
    pub(crate) label: Arc<str>,
    sni: String,
    set: Mutex<watch::Receiver<Option<Arc<EndpointSet>>>>,
    balancer: Mutex<Balancer>,
    pub(crate) budget: Arc<Budget>,
    /// The endpoints it listed last (whose connections the sidecar keeps).
    listed: Mutex<Vec<Arc<str>>>,
    pub(crate) shared: Arc<Shared>,
    /// Woken when an endpoint's health changed off the request path (a
    /// probe's result, a down endpoint connected again): requests waiting
    /// for an endpoint look again.
    changes: Notify,
    /// Requests waiting for an endpoint (at most `Breakers::max_waiting`).
    waiting: AtomicUsize,
    /// Discovery has answered (an endpoint set, even empty, never taken
    /// back): requests no longer wait for it.
    answered: AtomicBool,
    /// The policy asks for session affinity (read without the lock).
    affinity: AtomicBool,
    /// The service's routes, compiled from the last endpoint set.
    routes: Mutex<Arc<RouteTable>>,
    /// The request path below the route, built once: every route naming
    /// this service as a backend sends through it.
    stack: OnceLock<Next>,
}

impl Drop for Dest {
    fn drop(&mut self) {
        let listed = self
            .listed
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        self.shared.pools.relist(&listed, &[]);
    }
}

impl Dest {
    pub(crate) fn new(
        target: ServiceTarget,
        set: watch::Receiver<Option<Arc<EndpointSet>>>,
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        let label: Arc<str> = target.to_string().into();
        Arc::new(Self {
            budget: Arc::new(Budget::new(shared.metrics.clone(), label.clone())),
            label,
            sni: target.sni(),
            target,
            set: Mutex::new(set),
            balancer: Mutex::default(),
            listed: Mutex::default(),
            shared,
            changes: Notify::new(),
            waiting: AtomicUsize::new(0),
            answered: AtomicBool::new(false),
            affinity: AtomicBool::new(false),
            routes: Mutex::default(),
            stack: OnceLock::new(),
        })
    }

    /// The stack below the route, built by `build` the first time.
    pub(crate) fn stack(&self, build: impl FnOnce() -> Next) -> Next {
        self.stack.get_or_init(build).clone()
    }

    /// The service's routes as of the last endpoint set (empty: none).
    pub(crate) fn routes(&self) -> Arc<RouteTable> {
        self.sync();
        self.routes.lock().expect("routes lock").clone()
    }

    /// Whether an endpoint could take a request now (one of a service
    /// discovery has not answered for yet may).
    pub(crate) fn can_serve(&self) -> bool {
        self.sync();
        let b = self.balancer.lock().expect("balancer lock");
        !b.has_set() || b.serving(Instant::now())
    }

    /// Whether discovery has answered for the service (then `ready` is
    /// at once).
    pub(crate) fn answered(&self) -> bool {
        self.answered.load(Ordering::Acquire)
    }

    /// Waits (up to the discovery timeout) for the first endpoint set.
    pub(crate) async fn ready(&self) -> Result<(), Reason> {
        if self.answered() {
            return Ok(());
        }
        let mut rx = self.set.lock().expect("set lock").clone();
        let first = rx.wait_for(Option::is_some);
        match tokio::time::timeout(self.shared.timeouts.discovery, first).await {
            Ok(Ok(_)) => {
                self.answered.store(true, Ordering::Release);
                Ok(())
            }
            _ => Err(Reason::DiscoveryUnavailable),
        }
    }

    /// Takes in a new endpoint set if there is one.
    fn sync(&self) {
        let mut rx = self.set.lock().expect("set lock");
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let Some(set) = rx.borrow_and_update().clone() else {
            return;
        };
        drop(rx);
        let mut routes = self.routes.lock().expect("routes lock");
        if routes.wire() != set.routes.as_slice() {
            let table = RouteTable::compile(&set.routes, &self.label, &self.shared.metrics.routes);
            *routes = Arc::new(table);
        }
        drop(routes);
        let mut b = self.balancer.lock().expect("balancer lock");
        b.update(&set, &self.shared.cluster, &self.sni, Instant::now());
        self.affinity.store(b.affinity.is_some(), Ordering::Release);
        self.budget.set(&b.params());
        let keys = b.keys();
        drop(b);
        let mut listed = self.listed.lock().expect("listed lock");
        let before = std::mem::replace(&mut *listed, keys);
        self.shared.pools.relist(&before, &listed);
    }

    /// Picks an endpoint for an attempt, avoiding those already tried,
    /// with its group's load at that moment (for the circuit breakers);
    /// starts probing endpoints that are due.
    pub(crate) fn pick(self: &Arc<Self>, tried: &[Arc<str>]) -> Result<Pick, Reason> {
        self.pick_keyed(tried, None)
    }

    /// The affinity key of a request with `headers`, when the policy asks
    /// for session affinity and the request carries one.
    pub(crate) fn affinity_key(&self, headers: &http::HeaderMap) -> Option<u64> {
        if !self.affinity.load(Ordering::Acquire) {
            return None;
        }
        let b = self.balancer.lock().expect("balancer lock");
        b.affinity.as_ref()?.key(headers)
    }

    /// [`Dest::pick`] of the endpoint `key` belongs to, if given.
    pub(crate) fn pick_keyed(
        self: &Arc<Self>,
        tried: &[Arc<str>],
        key: Option<u64>,
    ) -> Result<Pick, Reason> {
        self.sync();
        let now = Instant::now();
        let mut b = self.balancer.lock().expect("balancer lock");
        let probes = b.due_probes(now);
        let picked = match key {
            Some(k) => b.pick_keyed(now, k, tried),
            None => b.pick(now, tried),
        };
        let pick = picked.map_err(|e| match e {
            NoPick::NoEndpoints => Reason::NoEndpoints,
            NoPick::NoneHealthy => Reason::NoHealthyEndpoints,
        });
        drop(b);
        for ep in probes {
            let dest = self.clone();
            tokio::spawn(async move { dest.probe(ep).await });
        }
        pick
    }

    /// A mesh connection of its own (no ALPN) to an endpoint balanced as a
    /// connection: when a connect fails (nothing was sent), the next
    /// endpoint, each retry taken from the budget.
    pub(crate) async fn connect_opaque(
        self: &Arc<Self>,
    ) -> Result<(Pick, TlsStream<TcpStream>), Reason> {
        let mut tried = Vec::new();
        let mut last = Reason::NoHealthyEndpoints;
        for attempt in 0..MAX_CONNECTS {
            if attempt > 0 && !self.budget.try_retry() {
                break;
            }
            let pick = match self.pick(&tried) {
                Ok(p) if breaker::open(p.load, &self.shared.breakers, Kind::Connections) => {
                    Err(Reason::CircuitOpen)
                }
                picked => picked,
            };
            let pick = match pick {
                Ok(p) => p,
                // Nothing left to try: the last failure is the better reason.
                Err(_) if attempt > 0 => break,
                Err(reason) => return Err(reason),
            };
            tried.push(pick.endpoint.key.clone());
            let started = Instant::now();
            match self
                .shared
                .connector
                .connect(&pick.endpoint, Alpn::Opaque)
                .await
            {
                Ok(tls) => {
                    self.connected(&pick);
                    return Ok((pick, tls));
                }
                Err(e) => {
                    tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "connect failed");
                    self.connect_failed(&pick, started);
                    last = Reason::ConnectFailed;
                }
            }
        }
        Err(last)
    }

    /// Connects to a down endpoint to learn whether it is back; a good
    /// connection stays in the pool for the next request.
    async fn probe(self: Arc<Self>, ep: Arc<EndpointInfo>) {
        let started = Instant::now();
        let ok = self
            .shared
            .pools
            .mine()
            .get(&self.shared.connector, &ep, http::Version::HTTP_2)
            .await
            .is_ok();
        let mut b = self.balancer.lock().expect("balancer lock");
        if ok {
            tracing::debug!(endpoint = %ep.key, "endpoint reachable again");
            b.connected(&ep.key, Instant::now());
        } else {
            b.connect_failed(&ep.key, started, Instant::now());
        }
        drop(b);
        // Either way waiters look again: at the endpoint back, or at when
        // its next probe is due.
        self.changes.notify_waiters();
    }

    fn failure(&self) {
        self.shared
            .metrics
            .endpoint_failures
            .get_or_create(&ServiceLabels {
                service: self.label.clone(),
            })
            .inc();
    }

    /// A connect to the picked endpoint, begun at `started`, failed.
    pub(crate) fn connect_failed(&self, pick: &Pick, started: Instant) {
        self.failure();
        self.balancer.lock().expect("balancer lock").connect_failed(
            &pick.endpoint.key,
            started,
            Instant::now(),
        );
    }

    /// A connect succeeded.
    pub(crate) fn connected(&self, pick: &Pick) {
        let back = self
            .balancer
            .lock()
            .expect("balancer lock")
            .connected(&pick.endpoint.key, Instant::now());
        if back {
            self.changes.notify_waiters();
        }
    }

    /// Starts an attempt on `pick`; the guard ends it.
    pub(crate) fn start(self: &Arc<Self>, pick: &Pick) -> InFlight {
        self.balancer.lock().expect("balancer lock").start(pick);
        InFlight {
            dest: self.clone(),
            pick: pick.clone(),
            started: Instant::now(),
            ended: false,
        }
    }

    /// Counts a request on `pick` waiting for a connection (`delta` ±1).
    pub(crate) fn pending(&self, pick: &Pick, delta: isize) {
        self.balancer
            .lock()
            .expect("balancer lock")
            .pending(pick, delta);
    }

    /// Counts an opaque connection open on `pick` (`delta` ±1).
    pub(crate) fn connections(&self, pick: &Pick, delta: isize) {
        self.balancer
            .lock()
            .expect("balancer lock")
            .connections(pick, delta);
    }
}
