//! The routing table: the Services this cluster exports and the local
//! endpoints of each port, exactly as the controller streams them. Nothing
//! outside this table is ever dialled.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use meshfed_api::discovery::{Route, RoutesUpdate};
use meshfed_api::sni::is_dns_label;

use crate::metrics::Reason;

/// One endpoint the gateway may dial.
#[derive(Debug)]
pub struct Upstream {
    /// `ip:target-port`.
    pub addr: SocketAddr,
    /// Ready per the cluster (only ready endpoints are dialled).
    pub ready: bool,
    /// Connections open to it through this gateway (the balancer's load).
    pub(crate) active: Arc<AtomicUsize>,
}

#[derive(Debug, Clone)]
struct PortRoute {
    port: u16,
    endpoints: Arc<[Upstream]>,
}

type ServiceKey = (String, String);

/// The exported services and linked clusters, as last received.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    services: HashMap<ServiceKey, Arc<Vec<PortRoute>>>,
    peers: HashSet<String>,
    revision: u64,
    synced: bool,
}

/// Why the controller's update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A diff arrived before any snapshot.
    #[error("update before the first snapshot")]
    NoSnapshot,
    /// A route names something that is not a Kubernetes Service name.
    #[error("route {0:?}: namespace and name must be DNS labels")]
    BadName(String),
    /// A port outside 1..=65535.
    #[error("route {0}: port {1} is out of range")]
    BadPort(String, u32),
    /// An endpoint address that is not `ip:port`, or is unroutable.
    #[error("route {0}: endpoint {1:?} is not a dialable ip:port")]
    BadEndpoint(String, String),
}

impl RouteTable {
    /// Whether a snapshot has been applied (the gateway is not ready before).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The controller's revision this table reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many services are routed.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether no service is routed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Whether `cluster` is linked with this one.
    pub fn is_peer(&self, cluster: &str) -> bool {
        self.peers.contains(cluster)
    }

