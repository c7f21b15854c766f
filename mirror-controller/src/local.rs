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

/// Why an endpoint is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Unidentified {
    /// Its `targetRef` names a Pod the store does not hold (not yet
    /// watched, already gone, or an earlier Pod of that name).
    PodUnknown,
    /// It is not a Pod and no `meshfed.io/identity` annotation names it.
    NotNamed,
}

impl Unidentified {
    /// The metric label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PodUnknown => "pod_unknown",
            Self::NotNamed => "not_named",
        }
    }
}

/// Who an endpoint serves as, the way Kubernetes states it: its `targetRef`
/// names a Pod, whose `spec.serviceAccountName` makes the SPIFFE ID. Only an
/// endpoint that is not a Pod (a VM or a host in a slice written by hand) may
/// be named by the `meshfed.io/identity` annotation of its slice or Service.
/// When neither says, the endpoint is not offered: a guessed identity would
/// be refused by every client anyway.
fn identity_of(
    state: &ClusterState,
    td: &TrustDomain,
    svc: &Service,
    slice: &EndpointSlice,
    ep: &Endpoint,
) -> Result<String, Unidentified> {
    match ep.target_ref.as_ref() {
        Some(target) if target.kind.as_deref() == Some("Pod") => {
            let namespace = target
                .namespace
                .as_deref()
                .or(slice.metadata.namespace.as_deref())
                .ok_or(Unidentified::PodUnknown)?;
            let name = target.name.as_deref().ok_or(Unidentified::PodUnknown)?;
            let pod = state
                .pods
                .get(&ObjKey::new(namespace, name))
                .ok_or(Unidentified::PodUnknown)?;
            // A Pod recreated under the same name is not the one the slice names yet.
            if let (Some(named), Some(known)) = (&target.uid, &pod.uid)
                && named != known
            {
                return Err(Unidentified::PodUnknown);
            }
            let id = td
                .workload(namespace, &pod.service_account)
                .map_err(|_| Unidentified::PodUnknown)?;
            Ok(id.to_string())
        }
        _ => {
            let annotated = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                m.annotations
                    .as_ref()
                    .and_then(|a| a.get(labels::IDENTITY))
                    .cloned()
            };
            annotated(&slice.metadata)
                .or_else(|| annotated(&svc.metadata))
                .ok_or(Unidentified::NotNamed)
        }
    }
}

/// How many endpoints of the cluster's own Services are not offered, by
/// why: what `meshfed_controller_endpoints_unidentified` shows, so an
/// endpoint missing from discovery is never a silent mystery.
pub(crate) fn unidentified(
    state: &ClusterState,
    td: &TrustDomain,
) -> BTreeMap<Unidentified, usize> {
    let mut out = BTreeMap::new();
    for (key, svc) in &state.services {
        if is_mirror(svc.metadata.labels.as_ref()) {
            continue;
        }
        for slice in state.slices_of(key) {
            for ep in slice.endpoints.iter().flatten() {
                if let Err(why) = identity_of(state, td, svc, slice, ep) {
                    *out.entry(why).or_default() += 1;
                }
            }
        }
    }
    out
}

