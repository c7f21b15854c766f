//! What this cluster serves: the endpoints behind a local Service, and the
//! export set the federation stream publishes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use meshfed_api::discovery::{Route, RouteEndpoint, RoutePort};
use meshfed_api::federation::{ExportedService, ServicePort as WirePort, ZoneEndpoints};
use meshfed_api::labels;
use meshfed_trust::TrustDomain;

use crate::store::{ClusterState, ObjKey, is_mirror};

/// One address serving one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalEndpoint {
    pub(crate) address: std::net::SocketAddr,
    pub(crate) zone: Option<String>,
    pub(crate) ready: bool,
    pub(crate) identity: String,
}

/// The exported services of a cluster, as published to peers.
pub(crate) type ExportSet = BTreeMap<ObjKey, ExportedService>;

/// The gateway's routes: exported services with their local endpoints.
pub(crate) type RouteSet = BTreeMap<ObjKey, Route>;

/// The Service port numbered `port`, if the Service has one.
pub(crate) fn service_port(svc: &Service, port: u16) -> Option<&ServicePort> {
    svc.spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.port == i32::from(port))
}

/// The slices that belong to Service `key`.
fn slices_of<'a>(
    state: &'a ClusterState,
    key: &'a ObjKey,
) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
    state
        .slices
        .range(ObjKey::new(key.namespace.clone(), String::new())..)
        .take_while(move |(k, _)| k.namespace == key.namespace)
        .map(|(_, s)| s)
        .filter(move |s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::SERVICE_NAME))
                .is_some_and(|n| *n == key.name)
        })
}

/// Who the endpoints of a slice serve as: the slice's annotation, else the
/// Service's, else the namespace's `default` service account.
fn identity_of(td: &TrustDomain, svc: &Service, slice: &EndpointSlice, namespace: &str) -> String {
    let annotated = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(labels::IDENTITY))
            .cloned()
    };
    annotated(&slice.metadata)
        .or_else(|| annotated(&svc.metadata))
        .unwrap_or_else(|| format!("spiffe://{td}/ns/{namespace}/sa/default"))
}

/// An endpoint's zone: its own, else its Node's.
fn zone_of(state: &ClusterState, ep: &Endpoint) -> Option<String> {
    ep.zone
        .clone()
        .or_else(|| state.node_zones.get(ep.node_name.as_ref()?).cloned())
}

/// Kubernetes: an unset `ready` means ready.
fn is_ready(ep: &Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
}

/// Every endpoint serving `port` of Service `key`, ready or not.
pub(crate) fn endpoints(
    state: &ClusterState,
    td: &TrustDomain,
    key: &ObjKey,
    port: u16,
) -> Vec<LocalEndpoint> {
    let Some(svc) = state.services.get(key) else {
        return Vec::new();
    };
    let Some(sp) = service_port(svc, port) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for slice in slices_of(state, key) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        // The slice port with the Service port's name carries the target port.
        let target = slice.ports.iter().flatten().find(|p| p.name == sp.name);
        let Some(target) = target
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        let identity = identity_of(td, svc, slice, &key.namespace);
        for ep in slice.endpoints.iter().flatten() {
            let (zone, ready) = (zone_of(state, ep), is_ready(ep));
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
                    continue;
                };
                out.push(LocalEndpoint {
                    address: std::net::SocketAddr::new(ip, target),
                    zone: zone.clone(),
                    ready,
                    identity: identity.clone(),
                });
            }
        }
    }
    out.sort_by_key(|e| e.address);
    out.dedup_by(|a, b| a.address == b.address);
    out
}

/// Services labelled exported, never mirrors (a cluster re-exporting what
/// it imported would loop, and a gateway must not relay to other clusters).
fn exported(state: &ClusterState) -> impl Iterator<Item = (&ObjKey, &Service)> {
    state.services.iter().filter(|(_, svc)| {
        let l = svc.metadata.labels.as_ref();
        labels::is_exported(l) && !is_mirror(l)
    })
}

