//! The controller's view of the world: its own cluster and every linked
//! peer. One `watch` channel carries it, so mirrors, discovery and statuses
//! all react to the same change the moment it happens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_api::crd::LinkSpec;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::local::ExportSet;
use crate::store::{ClusterState, ObjKey};

/// Everything the controller knows, as one value.
#[derive(Debug, Clone)]
pub struct World {
    pub(crate) local: Arc<ClusterState>,
    /// Peers by the key of their Link.
    pub(crate) peers: BTreeMap<ObjKey, Arc<PeerState>>,
    /// When this value was published (discovery push latency is measured from it).
    pub(crate) changed_at: Instant,
}

impl World {
    pub(crate) fn new(local: Arc<ClusterState>) -> Self {
        Self {
            local,
            peers: BTreeMap::new(),
            changed_at: Instant::now(),
        }
    }

    /// Whether every linked peer's exports are known: its first snapshot
    /// since this controller started arrived, or its lease ran out. Until
    /// then an endpoint set would lack that peer's clusters.
    pub(crate) fn peers_known(&self) -> bool {
        self.peers.values().all(|p| p.imports.is_some())
    }
}

/// What the controller knows about one linked cluster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeerState {
    /// The Link's spec the peer runs with.
    pub(crate) spec: LinkSpec,
    /// The gateway's addresses as last resolved.
    pub(crate) gateways: Vec<SocketAddr>,
    /// The peer's exports; `None` until its first snapshot since this
    /// controller started (mirrors from before are then left alone).
    pub(crate) imports: Option<Arc<ExportSet>>,
    /// The federation stream spoke within the lease TTL.
    pub(crate) lease_alive: bool,
    /// The federation stream is connected.
    pub(crate) stream_up: bool,
    /// The gateway answers probes.
    pub(crate) probe_alive: bool,
    /// Probe latency p50 and p99 over recent probes.
    pub(crate) latency: Option<(Duration, Duration)>,
    pub(crate) last_error: Option<String>,
}

impl PeerState {
    /// A new peer is assumed alive until its lease or probes say otherwise,
    /// so a restarting controller does not withdraw healthy clusters.
    pub(crate) fn new(spec: LinkSpec) -> Self {
        Self {
            spec,
            gateways: Vec::new(),
            imports: None,
            lease_alive: true,
            stream_up: false,
            probe_alive: true,
            latency: None,
            last_error: None,
        }
    }

    /// Whether traffic may go to this cluster.
    pub(crate) fn alive(&self) -> bool {
        self.lease_alive && self.probe_alive && !self.gateways.is_empty()
    }
}

/// A handle that updates one peer's entry in the world.
#[derive(Debug, Clone)]
pub(crate) struct PeerWriter {
    pub(crate) key: ObjKey,
    pub(crate) world: watch::Sender<Arc<World>>,
}

impl PeerWriter {
    /// Applies `f` to the peer's state; publishes only if it changed.
    pub(crate) fn update(&self, f: impl FnOnce(&mut PeerState)) {
        let mut f = Some(f);
        self.world.send_if_modified(|w| {
            let Some(current) = w.peers.get(&self.key) else {
                return false;
            };
            let mut next = (**current).clone();
            if let Some(f) = f.take() {
                f(&mut next);
            }
            if next == **current {
                return false;
            }
            let w = Arc::make_mut(w);
            w.peers.insert(self.key.clone(), Arc::new(next));
            w.changed_at = Instant::now();
            true
        });
    }

    /// The peer's current state, if it is still linked.
    pub(crate) fn get(&self) -> Option<Arc<PeerState>> {
        self.world.borrow().peers.get(&self.key).cloned()
    }
}