    /// The endpoints of an exported service port, or why there are none.
    pub fn lookup(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<Arc<[Upstream]>, Reason> {
        let key = (namespace.to_owned(), name.to_owned());
        let ports = self.services.get(&key).ok_or(Reason::NotExported)?;
        let route = ports
            .iter()
            .find(|p| p.port == port)
            .ok_or(Reason::PortNotExported)?;
        if !route.endpoints.iter().any(|u| u.ready) {
            return Err(Reason::NoHealthyEndpoint);
        }
        Ok(route.endpoints.clone())
    }

    /// The table after `update`; all of it or (on error) none of it.
    pub fn apply(&self, update: RoutesUpdate) -> Result<RouteTable, RouteError> {
        if !update.snapshot && !self.synced {
            return Err(RouteError::NoSnapshot);
        }
        let mut next = if update.snapshot {
            RouteTable::default()
        } else {
            self.clone()
        };
        let mut upserts = Vec::with_capacity(update.upserts.len());
        for route in update.upserts {
            let key = (route.namespace.clone(), route.name.clone());
            let old = self.services.get(&key).map(|p| p.as_slice()).unwrap_or(&[]);
            let ports = validate(&route, old)?;
            upserts.push((key, Arc::new(ports)));
        }
        for r in update.removals {
            next.services.remove(&(r.namespace, r.name));
        }
        next.services.extend(upserts);
        next.peers = update
            .peers
            .into_iter()
            .filter(|p| is_dns_label(p))
            .collect();
        next.revision = update.revision;
        next.synced = true;
        Ok(next)
    }
}

/// Checks one route and builds its ports, keeping the load counters of
/// endpoints that were already there.
fn validate(route: &Route, old: &[PortRoute]) -> Result<Vec<PortRoute>, RouteError> {
    let id = format!("{}/{}", route.namespace, route.name);
    if !is_dns_label(&route.namespace) || !is_dns_label(&route.name) {
        return Err(RouteError::BadName(id));
    }
    let mut ports = Vec::with_capacity(route.ports.len());
    for p in &route.ports {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| RouteError::BadPort(id.clone(), p.port))?;
        let previous = old.iter().find(|o| o.port == port);
        let mut endpoints = Vec::with_capacity(p.endpoints.len());
        for e in &p.endpoints {
            let addr: SocketAddr = e
                .address
                .parse()
                .ok()
                .filter(|a: &SocketAddr| {
                    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
                })
                .ok_or_else(|| RouteError::BadEndpoint(id.clone(), e.address.clone()))?;
            let active = previous
                .and_then(|o| o.endpoints.iter().find(|u| u.addr == addr))
                .map(|u| u.active.clone())
                .unwrap_or_default();
            endpoints.push(Upstream {
                addr,
                ready: e.ready,
                active,
            });
        }
        ports.push(PortRoute {
            port,
            endpoints: endpoints.into(),
        });
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use meshfed_api::discovery::{RouteEndpoint, RoutePort, RouteRef};

    use super::*;

    fn route(name: &str, port: u32, eps: &[(&str, bool)]) -> Route {
        Route {
            namespace: "shop".into(),
            name: name.into(),
            ports: vec![RoutePort {
                port,
                endpoints: eps
                    .iter()
                    .map(|(a, ready)| RouteEndpoint {
                        address: (*a).into(),
                        ready: *ready,
                        zone: String::new(),
                    })
                    .collect(),
            }],
        }
    }

    fn snapshot(routes: Vec<Route>) -> RoutesUpdate {
        RoutesUpdate {
            snapshot: true,
            upserts: routes,
            revision: 1,
            peers: vec!["west".into(), "Bad Name".into()],
            ..RoutesUpdate::default()
        }
    }

    #[test]
    fn lookups_say_why_nothing_can_serve() {
        let t = RouteTable::default()
            .apply(snapshot(vec![
                route(
                    "api",
                    80,
                    &[("10.0.0.1:8080", true), ("10.0.0.2:8080", false)],
                ),
                route("down", 80, &[("10.0.0.3:8080", false)]),
            ]))
            .expect("valid");
        assert!(t.is_synced());
        assert_eq!(t.lookup("shop", "api", 80).expect("routed").len(), 2);
        assert_eq!(
            t.lookup("shop", "api", 81).err(),
            Some(Reason::PortNotExported)
        );
        assert_eq!(t.lookup("shop", "db", 80).err(), Some(Reason::NotExported));
        assert_eq!(
            t.lookup("other", "api", 80).err(),
            Some(Reason::NotExported)
        );
        assert_eq!(
            t.lookup("shop", "down", 80).err(),
            Some(Reason::NoHealthyEndpoint)
        );
        assert!(t.is_peer("west"));
        assert!(
            !t.is_peer("Bad Name"),
            "peer names are label values: DNS labels only"
        );
    }

    #[test]
    fn diffs_keep_load_counters_and_bad_updates_change_nothing() {
        let t = RouteTable::default()
            .apply(snapshot(vec![route("api", 80, &[("10.0.0.1:8080", true)])]))
            .expect("valid");
        let eps = t.lookup("shop", "api", 80).expect("routed");
        eps[0].active.fetch_add(3, Ordering::Relaxed);
        let diff = RoutesUpdate {
            upserts: vec![route(
                "api",
                80,
                &[("10.0.0.1:8080", true), ("10.0.0.2:8080", true)],
            )],
            revision: 2,
            ..RoutesUpdate::default()
        };
        let t2 = t.apply(diff).expect("valid");
        let eps = t2.lookup("shop", "api", 80).expect("routed");
        assert_eq!(eps[0].active.load(Ordering::Relaxed), 3);
        assert_eq!(eps[1].active.load(Ordering::Relaxed), 0);

        for bad in [
            route("api", 80, &[("0.0.0.0:8080", true)]),
            route("api", 80, &[("api.shop:8080", true)]),
            route("api", 0, &[]),
            route("API", 80, &[]),
        ] {
            let update = RoutesUpdate {
                upserts: vec![route("db", 5432, &[("10.0.0.9:5432", true)]), bad],
                ..RoutesUpdate::default()
            };
            assert!(t2.apply(update).is_err());
        }
        let removal = RoutesUpdate {
            removals: vec![RouteRef {
                namespace: "shop".into(),
                name: "api".into(),
            }],
            revision: 3,
            ..RoutesUpdate::default()
        };
        let t3 = t2.apply(removal).expect("valid");
        assert!(t3.is_empty());
        assert_eq!(
            RouteTable::default().apply(RoutesUpdate::default()).err(),
            Some(RouteError::NoSnapshot)
        );
    }
}
