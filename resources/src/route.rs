//! The Gateway API's HTTPRoute (`gateway.networking.k8s.io/v1`), the
//! Kubernetes standard for mesh routing (GAMMA: an HTTPRoute whose parent is
//! a Service). Spec and status are the maintained `gateway-api` crate's
//! types, of its experimental channel: a superset of the standard one, so
//! every field either channel defines is seen — and refused when Meshfed
//! does not support it — rather than dropped by the parse.
//!
//! The crate's own root type implements an older kube's `Resource`; the
//! root here is the same object for this workspace's kube.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A Gateway API duration (GEP-2257: `10s`, `1h30m`, `500ms`).
pub use gateway_api::Duration as RouteDuration;
pub use gateway_api::experimental::httproutes::*;
/// The condition and time types of the route's status (the `gateway-api`
/// crate's Kubernetes types, a version apart from this workspace's).
pub use k8s_openapi_028::apimachinery::pkg::apis::meta::v1::{
    Condition as RouteCondition, Time as RouteTime,
};
pub use k8s_openapi_028::jiff::Timestamp as RouteTimestamp;

/// The Gateway API's group.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// HTTPRoute's version.
pub const VERSION: &str = "v1";
/// HTTPRoute's kind.
pub const KIND: &str = "HTTPRoute";
/// HTTPRoute's resource (plural).
pub const PLURAL: &str = "httproutes";
/// The name Meshfed's controller writes its entries of `status.parents`
/// under (a domain-prefixed path, as the Gateway API requires).
pub const CONTROLLER_NAME: &str = "meshfed.io/mesh-controller";

/// Route condition types and reasons, as the Gateway API names them.
pub mod condition {
    /// Whether the route is accepted by its parent.
    pub const ACCEPTED: &str = "Accepted";
    /// Whether every reference of the route resolves.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// `Accepted=True`.
    pub const REASON_ACCEPTED: &str = "Accepted";
    /// `Accepted=False`: a field or value the implementation does not support.
    pub const REASON_UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    /// `Accepted=False`: the parent the route names does not exist.
    pub const REASON_NO_MATCHING_PARENT: &str = "NoMatchingParent";
    /// `ResolvedRefs=True`.
    pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
    /// `ResolvedRefs=False`: a backend names a Service that does not exist.
    pub const REASON_BACKEND_NOT_FOUND: &str = "BackendNotFound";
    /// `ResolvedRefs=False`: a backend of a kind other than Service.
    pub const REASON_INVALID_KIND: &str = "InvalidKind";
    /// `ResolvedRefs=False`: a backend in another namespace, which no
    /// ReferenceGrant allows.
    pub const REASON_REF_NOT_PERMITTED: &str = "RefNotPermitted";
}

/// Whether a reference of `group`/`kind` names a core Service; absent
/// fields take the Gateway API's defaults: `default_kind` (`Gateway` for a
/// parentRef, `Service` for a backendRef) in its default group (the
/// Gateway API's for a parent, core for a backend). `core` is accepted for
/// the empty group, as the GAMMA documentation writes it.
pub fn is_service_ref(group: Option<&str>, kind: Option<&str>, default_kind: &str) -> bool {
    let group = group.unwrap_or(if default_kind == "Service" { "" } else { GROUP });
    let core = group.is_empty() || group.eq_ignore_ascii_case("core");
    core && kind.unwrap_or(default_kind) == "Service"
}

/// The share of matched requests a `RequestMirror` copies, as
/// `(numerator, denominator)`: its `fraction` (denominator 100 when left
/// out), its `percent`, or all of them.
pub fn mirror_fraction(m: &HttpRouteRulesFiltersRequestMirror) -> (u32, u32) {
    let (n, d) = match (&m.fraction, m.percent) {
        (Some(f), _) => (f.numerator, f.denominator.unwrap_or(100)),
        (None, Some(p)) => (p, 100),
        (None, None) => (100, 100),
    };
    (
        u32::try_from(n).unwrap_or(0),
        u32::try_from(d).unwrap_or(1).max(1),
    )
}

/// An HTTPRoute as the API server holds it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// `gateway.networking.k8s.io/v1`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// `HTTPRoute`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What the route asks.
    pub spec: HttpRouteSpec,
    /// What its parents' controllers report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<HttpRouteStatus>,
}

fn api_version() -> String {
    format!("{GROUP}/{VERSION}")
}

fn kind() -> String {
    KIND.to_owned()
}

impl HttpRoute {
    /// A route with `spec`, named `namespace/name`.
    pub fn new(namespace: &str, name: &str, spec: HttpRouteSpec) -> Self {
        Self {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                namespace: Some(namespace.to_owned()),
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

/// The HTTPRoute CRD, for clusters without the Gateway API: generated
/// from the `gateway-api` crate's standard-channel types (Gateway API
/// v1.5.1), serving `v1`. It has the fields and types of the Gateway API's
/// own, but not its CEL validation rules nor its defaults: the controller
/// applies both to every route itself. Clusters that may run other Gateway
/// API implementations should install the Gateway API's own CRDs instead.
pub fn crd() -> serde_json::Value {
    use kube_4::CustomResourceExt;
    let crd = gateway_api::httproutes::HttpRoute::crd();
    serde_json::to_value(crd).expect("a CRD serializes")
}

impl kube::Resource for HttpRoute {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of the Gateway API's GAMMA documentation: a route whose
    /// parent is a Service, a header match to v2, a weighted split otherwise.
    #[test]
    fn a_gamma_route_parses_with_its_service_parent() {
        let text = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: api-split
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: api
    port: 80
  rules:
  - matches:
    - headers:
      - name: x-canary
        value: "1"
    backendRefs:
    - name: api-v2
      port: 80
  - backendRefs:
    - name: api
      port: 80
      weight: 90
    - name: api-west
      port: 80
      weight: 10
    timeouts:
      request: 10s
"#;
        let route: HttpRoute = serde_saphyr::from_str(text).expect("parses");
        assert_eq!(route.kind, "HTTPRoute");
        let parent = &route.spec.parent_refs.as_ref().expect("parents")[0];
        assert_eq!(parent.kind.as_deref(), Some("Service"));
        let rules = route.spec.rules.as_ref().expect("rules");
        let split = rules[1].backend_refs.as_ref().expect("backends");
        assert_eq!(split[1].weight, Some(10));
        let timeouts = rules[1].timeouts.as_ref().expect("timeouts");
        assert_eq!(timeouts.request.as_deref(), Some("10s"));
        let back: HttpRoute = serde_json::from_value(serde_json::to_value(&route).expect("json"))
            .expect("round trip");
        assert_eq!(back, route);
    }
}
