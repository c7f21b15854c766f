//! Builders of the objects a cluster holds, shaped as Kubernetes writes
//! them: Services, EndpointSlices as the endpoint-slice controller writes
//! them (each endpoint with its Pod's `targetRef`, `nodeName` and zone),
//! Pods with their status, Links and FailoverPolicies. `meshctl dev` and
//! the scenarios write a local cluster's objects with them, and tests build
//! theirs the same way, so the local mode holds what a real cluster would.

use std::collections::BTreeMap;

use crate::crd::{FailoverPolicy, FailoverPolicySpec, GatewaySpec, Link, LinkSpec, ProbeSpec};
use k8s_openapi::api::core::v1::{
    Container, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_api::labels;

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectMeta::default()
    }
}

/// A Service with named TCP ports, exported or not.
pub fn service(namespace: &str, name: &str, ports: &[(&str, u16)], exported: bool) -> Service {
    let mut metadata = meta(namespace, name);
    if exported {
        metadata.labels = Some(BTreeMap::from([(labels::EXPORTED.into(), "true".into())]));
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some((*n).into()),
                        port: i32::from(*p),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// An empty IPv4 EndpointSlice of Service `service`, with named target
/// ports, labelled as the endpoint-slice controller labels its slices.
pub fn slice(namespace: &str, service: &str, name: &str, ports: &[(&str, u16)]) -> EndpointSlice {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([
        (labels::SERVICE_NAME.into(), service.into()),
        (
            labels::MANAGED_BY.into(),
            "endpointslice-controller.k8s.io".into(),
        ),
    ]));
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: Some(Vec::new()),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some((*n).into()),
                    port: Some(i32::from(*p)),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

/// A running Pod at `ip` on `node`, running as `service_account`, as the API
/// server holds it once scheduled and started (a uid of its own).
pub fn pod(namespace: &str, name: &str, service_account: &str, ip: &str, node: &str) -> Pod {
    let mut metadata = meta(namespace, name);
    let mut uid: [u8; 16] = rand::random();
    // A version-4 UUID, as the API server assigns.
    uid[6] = (uid[6] & 0x0f) | 0x40;
    uid[8] = (uid[8] & 0x3f) | 0x80;
    let hex: String = uid.iter().map(|b| format!("{b:02x}")).collect();
    metadata.uid = Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ));
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(format!("example.test/{name}:1")),
                ..Container::default()
            }],
            service_account_name: Some(service_account.into()),
            node_name: Some(node.into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            pod_ips: Some(vec![PodIP { ip: ip.into() }]),
            ..PodStatus::default()
        }),
    }
}

/// Adds the endpoint the endpoint-slice controller writes for `pod`: its IP,
/// its conditions, its node and zone, and a `targetRef` naming it — the
/// reference the controller follows to the Pod's service account.
pub fn add_pod_endpoint(slice: &mut EndpointSlice, pod: &Pod, zone: Option<&str>, ready: bool) {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    slice.endpoints.get_or_insert_default().push(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        zone: zone.map(Into::into),
        ..Endpoint::default()
    });
}

/// Adds an endpoint that is not a Pod (a VM or a host, in a slice written by
/// hand): no `targetRef`, so who it serves as must be named by the
/// `meshfed.io/identity` annotation of its slice or Service.
pub fn add_host_endpoint(slice: &mut EndpointSlice, ip: &str, zone: Option<&str>, ready: bool) {
    slice.endpoints.get_or_insert_default().push(Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            ..EndpointConditions::default()
        }),
        zone: zone.map(Into::into),
        ..Endpoint::default()
    });
}

/// Pods and the slice of Service `service` the endpoint-slice controller
/// would write for them: one Pod per `(ip, zone, ready)`, named
/// `{service}-{i}`, all running as `service_account`.
pub fn pods_and_slice(
    namespace: &str,
    service: &str,
    service_account: &str,
    ports: &[(&str, u16)],
    endpoints: &[(&str, Option<&str>, bool)],
) -> (Vec<Pod>, EndpointSlice) {
    let mut slice = self::slice(namespace, service, &format!("{service}-abcde"), ports);
    let pods: Vec<Pod> = endpoints
        .iter()
        .enumerate()
        .map(|(i, (ip, zone, ready))| {
            let node = format!("node-{}", zone.unwrap_or("none"));
            let p = pod(
                namespace,
                &format!("{service}-{i}"),
                service_account,
                ip,
                &node,
            );
            add_pod_endpoint(&mut slice, &p, *zone, *ready);
            p
        })
        .collect();
    (pods, slice)
}

/// A Link to `cluster` whose gateway listens on `addresses`:`port`.
pub fn link(
    namespace: &str,
    cluster: &str,
    addresses: &[&str],
    port: u16,
    gateway_identity: &str,
    controller_identity: &str,
) -> Link {
    let mut link = Link::new(
        cluster,
        LinkSpec {
            cluster: cluster.into(),
            region: None,
            gateway: GatewaySpec {
                addresses: addresses.iter().map(|a| (*a).into()).collect(),
                port,
                identity: gateway_identity.into(),
                controller_identity: controller_identity.into(),
                resolve_period_seconds: 30,
            },
            probe: ProbeSpec::default(),
            lease_ttl_seconds: 5,
            control_plane_grace_seconds: crate::crd::DEFAULT_CONTROL_PLANE_GRACE_SECONDS,
            selector: None,
        },
    );
    link.metadata.namespace = Some(namespace.into());
    link
}

/// A FailoverPolicy for `service` with the defaults.
pub fn policy(namespace: &str, name: &str, service: &str) -> FailoverPolicy {
    let mut p = FailoverPolicy::new(
        name,
        FailoverPolicySpec {
            service: service.into(),
            locality: None,
            clusters: None,
            spill_threshold: 0.7,
            outlier_detection: Default::default(),
            failback: Default::default(),
            retry_budget: Default::default(),
            consistent_hash: None,
        },
    );
    p.metadata.namespace = Some(namespace.into());
    p
}
