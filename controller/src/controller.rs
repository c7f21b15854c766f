//! Wiring: the store feeds the world and the export set; Links start and
//! stop peers; mirrors, statuses, federation and discovery all follow the
//! world.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meshfed_api::discovery::discovery_server::DiscoveryServer;
use meshfed_api::federation::federation_server::FederationServer;
use meshfed_runtime::tls_incoming;
use meshfed_trust::{CredentialsWatch, SpiffeId, TrustDomain, server_config};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::service::Routes;

use crate::discovery::{DiscoveryService, LocalCluster, RouteTable};
use crate::federation::{Exports, FederationService, PeerAuthorizer};
use crate::local::{Derived, Unidentified};
use crate::metrics::{LinkLabels, Metrics, UnidentifiedLabels};
use crate::peer::{self, PeerContext, PeerHandle};
use crate::status;
use crate::store::{ClusterState, ObjKey, Store};
use crate::validate::validate_link;
use crate::world::{PeerState, PeerWriter, World};

/// Largest gRPC message a peer or sidecar may send the controller.
const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Largest message the controller sends (a big export snapshot).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This cluster's name.
    pub cluster: String,
    /// This cluster's region, for default failover ordering.
    pub region: Option<String>,
    /// Peer controller identities allowed besides the controller's own and
    /// the Links' `controllerIdentity`.
    pub extra_peers: Vec<SpiffeId>,
    /// How long a TLS handshake may take on the served ports.
    pub handshake_timeout: Duration,
    /// How often Link and FailoverPolicy statuses are brought up to date.
    pub status_period: Duration,
    /// Whether this replica leads (see [`Leadership`](crate::Leadership));
    /// only the leader writes mirrors and statuses. `None`: the only replica,
    /// always leading.
    pub leading: Option<watch::Receiver<bool>>,
    /// How long the services a peer's fresh snapshot suddenly dropped are
    /// kept before their mirrors go (see the federation client).
    pub doubt_hold: Duration,
}

impl ControllerConfig {
    /// Defaults for `cluster`.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            region: None,
            extra_peers: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            status_period: Duration::from_secs(1),
            leading: None,
            doubt_hold: crate::federation::DOUBT_HOLD,
        }
    }
}

