//! The gateway's routing table: every exported Service with its local
//! endpoints, computed once per store change and streamed to each gateway as
//! a snapshot followed by diffs.

use std::sync::Arc;

use meshfed_api::discovery::{RouteRef, RoutesUpdate};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::local::{RouteSet, changes};
use crate::store::ClusterState;
use crate::validate::validate_link;

/// The routing table with a revision that grows with every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// Bumped on every change; 0 until first computed from the synced
    /// store, and no gateway is sent anything before that.
    pub revision: u64,
    pub(crate) routes: RouteSet,
    /// Clusters linked from this one, sorted.
    pub(crate) peers: Vec<String>,
}

impl RouteTable {
    /// Publishes the table for `state` if it differs from the current one.
    pub(crate) fn publish(
        tx: &watch::Sender<Arc<RouteTable>>,
        routes: RouteSet,
        state: &ClusterState,
    ) {
        let mut peers: Vec<String> = state
            .links
            .values()
            .filter(|l| validate_link(&l.spec).is_ok())
            .map(|l| l.spec.cluster.clone())
            .collect();
        peers.sort();
        peers.dedup();
        tx.send_if_modified(|cur| {
            if cur.revision > 0 && cur.routes == routes && cur.peers == peers {
                return false;
            }
            *cur = Arc::new(RouteTable {
                revision: cur.revision + 1,
                routes,
                peers,
            });
            true
        });
    }
}

/// Sends the snapshot, then a diff per change, until the gateway goes away.
pub(crate) async fn stream_routes(
    mut table: watch::Receiver<Arc<RouteTable>>,
    tx: mpsc::Sender<Result<RoutesUpdate, Status>>,
) {
    // An empty table before the first computation would drop every route.
    tokio::select! {
        computed = table.wait_for(|t| t.revision > 0) => if computed.is_err() { return },
        () = tx.closed() => return,
    }
    let mut sent = table.borrow_and_update().clone();
    let snapshot = RoutesUpdate {
        snapshot: true,
        upserts: sent.routes.values().map(|r| (**r).clone()).collect(),
        removals: Vec::new(),
        revision: sent.revision,
        peers: sent.peers.clone(),
    };
    if tx.send(Ok(snapshot)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            changed = table.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
        let now = table.borrow_and_update().clone();
        let update = diff(&sent, &now);
        sent = now;
        if tx.send(Ok(update)).await.is_err() {
            return;
        }
    }
}

fn diff(old: &RouteTable, new: &RouteTable) -> RoutesUpdate {
    let (upserts, removals) = changes(&old.routes, &new.routes);
    RoutesUpdate {
        snapshot: false,
        upserts,
        removals: removals
            .into_iter()
            .map(|k| RouteRef {
                namespace: k.namespace.to_string(),
                name: k.name.to_string(),
            })
            .collect(),
        revision: new.revision,
        peers: new.peers.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{add_workload, link, pods_and_slice, service};
    use crate::local::routes;
    use crate::store::ObjKey;

    fn td() -> meshfed_trust::TrustDomain {
        meshfed_trust::TrustDomain::new("mesh.test").expect("td")
    }

    #[tokio::test]
    async fn snapshot_then_only_changes() {
        let mut state = ClusterState::default();
        for name in ["a", "b"] {
            state.services.insert(
                ObjKey::new("shop", name),
                service("shop", name, &[("http", 80)], true).into(),
            );
        }
        let (pods, s) = pods_and_slice(
            "shop",
            "a",
            "a",
            &[("http", 8080)],
            &[("10.0.0.1", None, true)],
        );
        add_workload(&mut state, &pods, s);
        state.links.insert(
            ObjKey::new("meshfed-system", "west"),
            link(
                "meshfed-system",
                "west",
                &["127.0.0.1"],
                4443,
                "spiffe://mesh.test/ns/meshfed-system/sa/meshfed-gateway",
                "spiffe://mesh.test/ns/meshfed-system/sa/meshfed-controller",
            ),
        );
        let (table_tx, table_rx) = watch::channel(Arc::new(RouteTable::default()));
        RouteTable::publish(&table_tx, routes(&state, &td()), &state);
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(stream_routes(table_rx, tx));

        let first = rx.recv().await.expect("snapshot").expect("ok");
        assert!(first.snapshot);
        assert_eq!(first.upserts.len(), 2);
        assert_eq!(first.peers, ["west"]);

        // An unchanged state publishes nothing; a removed export is a removal.
        RouteTable::publish(&table_tx, routes(&state, &td()), &state);
        state.services.remove(&ObjKey::new("shop", "b"));
        RouteTable::publish(&table_tx, routes(&state, &td()), &state);
        let next = rx.recv().await.expect("diff").expect("ok");
        assert!(!next.snapshot);
        assert!(next.upserts.is_empty());
        assert_eq!(next.removals.len(), 1);
        assert_eq!(next.removals[0].name, "b");
        assert_eq!(next.revision, first.revision + 1);
        drop(rx);
        task.await.expect("stream task ends with its subscriber");
    }

    #[tokio::test]
    async fn nothing_is_sent_before_the_first_table() {
        let (table_tx, table_rx) = watch::channel(Arc::new(RouteTable::default()));
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(stream_routes(table_rx, tx));
        tokio::task::yield_now().await;
        assert!(
            rx.try_recv().is_err(),
            "no snapshot of a table never computed"
        );
        // A cluster exporting nothing still publishes its (empty) first table.
        RouteTable::publish(&table_tx, RouteSet::new(), &ClusterState::default());
        let first = rx.recv().await.expect("snapshot").expect("ok");
        assert!(first.snapshot && first.upserts.is_empty());
        assert_eq!(first.revision, 1);
        drop(rx);
        task.await.expect("stream task ends with its subscriber");
    }
}
