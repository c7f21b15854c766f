//! What this cluster serves: the endpoints behind a local Service, and the
//! export set the federation stream publishes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use meshfed_api::discovery::{Route, RouteEndpoint, RoutePort};
use meshfed_api::federation::{ExportedService, ServicePort as WirePort, ZoneEndpoints};
use meshfed_api::labels;
use meshfed_trust::TrustDomain;

use crate::store::{ClusterState, ObjKey, Table, diffed, diffed_key, is_mirror, service_of};

/// One address serving one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalEndpoint {
    pub(crate) address: std::net::SocketAddr,
    pub(crate) zone: Option<String>,
    pub(crate) ready: bool,
    pub(crate) identity: String,
}

/// The exported services of a cluster, as published to peers. A persistent
/// map of shared entries: successive sets share what did not change, and
/// comparing or diffing them costs what did.
pub(crate) type ExportSet = Table<ObjKey, Arc<ExportedService>>;

/// The gateway's routes: exported services with their local endpoints,
/// shared between versions as [`ExportSet`] is.
pub(crate) type RouteSet = Table<ObjKey, Arc<Route>>;

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
            let key = pod_named(slice, ep).ok_or(Unidentified::PodUnknown)?;
            let pod = state.pods.get(&key).ok_or(Unidentified::PodUnknown)?;
            // A Pod recreated under the same name is not the one the slice names yet.
            if let (Some(named), Some(known)) = (&target.uid, &pod.uid)
                && named != known
            {
                return Err(Unidentified::PodUnknown);
            }
            let id = td
                .workload(&key.namespace, &pod.service_account)
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

/// The port `slice`'s endpoints serve Service port `sp` on: the slice
/// port with the Service port's name carries the target port.
pub(crate) fn target_port(slice: &EndpointSlice, sp: &ServicePort) -> Option<u16> {
    let target = slice.ports.iter().flatten().find(|p| p.name == sp.name)?;
    target.port.and_then(|p| u16::try_from(p).ok())
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
        let Some(target) = target_port(slice, sp) else {
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

/// Whether a Service is exported: labelled so, and never a mirror (a
/// cluster re-exporting what it imported would loop, and a gateway must not
/// relay to other clusters).
fn is_exported(svc: &Service) -> bool {
    let l = svc.metadata.labels.as_ref();
    labels::is_exported(l) && !is_mirror(l)
}

/// A Service's export, as published to peers.
fn export_of(
    state: &ClusterState,
    td: &TrustDomain,
    key: &ObjKey,
    svc: &Service,
) -> ExportedService {
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
    ExportedService {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
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
    }
}

/// A Service's gateway route: every port, with the local endpoints behind it.
fn route_of(state: &ClusterState, td: &TrustDomain, key: &ObjKey, svc: &Service) -> Route {
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
    Route {
        namespace: key.namespace.to_string(),
        name: key.name.to_string(),
        ports,
    }
}

/// What the controller derives from its own cluster — the export set, the
/// gateway routes and the count of endpoints not offered — kept up to date
/// Service by Service: an update recomputes only the Services whose object,
/// slices, or the Pods their endpoints name changed since the state it was
/// last given, found by diffing the two states' shared tables.
#[derive(Debug, Clone, Default)]
pub(crate) struct Derived {
    /// The state derived from.
    from: ClusterState,
    /// The cluster's exports, as published to peers.
    pub(crate) exports: ExportSet,
    /// The gateway's routes.
    pub(crate) routes: RouteSet,
    /// Endpoints not offered, per own Service, by why.
    missing: Table<ObjKey, BTreeMap<Unidentified, usize>>,
    /// The own Services whose endpoints name each Pod. (Which Pods a
    /// Service named is read from the state derived from, not kept.)
    services_naming: HashMap<ObjKey, Vec<ObjKey>>,
}

impl Derived {
    /// Derived from `state` alone.
    #[cfg(test)]
    pub(crate) fn of(state: &ClusterState, td: &TrustDomain) -> Self {
        let mut derived = Self::default();
        derived.update(state, td);
        derived
    }

    /// Brings everything up to date with `state`; returns how many Services
    /// were recomputed.
    pub(crate) fn update(&mut self, state: &ClusterState, td: &TrustDomain) -> usize {
        let mut dirty = BTreeSet::new();
        if self.from.node_zones == state.node_zones {
            for change in self.from.services.diff(&state.services) {
                dirty.insert(diffed_key(&change).clone());
            }
            for change in self.from.slices.diff(&state.slices) {
                let (old, new) = diffed(&change);
                for (key, slice) in old.into_iter().chain(new) {
                    dirty.extend(service_of(key, slice));
                }
            }
            for change in self.from.pods.diff(&state.pods) {
                if let Some(users) = self.services_naming.get(diffed_key(&change)) {
                    dirty.extend(users.iter().cloned());
                }
            }
        } else {
            // A Node's zone moves every endpoint on it; rare enough to
            // recompute all.
            dirty.extend(self.from.services.keys().cloned());
            dirty.extend(state.services.keys().cloned());
        }
        for key in &dirty {
            self.refresh(state, td, key);
        }
        self.from = state.clone();
        dirty.len()
    }

    /// How many endpoints of the cluster's own Services are not offered, by
    /// why: what `meshfed_controller_endpoints_unidentified` shows, so an
    /// endpoint missing from discovery is never a silent mystery.
    pub(crate) fn unidentified(&self) -> BTreeMap<Unidentified, usize> {
        let mut out = BTreeMap::new();
        for counts in self.missing.values() {
            for (why, n) in counts {
                *out.entry(*why).or_default() += n;
            }
        }
        out
    }

    /// Recomputes Service `key`'s part.
    fn refresh(&mut self, state: &ClusterState, td: &TrustDomain, key: &ObjKey) {
        let named_before: Vec<ObjKey> = self
            .from
            .slices_of(key)
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .flatten()
                    .filter_map(move |ep| pod_named(s, ep))
            })
            .collect();
        for pod in named_before {
            if let Some(users) = self.services_naming.get_mut(&pod) {
                users.retain(|k| k != key);
                if users.is_empty() {
                    self.services_naming.remove(&pod);
                }
            }
        }
        let svc = state
            .services
            .get(key)
            .filter(|svc| !is_mirror(svc.metadata.labels.as_ref()));
        let Some(svc) = svc else {
            self.missing.remove(key);
            self.exports.remove(key);
            self.routes.remove(key);
            return;
        };
        let mut missing = BTreeMap::new();
        let mut named = Vec::new();
        for slice in state.slices_of(key) {
            for ep in slice.endpoints.iter().flatten() {
                if let Some(pod) = pod_named(slice, ep) {
                    named.push(pod);
                }
                if let Err(why) = identity_of(state, td, svc, slice, ep) {
                    *missing.entry(why).or_default() += 1;
                }
            }
        }
        for pod in &named {
            let users = self.services_naming.entry(pod.clone()).or_default();
            if !users.contains(key) {
                users.push(key.clone());
            }
        }
        if missing.is_empty() {
            self.missing.remove(key);
        } else {
            self.missing.insert(key.clone(), missing);
        }
        if is_exported(svc) {
            keep_if_changed(&mut self.exports, key, export_of(state, td, key, svc));
            keep_if_changed(&mut self.routes, key, route_of(state, td, key, svc));
        } else {
            self.exports.remove(key);
            self.routes.remove(key);
        }
    }
}