/// A running controller. Dropping it stops its tasks.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    me: LocalCluster,
    creds: CredentialsWatch,
    store: Arc<dyn Store>,
    world: watch::Receiver<Arc<World>>,
    exports: watch::Receiver<Arc<Exports>>,
    routes: watch::Receiver<Arc<RouteTable>>,
    metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Controller {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Controller {
    /// Starts reconciling `store` as cluster `config.cluster`; metrics go
    /// into `registry`. Serving is separate: see [`Controller::serve_federation`]
    /// and [`Controller::serve_discovery`].
    pub fn start(
        config: ControllerConfig,
        store: Arc<dyn Store>,
        creds: CredentialsWatch,
        registry: &mut Registry,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(registry));
        let trust_domain: TrustDomain = creds.borrow().id().trust_domain().clone();
        let me = LocalCluster {
            name: config.cluster.clone(),
            region: config.region.clone(),
            trust_domain,
        };
        let state = store.state();
        let initial = state.borrow().clone();
        let (world_tx, world) = watch::channel(Arc::new(World::new(initial.clone())));
        let (exports_tx, exports_rx) = watch::channel(Arc::new(Exports::default()));
        let (routes_tx, routes_rx) = watch::channel(Arc::new(RouteTable::default()));
        let ctx = PeerContext {
            local_cluster: config.cluster.clone(),
            creds: creds.clone(),
            metrics: metrics.clone(),
            doubt_hold: config.doubt_hold,
        };
        // Peers of the Links already there join the world before anything
        // reads it, so the mirror reconciler never mistakes them for gone.
        let mut peers = BTreeMap::new();
        sync_peers(&initial, &mut peers, &world_tx, &ctx);
        let tasks = vec![
            tokio::spawn(follow_store(
                state,
                world_tx,
                Published {
                    exports: exports_tx,
                    routes: routes_tx,
                },
                me.clone(),
                ctx,
                peers,
            )),
            tokio::spawn(lead(
                config.leading.clone(),
                Writers {
                    store: store.clone(),
                    world: world.clone(),
                    metrics: metrics.clone(),
                    status_period: config.status_period,
                },
            )),
        ];
        Self {
            config,
            me,
            creds,
            store,
            world,
            exports: exports_rx,
            routes: routes_rx,
            metrics,
            tasks,
        }
    }

    /// Serves the federation stream on `listener` (mTLS) until `shutdown`.
    pub async fn serve_federation(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let own = self.creds.borrow().id().clone();
        let authorizer =
            PeerAuthorizer::new(own, self.config.extra_peers.clone(), self.store.state());
        let svc = FederationService::new(
            self.config.cluster.clone(),
            self.exports.clone(),
            authorizer,
            self.metrics.clone(),
        );
        let svc = FederationServer::new(svc)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        self.serve(listener, Routes::new(svc), shutdown).await
    }

    /// Serves discovery on `listener` (mTLS, any mesh identity) until `shutdown`.
    pub async fn serve_discovery(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let svc = DiscoveryService::new(
            self.me.clone(),
            self.world.clone(),
            self.routes.clone(),
            self.metrics.clone(),
        );
        let svc = DiscoveryServer::new(svc)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_RESPONSE_BYTES);
        self.serve(listener, Routes::new(svc), shutdown).await
    }

    /// Serves `routes` over mTLS with the controller's credentials.
    async fn serve(
        &self,
        listener: TcpListener,
        routes: Routes,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let mut tls = server_config(self.creds.clone());
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let incoming = tls_incoming(listener, Arc::new(tls), self.config.handshake_timeout);
        tonic::transport::Server::builder()
            // Dead peers and sidecars are noticed even while their streams are idle.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    }

    /// Waits until this replica is synced: its store was read (done before
    /// [`Controller::start`]) and every linked peer's exports are known or
    /// its lease ran out. Until then its discovery answers would lack
    /// clusters, so it is not ready.
    pub async fn synced(&self) {
        let mut world = self.world.clone();
        let _ = world.wait_for(|w| w.peers_known()).await;
    }

    /// The current export set (what peers are sent).
    pub fn exports(&self) -> watch::Receiver<Arc<Exports>> {
        self.exports.clone()
    }
}

/// What only the leader runs: the tasks that write to the cluster.
struct Writers {
    store: Arc<dyn Store>,
    world: watch::Receiver<Arc<World>>,
    metrics: Arc<Metrics>,
    status_period: Duration,
}

impl Writers {
    fn spawn(&self) -> [JoinHandle<()>; 2] {
        let unwritable = crate::mirrors::Unwritable::default();
        [
            tokio::spawn(crate::mirrors::run(
                self.store.clone(),
                self.world.clone(),
                self.metrics.clone(),
                unwritable.clone(),
            )),
            tokio::spawn(status::run(
                self.store.clone(),
                self.world.clone(),
                self.metrics.clone(),
                self.status_period,
                unwritable,
            )),
        ]
    }
}

/// Runs the writers while this replica leads: started when it gains the
/// lease, stopped the moment it loses it (or its leadership ends). A new
/// leader's mirror pass starts from what the cluster holds, so existing
/// mirrors are adopted, not rewritten.
async fn lead(leading: Option<watch::Receiver<bool>>, writers: Writers) {
    let Some(mut leading) = leading else {
        writers.metrics.leader.set(1);
        let tasks = writers.spawn();
        let _guard = AbortOnDrop(tasks.into());
        std::future::pending::<()>().await;
        return;
    };
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        writers.metrics.leader.set(1);
        let guard = AbortOnDrop(writers.spawn().into());
        let lost = leading.wait_for(|l| !*l).await.map(|_| ());
        drop(guard);
        writers.metrics.leader.set(0);
        if lost.is_err() {
            return;
        }
    }
}

/// Aborts its tasks when dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// What the controller derives from its own cluster alone.
struct Published {
    /// For peers (the federation stream).
    exports: watch::Sender<Arc<Exports>>,
    /// For gateways.
    routes: watch::Sender<Arc<RouteTable>>,
}

