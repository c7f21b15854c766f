//! The federation service: streams this cluster's exports to peer
//! controllers — a snapshot, then changes, with heartbeats as the lease.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use meshfed_api::federation::federation_server::Federation;
use meshfed_api::federation::{ExportsUpdate, ServiceRef, WatchExportsRequest};
use meshfed_runtime::TlsConnectInfo;
use meshfed_trust::{SpiffeId, peer_id};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::local::{ExportSet, changes};
use crate::metrics::Metrics;
use crate::store::ClusterState;

/// The export set with a revision that grows with every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exports {
    /// Bumped on every change of `set`; 0 until the set was first computed
    /// from the synced store, and no peer is sent anything before that (an
    /// empty set then would read as "everything unexported").
    pub revision: u64,
    pub(crate) set: ExportSet,
}

impl Exports {
    /// How many services are exported.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is exported.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// Who may open the federation stream: the controller's own identity (peer
/// controllers run under the same service account in every cluster), the
/// controller identity of every Link, and identities allowed explicitly.
#[derive(Debug, Clone)]
pub struct PeerAuthorizer {
    own: SpiffeId,
    extra: Vec<SpiffeId>,
    state: watch::Receiver<Arc<ClusterState>>,
}

impl PeerAuthorizer {
    /// Builds the authorizer.
    pub fn new(
        own: SpiffeId,
        extra: Vec<SpiffeId>,
        state: watch::Receiver<Arc<ClusterState>>,
    ) -> Self {
        Self { own, extra, state }
    }

    /// Whether `id` is a peer controller.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        if *id == self.own || self.extra.contains(id) {
            return true;
        }
        let id = id.to_string();
        self.state
            .borrow()
            .links
            .values()
            .any(|l| l.spec.gateway.controller_identity == id)
    }
}

/// The tonic service.
#[derive(Debug, Clone)]
pub struct FederationService {
    cluster: String,
    exports: watch::Receiver<Arc<Exports>>,
    authorizer: PeerAuthorizer,
    metrics: Arc<Metrics>,
}

impl FederationService {
    /// Serves the exports of `cluster`.
    pub fn new(
        cluster: String,
        exports: watch::Receiver<Arc<Exports>>,
        authorizer: PeerAuthorizer,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            cluster,
            exports,
            authorizer,
            metrics,
        }
    }
}

