//! What rate limiting counts: `meshfed_sidecar_rate_limited_total`, the
//! requests (and opaque connections) refused for want of a token, by port,
//! policy and bucket.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::Limited;

/// Which bucket of a policy was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub(crate) enum Scope {
    /// The one all callers share.
    total,
    /// The caller's own.
    per_caller,
}

/// One refusal's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct LimitedLabels {
    /// The port callers dialled.
    pub(crate) port: u16,
    /// The RateLimitPolicy, `namespace/name`.
    pub(crate) policy: Arc<str>,
    /// Its bucket that was empty.
    pub(crate) limit: Scope,
}

/// The rate-limit family.
#[derive(Debug, Default)]
pub(crate) struct LimitMetrics {
    limited: Family<LimitedLabels, Counter>,
}

impl LimitMetrics {
    /// Registers the family in `registry` (the sidecar's, prefixed).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "rate_limited",
            "Inbound requests and opaque connections refused by a RateLimitPolicy, by port, policy and bucket",
            self.limited.clone(),
        );
    }

    /// Counts a refusal on `port`.
    pub(crate) fn limited(&self, port: u16, why: &Limited) {
        self.limited
            .get_or_create(&LimitedLabels {
                port,
                policy: why.policy.clone(),
                limit: why.scope,
            })
            .inc();
    }

    /// Refusals so far on `port` by `policy`'s `limit` bucket.
    #[cfg(test)]
    pub(crate) fn count(&self, port: u16, policy: &str, limit: Scope) -> u64 {
        self.limited
            .get_or_create(&LimitedLabels {
                port,
                policy: policy.into(),
                limit,
            })
            .get()
    }
}