/// Puts `value` in `table` unless an equal one is there: an unchanged entry
/// stays the very one, so the table stays equal by pointer.
fn keep_if_changed<V: PartialEq>(table: &mut Table<ObjKey, Arc<V>>, key: &ObjKey, value: V) {
    if table.get(key).is_none_or(|held| **held != value) {
        table.insert(key.clone(), Arc::new(value));
    }
}

/// The Pod an endpoint's `targetRef` names, if it names one.
fn pod_named(slice: &EndpointSlice, ep: &Endpoint) -> Option<ObjKey> {
    let target = ep.target_ref.as_ref()?;
    if target.kind.as_deref() != Some("Pod") {
        return None;
    }
    let namespace = target
        .namespace
        .as_deref()
        .or(slice.metadata.namespace.as_deref())?;
    Some(ObjKey::new(namespace, target.name.as_deref()?))
}

/// What turns `old` into `new`: the entries added or changed, and the keys
/// removed. Only what the two tables do not share is visited.
pub(crate) fn changes<'a, V: PartialEq + Clone>(
    old: &'a Table<ObjKey, Arc<V>>,
    new: &'a Table<ObjKey, Arc<V>>,
) -> (Vec<V>, Vec<&'a ObjKey>) {
    let (mut upserts, mut removals) = (Vec::new(), Vec::new());
    for change in old.diff(new) {
        match diffed(&change) {
            (_, Some((_, v))) => upserts.push((**v).clone()),
            (old, None) => removals.extend(old.map(|(k, _)| k)),
        }
    }
    (upserts, removals)
}

/// The cluster's exports, as published to peers.
#[cfg(test)]
pub(crate) fn exports(state: &ClusterState, td: &TrustDomain) -> ExportSet {
    Derived::of(state, td).exports
}