/// The cluster's exports, as published to peers.
pub(crate) fn exports(state: &ClusterState, td: &TrustDomain) -> ExportSet {
    let mut out = ExportSet::new();
    for (key, svc) in exported(state) {
        let ports: Vec<WirePort> = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                Some(WirePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u32::try_from(p.port).ok()?,
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    app_protocol: p.app_protocol.clone().unwrap_or_default(),
                })
            })
            .collect();
        let mut zones: BTreeMap<String, (u32, u32)> = BTreeMap::new();
        let mut identities = BTreeSet::new();
        for slice in slices_of(state, key) {
            identities.insert(identity_of(td, svc, slice, &key.namespace));
            for ep in slice.endpoints.iter().flatten() {
                let z = zones
                    .entry(zone_of(state, ep).unwrap_or_default())
                    .or_default();
                z.0 += u32::from(is_ready(ep));
                z.1 += 1;
            }
        }
        out.insert(
            key.clone(),
            ExportedService {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                labels: svc
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                ports,
                zones: zones
                    .into_iter()
                    .map(|(zone, (ready, total))| ZoneEndpoints { zone, ready, total })
                    .collect(),
                identities: identities.into_iter().collect(),
            },
        );
    }
    out
}

/// The gateway's routes: every port of every exported service, with the
/// local endpoints behind it.
pub(crate) fn routes(state: &ClusterState, td: &TrustDomain) -> RouteSet {
    exported(state)
        .map(|(key, svc)| {
            let ports = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| u16::try_from(p.port).ok())
                .map(|port| RoutePort {
                    port: u32::from(port),
                    endpoints: endpoints(state, td, key, port)
                        .into_iter()
                        .map(|e| RouteEndpoint {
                            address: e.address.to_string(),
                            ready: e.ready,
                            zone: e.zone.unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect();
            let route = Route {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                ports,
            };
            (key.clone(), route)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{service, slice};

    fn td() -> TrustDomain {
        TrustDomain::new("mesh.test").expect("valid")
    }

    #[test]
    fn exports_count_ready_endpoints_per_zone() {
        let mut state = ClusterState::default();
        let svc = service("shop", "api", &[("http", 80)], true);
        state.services.insert(ObjKey::new("shop", "api"), svc);
        let mut s = slice("shop", "api", "api-1", &[("http", 8080)]);
        crate::fixtures::add_endpoint(&mut s, "10.0.0.1", Some("z1"), true);
        crate::fixtures::add_endpoint(&mut s, "10.0.0.2", Some("z1"), false);
        crate::fixtures::add_endpoint(&mut s, "10.0.0.3", Some("z2"), true);
        state.slices.insert(ObjKey::new("shop", "api-1"), s);
        state.services.insert(
            ObjKey::new("shop", "db"),
            service("shop", "db", &[("tcp", 5432)], false),
        );
        let exports = exports(&state, &td());
        assert_eq!(exports.len(), 1, "only labelled services are exported");
        let api = &exports[&ObjKey::new("shop", "api")];
        let zones: Vec<_> = api
            .zones
            .iter()
            .map(|z| (z.zone.as_str(), z.ready, z.total))
            .collect();
        assert_eq!(zones, vec![("z1", 1, 2), ("z2", 1, 1)]);
        assert_eq!(
            api.identities,
            vec!["spiffe://mesh.test/ns/shop/sa/default".to_owned()]
        );
        assert_eq!(api.ports[0].port, 80);

        let eps = endpoints(&state, &td(), &ObjKey::new("shop", "api"), 80);
        assert_eq!(eps.len(), 3);
        assert_eq!(
            eps[0].address.port(),
            8080,
            "the slice's target port is dialled"
        );
        assert!(endpoints(&state, &td(), &ObjKey::new("shop", "api"), 81).is_empty());

        let routes = routes(&state, &td());
        assert_eq!(routes.len(), 1, "only exported services are routed");
        let port = &routes[&ObjKey::new("shop", "api")].ports[0];
        assert_eq!(port.port, 80);
        let eps: Vec<_> = port
            .endpoints
            .iter()
            .map(|e| (e.address.as_str(), e.ready, e.zone.as_str()))
            .collect();
        assert_eq!(
            eps,
            [
                ("10.0.0.1:8080", true, "z1"),
                ("10.0.0.2:8080", false, "z1"),
                ("10.0.0.3:8080", true, "z2")
            ]
        );
    }

    #[test]
    fn mirrors_are_never_routed() {
        let mut state = ClusterState::default();
        let mut mirror = service("shop", "api-west", &[("http", 80)], true);
        mirror
            .metadata
            .labels
            .get_or_insert_default()
            .insert(labels::ORIGIN_CLUSTER.into(), "west".into());
        state
            .services
            .insert(ObjKey::new("shop", "api-west"), mirror);
        assert!(routes(&state, &td()).is_empty());
        assert!(exports(&state, &td()).is_empty());
    }
}
