//! The endpoint: the bottom of the stack. It takes a pooled mesh connection
//! to the endpoint the balancer picked (`Pick`) — HTTP/1.1 for a request
//! an HTTP/1.1 app made, HTTP/2 otherwise (`pool`) — making one over mTLS
//! when none is ready, and sends the attempt on it. A connect's outcome is
//! the endpoint's health (down until a probe connects, or back), told to
//! the balancer here. A small answer to a request that may be sent again is
//! read whole, so that an endpoint dying between its headers and its body
//! is a retry rather than a broken answer.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::retry::MAX_REPLAY;
use super::{Answer, BoxFuture, Dispatch, Failure, IntoNext, Next, Replayable, deadline};
use crate::balance::Pick;
use crate::body::{Body, boxed};
use crate::dest::Dest;
use crate::reason::Reason;

/// Sends attempts to the endpoints of `dest`.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    dest: Arc<Dest>,
}

impl Endpoint {
    pub(crate) fn new(dest: Arc<Dest>) -> Self {
        Self { dest }
    }
}

impl Dispatch for Endpoint {
    fn dispatch(&self, req: Request<Body>) -> BoxFuture<Answer> {
        Box::pin(send(self.dest.clone(), req))
    }
}

impl IntoNext for Endpoint {
    fn into_next(self) -> Next {
        Next::new(self)
    }
}

impl Service<Request<Body>> for Endpoint {
    type Response = http::Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.dispatch(req)
    }
}

/// What the request says is read here, and the future uses what it holds
/// in place: it is boxed for every attempt, and an allocation past 1 KiB
/// takes the allocator's slow path.
fn send(dest: Arc<Dest>, mut req: Request<Body>) -> impl Future<Output = Answer> + Send {
    let pick = req.extensions_mut().remove::<Pick>();
    let deadline = deadline(&req);
    let replayable = req.extensions().get::<Replayable>().is_some();
    async move {
        let Some(pick) = &pick else {
            // Only a stack without the balance layer above gets here.
            tracing::error!("an attempt reached the endpoint layer without a pick");
            return Err(Failure::unsent(Reason::NoEndpoints, req.into_body()));
        };
        // One timer for every wait of the attempt, registered only once
        // one waits (a pooled connection is ready at once).
        let mut timer = pin!(tokio::time::sleep_until(deadline));
        // The clock is read only for a connect (a pooled connection's
        // failure is known at once).
        let mut started = None;
        let conn = {
            let get =
                dest.shared
                    .pools
                    .mine()
                    .get(&dest.shared.connector, &pick.endpoint, req.version());
            let mut conn = pin!(within(timer.as_mut(), get));
            // A pooled connection is ready at once; only a request that has
            // to wait for one counts as pending (for the breaker).
            match poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await {
                Poll::Ready(c) => c,
                Poll::Pending => {
                    started = Some(Instant::now());
                    dest.pending(pick, 1);
                    let c = conn.await;
                    dest.pending(pick, -1);
                    c
                }
            }
        };
        let conn = match conn {
            Err(_) => return Err(Failure::new(Reason::RequestTimeout)),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "connect failed");
                dest.connect_failed(pick, started.unwrap_or_else(Instant::now));
                return Err(Failure::unsent(Reason::ConnectFailed, req.into_body()));
            }
            Ok(Ok((conn, fresh))) => {
                if fresh {
                    dest.connected(pick);
                }
                conn
            }
        };
        // Sent within the await: a future named first would keep a second
        // copy of itself in this one.
        let resp = match within(timer.as_mut(), conn.send(req)).await {
            Err(_) => return Err(Failure::new(Reason::RequestTimeout)),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "request failed");
                return Err(Failure::new(Reason::UpstreamReset));
            }
            Ok(Ok(resp)) => resp,
        };
        let small = resp
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_REPLAY);
        if !(small && replayable) || resp.body().is_end_stream() {
            return Ok(resp);
        }
        let (parts, body) = resp.into_parts();
        match within(timer, body.collect()).await {
            Ok(Ok(whole)) => Ok(http::Response::from_parts(parts, boxed(whole))),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "answer broke");
                Err(Failure::new(Reason::UpstreamReset))
            }
            Err(_) => Err(Failure::new(Reason::RequestTimeout)),
        }
    }
}

/// The deadline passed.
struct Elapsed;

/// `f`, unless `timer` fires first (polled only while `f` waits).
async fn within<F: Future>(mut timer: Pin<&mut Sleep>, f: F) -> Result<F::Output, Elapsed> {
    let mut f = pin!(f);
    poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests;
