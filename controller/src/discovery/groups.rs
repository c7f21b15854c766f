//! Building a service's endpoint set in failover order from the world.
//!
//! Groups, highest priority first:
//! 1. the caller's zone in this cluster;
//! 2. the other zones of this cluster (one group);
//! 3. remote clusters, one group each, alive ones only: in the policy's
//!    `clusters` order (unlisted clusters are left out), or sorted by the
//!    policy's `locality` keys (default `[region]`: same region first), then
//!    probe latency p50 (whole milliseconds), then cluster name.
//!
//! Spill thresholds: with a FailoverPolicy, its `spillThreshold` on every
//! group. Without one, 0.7 between local zones and a barrier (0) after the
//! last local group — remote clusters get traffic only when this cluster has
//! no healthy endpoint — then 0.7 between remote clusters.
//! A mirror (`<name>-<cluster>`) resolves to that one cluster's group.

use std::cmp::Reverse;

use meshfed_api::discovery::{Endpoint, EndpointSet, Locality, Policy, PriorityGroup};
use meshfed_api::federation::ExportedService;
use meshfed_api::labels;
use meshfed_api::priority::{GroupHealth, shares};
use meshfed_resources::crd::{FailoverPolicySpec, LocalityKey};
use meshfed_trust::TrustDomain;

use crate::httproute::rules_for;
use crate::local;
use crate::mirrors::imported;
use crate::store::ObjKey;
use crate::validate::validate_failover_policy;
use crate::world::{PeerState, World};

/// Spill threshold when no policy says otherwise.
pub(crate) const DEFAULT_SPILL: f64 = 0.7;

/// Who this controller is.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    /// The cluster's name.
    pub name: String,
    /// Its region, if known.
    pub region: Option<String>,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
}

/// One subscription: a service port and where the caller runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) key: ObjKey,
    pub(crate) port: u16,
    pub(crate) caller_zone: String,
}

/// The endpoint set for `q` (revision left at 0 for the caller to set).
pub(crate) fn endpoint_set(world: &World, me: &LocalCluster, q: &Query) -> EndpointSet {
    let policy = policy_for(world, &q.key);
    let wire_policy = wire_policy(policy);
    let svc = world.local.services.get(&q.key);
    let mirror_of = svc.and_then(|s| {
        let l = s.metadata.labels.as_ref()?;
        Some((
            l.get(labels::ORIGIN_CLUSTER)?,
            l.get(labels::ORIGIN_SERVICE)?,
        ))
    });
    let mut groups = Vec::new();
    let mut exists = false;
    if let Some((cluster, origin)) = mirror_of {
        let origin_key = ObjKey::new(&q.key.namespace, origin);
        for peer in world.peers.values().filter(|p| &p.spec.cluster == cluster) {
            if let Some(svc) = imported(peer, &origin_key) {
                exists |= has_port(svc, q.port);
                if let Some(g) = remote_group(me, peer, svc, q) {
                    groups.push(g);
                }
            }
        }
        set_thresholds(&mut groups, policy.map(|p| p.spill_threshold));
        set_shares(&mut groups);
        return EndpointSet {
            exists,
            groups,
            policy: Some(wire_policy),
            revision: 0,
            routes: rules_for(&world.local, &q.key, q.port),
        };
    }
    if let Some(svc) = svc
        && local::service_port(svc, q.port).is_some()
    {
        exists = true;
        let eps = local::endpoints(&world.local, &me.trust_domain, &q.key, q.port);
        let (same, other): (Vec<_>, Vec<_>) = eps
            .into_iter()
            .partition(|e| !q.caller_zone.is_empty() && e.zone.as_deref() == Some(&q.caller_zone));
        if !same.is_empty() {
            groups.push(local_group(me, &q.caller_zone, same));
        }
        if !other.is_empty() {
            groups.push(local_group(me, "", other));
        }
    }
    let local_groups = groups.len();
    let mut remote: Vec<(&PeerState, PriorityGroup)> = Vec::new();
    for peer in world.peers.values() {
        let Some(svc) = imported(peer, &q.key) else {
            continue;
        };
        exists |= has_port(svc, q.port);
        if let Some(g) = remote_group(me, peer, svc, q) {
            remote.push((peer, g));
        }
    }
    order_remote(&mut remote, me, policy, &q.caller_zone);
    groups.extend(remote.into_iter().map(|(_, g)| g));
    set_thresholds(&mut groups, policy.map(|p| p.spill_threshold));
    if policy.is_none() && local_groups > 0 {
        groups[local_groups - 1].spill_threshold = 0.0;
    }
    set_shares(&mut groups);
    EndpointSet {
        exists,
        groups,
        policy: Some(wire_policy),
        revision: 0,
        routes: rules_for(&world.local, &q.key, q.port),
    }
}