/// A slice's endpoints that can be offered, each with who it serves as.
fn offered<'a>(
    state: &'a ClusterState,
    td: &'a TrustDomain,
    svc: &'a Service,
    slice: &'a EndpointSlice,
) -> impl Iterator<Item = (&'a Endpoint, String)> + 'a {
    slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(move |ep| Some((ep, identity_of(state, td, svc, slice, ep).ok()?)))
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
    for slice in state.slices_of(key) {
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
        for (ep, identity) in offered(state, td, svc, slice) {
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
    state
        .services
        .iter()
        .map(|(k, svc)| (k, &**svc))
        .filter(|(_, svc)| {
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
        for slice in state.slices_of(key) {
            for (ep, identity) in offered(state, td, svc, slice) {
                identities.insert(identity);
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
    use crate::fixtures::{
        add_host_endpoint, add_pod_endpoint, add_workload, pod, pods_and_slice, service, slice,
    };
    use crate::store::PodAccount;

    fn td() -> TrustDomain {
        TrustDomain::new("mesh.test").expect("valid")
    }

    #[test]
    fn exports_count_ready_endpoints_per_zone() {
        let mut state = ClusterState::default();
        let svc = service("shop", "api", &[("http", 80)], true);
        state
            .services
            .insert(ObjKey::new("shop", "api"), svc.into());
        let (pods, s) = pods_and_slice(
            "shop",
            "api",
            "api",
            &[("http", 8080)],
            &[
                ("10.0.0.1", Some("z1"), true),
                ("10.0.0.2", Some("z1"), false),
                ("10.0.0.3", Some("z2"), true),
            ],
        );
        add_workload(&mut state, &pods, s);
        state.services.insert(
            ObjKey::new("shop", "db"),
            service("shop", "db", &[("tcp", 5432)], false).into(),
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
            vec!["spiffe://mesh.test/ns/shop/sa/api".to_owned()]
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
            .insert(ObjKey::new("shop", "api-west"), mirror.into());
        assert!(routes(&state, &td()).is_empty());
        assert!(exports(&state, &td()).is_empty());
    }

    /// shop/api with one slice, exported; the caller adds endpoints.
    fn api_state(endpoints: impl FnOnce(&mut ClusterState, &mut EndpointSlice)) -> ClusterState {
        let mut state = ClusterState::default();
        state.services.insert(
            ObjKey::new("shop", "api"),
            service("shop", "api", &[("http", 80)], true).into(),
        );
        let mut s = slice("shop", "api", "api-x1", &[("http", 8080)]);
        endpoints(&mut state, &mut s);
        state.slices.insert(ObjKey::new("shop", "api-x1"), s.into());
        state
    }

    fn identities(state: &ClusterState) -> Vec<(String, String)> {
        endpoints(state, &td(), &ObjKey::new("shop", "api"), 80)
            .into_iter()
            .map(|e| (e.address.ip().to_string(), e.identity))
            .collect()
    }

    fn add_pod(state: &mut ClusterState, s: &mut EndpointSlice, name: &str, sa: &str, ip: &str) {
        let p = pod("shop", name, sa, ip, "n1");
        add_pod_endpoint(s, &p, Some("z1"), true);
        let account = PodAccount::of(&p).expect("running");
        state.pods.insert(ObjKey::new("shop", name), account);
    }

    #[test]
    fn each_endpoint_serves_as_its_own_pods_service_account() {
        let state = api_state(|state, s| {
            add_pod(state, s, "api-1", "api", "10.0.0.1");
            add_pod(state, s, "api-2", "api-canary", "10.0.0.2");
        });
        assert_eq!(
            identities(&state),
            [
                (
                    "10.0.0.1".into(),
                    "spiffe://mesh.test/ns/shop/sa/api".into()
                ),
                (
                    "10.0.0.2".into(),
                    "spiffe://mesh.test/ns/shop/sa/api-canary".into()
                ),
            ]
        );
        let exported = &exports(&state, &td())[&ObjKey::new("shop", "api")];
        assert_eq!(
            exported.identities,
            [
                "spiffe://mesh.test/ns/shop/sa/api",
                "spiffe://mesh.test/ns/shop/sa/api-canary"
            ]
        );
    }

    #[test]
    fn an_endpoint_whose_pod_is_unknown_or_recreated_is_not_offered() {
        let mut state = api_state(|state, s| {
            add_pod(state, s, "api-1", "api", "10.0.0.1");
            // The slice names a Pod the store has not seen (yet).
            add_pod_endpoint(
                s,
                &pod("shop", "api-2", "api", "10.0.0.2", "n1"),
                None,
                true,
            );
            // The slice still names an earlier Pod of this name.
            add_pod(state, s, "api-3", "api", "10.0.0.3");
        });
        let recreated = pod("shop", "api-3", "other", "10.0.0.3", "n1");
        state.pods.insert(
            ObjKey::new("shop", "api-3"),
            PodAccount::of(&recreated).expect("running"),
        );
        assert_eq!(
            identities(&state),
            [(
                "10.0.0.1".into(),
                "spiffe://mesh.test/ns/shop/sa/api".into()
            )]
        );
        let exported = &exports(&state, &td())[&ObjKey::new("shop", "api")];
        assert_eq!(exported.zones.iter().map(|z| z.total).sum::<u32>(), 1);
        let routed = &routes(&state, &td())[&ObjKey::new("shop", "api")].ports[0];
        assert_eq!(routed.endpoints.len(), 1, "{routed:?}");
        assert_eq!(
            unidentified(&state, &td()),
            BTreeMap::from([(Unidentified::PodUnknown, 2)])
        );
    }

    #[test]
    fn a_rollout_to_another_service_account_changes_the_identity() {
        let mut state = api_state(|state, s| add_pod(state, s, "api-1", "api", "10.0.0.1"));
        // The Deployment rolls out with a new serviceAccountName: a new Pod,
        // and the endpoint-slice controller points the endpoint at it.
        let slice = state
            .slices
            .get_mut(&ObjKey::new("shop", "api-x1"))
            .map(std::sync::Arc::make_mut)
            .expect("slice");
        slice.endpoints = Some(Vec::new());
        let new = pod("shop", "api-2", "api-v2", "10.0.0.9", "n1");
        add_pod_endpoint(slice, &new, Some("z1"), true);
        state.pods.remove(&ObjKey::new("shop", "api-1"));
        state.pods.insert(
            ObjKey::new("shop", "api-2"),
            PodAccount::of(&new).expect("running"),
        );
        assert_eq!(
            identities(&state),
            [(
                "10.0.0.9".into(),
                "spiffe://mesh.test/ns/shop/sa/api-v2".into()
            )]
        );
    }

    #[test]
    fn only_endpoints_that_are_not_pods_take_the_annotation() {
        let annotate = |m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                        id: &str| {
            m.annotations
                .get_or_insert_default()
                .insert(labels::IDENTITY.into(), id.into());
        };
        let mut state = api_state(|state, s| {
            add_pod(state, s, "api-1", "api", "10.0.0.1");
            add_host_endpoint(s, "10.0.0.50", Some("z1"), true);
            annotate(&mut s.metadata, "spiffe://mesh.test/ns/shop/sa/vm");
        });
        assert_eq!(
            identities(&state),
            [
                (
                    "10.0.0.1".into(),
                    "spiffe://mesh.test/ns/shop/sa/api".into()
                ),
                (
                    "10.0.0.50".into(),
                    "spiffe://mesh.test/ns/shop/sa/vm".into()
                ),
            ],
            "a Pod's own service account wins over any annotation"
        );
        // Without the annotation, a host endpoint has no identity to offer.
        let slice = state
            .slices
            .get_mut(&ObjKey::new("shop", "api-x1"))
            .map(std::sync::Arc::make_mut)
            .expect("slice");
        slice.metadata.annotations = None;
        assert_eq!(
            identities(&state),
            [(
                "10.0.0.1".into(),
                "spiffe://mesh.test/ns/shop/sa/api".into()
            )]
        );
    }

    #[test]
    fn finished_pods_and_unset_service_accounts_follow_kubernetes() {
        assert_eq!(PodAccount::new(None, None, Some("Succeeded")), None);
        assert_eq!(PodAccount::new(None, None, Some("Failed")), None);
        let pending = PodAccount::new(Some("u".into()), None, Some("Pending")).expect("serves");
        assert_eq!(pending.service_account, "default");
    }
}
