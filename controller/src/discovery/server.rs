//! The discovery service: per subscription, recompute the endpoint set on
//! every change of the world and push it when it differs from the last one
//! sent.
//!
//! A subscription's first set waits until every linked peer's exports are
//! known (at most [`PEERS_KNOWN_WAIT`]): a sidecar reconnecting to a
//! restarted controller keeps its last endpoints meanwhile, instead of being
//! handed a view without the remote clusters it was failing over to.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use meshfed_api::discovery::discovery_server::Discovery;
use meshfed_api::discovery::{
    EndpointSet, LimitsUpdate, ResolveRequest, ResolveResponse, RoutesUpdate, WatchLimitsRequest,
    WatchRequest, WatchRoutesRequest,
};
use meshfed_api::sni::is_dns_label;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::groups::{LocalCluster, Query, endpoint_set};
use super::limits::pod_limits;
use super::routes::{RouteTable, stream_routes};
use crate::metrics::Metrics;
use crate::store::ObjKey;
use crate::world::World;

/// How long a new subscription waits for every peer's exports to be known.
pub(crate) const PEERS_KNOWN_WAIT: Duration = Duration::from_secs(5);

/// The tonic service.
#[derive(Debug, Clone)]
pub struct DiscoveryService {
    me: Arc<LocalCluster>,
    world: watch::Receiver<Arc<World>>,
    routes: watch::Receiver<Arc<RouteTable>>,
    metrics: Arc<Metrics>,
}

impl DiscoveryService {
    /// Serves endpoint sets computed from `world` and the gateway's `routes`.
    pub fn new(
        me: LocalCluster,
        world: watch::Receiver<Arc<World>>,
        routes: watch::Receiver<Arc<RouteTable>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            me: Arc::new(me),
            world,
            routes,
            metrics,
        }
    }
}

