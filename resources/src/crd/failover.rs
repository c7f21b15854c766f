//! `FailoverPolicy`: how one service's endpoints are ordered into priority
//! groups and when traffic spills from one group to the next.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Failover behaviour of one service (in the policy's namespace).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshfed.io",
    version = "v1alpha1",
    kind = "FailoverPolicy",
    namespaced,
    status = "FailoverPolicyStatus",
    derive = "PartialEq",
    shortname = "fp",
    category = "meshfed",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Spill","type":"number","jsonPath":".spec.spillThreshold"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicySpec {
    /// Name of the target Service, in this policy's namespace.
    pub service: String,
    /// Locality order after the local cluster's own zones: e.g. `[region]` prefers remote clusters of
    /// the same region. Exclusive with `clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Vec<LocalityKey>>,
    /// Explicit order of remote clusters to fail over to. Exclusive with `locality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    /// Healthy fraction of a group below which traffic spills to the next group (0 < x <= 1).
    #[serde(default = "default_spill")]
    pub spill_threshold: f64,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// How traffic returns to a recovered group.
    #[serde(default)]
    pub failback: Failback,
    /// Bound on retries.
    #[serde(default)]
    pub retry_budget: RetryBudget,
    /// Session affinity: requests carrying the same key (a header's value,
    /// or a cookie's) go to the same endpoint while it can serve; when an
    /// endpoint goes, only the keys it had move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
}

/// Where a request's affinity key is: exactly one of `header` and `cookie`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    /// The value of this request header (e.g. `x-user-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The value of this cookie (e.g. `session`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A locality level to match on.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LocalityKey {
    /// Same region.
    Region,
    /// Same zone.
    Zone,
}

/// Eject an endpoint after consecutive failures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive connect failures or 5xx that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// How long an ejected endpoint stays out (grows with repeated ejections).
    #[serde(default = "default_ejection_time")]
    pub ejection_time_seconds: u32,
    /// Most endpoints of a group that may be ejected at once, in percent.
    #[serde(default = "default_max_ejected")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            ejection_time_seconds: default_ejection_time(),
            max_ejected_percent: default_max_ejected(),
        }
    }
}

/// Hysteresis for returning to a higher-priority group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failback {
    /// How long a group must stay above the spill threshold before traffic returns to it.
    #[serde(default = "default_failback_hold")]
    pub hold_seconds: u32,
}

impl Default for Failback {
    fn default() -> Self {
        Self {
            hold_seconds: default_failback_hold(),
        }
    }
}

/// Retries allowed on top of regular requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a percentage of requests over the last 10 s.
    #[serde(default = "default_retry_percent")]
    pub percent: u32,
    /// Retries per second always allowed, however few requests there are.
    #[serde(default = "default_min_retries")]
    pub min_retries_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: default_retry_percent(),
            min_retries_per_second: default_min_retries(),
        }
    }
}

/// Whether the controller accepted the policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverPolicyStatus {
    /// `Accepted`: True, or False with the field at fault and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_spill() -> f64 {
    0.7
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_ejection_time() -> u32 {
    30
}
fn default_max_ejected() -> u32 {
    50
}
fn default_failback_hold() -> u32 {
    10
}
fn default_retry_percent() -> u32 {
    20
}
fn default_min_retries() -> u32 {
    10
}