/// The valid FailoverPolicy for a service, the first by name if several.
fn policy_for<'a>(world: &'a World, key: &ObjKey) -> Option<&'a FailoverPolicySpec> {
    world
        .local
        .policies
        .iter()
        .filter(|(k, p)| k.namespace == key.namespace && *p.spec.service == *key.name)
        .find(|(_, p)| validate_failover_policy(&p.spec).is_ok())
        .map(|(_, p)| &p.spec)
}

fn wire_policy(p: Option<&FailoverPolicySpec>) -> Policy {
    let (od, fb, rb) = match p {
        Some(p) => (
            p.outlier_detection.clone(),
            p.failback.clone(),
            p.retry_budget.clone(),
        ),
        None => Default::default(),
    };
    let ms = |s: u32| s.saturating_mul(1000);
    let hash = p.and_then(|p| p.consistent_hash.as_ref());
    Policy {
        spill_threshold: p.map_or(DEFAULT_SPILL, |p| p.spill_threshold),
        consecutive_failures: od.consecutive_failures,
        ejection_time_ms: ms(od.ejection_time_seconds),
        max_ejected_percent: od.max_ejected_percent,
        failback_hold_ms: ms(fb.hold_seconds),
        retry_budget_percent: rb.percent,
        min_retries_per_second: rb.min_retries_per_second,
        hash_header: hash.and_then(|h| h.header.clone()).unwrap_or_default(),
        hash_cookie: hash.and_then(|h| h.cookie.clone()).unwrap_or_default(),
    }
}

fn has_port(svc: &ExportedService, port: u16) -> bool {
    svc.ports.iter().any(|p| p.port == u32::from(port))
}

fn local_group(me: &LocalCluster, zone: &str, eps: Vec<local::LocalEndpoint>) -> PriorityGroup {
    let healthy = eps.iter().filter(|e| e.ready).count();
    let total = eps.len();
    PriorityGroup {
        locality: Some(Locality {
            cluster: me.name.clone(),
            region: me.region.clone().unwrap_or_default(),
            zone: zone.to_owned(),
        }),
        remote: false,
        healthy: u32::try_from(healthy).unwrap_or(u32::MAX),
        total: u32::try_from(total).unwrap_or(u32::MAX),
        endpoints: eps
            .into_iter()
            .map(|e| Endpoint {
                address: e.address.to_string(),
                weight: 1,
                identities: vec![e.identity],
                locality: Some(Locality {
                    cluster: me.name.clone(),
                    region: me.region.clone().unwrap_or_default(),
                    zone: e.zone.unwrap_or_default(),
                }),
                ready: e.ready,
                sni: String::new(),
            })
            .collect(),
        spill_threshold: DEFAULT_SPILL,
        load_permille: 0,
    }
}

