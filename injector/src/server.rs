//! The webhook's HTTPS server: the API server calls `POST /inject` with an
//! AdmissionReview. TLS presents the injector's current serving certificate
//! (from the cluster's CA, naming the injector's Service, renewed by the
//! identity client underneath), which the API server checks against the
//! `caBundle` of the MutatingWebhookConfiguration: the cluster's roots.
//! Bodies are bounded, and so is the time to read one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshfed_runtime::tls_incoming;
use meshfed_trust::{CredentialsWatch, bootstrap_server_config};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use crate::review::{Inject, Outcome, review};

/// The path the MutatingWebhookConfiguration names.
pub const PATH: &str = "/inject";

/// Largest AdmissionReview read. The API server keeps objects under 1.5 MiB
/// in etcd; a review carries the object once (oldObject is null on create),
/// so anything bigger is not a review of a pod.
pub const MAX_REVIEW_BYTES: usize = 3 << 20;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// How long reading one request body may take (the API server gives the
    /// whole call `timeoutSeconds`).
    pub read_timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// The webhook's metrics, under the registry's prefix.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    reviews: Family<OutcomeLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: OutcomeLabel,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct OutcomeLabel(Outcome);

impl EncodeLabelValue for OutcomeLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.0.as_str())
    }
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by outcome (injected, skipped, refused, malformed)",
            m.reviews.clone(),
        );
        m
    }

    fn count(&self, outcome: Outcome) {
        self.reviews
            .get_or_create(&OutcomeLabels {
                outcome: OutcomeLabel(outcome),
            })
            .inc();
    }
}

/// Serves the webhook on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    creds: CredentialsWatch,
    inject: Arc<dyn Inject>,
    metrics: Metrics,
    config: WebhookConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut tls = bootstrap_server_config(creds);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut incoming = tls_incoming(listener, Arc::new(tls), config.handshake_timeout);
    tokio::pin!(shutdown);
    loop {
        let conn = tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => return,
            },
            () = &mut shutdown => return,
        };
        let (inject, metrics, read_timeout) =
            (inject.clone(), metrics.clone(), config.read_timeout);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (inject, metrics) = (inject.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(handle(req, &*inject, &metrics, read_timeout).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    inject: &dyn Inject,
    metrics: &Metrics,
    read_timeout: Duration,
) -> Response<Full<Bytes>> {
    if req.uri().path() != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("no such path; the webhook is POST {PATH}"),
        );
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("POST an AdmissionReview to {PATH}"),
        );
    }
    let body = Limited::new(req.into_body(), MAX_REVIEW_BYTES);
    let body = match tokio::time::timeout(read_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            metrics.count(Outcome::Malformed);
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an AdmissionReview larger than {MAX_REVIEW_BYTES} bytes is refused"),
            );
        }
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body took longer than {read_timeout:?}"),
            );
        }
    };
    let answer = review(&body, inject);
    metrics.count(answer.outcome);
    let kind = if answer.status == StatusCode::OK {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    Response::builder()
        .status(answer.status)
        .header(header::CONTENT_TYPE, kind)
        .body(Full::new(Bytes::from(answer.body)))
        .expect("a static response builds")
}

fn text(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(message + "\n")))
        .expect("a static response builds")
}
