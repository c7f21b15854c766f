//! What routing counts (`meshfed_sidecar_route_*`): each rule's requests
//! by the backend they went to (the observed split), the picks that passed
//! a backend by for having no endpoint able to serve, and the mirrored
//! copies by what became of them. A rule's counters are found once, when
//! its routes are compiled, never per request.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// One backend of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BackendLabels {
    /// The service called, `name.namespace:port`.
    pub service: Arc<str>,
    /// The HTTPRoute, `namespace/name`.
    pub route: String,
    /// The rule's index in it.
    pub rule: u32,
    /// The backend, `name.namespace:port`.
    pub backend: String,
}

/// What became of a mirrored copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum MirrorOutcome {
    /// Answered by the mirror backend (any status; the answer is dropped).
    answered,
    /// The mirror backend failed it, or it timed out.
    failed,
    /// Not copied: the request's body streams or is larger than a retry
    /// keeps (64 KiB), so a copy would delay the request itself.
    skipped_body,
    /// Not copied: too many copies already in flight.
    skipped_busy,
}

/// A mirror of a route, by outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MirrorLabels {
    /// The service called.
    pub service: Arc<str>,
    /// The HTTPRoute.
    pub route: String,
    /// The mirror backend.
    pub backend: String,
    /// What became of the copy.
    pub outcome: MirrorOutcome,
}

/// The route families.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    requests: Family<BackendLabels, Counter>,
    passed_over: Family<BackendLabels, Counter>,
    mirrors: Family<MirrorLabels, Counter>,
}

/// One mirror's counters, by outcome.
#[derive(Debug, Clone)]
pub(crate) struct MirrorCounters {
    pub(crate) answered: Counter,
    pub(crate) failed: Counter,
    pub(crate) skipped_body: Counter,
    pub(crate) skipped_busy: Counter,
}

impl RouteMetrics {
    /// Registers the families in `registry` (the sidecar's, prefixed).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "route_requests",
            "Requests a route rule sent to each backend",
            self.requests.clone(),
        );
        registry.register(
            "route_backend_passed_over",
            "Route picks that passed a backend by: no endpoint of it could serve",
            self.passed_over.clone(),
        );
        registry.register(
            "route_mirrored_requests",
            "Copies of requests a route mirrored, by what became of them",
            self.mirrors.clone(),
        );
    }

    /// A backend's `picked` and `passed_over` counters.
    pub(crate) fn backend(
        &self,
        service: &Arc<str>,
        route: &str,
        rule: u32,
        backend: &str,
    ) -> (Counter, Counter) {
        let labels = BackendLabels {
            service: service.clone(),
            route: route.to_owned(),
            rule,
            backend: backend.to_owned(),
        };
        (
            self.requests.get_or_create(&labels).clone(),
            self.passed_over.get_or_create(&labels).clone(),
        )
    }

    /// A mirror's counters.
    pub(crate) fn mirror(&self, service: &Arc<str>, route: &str, backend: &str) -> MirrorCounters {
        let c = |outcome| {
            let labels = MirrorLabels {
                service: service.clone(),
                route: route.to_owned(),
                backend: backend.to_owned(),
                outcome,
            };
            self.mirrors.get_or_create(&labels).clone()
        };
        MirrorCounters {
            answered: c(MirrorOutcome::answered),
            failed: c(MirrorOutcome::failed),
            skipped_body: c(MirrorOutcome::skipped_body),
            skipped_busy: c(MirrorOutcome::skipped_busy),
        }
    }
}
