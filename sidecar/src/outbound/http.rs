//! Outbound HTTP: every request is balanced on its own over pooled HTTP/2
//! connections to the chosen endpoints (an HTTP/1 app's requests travel as
//! HTTP/2 between sidecars and are turned back at the other end). Retries go
//! to another endpoint: always when the connect failed (nothing was sent),
//! and for idempotent requests whose body was small enough to keep when the
//! connection broke (before or while a small answer arrived) or the answer
//! was 502/503/504 — every one taken from the retry budget. Such a request
//! that finds endpoints but none able to serve waits for one, within its
//! timeout, in a bounded queue (`dest::wait`). When nothing can serve, the
//! sidecar answers itself with a 503/504 and `meshfed-error` saying why. An HTTP/1.1 upgrade (WebSocket) takes a mesh connection of
//! its own instead (see `upgrade`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::{Body, boxed, error_response, full};
use crate::dest::{Breaker, Dest};
use crate::headers::{CLIENT_ID, ORIG_PROTO};
use crate::metrics::{DestLabels, Direction, End};
use crate::reason::Reason;
use crate::trace::TraceContext;
use crate::upgrade;

/// Attempts per request, the first included.
const MAX_ATTEMPTS: usize = 5;
/// Request bodies up to this size are kept so the request can be retried.
const MAX_REPLAY: u64 = 64 * 1024;

/// Serves the app's HTTP connection (`h2`: it spoke HTTP/2).
pub(crate) async fn serve<S>(io: S, dest: Arc<Dest>, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let dest = dest.clone();
        async move { Ok::<_, Infallible>(handle(dest, req, !h2).await) }
    });
    let io = TokioIo::new(io);
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "app connection ended");
    }
}

async fn handle(dest: Arc<Dest>, req: Request<Incoming>, from_h1: bool) -> Response<Body> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let trace = TraceContext::continue_in(&mut parts.headers);
    let span = tracing::info_span!(
        "outbound",
        service = %dest.label,
        method = %parts.method,
        trace_id = %trace.trace_id,
        span_id = %trace.span_id,
    );
    let (resp, served_by) = if from_h1 && upgrade::requested(&parts.headers) {
        call_upgrade(&dest, parts, body)
            .instrument(span.clone())
            .await
    } else {
        call(&dest, parts, body, from_h1)
            .instrument(span.clone())
            .await
    };
    let (cluster, zone) = served_by.unwrap_or_default();
    dest.shared.metrics.request(
        DestLabels {
            direction: Direction::outbound,
            service: dest.label.clone(),
            cluster,
            zone,
        },
        &resp,
        started,
    );
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "answered"));
    resp
}

/// The request as it goes to the other sidecar (without its body).
#[derive(Debug)]
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// An answer and who served it (cluster, zone), if an endpoint did.
type Answer = (Response<Body>, Option<(String, String)>);

