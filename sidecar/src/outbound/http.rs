//! Outbound HTTP: the app's connection is served as the HTTP it speaks, and
//! every request goes down the stack built in `stack` below, read top to
//! bottom: the service it is for, retries, the balancer, the circuit
//! breaker, the endpoint. What the stack cannot answer — no endpoint, a
//! breaker open, the timeout — the sidecar answers itself with a 503/504
//! and `meshfed-error` saying why. An HTTP/1.1 app's requests stay
//! HTTP/1.1 between the sidecars, an HTTP/2 app's (gRPC's) HTTP/2. An
//! HTTP/1.1 upgrade (WebSocket) takes a mesh connection of its own
//! (`upgrade`).

mod head;
mod upgrade;

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tracing::Instrument;

use crate::balance::EndpointInfo;
use crate::body::{Body, boxed, error_response, full};
use crate::dest::Dest;
use crate::metrics::{DestLabels, Direction};
use crate::stack::balance::Balance;
use crate::stack::breaker::Breaker;
use crate::stack::endpoint::Endpoint;
use crate::stack::retry::Retry;
use crate::stack::route::{Backends, Route};
use crate::stack::{self, IntoNext, Next, ServedBy};
use crate::trace::TraceContext;

/// The request path to `dest`, from the top.
fn build(dest: &Arc<Dest>, backends: Arc<dyn Backends>) -> Next {
    // The service the request is for: its deadline starts, it waits for
    // discovery, and the service's routes pick the backend it goes to.
    tower::Layer::layer(&Route::layer(dest.clone(), backends), below_route(dest)).into_next()
}

/// The request path below the route: a service's own, built once.
pub(super) fn below_route(dest: &Arc<Dest>) -> Next {
    dest.stack(|| below_route_of(dest))
}

fn below_route_of(dest: &Arc<Dest>) -> Next {
    let stack = ServiceBuilder::new()
        // An attempt that failed goes again to another endpoint, within the retry budget.
        .layer(Retry::layer(dest.budget.clone()))
        // Each attempt to the best endpoint by locality and latency; its outcome teaches the balancer.
        .layer(Balance::layer(dest.clone()))
        // A group carrying its limit of requests takes no more.
        .layer(Breaker::layer(dest.shared.breakers))
        // A pooled mTLS connection to the endpoint, and the attempt sent on it.
        .service(Endpoint::new(dest.clone()));
    stack.into_next()
}

/// Serves the app's HTTP connection (`h2`: it spoke HTTP/2).
pub(crate) async fn serve<S>(io: S, dest: Arc<Dest>, backends: Arc<dyn Backends>, h2: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stack = build(&dest, backends);
    let svc = service_fn(move |req: Request<Incoming>| {
        let answer = handle(dest.clone(), stack.clone(), req, !h2);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let io = TokioIo::new(io);
    let served = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        // Head and body copied into one buffer: for the small answers that
        // are most, cheaper than hyper's queue of buffers for a vectored
        // write (callgrind).
        hyper::server::conn::http1::Builder::new()
            .writev(false)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "app connection ended");
    }
}

async fn handle(
    dest: Arc<Dest>,
    stack: Next,
    req: Request<Incoming>,
    from_h1: bool,
) -> Response<Body> {
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
    let (resp, served_by) = if from_h1 && crate::upgrade::requested(&parts.headers) {
        // Rare, and its future large (it connects): boxed, so that every
        // other request's future, which hyper moves into place, stays small.
        Box::pin(upgrade::call(&dest, parts, body).instrument(span.clone())).await
    } else {
        call(&dest, stack, parts, body, from_h1)
            .instrument(span.clone())
            .await
    };
    let (cluster, zone) =
        served_by.map_or_else(Default::default, |ep| (ep.cluster.clone(), ep.zone.clone()));
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

/// Sends a request down the stack; the answer and the endpoint that gave it.
async fn call(
    dest: &Dest,
    stack: Next,
    parts: http::request::Parts,
    body: Incoming,
    from_h1: bool,
) -> (Response<Body>, Option<Arc<EndpointInfo>>) {
    let parts = match head::prepare(parts, from_h1, &dest.target.name, &dest.target.namespace) {
        Ok(p) => p,
        Err(detail) => {
            let mut resp = Response::new(full(format!("meshfed: {detail}\n")));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return (resp, None);
        }
    };
    match stack::call(stack, Request::from_parts(parts, boxed(body))).await {
        Ok(resp) => {
            let served_by = resp.extensions().get::<ServedBy>().map(|s| s.0.clone());
            (head::downgrade(resp, from_h1), served_by)
        }
        Err(f) => (error_response(f.reason, &dest.label), f.endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns.
    fn future_size<A, B, Fut, F: FnOnce(A, B) -> Fut>(_: &F) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn a_request_s_future_stays_small() {
        // hyper moves it into place for every request: an upgrade's
        // (rare, and large: it connects) is boxed apart.
        let (d, _sets) = crate::dest::testing::dest(256);
        let handle = |r: Request<Incoming>, s: Next| handle(d.clone(), s, r, true);
        let size = future_size(&handle);
        assert!(size <= 2048, "a request's future is {size} bytes");
    }
}
