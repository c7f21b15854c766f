//! Meshfed's custom resources, group `meshfed.io`, version `v1alpha1`. The
//! CRD YAML in `deploy/crds/` is generated from these types and
//! drift-tested; never edit it by hand.

mod failover;
mod link;
mod ratelimit;

pub use failover::{
    ConsistentHash, Failback, FailoverPolicy, FailoverPolicySpec, FailoverPolicyStatus,
    LocalityKey, OutlierDetection, RetryBudget,
};
pub use link::{
    DEFAULT_CONTROL_PLANE_GRACE_SECONDS, GatewaySpec, Link, LinkSpec, LinkStatus,
    MAX_CONTROL_PLANE_GRACE_SECONDS, ProbeSpec, UnwritableMirror,
};
pub use ratelimit::{RateLimitPolicy, RateLimitPolicySpec, RateLimitPolicyStatus, TokenBucket};

/// The API group of every Meshfed resource.
pub const GROUP: &str = "meshfed.io";

/// The condition type every Meshfed resource reports its validation in.
pub const CONDITION_ACCEPTED: &str = "Accepted";

/// The Link condition that says whether every imported service's mirror is written.
pub const CONDITION_MIRRORS_WRITTEN: &str = "MirrorsWritten";

/// Every CRD Meshfed installs, in a stable order.
pub fn all()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Link::crd(), FailoverPolicy::crd(), RateLimitPolicy::crd()]
}