type SetStream = Pin<Box<dyn Stream<Item = Result<EndpointSet, Status>> + Send>>;
type RoutesStream = Pin<Box<dyn Stream<Item = Result<RoutesUpdate, Status>> + Send>>;
type LimitsStream = Pin<Box<dyn Stream<Item = Result<LimitsUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = SetStream;
    type WatchRoutesStream = RoutesStream;
    type WatchLimitsStream = LimitsStream;

    async fn watch(&self, req: Request<WatchRequest>) -> Result<Response<SetStream>, Status> {
        let req = req.into_inner();
        if !is_dns_label(&req.name) || !is_dns_label(&req.namespace) {
            return Err(Status::invalid_argument(
                "name and namespace must be DNS labels (lowercase letters, digits, '-')",
            ));
        }
        let port = u16::try_from(req.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument("port must be within 1..=65535"))?;
        let caller_zone = req.caller.map(|c| c.zone).unwrap_or_default();
        if caller_zone.len() > 253 {
            return Err(Status::invalid_argument("caller zone is too long"));
        }
        let query = Query {
            key: ObjKey::new(req.namespace, req.name),
            port,
            caller_zone,
        };
        let (tx, rx) = mpsc::channel(4);
        let (me, mut world, metrics) = (self.me.clone(), self.world.clone(), self.metrics.clone());
        tokio::spawn(async move {
            metrics.discovery_subscribers.inc();
            tokio::select! {
                _ = tokio::time::timeout(PEERS_KNOWN_WAIT, world.wait_for(|w| w.peers_known())) => {}
                () = tx.closed() => {
                    metrics.discovery_subscribers.dec();
                    return;
                }
            }
            let mut last: Option<EndpointSet> = None;
            let mut revision = 0u64;
            loop {
                let w = world.borrow_and_update().clone();
                let set = endpoint_set(&w, &me, &query);
                if last.as_ref() != Some(&set) {
                    revision += 1;
                    let out = EndpointSet {
                        revision,
                        ..set.clone()
                    };
                    if tx.send(Ok(out)).await.is_err() {
                        break;
                    }
                    if last.is_some() {
                        metrics
                            .discovery_push_latency
                            .observe(w.changed_at.elapsed().as_secs_f64());
                    }
                    last = Some(set);
                }
                tokio::select! {
                    changed = world.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            metrics.discovery_subscribers.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_routes(
        &self,
        req: Request<WatchRoutesRequest>,
    ) -> Result<Response<RoutesStream>, Status> {
        let gateway = req.into_inner().gateway;
        if gateway.len() > 253 {
            return Err(Status::invalid_argument("gateway name is too long"));
        }
        tracing::info!(%gateway, "gateway route stream opened");
        let (tx, rx) = mpsc::channel(4);
        let (routes, metrics) = (self.routes.clone(), self.metrics.clone());
        tokio::spawn(async move {
            metrics.discovery_subscribers.inc();
            stream_routes(routes, tx).await;
            metrics.discovery_subscribers.dec();
            tracing::info!(%gateway, "gateway route stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn watch_limits(
        &self,
        req: Request<WatchLimitsRequest>,
    ) -> Result<Response<LimitsStream>, Status> {
        let ip: std::net::IpAddr = req.into_inner().pod_ip.parse().map_err(|_| {
            Status::invalid_argument("pod_ip must be an IP address (the pod's status.podIP)")
        })?;
        let (tx, rx) = mpsc::channel(4);
        let (mut world, metrics) = (self.world.clone(), self.metrics.clone());
        tokio::spawn(async move {
            metrics.discovery_subscribers.inc();
            // The limits depend on the local state only: a change of the
            // peers' is not looked at.
            let mut seen: Option<Arc<crate::store::ClusterState>> = None;
            let mut last = None;
            let mut revision = 0u64;
            loop {
                let local = world.borrow_and_update().local.clone();
                if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &local)) {
                    let limits = pod_limits(&local, ip);
                    seen = Some(local);
                    if last.as_ref() != Some(&limits) {
                        revision += 1;
                        let update = LimitsUpdate {
                            limits: limits.clone(),
                            revision,
                        };
                        if tx.send(Ok(update)).await.is_err() {
                            break;
                        }
                        last = Some(limits);
                    }
                }
                tokio::select! {
                    changed = world.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            metrics.discovery_subscribers.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resolve(
        &self,
        req: Request<ResolveRequest>,
    ) -> Result<Response<ResolveResponse>, Status> {
        let target = req.into_inner().target;
        if target.is_empty() || target.len() > 253 {
            return Err(Status::invalid_argument(
                "target must be an IP address or a host name",
            ));
        }
        let world = self.world.borrow().clone();
        Ok(Response::new(resolve(&world, &target)))
    }
}

/// Maps a cluster IP or a host name to a local Service (mirrors included).
pub(crate) fn resolve(world: &World, target: &str) -> ResolveResponse {
    let found = |key: &ObjKey| {
        let svc = world.local.services.get(key)?;
        let ports = svc
            .spec
            .as_ref()?
            .ports
            .iter()
            .flatten()
            .filter_map(|p| u32::try_from(p.port).ok())
            .collect();
        Some(ResolveResponse {
            found: true,
            name: key.name.to_string(),
            namespace: key.namespace.to_string(),
            ports,
        })
    };
    if let Ok(ip) = target.parse::<std::net::IpAddr>() {
        let ip = ip.to_string();
        let hit = world.local.services.iter().find(|(_, s)| {
            s.spec.as_ref().is_some_and(|spec| {
                spec.cluster_ip.as_deref() == Some(ip.as_str())
                    || spec.cluster_ips.iter().flatten().any(|c| *c == ip)
            })
        });
        return hit.and_then(|(k, _)| found(k)).unwrap_or_default();
    }
    // name.namespace, name.namespace.svc, name.namespace.svc.<cluster domain>
    let host = target.trim_end_matches('.').to_ascii_lowercase();
    let mut labels = host.split('.');
    let (Some(name), Some(namespace)) = (labels.next(), labels.next()) else {
        return ResolveResponse::default();
    };
    if !matches!(labels.next(), None | Some("svc")) {
        return ResolveResponse::default();
    }
    let key = ObjKey::new(namespace, name);
    found(&key).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use meshfed_api::discovery::Locality;

    use super::*;
    use crate::fixtures;
    use crate::store::ClusterState;
    use crate::world::PeerState;

    /// East's world: api exported here with one ready endpoint, and a Link
    /// to west whose exports are not known yet.
    fn restarted_world() -> World {
        let mut state = ClusterState::default();
        let svc = fixtures::service("shop", "api", &[("http", 80)], true);
        state
            .services
            .insert(ObjKey::new("shop", "api"), svc.into());
        let (pods, slice) = fixtures::pods_and_slice(
            "shop",
            "api",
            "api",
            &[("http", 8080)],
            &[("10.0.0.1", Some("a"), true)],
        );
        fixtures::add_workload(&mut state, &pods, slice);
        let link = fixtures::link(
            "meshfed",
            "west",
            &["127.0.0.9"],
            4443,
            "spiffe://mesh.test/gw",
            "spiffe://mesh.test/c",
        );
        let mut west = PeerState::new(link.spec);
        west.gateways = vec!["127.0.0.9:4443".parse().expect("addr")];
        let mut world = World::new(Arc::new(state));
        world
            .peers
            .insert(ObjKey::new("meshfed", "west"), Arc::new(west));
        world
    }

    fn west_exports_api() -> Arc<crate::local::ExportSet> {
        let svc = fixtures::exported_api("west-1", 2, 2);
        Arc::new(crate::local::ExportSet::unit(
            ObjKey::new("shop", "api"),
            svc.into(),
        ))
    }

    async fn subscribe(world: watch::Receiver<Arc<World>>) -> SetStream {
        let (_routes_tx, routes) = watch::channel(Arc::new(RouteTable::default()));
        let me = LocalCluster {
            name: "east".into(),
            region: None,
            trust_domain: meshfed_trust::TrustDomain::new("mesh.test").expect("domain"),
        };
        let svc = DiscoveryService::new(
            me,
            world,
            routes,
            Arc::new(Metrics::new(
                &mut prometheus_client::registry::Registry::default(),
            )),
        );
        let req = WatchRequest {
            namespace: "shop".into(),
            name: "api".into(),
            port: 80,
            caller: Some(Locality {
                zone: "a".into(),
                ..Locality::default()
            }),
        };
        svc.watch(Request::new(req))
            .await
            .expect("watch")
            .into_inner()
    }

    fn clusters(set: &EndpointSet) -> Vec<String> {
        set.groups
            .iter()
            .map(|g| {
                g.locality
                    .as_ref()
                    .map(|l| l.cluster.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_set_waits_until_every_peers_exports_are_known() {
        let (tx, rx) = watch::channel(Arc::new(restarted_world()));
        let mut stream = subscribe(rx).await;
        let early = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
        assert!(early.is_err(), "nothing is sent while west is unknown");
        tx.send_modify(|w| {
            let w = Arc::make_mut(w);
            let key = ObjKey::new("meshfed", "west");
            let mut west = (*w.peers[&key]).clone();
            west.imports = Some(west_exports_api());
            w.peers.insert(key, Arc::new(west));
        });
        let set = stream.next().await.expect("a set").expect("ok");
        assert_eq!(set.revision, 1);
        assert_eq!(clusters(&set), ["east", "west"], "{set:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stays_unknown_holds_the_first_set_only_so_long() {
        let (_tx, rx) = watch::channel(Arc::new(restarted_world()));
        let mut stream = subscribe(rx).await;
        let started = tokio::time::Instant::now();
        let set = stream.next().await.expect("a set").expect("ok");
        assert_eq!(started.elapsed(), PEERS_KNOWN_WAIT);
        assert_eq!(clusters(&set), ["east"], "{set:?}");
    }

    #[test]
    fn resolves_cluster_ips_and_service_host_names() {
        let mut state = ClusterState::default();
        let mut svc = fixtures::service("shop", "api", &[("http", 80), ("grpc", 9090)], true);
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("10.96.0.10".into());
            spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::a".into()]);
        }
        state
            .services
            .insert(ObjKey::new("shop", "api"), svc.into());
        let world = World::new(Arc::new(state));
        for target in [
            "10.96.0.10",
            "fd00::a",
            "api.shop",
            "api.shop.svc",
            "API.shop.svc.cluster.local.",
        ] {
            let r = resolve(&world, target);
            assert!(r.found, "{target}");
            assert_eq!(
                (r.name.as_str(), r.namespace.as_str(), r.ports.as_slice()),
                ("api", "shop", &[80, 9090][..])
            );
        }
        for target in [
            "10.96.0.11",
            "api",
            "api.other",
            "api.shop.pod.cluster.local",
        ] {
            assert!(!resolve(&world, target).found, "{target}");
        }
    }
}
