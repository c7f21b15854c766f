//! Balancing: each attempt goes to the endpoint the service's balancer
//! picks (`crate::balance`: locality groups and failover, P2C over
//! peak-EWMA, outlier ejection, failback hold), never one an earlier
//! attempt of the request went to (`Tried`). A request that may be sent
//! again and finds endpoints but none able to serve waits for one, within
//! its deadline (`dest::wait`) — unless another backend of its route could
//! take it (`Elsewhere`); others fail at once.
//!
//! The attempt is counted in flight on the endpoint and its group while the
//! layers below run, and its outcome teaches the balancer: the latency of
//! an answer, and a failure when the endpoint answered 5xx, broke the
//! connection or let the deadline pass. A refused or failed connect is the
//! endpoint layer's to report (it is health, not latency); a breaker's
//! refusal teaches nothing.

use std::future::Future;
use std::sync::Arc;

use http::Request;

use super::route::Elsewhere;
use super::{
    Answer, BoxFuture, Failure, Next, Replayable, ServedBy, Step, StepLayer, Tried, deadline,
};
use crate::body::Body;
use crate::dest::Dest;
use crate::reason::Reason;

/// Sends each attempt to an endpoint of `dest`.
#[derive(Debug, Clone)]
pub(crate) struct Balance {
    dest: Arc<Dest>,
}

impl Balance {
    pub(crate) fn layer(dest: Arc<Dest>) -> StepLayer<Self> {
        StepLayer(Self { dest })
    }
}

impl Step for Balance {
    fn call(&self, below: Next, req: Request<Body>) -> BoxFuture<Answer> {
        Box::pin(attempt(below, self.dest.clone(), req))
    }
}

/// An async block, not an `async fn`: it uses the request where it was
/// captured rather than a second copy (the future is boxed for every
/// attempt, and an allocation past 1 KiB takes the allocator's slow path).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps a second copy of its arguments"
)]
fn attempt(inner: Next, dest: Arc<Dest>, mut req: Request<Body>) -> impl Future<Output = Answer> {
    async move {
        let tried = req.extensions_mut().remove::<Tried>().unwrap_or_default();
        let key = dest.affinity_key(req.headers());
        let picked = match dest.pick_keyed(&tried.0, key) {
            // Endpoints exist but none can serve now: a request that may be
            // sent again waits for one to come back (rare: boxed apart).
            Err(Reason::NoHealthyEndpoints)
                if req.extensions().get::<Replayable>().is_some()
                    && req.extensions().get::<Elsewhere>().is_none() =>
            {
                Box::pin(dest.wait_for_endpoint(&tried.0, deadline(&req))).await
            }
            picked => picked,
        };
        let pick = match picked {
            Ok(p) => p,
            Err(reason) => return Err(Failure::unsent(reason, req.into_body())),
        };
        let endpoint = pick.endpoint.clone();
        let flight = dest.start(&pick);
        req.extensions_mut().insert(pick);
        match super::call(inner, req).await {
            Ok(mut resp) => {
                flight.answered(resp.status().is_server_error());
                resp.extensions_mut().insert(ServedBy(endpoint));
                Ok(resp)
            }
            Err(mut f) => {
                if matches!(f.reason, Reason::UpstreamReset | Reason::RequestTimeout) {
                    flight.answered(true);
                }
                f.endpoint = Some(endpoint);
                Err(f)
            }
        }
    }
}

#[cfg(test)]
mod tests;
