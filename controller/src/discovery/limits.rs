//! The rate limits of one pod: every accepted RateLimitPolicy whose Service
//! lists the pod's address among its endpoints, on the port callers dial
//! there (the EndpointSlice's port named as the Service port is, exactly
//! as the gateway and sidecars find an endpoint's port).

use std::net::IpAddr;

use meshfed_api::discovery::{Bucket, PortLimit};
use meshfed_resources::crd::{RateLimitPolicy, TokenBucket};

use crate::local::target_port;
use crate::store::{ClusterState, ObjKey};
use crate::validate::validate_rate_limit_policy;

/// The limits in force on the pod at `ip`, sorted by port, then policy.
pub(crate) fn pod_limits(state: &ClusterState, ip: IpAddr) -> Vec<PortLimit> {
    let mut out = Vec::new();
    for (key, policy) in &state.rate_limits {
        if validate_rate_limit_policy(&policy.spec).is_ok() {
            policy_limits(state, key, policy, ip, &mut out);
        }
    }
    out.sort_by(|a, b| (a.port, &a.policy).cmp(&(b.port, &b.policy)));
    out.dedup();
    out
}

fn policy_limits(
    state: &ClusterState,
    key: &ObjKey,
    policy: &RateLimitPolicy,
    ip: IpAddr,
    out: &mut Vec<PortLimit>,
) {
    let service = key.sibling(&policy.spec.service);
    let Some(svc) = state.services.get(&service) else {
        return;
    };
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    let limited = ports
        .into_iter()
        .flatten()
        .filter(|p| match policy.spec.port {
            Some(port) => p.port == i32::from(port),
            None => true,
        });
    let bucket = |b: &Option<TokenBucket>| {
        b.map(|b| Bucket {
            requests_per_second: b.requests_per_second,
            burst: b.burst_or_rate(),
        })
    };
    for slice in state.slices_of(&service) {
        let lists_pod = slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|ep| &ep.addresses)
            .any(|a| a.parse::<IpAddr>().is_ok_and(|a| a == ip));
        if !lists_pod {
            continue;
        }
        for sp in limited.clone() {
            if let Some(port) = target_port(slice, sp).filter(|p| *p != 0) {
                out.push(PortLimit {
                    port: u32::from(port),
                    policy: key.to_string(),
                    total: bucket(&policy.spec.total),
                    per_caller: bucket(&policy.spec.per_caller),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use std::sync::Arc;

    fn policy(name: &str, spec: &str) -> RateLimitPolicy {
        let doc = format!(
            "apiVersion: meshfed.io/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
        );
        serde_saphyr::from_str(&doc).expect("policy parses")
    }

    /// `api` with ports http 80 → 8080 and admin 9000 → 9090, its pods at
    /// 10.0.0.1 and 10.0.0.2; `web` (port 80 → 8080) at 10.0.0.3.
    fn state() -> ClusterState {
        let mut state = ClusterState::default();
        for (name, ports, targets, pods) in [
            (
                "api",
                vec![("http", 80), ("admin", 9000)],
                vec![("http", 8080), ("admin", 9090)],
                vec![("api-a", "10.0.0.1"), ("api-b", "10.0.0.2")],
            ),
            (
                "web",
                vec![("http", 80)],
                vec![("http", 8080)],
                vec![("web-a", "10.0.0.3")],
            ),
        ] {
            let svc = fixtures::service("shop", name, &ports, false);
            let mut slice = fixtures::slice("shop", name, &format!("{name}-1"), &targets);
            for (pod, ip) in pods {
                let pod = fixtures::pod("shop", pod, name, ip, "node-a");
                fixtures::add_pod_endpoint(&mut slice, &pod, Some("a"), true);
            }
            state
                .services
                .insert(ObjKey::new("shop", name), Arc::new(svc));
            state
                .slices
                .insert(ObjKey::new("shop", format!("{name}-1")), Arc::new(slice));
        }
        state
    }

    fn ports(limits: &[PortLimit]) -> Vec<(u32, &str)> {
        limits.iter().map(|l| (l.port, l.policy.as_str())).collect()
    }

    #[test]
    fn a_policy_reaches_the_target_ports_of_its_services_pods() {
        let mut state = state();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        state.rate_limits.insert(
            ObjKey::new("shop", "all"),
            policy("all", "{service: api, total: {requestsPerSecond: 100}}"),
        );
        state.rate_limits.insert(
            ObjKey::new("shop", "http"),
            policy(
                "http",
                "{service: api, port: 80, perCaller: {requestsPerSecond: 5, burst: 10}}",
            ),
        );
        let limits = pod_limits(&state, ip("10.0.0.2"));
        assert_eq!(
            ports(&limits),
            [(8080, "shop/all"), (8080, "shop/http"), (9090, "shop/all")]
        );
        assert_eq!(
            limits[0].total,
            Some(Bucket {
                requests_per_second: 100,
                burst: 100
            })
        );
        assert_eq!(limits[0].per_caller, None);
        assert_eq!(
            limits[1].per_caller,
            Some(Bucket {
                requests_per_second: 5,
                burst: 10
            })
        );
        // Another Service's pod, an unknown address: nothing.
        assert!(pod_limits(&state, ip("10.0.0.3")).is_empty());
        assert!(pod_limits(&state, ip("10.0.0.9")).is_empty());
    }

    #[test]
    fn refused_or_dangling_policies_limit_nothing() {
        let mut state = state();
        let ip = "10.0.0.1".parse::<IpAddr>().expect("ip");
        state.rate_limits.insert(
            ObjKey::new("shop", "bad"),
            policy("bad", "{service: api, total: {requestsPerSecond: 0}}"),
        );
        state.rate_limits.insert(
            ObjKey::new("shop", "gone"),
            policy("gone", "{service: nosuch, total: {requestsPerSecond: 1}}"),
        );
        state.rate_limits.insert(
            ObjKey::new("shop", "noport"),
            policy(
                "noport",
                "{service: api, port: 81, total: {requestsPerSecond: 1}}",
            ),
        );
        assert!(pod_limits(&state, ip).is_empty());
    }
}