/// A remote cluster's group, if the cluster is alive and exports the port.
fn remote_group(
    me: &LocalCluster,
    peer: &PeerState,
    svc: &ExportedService,
    q: &Query,
) -> Option<PriorityGroup> {
    if !peer.alive() || !has_port(svc, q.port) {
        return None;
    }
    let healthy: u32 = svc.zones.iter().map(|z| z.ready).sum();
    let total: u32 = svc.zones.iter().map(|z| z.total).sum();
    let locality = Locality {
        cluster: peer.spec.cluster.clone(),
        region: peer.spec.region.clone().unwrap_or_default(),
        zone: String::new(),
    };
    // Naming this cluster lets the remote gateway count connections by caller.
    let sni = meshfed_api::sni::service_from(&svc.name, &svc.namespace, q.port, &me.name);
    Some(PriorityGroup {
        locality: Some(locality.clone()),
        remote: true,
        healthy,
        total,
        endpoints: peer
            .gateways
            .iter()
            .map(|g| Endpoint {
                address: g.to_string(),
                weight: healthy.max(1),
                identities: svc.identities.clone(),
                locality: Some(locality.clone()),
                ready: healthy > 0,
                sni: sni.clone(),
            })
            .collect(),
        spill_threshold: DEFAULT_SPILL,
        load_permille: 0,
    })
}

fn order_remote(
    remote: &mut Vec<(&PeerState, PriorityGroup)>,
    me: &LocalCluster,
    policy: Option<&FailoverPolicySpec>,
    caller_zone: &str,
) {
    if let Some(order) = policy.and_then(|p| p.clusters.as_ref()) {
        remote.retain(|(p, _)| order.contains(&p.spec.cluster));
        remote.sort_by_key(|(p, _)| order.iter().position(|c| *c == p.spec.cluster));
        return;
    }
    let keys = policy
        .and_then(|p| p.locality.clone())
        .unwrap_or_else(|| vec![LocalityKey::Region]);
    remote.sort_by_cached_key(|(p, _)| {
        let matches: Vec<Reverse<bool>> = keys
            .iter()
            .map(|k| {
                Reverse(match k {
                    LocalityKey::Region => me.region.is_some() && p.spec.region == me.region,
                    LocalityKey::Zone => {
                        !caller_zone.is_empty()
                            && p.imports.iter().flat_map(|s| s.values()).any(|s| {
                                s.zones.iter().any(|z| z.zone == caller_zone && z.ready > 0)
                            })
                    }
                })
            })
            .collect();
        let latency_ms = p.latency.map_or(u128::MAX, |(p50, _)| p50.as_millis());
        (matches, latency_ms, p.spec.cluster.clone())
    });
}

/// Sets every group's threshold: the policy's, or the default.
fn set_thresholds(groups: &mut [PriorityGroup], spill: Option<f64>) {
    for g in groups.iter_mut() {
        g.spill_threshold = spill.unwrap_or(DEFAULT_SPILL);
    }
}

