//! The sidecar's metrics (`meshfed_sidecar_*`), and the reasons it gives
//! when it answers a call itself.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::config::Plaintext;
use crate::io::Counted;
use crate::reason::Reason;

/// Which way a call goes through this sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// From the app to another service.
    outbound,
    /// From another workload to the app.
    inbound,
}

/// Who served (outbound) or which port (inbound).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DestLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// `name.namespace:port` (outbound) or `port/<listen port>` (inbound).
    pub service: Arc<str>,
    /// The cluster that served (outbound), this cluster (inbound).
    pub cluster: Arc<str>,
    /// The zone that served, when local and known.
    pub zone: Arc<str>,
}

/// One finished HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// As in [`DestLabels`].
    pub service: Arc<str>,
    /// As in [`DestLabels`]; empty when nothing served.
    pub cluster: Arc<str>,
    /// As in [`DestLabels`].
    pub zone: Arc<str>,
    /// The response status code.
    pub status: u16,
    /// Why the sidecar answered itself, or `none`.
    pub error: Cow<'static, str>,
}

/// A service, for retry and endpoint counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `name.namespace:port`.
    pub service: Arc<str>,
}

/// What became of an HTTP request that found no endpoint able to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum WaitOutcome {
    /// An endpoint could serve again before the request timeout: sent.
    served,
    /// The request timeout ran out while it waited.
    timeout,
    /// The queue was full: it failed at once, without waiting.
    queue_full,
    /// The wait ended otherwise: the service lost its last endpoint, or
    /// its circuit breaker was open when one came back.
    failed,
}

/// A request waiting for an endpoint, by its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WaitLabels {
    /// `name.namespace:port`.
    pub service: Arc<str>,
    /// What became of it.
    pub outcome: WaitOutcome,
}

/// Bytes of an opaque TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ByteLabels {
    /// `outbound` or `inbound`.
    pub direction: Direction,
    /// As in [`DestLabels`].
    pub service: String,
    /// As in [`DestLabels`].
    pub cluster: String,
    /// `sent` (towards the callee) or `received`.
    pub flow: &'static str,
}

/// An inbound caller refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The inbound listen port.
    pub port: u16,
    /// Why.
    pub reason: Reason,
}

impl EncodeLabelValue for Plaintext {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// What became of a plaintext inbound caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Passed to the app.
    served,
    /// Closed.
    refused,
}

/// A plaintext inbound caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PlaintextLabels {
    /// The port it called: an explicit inbound listen port, or the app port
    /// behind the inbound transparent listener.
    pub port: u16,
    /// The port's policy.
    pub policy: Plaintext,
    /// Served or refused.
    pub outcome: Outcome,
}

/// Every metric the sidecar keeps.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) latency: Family<DestLabels, Histogram>,
    pub(crate) tcp_connections: Family<DestLabels, Counter>,
    pub(crate) tcp_bytes: Family<ByteLabels, Counter>,
    pub(crate) retries: Family<ServiceLabels, Counter>,
    pub(crate) retries_refused: Family<ServiceLabels, Counter>,
    pub(crate) endpoint_failures: Family<ServiceLabels, Counter>,
    pub(crate) endpoint_waits: Family<WaitLabels, Counter>,
    pub(crate) endpoint_waiting: Family<ServiceLabels, Gauge>,
    pub(crate) refused: Family<RefusedLabels, Counter>,
    pub(crate) plaintext: Family<PlaintextLabels, Counter>,
    pub(crate) discovery_streams_up: Gauge,
    pub(crate) discovery_updates: Counter,
    pub(crate) routes: crate::routes::RouteMetrics,
    handles: Mutex<Handles>,
}

fn request_labels(dest: &DestLabels, status: u16, error: Cow<'static, str>) -> RequestLabels {
    RequestLabels {
        direction: dest.direction,
        service: dest.service.clone(),
        cluster: dest.cluster.clone(),
        zone: dest.zone.clone(),
        status,
        error,
    }
}

/// Handles kept at most; past it they are dropped and found again.
const MAX_HANDLES: usize = 1024;

/// A finished request's counter and latency histogram, found by the
/// identity of its label values (the `Arc`s a destination and its
/// endpoints hold, kept alive by the key) rather than by hashing their
/// text into the families on every request.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HandleKey {
    direction: Direction,
    service: ByPtr,
    cluster: ByPtr,
    zone: ByPtr,
    status: u16,
    reason: Option<Reason>,
}

/// A label value compared by address.
#[derive(Debug)]
struct ByPtr(Arc<str>);

impl PartialEq for ByPtr {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ByPtr {}

impl std::hash::Hash for ByPtr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.0).cast::<u8>().hash(state);
    }
}

type Handles = crate::FastMap<HandleKey, (Counter, Histogram)>;

/// Which end of a proxied connection a stream is.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// The calling app's: what it writes is `sent`.
    Caller,
    /// The serving app's: what it writes is `received`.
    Server,
}

