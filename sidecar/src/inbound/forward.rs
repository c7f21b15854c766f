//! Inbound HTTP: each request from a caller is checked against the port's
//! allow-list and forwarded to the app in the protocol the caller's app
//! spoke, with the verified caller ID in `meshfed-client-id` (and any the
//! caller wrote itself removed); an HTTP/1.1 upgrade gets a connection to
//! the app of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshfed_trust::SpiffeId;
use tokio::time::Instant;
use tracing::Instrument;

use super::{AppPort, Who, limit_key};
use crate::body::{Body, BoxError, boxed, error_response};
use crate::headers::name::{CLIENT_ID, ORIG_PROTO};
use crate::headers::{absolute_form, origin_form};
use crate::limits::{Caller, Limited};
use crate::metrics::{Direction, End};
use crate::reason::Reason;
use crate::trace::TraceContext;
use crate::upgrade;

impl AppPort {
    /// Serves a connection's HTTP requests (`h1`: HTTP/1 straight from the
    /// caller; otherwise HTTP/2 from a sidecar, or h2c from outside the
    /// mesh); `caller` is `None` for plaintext.
    pub(super) async fn serve_http<S>(
        self: Arc<Self>,
        io: S,
        caller: Option<SpiffeId>,
        remote: SocketAddr,
        allowed: bool,
        h1: bool,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let me = self.clone();
        // What the app is told of the caller, the same for every request.
        let header = caller
            .as_ref()
            .and_then(|c| HeaderValue::from_str(&c.to_string()).ok());
        let key = limit_key(caller.as_ref(), remote);
        let caller = Arc::new((caller, header, key));
        let svc = service_fn(move |req: Request<Incoming>| {
            let me = me.clone();
            let caller = caller.clone();
            async move {
                let (caller, header, key) = &*caller;
                let resp = me
                    .request(req, (caller.as_ref(), key), header, allowed, h1)
                    .await;
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(io);
        let served = if h1 {
            // Head and body in one buffer: one TLS record, not two.
            hyper::server::conn::http1::Builder::new()
                .writev(false)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        } else {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        };
        if let Err(e) = served {
            tracing::debug!(port = self.port, error = %e, "inbound connection ended");
        }
    }

    /// `caller`: who called (`None`: plaintext), and whose rate-limit
    /// bucket the request takes from.
    async fn request(
        &self,
        req: Request<Incoming>,
        (caller, key): (Option<&SpiffeId>, &Caller),
        header: &Option<HeaderValue>,
        allowed: bool,
        h1: bool,
    ) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let trace = TraceContext::continue_in(&mut parts.headers);
        let span = tracing::info_span!(
            "inbound",
            port = self.port,
            caller = %Who(caller),
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
        );
        let resp = if !allowed {
            error_response(
                Reason::Forbidden,
                &format!("{} may not call this port", Who(caller)),
            )
        } else if let Err(limited) = self.shared.limits.check(self.port, key, started) {
            self.refused(Reason::RateLimited);
            rate_limited(&limited)
        } else {
            self.forward(parts, body, header, h1).instrument(span).await
        };
        self.shared
            .metrics
            .request(self.dest_labels(), &resp, started);
        resp
    }

    /// `caller`: the verified caller ID as the app is told it; `h1`: the
    /// request came as HTTP/1 (else the calling sidecar says whether its
    /// app spoke HTTP/1.1).
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        caller: &Option<HeaderValue>,
        h1: bool,
    ) -> Response<Body> {
        // Removed whatever the connection: only a sidecar on HTTP/2 says it.
        let said_h1 = parts
            .headers
            .remove(ORIG_PROTO)
            .is_some_and(|v| v.as_bytes() == b"HTTP/1.1");
        let h1 = h1 || said_h1;
        // Only this sidecar says who called; a plaintext caller is no one.
        parts.headers.remove(CLIENT_ID);
        if let Some(caller) = caller {
            parts.headers.insert(CLIENT_ID, caller.clone());
        }
        if h1 {
            parts.version = Version::HTTP_11;
            origin_form(&mut parts.headers, &mut parts.uri);
        }
        if h1 && upgrade::requested(&parts.headers) {
            // Rare, and its future large: boxed, so that every other
            // request's future, which hyper moves into place, stays small.
            return Box::pin(self.upgrade(parts, body)).await;
        }
        let sent = if h1 {
            self.send_h1(Request::from_parts(parts, boxed(body))).await
        } else {
            self.send_h2(parts, body).await
        };
        match sent {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "app request failed");
                error_response(Reason::AppUnavailable, &format!("app at {}", self.app))
            }
        }
    }

    async fn send_h2(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
    ) -> Result<Response<Body>, BoxError> {
        // The client wants an absolute URI (it dials the app whatever the
        // URI says); a caller without a sidecar may send origin-form.
        absolute_form(&parts.headers, &mut parts.uri, "app");
        let req = Request::from_parts(parts, boxed(body));
        let resp = self.h2.mine().request(req).await?;
        Ok(resp.map(boxed))
    }

    /// An HTTP/1.1 upgrade, on a connection to the app of its own; on
    /// `101` the caller's stream is joined to the app's.
    async fn upgrade(&self, mut parts: http::request::Parts, body: Incoming) -> Response<Body> {
        let Some(caller_side) = parts.extensions.remove::<OnUpgrade>() else {
            return error_response(Reason::UpstreamReset, "the caller's upgrade");
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(app = %self.app, error = %e, "app upgrade failed");
            error_response(Reason::AppUnavailable, &format!("app at {}", self.app))
        };
        let app = match self.dial().await {
            Ok(a) => a,
            Err(e) => return unavailable(&e),
        };
        let mut resp = match upgrade::send(app, Request::from_parts(parts, boxed(body))).await {
            Ok(r) => r,
            Err(e) => return unavailable(&e),
        };
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let app_side = hyper::upgrade::on(&mut resp);
            let shared = self.shared.clone();
            let label = self.label.clone();
            self.shared.spawn(async move {
                let joined = async {
                    let (mut caller, app) = upgrade::upgraded(caller_side, app_side).await?;
                    let labels = (Direction::inbound, &*label, &*shared.cluster);
                    let mut app = shared.metrics.counted(labels, End::Server, app);
                    tokio::io::copy_bidirectional(&mut caller, &mut app).await
                };
                if let Err(e) = joined.await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            });
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, boxed(body))
    }
}

/// 429 for a request a rate limit refused, with `Retry-After` in seconds.
fn rate_limited(limited: &Limited) -> Response<Body> {
    let secs = limited.retry_after_secs();
    let mut resp = error_response(
        Reason::RateLimited,
        &format!(
            "over the {:?} limit of RateLimitPolicy {}; retry after {secs} s",
            limited.scope, limited.policy
        ),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}
