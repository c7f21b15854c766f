//! `Link`: in the importing cluster, says how to reach one remote cluster's
//! gateway and which of its exports to import.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A link to one remote cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshfed.io",
    version = "v1alpha1",
    kind = "Link",
    namespaced,
    status = "LinkStatus",
    derive = "PartialEq",
    shortname = "mlink",
    category = "meshfed",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Alive","type":"boolean","jsonPath":".status.alive"}"#,
    printcolumn = r#"{"name":"Latency-p50","type":"string","jsonPath":".status.latencyP50"}"#,
    printcolumn = r#"{"name":"Services","type":"integer","jsonPath":".status.importedServices"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    /// Name of the remote cluster (a DNS label), as its own install calls itself.
    pub cluster: String,
    /// Region of the remote cluster, used by default failover ordering (same region first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How to reach the remote cluster's east-west gateway.
    pub gateway: GatewaySpec,
    /// Active health probing of the remote gateway.
    #[serde(default)]
    pub probe: ProbeSpec,
    /// How long the remote controller may stay silent before its services are withdrawn.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_seconds: u32,
    /// How long the remote cluster's services are kept while its controller is silent
    /// (a restart, a rollout, a partition of the control channel only) but its gateway
    /// keeps answering probes. 0 withdraws them when the lease runs out, as for a dead
    /// cluster. A cluster whose gateway stops answering is withdrawn within the lease
    /// TTL whatever this says. Default 300, at most 3600.
    #[serde(default = "default_control_plane_grace")]
    pub control_plane_grace_seconds: u32,
    /// Which of the remote cluster's exports to import (all of them when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// The remote gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// IP addresses or DNS names of the gateway; DNS names are re-resolved periodically.
    pub addresses: Vec<String>,
    /// TCP port of the gateway.
    pub port: u16,
    /// SPIFFE ID the gateway presents, e.g. `spiffe://mesh.example/ns/meshfed-system/sa/meshfed-gateway`.
    pub identity: String,
    /// SPIFFE ID the remote controller presents on the federation stream.
    pub controller_identity: String,
    /// How often DNS names are re-resolved.
    #[serde(default = "default_resolve_period")]
    pub resolve_period_seconds: u32,
}

/// Active probing of the remote gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Time between probes.
    #[serde(default = "default_probe_period")]
    pub period_seconds: u32,
    /// How long one probe may take.
    #[serde(default = "default_probe_timeout")]
    pub timeout_seconds: u32,
    /// Consecutive failed probes after which the gateway counts as dead.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            period_seconds: default_probe_period(),
            timeout_seconds: default_probe_timeout(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

/// What the controller knows about the link.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// `Accepted` (spec valid) and `Alive` (probe and lease) conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Whether the remote gateway answers probes and the lease is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive: Option<bool>,
    /// Whether the remote controller spoke on the federation stream within the lease TTL
    /// (control-plane liveness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation_up: Option<bool>,
    /// Whether the remote gateway answers probes (data-plane liveness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_alive: Option<bool>,
    /// While the remote controller is silent and its gateway answers probes: the time
    /// (RFC 3339) until which its services are kept (`spec.controlPlaneGraceSeconds`
    /// after the federation stream went silent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports_held_until: Option<String>,
    /// Imported services whose mirror cannot be written here, with why (at most 20;
    /// `unwritableMirrorCount` has them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unwritable_mirrors: Vec<UnwritableMirror>,
    /// How many imported services have a mirror that cannot be written.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unwritable_mirror_count: u32,
    /// Median probe latency, e.g. `1.2ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p50: Option<String>,
    /// 99th percentile probe latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<String>,
    /// How many services are imported through this link.
    #[serde(default)]
    pub imported_services: u32,
    /// The gateway addresses currently resolved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_addresses: Vec<String>,
    /// The last error seen on the link, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An imported service whose local mirror cannot be written.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnwritableMirror {
    /// The mirror, `namespace/name`.
    pub mirror: String,
    /// What the cluster answered, as a sentence.
    pub reason: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Default of `spec.controlPlaneGraceSeconds`.
pub const DEFAULT_CONTROL_PLANE_GRACE_SECONDS: u32 = 300;
/// Largest `spec.controlPlaneGraceSeconds`.
pub const MAX_CONTROL_PLANE_GRACE_SECONDS: u32 = 3600;

fn default_control_plane_grace() -> u32 {
    DEFAULT_CONTROL_PLANE_GRACE_SECONDS
}

fn default_lease_ttl() -> u32 {
    5
}
fn default_resolve_period() -> u32 {
    30
}
fn default_probe_period() -> u32 {
    2
}
fn default_probe_timeout() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}
