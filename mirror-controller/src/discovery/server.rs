//! The discovery service: per subscription, recompute the endpoint set on
//! every change of the world and push it when it differs from the last one
//! sent.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use meshfed_api::discovery::discovery_server::Discovery;
use meshfed_api::discovery::{
    EndpointSet, ResolveRequest, ResolveResponse, RoutesUpdate, WatchRequest, WatchRoutesRequest,
};
use meshfed_api::sni::is_dns_label;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::groups::{LocalCluster, Query, endpoint_set};
use super::routes::{RouteTable, stream_routes};
use crate::metrics::Metrics;
use crate::store::ObjKey;
use crate::world::World;

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

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = SetStream;
    type WatchRoutesStream = RoutesStream;

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
            name: key.name.clone(),
            namespace: key.namespace.clone(),
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

    use super::*;
    use crate::fixtures;
    use crate::store::ClusterState;

    #[test]
    fn resolves_cluster_ips_and_service_host_names() {
        let mut state = ClusterState::default();
        let mut svc = fixtures::service("shop", "api", &[("http", 80), ("grpc", 9090)], true);
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("10.96.0.10".into());
            spec.cluster_ips = Some(vec!["10.96.0.10".into(), "fd00::a".into()]);
        }
        state.services.insert(ObjKey::new("shop", "api"), svc);
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