/// The gateway's routes: every port of every exported service, with the
/// local endpoints behind it.
#[cfg(test)]
pub(crate) fn routes(state: &ClusterState, td: &TrustDomain) -> RouteSet {
    Derived::of(state, td).routes
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
            Derived::of(&state, &td()).unidentified(),
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

    /// Kept up to date step by step, the derived sets equal those derived
    /// from each state afresh, and a step recomputes only the Services it
    /// touched.
    #[test]
    fn derived_step_by_step_equals_derived_afresh() {
        let td = td();
        let mut state = ClusterState::default();
        for i in 0..50 {
            let name = format!("s{i}");
            state.services.insert(
                ObjKey::new("shop", &name),
                service("shop", &name, &[("http", 80)], i % 5 != 0).into(),
            );
            let ip = |k: usize| format!("10.0.{i}.{k}");
            let (pods, s) = pods_and_slice(
                "shop",
                &name,
                &name,
                &[("http", 8080)],
                &[(&ip(1), Some("z1"), true), (&ip(2), None, i % 3 == 0)],
            );
            add_workload(&mut state, &pods, s);
        }
        state.node_zones.insert("node-none".into(), "z9".into());
        let mut derived = Derived::default();
        assert_eq!(derived.update(&state, &td), 50);
        let same = |derived: &Derived, state: &ClusterState| {
            let fresh = Derived::of(state, &td);
            assert_eq!(derived.exports, fresh.exports);
            assert_eq!(derived.routes, fresh.routes);
            assert_eq!(derived.unidentified(), fresh.unidentified());
        };
        same(&derived, &state);
        let before = derived.exports.clone();
        assert_eq!(derived.update(&state, &td), 0, "nothing changed");
        assert!(
            derived.exports.ptr_eq(&before),
            "an unchanged set is the same set"
        );

        // A Pod goes: the one Service naming it loses an endpoint.
        let pod_of_s7 = state
            .slices_of(&ObjKey::new("shop", "s7"))
            .flat_map(|s| s.endpoints.iter().flatten())
            .find_map(|ep| ep.target_ref.as_ref()?.name.clone())
            .expect("a pod");
        state.pods.remove(&ObjKey::new("shop", &pod_of_s7));
        assert_eq!(derived.update(&state, &td), 1);
        same(&derived, &state);
        assert!(matches!(
            derived.unidentified().get(&Unidentified::PodUnknown),
            Some(1)
        ));

        // An endpoint turns not ready; a slice moves to another Service.
        let key = ObjKey::new("shop", "s8-abcde");
        let slice = state
            .slices
            .get_mut(&key)
            .map(Arc::make_mut)
            .expect("slice");
        for ep in slice.endpoints.iter_mut().flatten() {
            ep.conditions.get_or_insert_default().ready = Some(false);
        }
        assert_eq!(derived.update(&state, &td), 1);
        same(&derived, &state);
        let slice = state
            .slices
            .get_mut(&key)
            .map(Arc::make_mut)
            .expect("slice");
        slice
            .metadata
            .labels
            .get_or_insert_default()
            .insert(labels::SERVICE_NAME.into(), "s9".into());
        assert_eq!(derived.update(&state, &td), 2, "s8 and s9");
        same(&derived, &state);
        // A Pod of the moved slice goes: only s9 names it now.
        state.pods.remove(&ObjKey::new("shop", "s8-0"));
        assert_eq!(derived.update(&state, &td), 1, "s9 alone");
        same(&derived, &state);

        // Unexported, removed, relabelled a mirror.
        let svc = state
            .services
            .get_mut(&ObjKey::new("shop", "s11"))
            .map(Arc::make_mut);
        svc.expect("s11").metadata.labels = None;
        state.services.remove(&ObjKey::new("shop", "s12"));
        let svc = state
            .services
            .get_mut(&ObjKey::new("shop", "s13"))
            .map(Arc::make_mut);
        svc.expect("s13")
            .metadata
            .labels
            .get_or_insert_default()
            .insert(labels::ORIGIN_CLUSTER.into(), "west".into());
        assert_eq!(derived.update(&state, &td), 3);
        same(&derived, &state);
        assert!(!derived.exports.contains_key(&ObjKey::new("shop", "s13")));

        // A Node's zone changes: every endpoint on it may move.
        state.node_zones.insert("node-none".into(), "z8".into());
        derived.update(&state, &td);
        same(&derived, &state);
    }

    #[test]
    fn finished_pods_and_unset_service_accounts_follow_kubernetes() {
        assert_eq!(PodAccount::new(None, None, Some("Succeeded")), None);
        assert_eq!(PodAccount::new(None, None, Some("Failed")), None);
        let pending = PodAccount::new(Some("u".into()), None, Some("Pending")).expect("serves");
        assert_eq!(pending.service_account, "default");
    }
}