impl Metrics {
    /// `stream` with its bytes counted in `tcp_bytes_total{direction,
    /// service, cluster, flow}` as they pass.
    pub(crate) fn counted<S>(
        &self,
        (direction, service, cluster): (Direction, &str, &str),
        end: End,
        stream: S,
    ) -> Counted<S> {
        let counter = |flow| {
            self.tcp_bytes
                .get_or_create(&ByteLabels {
                    direction,
                    service: service.to_owned(),
                    cluster: cluster.to_owned(),
                    flow,
                })
                .clone()
        };
        let (sent, received) = (counter("sent"), counter("received"));
        match end {
            End::Caller => Counted::new(stream, sent, received),
            End::Server => Counted::new(stream, received, sent),
        }
    }

    /// Counts one finished HTTP request and its latency; the error label is
    /// the `meshfed-error` the sidecar put on the answer, else `none`.
    pub(crate) fn request<B>(
        &self,
        dest: DestLabels,
        resp: &http::Response<B>,
        started: tokio::time::Instant,
    ) {
        let status = resp.status().as_u16();
        let error = resp
            .headers()
            .get(crate::headers::name::ERROR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|e| Reason::named(e).ok_or(e));
        let elapsed = started.elapsed().as_secs_f64();
        let reason = match error {
            None => None,
            Some(Ok(r)) => Some(r),
            // A reason of the app's own making: not worth a handle kept.
            Some(Err(e)) => {
                let error = Cow::Owned(e.to_owned());
                self.requests
                    .get_or_create(&request_labels(&dest, status, error))
                    .inc();
                self.latency.get_or_create(&dest).observe(elapsed);
                return;
            }
        };
        let key = HandleKey {
            direction: dest.direction,
            service: ByPtr(dest.service.clone()),
            cluster: ByPtr(dest.cluster.clone()),
            zone: ByPtr(dest.zone.clone()),
            status,
            reason,
        };
        let mut handles = self.handles.lock().expect("metric handles lock");
        if handles.len() >= MAX_HANDLES && !handles.contains_key(&key) {
            handles.clear();
        }
        let (count, latency) = handles.entry(key).or_insert_with(|| {
            let error = Cow::Borrowed(reason.map_or("none", Reason::as_str));
            let count = self
                .requests
                .get_or_create(&request_labels(&dest, status, error));
            (count.clone(), self.latency.get_or_create(&dest).clone())
        });
        count.inc();
        latency.observe(elapsed);
    }

    /// Registers everything under `meshfed_sidecar_`.
    pub fn new(registry: &mut Registry) -> Self {
        let r = registry.sub_registry_with_prefix("meshfed_sidecar");
        let m = Self {
            requests: Family::default(),
            // 100 µs .. ~13 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            tcp_connections: Family::default(),
            tcp_bytes: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            endpoint_failures: Family::default(),
            endpoint_waits: Family::default(),
            endpoint_waiting: Family::default(),
            refused: Family::default(),
            plaintext: Family::default(),
            discovery_streams_up: Gauge::default(),
            discovery_updates: Counter::default(),
            routes: crate::routes::RouteMetrics::default(),
            handles: Mutex::default(),
        };
        m.routes.register(r);
        r.register(
            "requests",
            "HTTP requests by direction, service, serving cluster and zone, status",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "HTTP request latency until the response headers",
            m.latency.clone(),
        );
        r.register(
            "tcp_connections",
            "Opaque TCP connections proxied",
            m.tcp_connections.clone(),
        );
        r.register(
            "tcp_bytes",
            "Bytes of opaque TCP connections",
            m.tcp_bytes.clone(),
        );
        r.register(
            "retries",
            "Attempts made again on another endpoint",
            m.retries.clone(),
        );
        r.register(
            "retries_refused",
            "Retries the retry budget did not allow",
            m.retries_refused.clone(),
        );
        r.register(
            "endpoint_failures",
            "Connect failures, resets and 5xx answers from endpoints",
            m.endpoint_failures.clone(),
        );
        r.register(
            "endpoint_waits",
            "HTTP requests that found no endpoint able to serve and waited for one (or could not), by outcome",
            m.endpoint_waits.clone(),
        );
        r.register(
            "endpoint_waiting",
            "HTTP requests waiting for an endpoint able to serve now",
            m.endpoint_waiting.clone(),
        );
        r.register(
            "inbound_refused",
            "Inbound callers refused, by port and reason",
            m.refused.clone(),
        );
        r.register(
            "inbound_plaintext",
            "Inbound callers outside the mesh (no TLS), by port, policy and outcome",
            m.plaintext.clone(),
        );
        r.register(
            "discovery_streams_up",
            "Discovery streams connected now",
            m.discovery_streams_up.clone(),
        );
        r.register(
            "discovery_updates",
            "Endpoint sets received from discovery",
            m.discovery_updates.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests;