/// Runs the attempts.
async fn call(
    dest: &Arc<Dest>,
    parts: http::request::Parts,
    body: Incoming,
    from_h1: bool,
) -> Answer {
    let deadline = Instant::now() + dest.shared.timeouts.request;
    if let Err(reason) = dest.ready().await {
        return (error_response(reason, &dest.label), None);
    }
    let head = match prepare(parts, from_h1, &dest.target.name, &dest.target.namespace) {
        Ok(h) => h,
        Err(detail) => {
            let mut resp = Response::new(full(format!("meshfed: {detail}\n")));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return (resp, None);
        }
    };
    let idempotent = matches!(
        head.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    // Keep small bodies so the request can be sent again.
    let mut streaming = None;
    let replay: Option<Bytes> = if body.is_end_stream() {
        Some(Bytes::new())
    } else if body.size_hint().exact().is_some_and(|n| n <= MAX_REPLAY) {
        match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(b)) => Some(b.to_bytes()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "app request body failed");
                return (error_response(Reason::UpstreamReset, "request body"), None);
            }
            Err(_) => return (error_response(Reason::RequestTimeout, &dest.label), None),
        }
    } else {
        streaming = Some(body);
        None
    };
    // Waiting is for what the retries may send again (the same rule): an
    // attempt after the wait is then no different from a retry.
    let may_wait = idempotent && replay.is_some();
    dest.count_request();
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last = Reason::NoHealthyEndpoints;
    // A retry after a 5xx is granted before the answer is set aside; if no
    // attempt does better, that answer is the one the app gets.
    let mut granted = false;
    let mut set_aside: Option<Answer> = None;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 && !std::mem::take(&mut granted) && !dest.may_retry() {
            break;
        }
        let pick = match dest.pick(&tried, Breaker::Requests) {
            // Endpoints exist but none can serve now: one that may be sent
            // again waits for one to come back (see `dest::wait`).
            Err(Reason::NoHealthyEndpoints) if may_wait => {
                dest.wait_for_endpoint(&tried, deadline).await
            }
            picked => picked,
        };
        let pick = match pick {
            Ok(p) => p,
            // Nothing left to try: the last failure is the better reason.
            Err(_) if attempt > 0 => break,
            Err(reason) => return (error_response(reason, &dest.label), None),
        };
        tried.push(pick.endpoint.key.clone());
        let served_by = Some((pick.endpoint.cluster.clone(), pick.endpoint.zone.clone()));
        dest.pending(&pick.group, 1);
        let started = Instant::now();
        let conn = tokio::time::timeout_at(
            deadline,
            dest.pool.get(&dest.shared.connector, &pick.endpoint),
        )
        .await;
        dest.pending(&pick.group, -1);
        let mut send = match conn {
            Err(_) => return (error_response(Reason::RequestTimeout, &dest.label), None),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "connect failed");
                dest.connect_failed(&pick, started);
                last = Reason::ConnectFailed;
                continue;
            }
            Ok(Ok((send, fresh))) => {
                if fresh {
                    dest.connected(&pick);
                }
                send
            }
        };
        let body = match (&replay, streaming.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(b)) => boxed(b),
            (None, None) => break,
        };
        let flight = dest.start(&pick);
        let sent = tokio::time::timeout_at(deadline, async {
            send.ready().await?;
            send.send_request(head.request(body)).await
        })
        .await;
        match sent {
            Err(_) => {
                flight.answered(true);
                return (
                    error_response(Reason::RequestTimeout, &dest.label),
                    served_by,
                );
            }
            Ok(Err(e)) => {
                flight.answered(true);
                tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "request failed");
                last = Reason::UpstreamReset;
                if replay.is_some() && idempotent {
                    continue;
                }
                break;
            }
            Ok(Ok(resp)) => {
                let status = resp.status();
                // A small answer to a request that may be sent again is
                // read whole first: an endpoint dying between the headers
                // and the body is then a retry, not a broken answer.
                let small = resp
                    .body()
                    .size_hint()
                    .upper()
                    .is_some_and(|n| n <= MAX_REPLAY);
                let resp = if small && idempotent && replay.is_some() {
                    let (parts, body) = resp.into_parts();
                    match tokio::time::timeout_at(deadline, body.collect()).await {
                        Ok(Ok(whole)) => Response::from_parts(parts, boxed(whole)),
                        Ok(Err(e)) => {
                            flight.answered(true);
                            tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "answer broke");
                            last = Reason::UpstreamReset;
                            continue;
                        }
                        Err(_) => {
                            flight.answered(true);
                            return (
                                error_response(Reason::RequestTimeout, &dest.label),
                                served_by,
                            );
                        }
                    }
                } else {
                    resp.map(boxed)
                };
                flight.answered(status.is_server_error());
                let retryable = matches!(status.as_u16(), 502..=504)
                    && idempotent
                    && replay.is_some()
                    && attempt + 1 < MAX_ATTEMPTS;
                if retryable && dest.may_retry() {
                    granted = true;
                    set_aside = Some((downgrade(resp, from_h1), served_by));
                    continue;
                }
                return (downgrade(resp, from_h1), served_by);
            }
        }
    }
    set_aside.unwrap_or_else(|| (error_response(last, &dest.label), None))
}

