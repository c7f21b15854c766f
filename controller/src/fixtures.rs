//! Test helpers of the controller's own unit tests: the object builders of
//! `meshfed_resources::objects`, and what a peer exports or a store holds.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshfed_api::federation::{self, ExportedService, ZoneEndpoints};
pub use meshfed_resources::objects::*;

use crate::store::{ClusterState, ObjKey, PodAccount};

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

/// Adds Pods and their slice to `state`, as either store would hold them.
pub fn add_workload(state: &mut ClusterState, pods: &[Pod], slice: EndpointSlice) {
    for p in pods {
        let key = ObjKey::new(
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        if let Some(account) = PodAccount::of(p) {
            state.pods.insert(key, account);
        }
    }
    let key = ObjKey::new(
        slice.metadata.namespace.clone().unwrap_or_default(),
        slice.metadata.name.clone().unwrap_or_default(),
    );
    state.slices.insert(key, slice.into());
}
