//! Retries, within the service's retry budget. Another attempt goes (to
//! another endpoint: the balancer avoids those `Tried`) when:
//! - a connect failed: nothing was sent, so even a streaming body is still
//!   whole and goes again;
//! - the connection broke under a request that may be sent again
//!   (idempotent, its body — at most 64 KiB — kept here);
//! - such a request was answered 502, 503 or 504. That answer is set aside:
//!   if no later attempt does better, it is the one the app gets.
//!
//! Every retry is taken from the budget (`budget::Budget`); a refused one
//! ends the request with what the last attempt got. The request timeout is
//! not retried: it is the whole request's. A route's `backendRequest`
//! timeout (`AttemptTimeout`) limits each attempt within it.
//!
//! A request that fails with its body still at hand (kept for replay, or
//! given back unsent) fails with the body, so a route may send it to
//! another backend.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use super::route::AttemptTimeout;
use super::{
    Answer, BoxFuture, Failure, Next, Replayable, ServedBy, Step, StepLayer, Tried, deadline,
};
use crate::body::{Body, full};
use crate::budget::Budget;
use crate::reason::Reason;

/// Attempts per request, the first included.
pub(crate) const MAX_ATTEMPTS: usize = 5;
/// Request bodies up to this size are kept so the request can be retried.
pub(crate) const MAX_REPLAY: u64 = 64 * 1024;

/// Retries attempts of the layer below within `budget`.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    budget: Arc<Budget>,
}

impl Retry {
    pub(crate) fn layer(budget: Arc<Budget>) -> StepLayer<Self> {
        StepLayer(Self { budget })
    }
}

impl Step for Retry {
    fn call(&self, below: Next, req: Request<Body>) -> BoxFuture<Answer> {
        Box::pin(attempts(below, self.budget.clone(), req))
    }
}

/// Whether a method may be sent twice with the effect of once (RFC 9110).
pub(crate) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request is taken apart here and the future uses the parts where it
/// captured them, not a second copy (it is boxed for every request, and an
/// allocation past 1 KiB takes the allocator's slow path).
fn attempts(inner: Next, budget: Arc<Budget>, req: Request<Body>) -> impl Future<Output = Answer> {
    let deadline = deadline(&req);
    let per_attempt = req.extensions().get::<AttemptTimeout>().map(|t| t.0);
    let (mut parts, body) = req.into_parts();
    async move {
        // A small body is kept so the request can be sent again.
        let mut body = if body.is_end_stream() {
            Kept::Replay(Bytes::new())
        } else if body.size_hint().exact().is_some_and(|n| n <= MAX_REPLAY) {
            match tokio::time::timeout_at(deadline, body.collect()).await {
                Ok(Ok(b)) => Kept::Replay(b.to_bytes()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "app request body failed");
                    return Err(Failure::new(Reason::UpstreamReset));
                }
                Err(_) => return Err(Failure::new(Reason::RequestTimeout)),
            }
        } else {
            Kept::Stream(body)
        };
        let replayable = idempotent(&parts.method) && matches!(body, Kept::Replay(_));
        budget.request();
        let mut tried = Tried::default();
        let mut last = Reason::NoHealthyEndpoints;
        // A retry after a 5xx is granted before the answer is set aside.
        let mut granted = false;
        let mut set_aside = None;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 && !std::mem::take(&mut granted) && !budget.try_retry() {
                break;
            }
            let Some(b) = body.take() else { break };
            // Made and handed down in a block of its own: the request is not
            // held (a copy's room in the future) while the attempt runs.
            let answer = {
                let mut req = Request::new(b);
                *req.method_mut() = parts.method.clone();
                *req.uri_mut() = parts.uri.clone();
                *req.version_mut() = parts.version;
                *req.headers_mut() = parts.headers.clone();
                // The first attempt takes the request's own extensions (the route's
                // deadline among them); a later one starts afresh.
                *req.extensions_mut() = std::mem::take(&mut parts.extensions);
                let ext = req.extensions_mut();
                match per_attempt {
                    Some(t) => {
                        let ends = deadline.min(tokio::time::Instant::now() + t);
                        ext.insert(super::Deadline(ends));
                    }
                    None if ext.get::<super::Deadline>().is_none() => {
                        ext.insert(super::Deadline(deadline));
                    }
                    None => {}
                }
                if !tried.0.is_empty() {
                    ext.insert(tried.clone());
                }
                if replayable {
                    ext.insert(Replayable);
                }
                super::call(inner.clone(), req)
            };
            match answer.await {
                Ok(resp) => {
                    let retryable = matches!(resp.status().as_u16(), 502..=504)
                        && replayable
                        && attempt + 1 < MAX_ATTEMPTS;
                    if retryable && budget.try_retry() {
                        granted = true;
                        if let Some(ServedBy(ep)) = resp.extensions().get() {
                            tried.0.push(ep.key.clone());
                        }
                        set_aside = Some(resp);
                        continue;
                    }
                    return Ok(resp);
                }
                Err(mut f) => {
                    if let Some(ep) = &f.endpoint {
                        tried.0.push(ep.key.clone());
                    }
                    if let Some(unsent) = f.unsent.take() {
                        body.give_back(unsent);
                    }
                    match f.reason {
                        // Nothing was sent: another endpoint may take it.
                        Reason::ConnectFailed => last = f.reason,
                        Reason::UpstreamReset if replayable => last = f.reason,
                        Reason::UpstreamReset => {
                            last = f.reason;
                            break;
                        }
                        Reason::RequestTimeout => return Err(f),
                        // Nothing left to try: the last failure is the better reason.
                        _ if attempt > 0 => break,
                        _ => {
                            f.unsent = body.take();
                            return Err(f);
                        }
                    }
                }
            }
        }
        set_aside.map_or_else(
            || {
                Err(Failure {
                    unsent: body.take(),
                    ..Failure::new(last)
                })
            },
            Ok,
        )
    }
}

/// The request's body between attempts.
enum Kept {
    /// Small, kept whole: every attempt sends a copy.
    Replay(Bytes),
    /// Streamed: one attempt sends it, unless it comes back unsent.
    Stream(Body),
    /// Streamed and gone.
    Sent,
}

impl Kept {
    fn take(&mut self) -> Option<Body> {
        match std::mem::replace(self, Kept::Sent) {
            Kept::Replay(b) => {
                *self = Kept::Replay(b.clone());
                Some(full(b))
            }
            Kept::Stream(b) => Some(b),
            Kept::Sent => None,
        }
    }

    fn give_back(&mut self, body: Body) {
        if matches!(self, Kept::Sent) {
            *self = Kept::Stream(body);
        }
    }
}

#[cfg(test)]
mod tests;
