//! Labels and annotations Meshfed reads and writes, all under `meshfed.io/`.

/// On a Service: `"true"` exports it to linked clusters.
pub const EXPORTED: &str = "meshfed.io/exported";

/// On a mirror: the cluster the mirrored service lives in.
pub const ORIGIN_CLUSTER: &str = "meshfed.io/origin-cluster";

/// On a mirror: the name of the `Link` it was imported through.
pub const LINK: &str = "meshfed.io/link";

/// On a mirror: the name of the service in its origin cluster.
pub const ORIGIN_SERVICE: &str = "meshfed.io/origin-service";

/// On an EndpointSlice (or its Service): the SPIFFE ID its endpoints that are
/// not Pods (VMs, hosts; no `targetRef`) serve as. An endpoint of a Pod always
/// serves as the Pod's service account; this never overrides that.
pub const IDENTITY: &str = "meshfed.io/identity";

/// Kubernetes' label tying an EndpointSlice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Kubernetes' label naming who manages an EndpointSlice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// Kubernetes' well-known zone label on Nodes.
pub const ZONE: &str = "topology.kubernetes.io/zone";

/// Meshfed's value for [`MANAGED_BY`] and its server-side-apply field manager.
pub const CONTROLLER: &str = "meshfed-controller";

/// Whether `labels` mark a Service exported.
pub fn is_exported(labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(EXPORTED))
        .is_some_and(|v| v == "true")
}
