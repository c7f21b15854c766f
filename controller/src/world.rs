//! The controller's view of the world: its own cluster and every linked
//! peer. One `watch` channel carries it, so mirrors, discovery and statuses
//! all react to the same change the moment it happens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_resources::crd::LinkSpec;
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
    /// The peer is not withdrawn: its federation stream spoke within the
    /// lease TTL, or it is held through the control-plane grace.
    pub(crate) lease_alive: bool,
    /// Since when the peer's control plane has been quiet: its stream ended,
    /// or it missed its heartbeats for half the lease TTL. `None` while it
    /// speaks.
    pub(crate) quiet_since: Option<Instant>,
    /// When the last successful probe of the gateway started.
    pub(crate) probe_ok_at: Option<Instant>,
    /// While held through the control-plane grace: until when.
    pub(crate) held_until: Option<HeldUntil>,
    /// Why the peer was withdrawn, while it is.
    pub(crate) withdrawn: Option<Withdrawn>,
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
            quiet_since: None,
            probe_ok_at: None,
            held_until: None,
            withdrawn: None,
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

/// The end of a control-plane grace, for timers and for people.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct HeldUntil {
    pub(crate) at: Instant,
    pub(crate) wall: k8s_openapi::jiff::Timestamp,
}

/// Why a peer's services were withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Withdrawn {
    /// Its controller and its gateway were both silent past the lease TTL.
    LeaseExpired,
    /// Its controller stayed silent past the Link's control-plane grace.
    GraceExpired,
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