/// Runs an HTTP/1.1 upgrade: its own mesh connection to the endpoint
/// picked (the next one when the connect fails), the request sent as
/// HTTP/1.1, and on `101` the app's stream joined to the endpoint's.
async fn call_upgrade(dest: &Arc<Dest>, mut parts: http::request::Parts, body: Incoming) -> Answer {
    let deadline = Instant::now() + dest.shared.timeouts.request;
    if let Err(reason) = dest.ready().await {
        return (error_response(reason, &dest.label), None);
    }
    let Some(app_side) = parts.extensions.remove::<OnUpgrade>() else {
        return (
            error_response(Reason::UpstreamReset, "the app's upgrade"),
            None,
        );
    };
    parts.headers.remove(CLIENT_ID);
    parts.headers.remove(ORIG_PROTO);
    upgrade::keep(&mut parts.headers, strip);
    dest.count_request();
    let (pick, tls) = match tokio::time::timeout_at(deadline, dest.connect_opaque()).await {
        Err(_) => return (error_response(Reason::RequestTimeout, &dest.label), None),
        Ok(Err(reason)) => return (error_response(reason, &dest.label), None),
        Ok(Ok(c)) => c,
    };
    let served_by = Some((pick.endpoint.cluster.clone(), pick.endpoint.zone.clone()));
    let flight = dest.start(&pick);
    let req = Request::from_parts(parts, boxed(body));
    let mut resp = match tokio::time::timeout_at(deadline, upgrade::send(tls, req)).await {
        Err(_) => {
            flight.answered(true);
            return (
                error_response(Reason::RequestTimeout, &dest.label),
                served_by,
            );
        }
        Ok(Err(e)) => {
            // Sent, or partly: not sent again.
            flight.answered(true);
            tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "upgrade request failed");
            return (
                error_response(Reason::UpstreamReset, &dest.label),
                served_by,
            );
        }
        Ok(Ok(resp)) => resp,
    };
    flight.answered(resp.status().is_server_error());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let endpoint_side = hyper::upgrade::on(&mut resp);
        let d = dest.clone();
        dest.shared.spawn(async move {
            d.connections(&pick.group, 1);
            let joined = async {
                let (app, mut endpoint) = upgrade::upgraded(app_side, endpoint_side).await?;
                let labels = (
                    Direction::outbound,
                    d.label.as_str(),
                    pick.endpoint.cluster.as_str(),
                );
                let mut app = d.shared.metrics.counted(labels, End::Caller, app);
                copy_bidirectional(&mut app, &mut endpoint).await
            };
            if let Err(e) = joined.await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
            d.connections(&pick.group, -1);
        });
    }
    let (mut parts, body) = resp.into_parts();
    parts.version = Version::HTTP_11;
    upgrade::keep(&mut parts.headers, strip);
    (Response::from_parts(parts, boxed(body)), served_by)
}

/// Hop-by-hop headers never cross a proxy.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

fn strip(headers: &mut HeaderMap) {
    if let Some(listed) = headers.get(header::CONNECTION).cloned()
        && let Ok(listed) = listed.to_str()
    {
        for name in listed.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Turns the app's request into what goes to the other sidecar.
fn prepare(
    parts: http::request::Parts,
    from_h1: bool,
    name: &str,
    namespace: &str,
) -> Result<Head, String> {
    let mut headers = parts.headers;
    // Only the receiving sidecar may say who called.
    headers.remove(CLIENT_ID);
    headers.remove(ORIG_PROTO);
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    strip(&mut headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let uri = if from_h1 {
        headers.insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        let authority = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{name}.{namespace}"));
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|e| format!("request target: {e}"))?
    } else {
        parts.uri
    };
    Ok(Head {
        method: parts.method,
        uri,
        headers,
    })
}

/// The answer as the app's protocol carries it.
fn downgrade(resp: Response<Body>, to_h1: bool) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    if to_h1 {
        parts.version = Version::HTTP_11;
    }
    strip(&mut parts.headers);
    Response::from_parts(parts, body)
}
