//! The controller's Prometheus metrics, registered under `meshfed_controller`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of per-link metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LinkLabels {
    /// The Link, `namespace/name`.
    pub link: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What failed: `apply_mirror`, `delete_mirror`, `status`, `store`.
    pub what: &'static str,
}

/// Labels of mirror writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `apply` or `delete`.
    pub op: &'static str,
}

/// Labels of endpoints not offered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnidentifiedLabels {
    /// Why: `pod_unknown` or `not_named`.
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// Every metric of the controller.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) exports: Gauge,
    pub(crate) imports: Family<LinkLabels, Gauge>,
    pub(crate) mirrors: Family<LinkLabels, Gauge>,
    pub(crate) probe_latency: Family<LinkLabels, Histogram, fn() -> Histogram>,
    pub(crate) probe_alive: Family<LinkLabels, Gauge>,
    pub(crate) peer_alive: Family<LinkLabels, Gauge>,
    pub(crate) federation_stream_up: Family<LinkLabels, Gauge>,
    pub(crate) federation_streams_served: Gauge,
    pub(crate) federation_refused: Counter,
    pub(crate) discovery_subscribers: Gauge,
    pub(crate) discovery_push_latency: Histogram,
    pub(crate) reconcile_errors: Family<ErrorLabels, Counter>,
    pub(crate) mirror_writes: Family<WriteLabels, Counter>,
    pub(crate) store_errors: Gauge,
    pub(crate) unidentified: Family<UnidentifiedLabels, Gauge>,
    pub(crate) leader: Gauge,
    pub(crate) imports_held: Family<LinkLabels, Gauge>,
    pub(crate) imports_doubted: Family<LinkLabels, Gauge>,
    pub(crate) mirrors_unwritable: Family<LinkLabels, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `meshfed_controller`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            exports: Gauge::default(),
            imports: Family::default(),
            mirrors: Family::default(),
            probe_latency: Family::new_with_constructor(latency_histogram),
            probe_alive: Family::default(),
            peer_alive: Family::default(),
            federation_stream_up: Family::default(),
            federation_streams_served: Gauge::default(),
            federation_refused: Counter::default(),
            discovery_subscribers: Gauge::default(),
            discovery_push_latency: latency_histogram(),
            reconcile_errors: Family::default(),
            mirror_writes: Family::default(),
            store_errors: Gauge::default(),
            unidentified: Family::default(),
            leader: Gauge::default(),
            imports_held: Family::default(),
            imports_doubted: Family::default(),
            mirrors_unwritable: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("meshfed_controller");
        r.register(
            "exports",
            "Services this cluster exports",
            m.exports.clone(),
        );
        r.register("imports", "Services imported per link", m.imports.clone());
        r.register(
            "mirrors",
            "Mirrors in the local store per link",
            m.mirrors.clone(),
        );
        r.register(
            "probe_latency_seconds",
            "Latency of successful gateway probes",
            m.probe_latency.clone(),
        );
        r.register(
            "probe_alive",
            "Whether the link's gateway answers probes",
            m.probe_alive.clone(),
        );
        r.register(
            "peer_alive",
            "Whether the linked cluster receives traffic (probe and lease)",
            m.peer_alive.clone(),
        );
        r.register(
            "leader",
            "Whether this replica leads (only the leader writes mirrors and statuses)",
            m.leader.clone(),
        );
        r.register(
            "imports_held",
            "Whether the link's services are kept through the control-plane grace: its \
             controller is silent but its gateway answers probes",
            m.imports_held.clone(),
        );
        r.register(
            "imports_doubted",
            "Services of the link kept although the peer's last snapshot dropped them: \
             a snapshot lacking much of what the peer exported is not acted on at once",
            m.imports_doubted.clone(),
        );
        r.register(
            "mirrors_unwritable",
            "Imported services of the link whose mirror cannot be written",
            m.mirrors_unwritable.clone(),
        );
        r.register(
            "federation_stream_up",
            "Whether the federation stream to the link's peer is connected",
            m.federation_stream_up.clone(),
        );
        r.register(
            "federation_streams_served",
            "Federation streams this controller serves to peers",
            m.federation_streams_served.clone(),
        );
        r.register(
            "federation_refused",
            "Federation streams refused (unauthenticated or not a peer controller)",
            m.federation_refused.clone(),
        );
        r.register(
            "discovery_subscribers",
            "Open discovery subscriptions",
            m.discovery_subscribers.clone(),
        );
        r.register(
            "discovery_push_latency_seconds",
            "Time from a change to its endpoint set reaching a subscriber's stream",
            m.discovery_push_latency.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed store writes by what was attempted",
            m.reconcile_errors.clone(),
        );
        r.register(
            "mirror_writes",
            "Mirrors written (op apply) or deleted (op delete) by this replica; a burst of \
             deletes is what an operator looks for after a peer's trouble",
            m.mirror_writes.clone(),
        );
        r.register(
            "endpoints_unidentified",
            "Endpoints of local Services not offered because nothing says who they serve as \
             (reason pod_unknown: their targetRef names a Pod not known; not_named: not a Pod \
             and no meshfed.io/identity annotation)",
            m.unidentified.clone(),
        );
        r.register(
            "store_file_errors",
            "Manifest files that currently fail to parse (file store)",
            m.store_errors.clone(),
        );
        m
    }
}