/// Follows the store: publishes its state into the world, recomputes the
/// export set and the gateway routes, and starts, restarts or stops a peer
/// per valid Link.
async fn follow_store(
    mut state: watch::Receiver<Arc<ClusterState>>,
    world: watch::Sender<Arc<World>>,
    published: Published,
    me: LocalCluster,
    ctx: PeerContext,
    mut peers: BTreeMap<ObjKey, PeerHandle>,
) {
    let mut derived = Derived::default();
    loop {
        let local = state.borrow_and_update().clone();
        let recomputed = derived.update(&local, &me.trust_domain);
        tracing::debug!(services = recomputed, "recomputed what changed");
        let set = derived.exports.clone();
        let exported = i64::try_from(set.len()).unwrap_or(i64::MAX);
        // Peers first: the set is complete (the store is synced), and the
        // first one is published even when empty.
        published.exports.send_if_modified(|cur| {
            if cur.revision > 0 && cur.set == set {
                return false;
            }
            *cur = Arc::new(Exports {
                revision: cur.revision + 1,
                set,
            });
            true
        });
        ctx.metrics.exports.set(exported);
        ctx.metrics
            .store_errors
            .set(i64::try_from(local.broken_files).unwrap_or(i64::MAX));
        let missing = derived.unidentified();
        for why in [Unidentified::PodUnknown, Unidentified::NotNamed] {
            let n = missing.get(&why).copied().unwrap_or(0);
            ctx.metrics
                .unidentified
                .get_or_create(&UnidentifiedLabels {
                    reason: why.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        RouteTable::publish(&published.routes, derived.routes.clone(), &local);
        world.send_modify(|w| {
            let w = Arc::make_mut(w);
            w.local = local.clone();
            w.changed_at = Instant::now();
        });
        sync_peers(&local, &mut peers, &world, &ctx);
        if state.changed().await.is_err() {
            return;
        }
    }
}

fn sync_peers(
    local: &ClusterState,
    peers: &mut BTreeMap<ObjKey, PeerHandle>,
    world: &watch::Sender<Arc<World>>,
    ctx: &PeerContext,
) {
    let wanted: BTreeMap<&ObjKey, _> = local
        .links
        .iter()
        .filter(|(_, l)| validate_link(&l.spec).is_ok())
        .map(|(k, l)| (k, &l.spec))
        .collect();
    let gone: Vec<ObjKey> = peers
        .iter()
        .filter(|(k, h)| wanted.get(k).is_none_or(|spec| **spec != h.spec))
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        peers.remove(&key);
        tracing::info!(link = %key, "peer stopped");
        world.send_modify(|w| {
            let w = Arc::make_mut(w);
            w.peers.remove(&key);
            w.changed_at = Instant::now();
        });
        let labels = LinkLabels {
            link: key.to_string(),
        };
        ctx.metrics.peer_alive.remove(&labels);
        ctx.metrics.imports.remove(&labels);
        ctx.metrics.imports_held.remove(&labels);
        ctx.metrics.imports_doubted.remove(&labels);
        ctx.metrics.mirrors_unwritable.remove(&labels);
    }
    for (key, spec) in wanted {
        if peers.contains_key(key) {
            continue;
        }
        world.send_modify(|w| {
            let w = Arc::make_mut(w);
            w.peers
                .insert(key.clone(), Arc::new(PeerState::new(spec.clone())));
            w.changed_at = Instant::now();
        });
        let writer = PeerWriter {
            key: key.clone(),
            world: world.clone(),
        };
        match peer::spawn(spec.clone(), writer, ctx.clone()) {
            Ok(handle) => {
                tracing::info!(link = %key, cluster = %spec.cluster, "peer started");
                peers.insert(key.clone(), handle);
            }
            Err(e) => {
                tracing::error!(link = %key, error = %e, "cannot start peer");
                world.send_modify(|w| {
                    Arc::make_mut(w).peers.remove(key);
                });
            }
        }
    }
}
