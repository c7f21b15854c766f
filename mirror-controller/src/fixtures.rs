//! Builders for the objects a cluster store holds, for tests, demos and
//! local mode: the same shapes a person writes into a manifest directory.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_api::crd::{
    FailoverPolicy, FailoverPolicySpec, GatewaySpec, Link, LinkSpec, ProbeSpec,
};
use meshfed_api::federation::{self, ExportedService, ZoneEndpoints};
use meshfed_api::labels;

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..ObjectMeta::default()
    }
}

/// What a peer exports for shop/api: port http/80, `ready` of `total`
/// endpoints in `zone`, served as `spiffe://mesh.test/ns/shop/sa/api`.
pub fn exported_api(zone: &str, ready: u32, total: u32) -> ExportedService {
    ExportedService {
        namespace: "shop".into(),
        name: "api".into(),
        ports: vec![federation::ServicePort {
            name: "http".into(),
            port: 80,
            protocol: "TCP".into(),
            app_protocol: String::new(),
        }],
        zones: vec![ZoneEndpoints {
            zone: zone.into(),
            ready,
            total,
        }],
        identities: vec!["spiffe://mesh.test/ns/shop/sa/api".into()],
        ..ExportedService::default()
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

/// An empty IPv4 EndpointSlice of Service `service`, with named target ports.
pub fn slice(namespace: &str, service: &str, name: &str, ports: &[(&str, u16)]) -> EndpointSlice {
    let mut metadata = meta(namespace, name);
    metadata.labels = Some(BTreeMap::from([(
        labels::SERVICE_NAME.into(),
        service.into(),
    )]));
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

/// Adds one endpoint to a slice.
pub fn add_endpoint(slice: &mut EndpointSlice, ip: &str, zone: Option<&str>, ready: bool) {
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
        },
    );
    p.metadata.namespace = Some(namespace.into());
    p
}
