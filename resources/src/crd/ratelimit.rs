//! `RateLimitPolicy`: local rate limits on the inbound side of one
//! Service's endpoints. Each endpoint's sidecar keeps its own token buckets
//! (a limit is per endpoint, not cluster-wide), per Service port: one for
//! every caller together, one per caller identity.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::FailoverPolicyStatus;

/// Rate limits on the endpoints of one Service (in the policy's namespace).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "meshfed.io",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    namespaced,
    status = "RateLimitPolicyStatus",
    derive = "PartialEq",
    shortname = "rlp",
    category = "meshfed",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".spec.total.requestsPerSecond"}"#,
    printcolumn = r#"{"name":"PerCaller","type":"integer","jsonPath":".spec.perCaller.requestsPerSecond"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// Name of the Service, in this policy's namespace, whose endpoints
    /// enforce the limits.
    pub service: String,
    /// The Service port limited; every port of the Service when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Requests of all callers together, per endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<TokenBucket>,
    /// Requests of each caller, per endpoint. A caller is its mesh identity
    /// (SPIFFE ID); a caller outside the mesh, its source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_caller: Option<TokenBucket>,
}

/// A token bucket: `requestsPerSecond` tokens a second, holding at most
/// `burst`. Each HTTP request, and each opaque TCP connection, takes one;
/// without one the request is answered 429 with `Retry-After`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenBucket {
    /// Sustained rate (1 to 1,000,000).
    pub requests_per_second: u32,
    /// Most requests at once after a quiet spell (1 to 10,000,000);
    /// `requestsPerSecond` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl TokenBucket {
    /// Most sustained rate a bucket may have.
    pub const MAX_RATE: u32 = 1_000_000;
    /// Largest burst a bucket may have.
    pub const MAX_BURST: u32 = 10_000_000;

    /// The burst in force: as written, else the rate.
    pub fn burst_or_rate(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// Whether the controller accepted the policy: the same shape as a
/// FailoverPolicy's.
pub type RateLimitPolicyStatus = FailoverPolicyStatus;