fn set_shares(groups: &mut [PriorityGroup]) {
    let health: Vec<GroupHealth> = groups
        .iter()
        .map(|g| GroupHealth {
            healthy: g.healthy,
            total: g.total,
            spill_threshold: g.spill_threshold,
        })
        .collect();
    for (g, s) in groups.iter_mut().zip(shares(&health)) {
        g.load_permille = s;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::fixtures;
    use crate::store::ClusterState;
    use crate::world::PeerState;

    fn me() -> LocalCluster {
        LocalCluster {
            name: "east".into(),
            region: Some("eu".into()),
            trust_domain: TrustDomain::new("mesh.test").expect("td"),
        }
    }

    fn query(zone: &str) -> Query {
        Query {
            key: ObjKey::new("shop", "api"),
            port: 80,
            caller_zone: zone.into(),
        }
    }

    /// East serves api from zones a (ready, not ready) and b (ready).
    fn local() -> ClusterState {
        let mut s = ClusterState::default();
        s.services.insert(
            ObjKey::new("shop", "api"),
            fixtures::service("shop", "api", &[("http", 80)], true).into(),
        );
        let (pods, slice) = fixtures::pods_and_slice(
            "shop",
            "api",
            "api",
            &[("http", 8080)],
            &[
                ("10.0.0.1", Some("a"), true),
                ("10.0.0.2", Some("a"), false),
                ("10.0.0.3", Some("b"), true),
            ],
        );
        fixtures::add_workload(&mut s, &pods, slice);
        s
    }

    /// A live peer `cluster` in `region` exporting api with `ready` of 4
    /// endpoints, probed at `latency_ms`.
    fn peer(cluster: &str, region: &str, ready: u32, latency_ms: u64) -> PeerState {
        let link = fixtures::link(
            "meshfed",
            cluster,
            &["127.0.0.9"],
            4443,
            "spiffe://mesh.test/gw",
            "spiffe://mesh.test/c",
        );
        let mut spec = link.spec;
        spec.region = Some(region.into());
        let mut p = PeerState::new(spec);
        p.gateways = vec!["127.0.0.9:4443".parse().expect("addr")];
        let svc = fixtures::exported_api(&format!("{cluster}-1"), ready, 4);
        p.imports = Some(Arc::new(crate::local::ExportSet::unit(
            ObjKey::new("shop", "api"),
            svc.into(),
        )));
        let l = Duration::from_millis(latency_ms);
        p.latency = Some((l, l));
        p
    }

    fn world(local: ClusterState, peers: Vec<PeerState>) -> World {
        let mut w = World::new(Arc::new(local));
        for p in peers {
            w.peers
                .insert(ObjKey::new("meshfed", &p.spec.cluster), Arc::new(p));
        }
        w
    }

    fn clusters(set: &EndpointSet) -> Vec<String> {
        set.groups
            .iter()
            .map(|g| {
                let l = g.locality.as_ref().expect("locality");
                if g.remote {
                    l.cluster.clone()
                } else {
                    format!("local:{}", l.zone)
                }
            })
            .collect()
    }

    fn loads(set: &EndpointSet) -> Vec<u32> {
        set.groups.iter().map(|g| g.load_permille).collect()
    }

    fn thresholds(set: &EndpointSet) -> Vec<f64> {
        set.groups.iter().map(|g| g.spill_threshold).collect()
    }

    fn with_policy(
        mut local: ClusterState,
        f: impl FnOnce(&mut FailoverPolicySpec),
    ) -> ClusterState {
        let mut p = fixtures::policy("shop", "api-failover", "api");
        f(&mut p.spec);
        local
            .policies
            .insert(ObjKey::new("shop", "api-failover"), p);
        local
    }

    #[test]
    fn default_order_is_zone_then_cluster_then_region_then_latency() {
        let w = world(
            local(),
            vec![
                peer("far", "us", 4, 1),
                peer("slow", "eu", 4, 30),
                peer("near", "eu", 4, 2),
            ],
        );
        let set = endpoint_set(&w, &me(), &query("a"));
        assert!(set.exists);
        assert_eq!(clusters(&set), ["local:a", "local:", "near", "slow", "far"]);
        // Zone a is half healthy: 0.5/0.7 stays, the rest goes to zone b, the
        // barrier keeps it all in this cluster.
        assert_eq!(loads(&set), [714, 286, 0, 0, 0]);
        assert_eq!(thresholds(&set), [0.7, 0.0, 0.7, 0.7, 0.7]);
        let remote = &set.groups[2].endpoints[0];
        assert_eq!(remote.sni, "api.shop.80.east.svc.meshfed.local");
        assert_eq!(remote.address, "127.0.0.9:4443");
        assert_eq!(set.groups[0].endpoints[0].address, "10.0.0.1:8080");
    }

    #[test]
    fn without_a_policy_remote_takes_over_only_when_nothing_local_is_healthy() {
        let mut l = local();
        let keys: Vec<_> = l.slices.keys().cloned().collect();
        for k in &keys {
            let Some(s) = l.slices.get_mut(k).map(Arc::make_mut) else {
                continue;
            };
            for ep in s.endpoints.iter_mut().flatten() {
                ep.conditions.get_or_insert_default().ready = Some(false);
            }
        }
        let w = world(l, vec![peer("near", "eu", 4, 2)]);
        let set = endpoint_set(&w, &me(), &query("a"));
        assert_eq!(loads(&set), [0, 0, 1000]);
    }

    #[test]
    fn a_policy_spills_to_remote_below_its_threshold() {
        let l = with_policy(local(), |p| p.spill_threshold = 0.8);
        let w = world(l, vec![peer("near", "eu", 4, 2)]);
        let set = endpoint_set(&w, &me(), &query("a"));
        assert_eq!(thresholds(&set), [0.8, 0.8, 0.8]);
        // a: 1/2 healthy -> 625 stays; b: fully healthy takes the remaining 375.
        assert_eq!(loads(&set), [625, 375, 0]);
        assert_eq!(set.policy.as_ref().map(|p| p.spill_threshold), Some(0.8));
        // The caller in zone b: b fully healthy keeps it all.
        let set = endpoint_set(&w, &me(), &query("b"));
        assert_eq!(clusters(&set), ["local:b", "local:", "near"]);
        assert_eq!(loads(&set), [1000, 0, 0]);
    }

    #[test]
    fn explicit_cluster_order_wins_and_leaves_out_the_rest() {
        let l = with_policy(local(), |p| {
            p.clusters = Some(vec!["far".into(), "slow".into()])
        });
        let w = world(
            l,
            vec![
                peer("far", "us", 4, 1),
                peer("slow", "eu", 4, 30),
                peer("near", "eu", 4, 2),
            ],
        );
        let set = endpoint_set(&w, &me(), &query("a"));
        assert_eq!(clusters(&set), ["local:a", "local:", "far", "slow"]);
    }

    #[test]
    fn locality_keys_order_remote_clusters() {
        // zone first: the cluster with ready endpoints in the caller's zone name leads.
        let l = with_policy(local(), |p| {
            p.locality = Some(vec![LocalityKey::Zone, LocalityKey::Region])
        });
        let w = world(l, vec![peer("near", "eu", 4, 2), peer("a", "us", 4, 50)]);
        // Peer "a" exports from zone "a-1"; the caller sits in "a-1".
        let set = endpoint_set(
            &w,
            &me(),
            &Query {
                caller_zone: "a-1".into(),
                ..query("")
            },
        );
        assert_eq!(clusters(&set), ["local:", "a", "near"]);
    }

    #[test]
    fn dead_clusters_are_withdrawn_and_unhealthy_ones_spill() {
        let mut dead = peer("dead", "eu", 4, 1);
        dead.lease_alive = false;
        let mut gone_probe = peer("noprobe", "eu", 4, 1);
        gone_probe.probe_alive = false;
        let w = world(
            ClusterState::default(),
            vec![
                dead,
                gone_probe,
                peer("half", "eu", 1, 2),
                peer("full", "eu", 4, 3),
            ],
        );
        let set = endpoint_set(&w, &me(), &query("a"));
        assert!(set.exists, "known through the remote clusters");
        assert_eq!(clusters(&set), ["half", "full"]);
        // half: 1/4 healthy -> 1000 * 0.25 / 0.7 = 357.
        assert_eq!(loads(&set), [357, 643]);
    }

    #[test]
    fn unknown_services_and_ports_do_not_exist() {
        let w = world(local(), vec![]);
        assert!(
            !endpoint_set(
                &w,
                &me(),
                &Query {
                    port: 81,
                    ..query("a")
                }
            )
            .exists
        );
        let q = Query {
            key: ObjKey::new("shop", "nope"),
            ..query("a")
        };
        let set = endpoint_set(&w, &me(), &q);
        assert!(!set.exists && set.groups.is_empty());
    }

    #[test]
    fn a_mirror_resolves_to_its_cluster_only() {
        let mut l = local();
        let mut m = fixtures::service("shop", "api-near", &[("http", 80)], false);
        m.metadata.labels = Some(
            [
                (labels::ORIGIN_CLUSTER.to_owned(), "near".to_owned()),
                (labels::ORIGIN_SERVICE.to_owned(), "api".to_owned()),
            ]
            .into(),
        );
        l.services.insert(ObjKey::new("shop", "api-near"), m.into());
        let w = world(l, vec![peer("near", "eu", 4, 2), peer("other", "eu", 4, 1)]);
        let q = Query {
            key: ObjKey::new("shop", "api-near"),
            ..query("a")
        };
        let set = endpoint_set(&w, &me(), &q);
        assert_eq!(clusters(&set), ["near"]);
        assert_eq!(loads(&set), [1000]);
    }
}