/// Heartbeat period for a caller's lease TTL: a third of it, within bounds.
fn heartbeat_every(lease_ttl_ms: u32) -> Duration {
    Duration::from_millis(u64::from(lease_ttl_ms / 3))
        .clamp(Duration::from_millis(100), Duration::from_secs(10))
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ExportsUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for FederationService {
    type WatchExportsStream = UpdateStream;

    async fn watch_exports(
        &self,
        req: Request<WatchExportsRequest>,
    ) -> Result<Response<Self::WatchExportsStream>, Status> {
        let certs = req
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|i| i.peer_certs.clone());
        let Some(caller) = peer_id(certs.as_deref()) else {
            self.metrics.federation_refused.inc();
            return Err(Status::unauthenticated("no verified client certificate"));
        };
        if !self.authorizer.allows(&caller) {
            self.metrics.federation_refused.inc();
            tracing::warn!(%caller, "refused federation stream: not a peer controller");
            return Err(Status::permission_denied(format!(
                "{caller} is not a peer controller"
            )));
        }
        let req = req.into_inner();
        tracing::info!(%caller, peer_cluster = %req.cluster, "federation stream opened");
        // One part waits while the last is encoded and sent: a deeper queue
        // only holds more of the snapshot as structs (16 parts at 10,000
        // services were about 6 MB per stream, kept by the allocator after).
        let (tx, rx) = mpsc::channel(1);
        let exports = self.exports.clone();
        let cluster = self.cluster.clone();
        let every = heartbeat_every(req.lease_ttl_ms);
        let part = if req.snapshot_in_parts {
            SNAPSHOT_PART
        } else {
            usize::MAX
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.federation_streams_served.inc();
            stream_exports(cluster, exports, every, part, tx).await;
            metrics.federation_streams_served.dec();
            tracing::info!(%caller, "federation stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Services per snapshot part, for a caller that takes parts: about
/// 100 KB encoded. A stream then holds two parts in flight, not a copy
/// and an encoding of the whole set (at 10,000 services about 11 MB per
/// stream, which the allocator kept long after).
const SNAPSHOT_PART: usize = 200;

/// Sends the snapshot in parts of at most `part` services, then a diff per
/// change, and a heartbeat whenever nothing else went out for `every`.
/// Returns when the caller goes away.
async fn stream_exports(
    cluster: String,
    mut exports: watch::Receiver<Arc<Exports>>,
    every: Duration,
    part: usize,
    tx: mpsc::Sender<Result<ExportsUpdate, Status>>,
) {
    // Only a complete export set is ever sent.
    tokio::select! {
        computed = exports.wait_for(|e| e.revision > 0) => if computed.is_err() { return },
        () = tx.closed() => return,
    }
    let mut sent = exports.borrow_and_update().clone();
    // The parts are cut from one held version of the set: together they are
    // that version, whatever changes meanwhile (the diffs follow).
    let mut left = sent.set.len();
    let mut services = sent.set.values();
    loop {
        let upserts: Vec<_> = services
            .by_ref()
            .take(part)
            .map(|s| (**s).clone())
            .collect();
        left -= upserts.len();
        let snapshot = ExportsUpdate {
            cluster: cluster.clone(),
            snapshot: true,
            upserts,
            removals: Vec::new(),
            revision: sent.revision,
            more: left > 0,
        };
        if tx.send(Ok(snapshot)).await.is_err() {
            return;
        }
        if left == 0 {
            break;
        }
    }
    drop(services);
    loop {
        let update = tokio::select! {
            changed = exports.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = exports.borrow_and_update().clone();
                let update = diff(&cluster, &sent, &now);
                sent = now;
                update
            }
            () = tokio::time::sleep(every) => ExportsUpdate {
                cluster: cluster.clone(),
                revision: sent.revision,
                ..ExportsUpdate::default()
            },
            () = tx.closed() => return,
        };
        if tx.send(Ok(update)).await.is_err() {
            return;
        }
    }
}

fn diff(cluster: &str, old: &Exports, new: &Exports) -> ExportsUpdate {
    let (upserts, removals) = changes(&old.set, &new.set);
    ExportsUpdate {
        cluster: cluster.to_owned(),
        snapshot: false,
        upserts,
        removals: removals
            .into_iter()
            .map(|k| ServiceRef {
                namespace: k.namespace.to_string(),
                name: k.name.to_string(),
            })
            .collect(),
        revision: new.revision,
        more: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ObjKey;
    use meshfed_api::federation::ExportedService;

    fn svc(name: &str, ready: u32) -> ExportedService {
        ExportedService {
            namespace: "shop".into(),
            name: name.into(),
            zones: vec![meshfed_api::federation::ZoneEndpoints {
                zone: String::new(),
                ready,
                total: ready,
            }],
            ..ExportedService::default()
        }
    }

    #[test]
    fn diffs_carry_only_what_changed() {
        let mut old = Exports::default();
        old.set.insert(ObjKey::new("shop", "a"), svc("a", 1).into());
        old.set.insert(ObjKey::new("shop", "b"), svc("b", 1).into());
        let mut new = old.clone();
        new.revision = 2;
        new.set.remove(&ObjKey::new("shop", "a"));
        new.set.insert(ObjKey::new("shop", "b"), svc("b", 2).into());
        new.set.insert(ObjKey::new("shop", "c"), svc("c", 1).into());
        let d = diff("west", &old, &new);
        let names: Vec<_> = d.upserts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(d.removals.len(), 1);
        assert_eq!(d.removals[0].name, "a");
        assert!(!d.snapshot);
    }

    #[test]
    fn heartbeats_follow_the_lease() {
        assert_eq!(heartbeat_every(5000), Duration::from_millis(1666));
        assert_eq!(heartbeat_every(0), Duration::from_millis(100));
        assert_eq!(heartbeat_every(u32::MAX), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn no_snapshot_goes_out_before_the_exports_are_computed() {
        let (exports_tx, exports_rx) = watch::channel(Arc::new(Exports::default()));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(stream_exports(
            "west".into(),
            exports_rx,
            Duration::from_secs(60),
            usize::MAX,
            tx,
        ));
        tokio::task::yield_now().await;
        assert!(
            rx.try_recv().is_err(),
            "an empty set never computed reads as everything unexported"
        );
        let mut set = ExportSet::new();
        set.insert(ObjKey::new("shop", "a"), svc("a", 1).into());
        exports_tx.send_replace(Arc::new(Exports { revision: 1, set }));
        let first = rx.recv().await.expect("snapshot").expect("ok");
        assert!(first.snapshot);
        assert_eq!(first.upserts.len(), 1);
        drop(rx);
        task.await.expect("stream ends with its caller");
    }

    /// A caller that takes parts gets the snapshot as parts of one version,
    /// back to back, the last without `more`; one that does not, whole.
    #[tokio::test]
    async fn a_snapshot_goes_in_parts_to_a_caller_that_takes_them() {
        let mut set = ExportSet::new();
        for name in ["a", "b", "c", "d", "e"] {
            set.insert(ObjKey::new("shop", name), svc(name, 1).into());
        }
        let (exports_tx, exports_rx) = watch::channel(Arc::new(Exports { revision: 7, set }));
        let (tx, mut rx) = mpsc::channel(16);
        let every = Duration::from_secs(60);
        let task = tokio::spawn(stream_exports("west".into(), exports_rx, every, 2, tx));
        let mut parts = Vec::new();
        for _ in 0..3 {
            parts.push(rx.recv().await.expect("part").expect("ok"));
        }
        let more: Vec<_> = parts.iter().map(|p| p.more).collect();
        assert_eq!(more, [true, true, false]);
        assert!(parts.iter().all(|p| p.snapshot && p.revision == 7));
        let names: Vec<_> = parts
            .iter()
            .flat_map(|p| &p.upserts)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b", "c", "d", "e"]);
        // What follows is a diff, never a part.
        exports_tx.send_modify(|e| {
            let e = Arc::make_mut(e);
            e.revision = 8;
            e.set.remove(&ObjKey::new("shop", "a"));
        });
        let d = rx.recv().await.expect("diff").expect("ok");
        assert!(!d.snapshot && !d.more);
        assert_eq!(d.removals.len(), 1);
        drop(rx);
        task.await.expect("stream ends with its caller");

        // An empty set is one part; a whole snapshot is one message.
        for (set, part) in [(ExportSet::new(), 2), (d_set(), usize::MAX)] {
            let len = set.len();
            let (_keep, exports_rx) = watch::channel(Arc::new(Exports { revision: 1, set }));
            let (tx, mut rx) = mpsc::channel(16);
            let task = tokio::spawn(stream_exports("west".into(), exports_rx, every, part, tx));
            let only = rx.recv().await.expect("snapshot").expect("ok");
            assert!(only.snapshot && !only.more);
            assert_eq!(only.upserts.len(), len);
            drop(rx);
            task.await.expect("stream ends with its caller");
        }
    }

    fn d_set() -> ExportSet {
        let mut set = ExportSet::new();
        for name in ["a", "b", "c"] {
            set.insert(ObjKey::new("shop", name), svc(name, 1).into());
        }
        set
    }
}
