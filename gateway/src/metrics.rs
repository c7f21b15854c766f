//! The gateway's metrics (`meshfed_gateway_*`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a connection was refused before anything was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The first bytes are not a TLS handshake.
    NotTls,
    /// A broken, oversized or unexpected ClientHello.
    BadHello,
    /// The ClientHello did not arrive within the handshake timeout.
    HelloTimeout,
    /// The ClientHello names no server.
    NoSni,
    /// The server name is an IP address.
    IpLiteral,
    /// The server name is not a Meshfed name.
    UnknownSni,
    /// A Meshfed service name this cluster does not export.
    NotExported,
    /// The service is exported but not on that port.
    PortNotExported,
    /// No ready endpoint behind the service port.
    NoHealthyEndpoint,
    /// Every endpoint tried refused or timed out.
    UpstreamUnavailable,
    /// No federation upstream is configured.
    NoFederation,
    /// The global connection cap was reached.
    Overloaded,
    /// The source address holds its maximum of connections.
    SourceLimit,
}

impl Reason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotTls => "not_tls",
            Reason::BadHello => "bad_hello",
            Reason::HelloTimeout => "hello_timeout",
            Reason::NoSni => "no_sni",
            Reason::IpLiteral => "ip_literal",
            Reason::UnknownSni => "unknown_sni",
            Reason::NotExported => "not_exported",
            Reason::PortNotExported => "port_not_exported",
            Reason::NoHealthyEndpoint => "no_healthy_endpoint",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::NoFederation => "no_federation",
            Reason::Overloaded => "overloaded",
            Reason::SourceLimit => "source_limit",
        }
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// A connection that was passed through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnLabels {
    /// `namespace/name:port`, or `federation` / `probe`.
    pub service: String,
    /// The calling cluster when it named a linked one, else `unknown`.
    pub source_cluster: String,
}

/// Bytes of a passed-through connection, by direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ByteLabels {
    /// As in [`ConnLabels`].
    pub service: String,
    /// `ingress` (client to upstream) or `egress` (upstream to client).
    pub direction: &'static str,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why.
    pub reason: Reason,
}

/// Every metric the gateway keeps.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) connections: Family<ConnLabels, Counter>,
    pub(crate) bytes: Family<ByteLabels, Counter>,
    pub(crate) refused: Family<RefusalLabels, Counter>,
    pub(crate) open: Gauge,
    pub(crate) connect_latency: Histogram,
    pub(crate) connect_failures: Counter,
    pub(crate) hello_latency: Histogram,
    pub(crate) routes: Gauge,
    pub(crate) routes_stream_up: Gauge,
}

impl Metrics {
    /// Registers the metrics under `meshfed_gateway` in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("meshfed_gateway");
        let m = Self {
            connections: Family::default(),
            bytes: Family::default(),
            refused: Family::default(),
            open: Gauge::default(),
            // 50 µs .. ~3 s
            connect_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            connect_failures: Counter::default(),
            hello_latency: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            routes: Gauge::default(),
            routes_stream_up: Gauge::default(),
        };
        r.register(
            "connections",
            "Connections passed through, by destination and source cluster",
            m.connections.clone(),
        );
        r.register(
            "bytes",
            "Bytes passed through, by destination and direction",
            m.bytes.clone(),
        );
        r.register(
            "refused",
            "Connections refused before anything was forwarded, by reason",
            m.refused.clone(),
        );
        r.register("open_connections", "Connections open now", m.open.clone());
        r.register(
            "upstream_connect_seconds",
            "Time to connect to an upstream endpoint",
            m.connect_latency.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Upstream connects that failed (another endpoint is then tried)",
            m.connect_failures.clone(),
        );
        r.register(
            "client_hello_seconds",
            "Time from accept to a complete ClientHello",
            m.hello_latency.clone(),
        );
        r.register(
            "routes",
            "Exported services in the routing table",
            m.routes.clone(),
        );
        r.register(
            "routes_stream_up",
            "1 while the route stream from the controller is connected",
            m.routes_stream_up.clone(),
        );
        m
    }

    pub(crate) fn refuse(&self, reason: Reason) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}
