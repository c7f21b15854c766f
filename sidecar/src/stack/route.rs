//! Routing: the top of the stack, where a request meets the service it is
//! for. The route starts the request's clock — every wait below ends by
//! its `Deadline` — and holds requests until discovery has answered for
//! the service, at most the discovery timeout.
//!
//! A service without routes sends every request to its own stack below.
//! One with routes (HTTPRoutes attached to it, see `crate::routes`) finds
//! the request's rule — none: 404 — applies the rule's timeouts and header
//! edits, copies it to the rule's mirrors (`mirror`), and sends it to a
//! backend picked by weight, each backend a service with the layers below
//! of its own (its locality-aware balancing, outlier detection and
//! failover). When the backend could not take it and sent nothing (no
//! endpoint, none healthy, every connect refused, its breaker open), the
//! request goes to another backend of the rule.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tokio::time::Instant;

use super::{Answer, BoxFuture, Deadline, Failure, Next, Step, StepLayer};
use crate::body::Body;
use crate::config::ServiceTarget;
use crate::dest::Dest;
use crate::reason::Reason;
use crate::routes::{Backend, RouteTable};

/// A request timeout of 0s: none. Far enough never to come, near enough
/// for any clock's arithmetic.
const NO_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where a route's backends are: a backend's destination, and the stack
/// below the route that sends to it.
pub(crate) trait Backends: Send + Sync + 'static {
    fn backend(&self, target: &ServiceTarget) -> (Arc<Dest>, Next);
}

/// Another backend of the request's rule could take it: the layers below
/// should fail at once rather than wait for an endpoint of this one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elsewhere;

/// Each attempt's own time limit (`timeouts.backendRequest`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptTimeout(pub(crate) Duration);

/// Sends requests to `dest`'s stack, or by its routes to their backends'.
#[derive(Clone)]
pub(crate) struct Route {
    dest: Arc<Dest>,
    backends: Arc<dyn Backends>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("dest", &self.dest.label)
            .finish()
    }
}

impl Route {
    pub(crate) fn layer(dest: Arc<Dest>, backends: Arc<dyn Backends>) -> StepLayer<Self> {
        StepLayer(Self { dest, backends })
    }
}

impl Step for Route {
    fn call(&self, below: Next, mut req: Request<Body>) -> BoxFuture<Answer> {
        let dest = self.dest.clone();
        let started = Instant::now();
        if dest.answered() {
            let routes = dest.routes();
            if routes.is_empty() {
                let deadline = started + dest.shared.timeouts.request;
                req.extensions_mut().insert(Deadline(deadline));
                return super::call(below, req);
            }
            return Box::pin(routed(
                self.backends.clone(),
                dest,
                below,
                routes,
                req,
                started,
            ));
        }
        let backends = self.backends.clone();
        Box::pin(async move {
            dest.ready().await?;
            let routes = dest.routes();
            if routes.is_empty() {
                let deadline = started + dest.shared.timeouts.request;
                req.extensions_mut().insert(Deadline(deadline));
                return super::call(below, req).await;
            }
            routed(backends, dest, below, routes, req, started).await
        })
    }
}

/// Whether another backend may take a request this one failed: it sent
/// nothing of it, or the request may be sent twice (idempotent, its body
/// kept) and the connection broke under it.
fn movable(reason: Reason, idempotent: bool) -> bool {
    match reason {
        Reason::NoEndpoints
        | Reason::NoHealthyEndpoints
        | Reason::ConnectFailed
        | Reason::CircuitOpen
        | Reason::DiscoveryUnavailable => true,
        Reason::UpstreamReset => idempotent,
        _ => false,
    }
}

/// A request to a service with routes.
async fn routed(
    backends: Arc<dyn Backends>,
    dest: Arc<Dest>,
    own: Next,
    routes: Arc<RouteTable>,
    mut req: Request<Body>,
    started: Instant,
) -> Answer {
    let Some(rule) = routes.find(&req) else {
        return Err(Failure::new(Reason::NoRouteMatch));
    };
    let timeout = match rule.request_timeout {
        None => dest.shared.timeouts.request,
        Some(None) => NO_TIMEOUT,
        Some(Some(t)) => t,
    };
    let deadline = started + timeout;
    rule.headers.apply(req.headers_mut());
    let ext = req.extensions_mut();
    ext.insert(Deadline(deadline));
    if let Some(t) = rule.backend_timeout {
        ext.insert(AttemptTimeout(t));
    }
    if !rule.mirrors.is_empty() {
        req = super::mirror::copy(rule, req, deadline, &dest, &*backends).await?;
    }
    let resolve = |b: &Backend| b.resolve(&dest, &own, &*backends);
    let usable = |b: &Backend| resolve(b).is_none_or(|(d, _)| d.can_serve());
    let idempotent = super::retry::idempotent(req.method());
    let mut tried = Vec::new();
    loop {
        let Some(i) = rule.pick(usable, &tried) else {
            return Err(Failure::new(Reason::NoRouteBackend));
        };
        tried.push(i);
        let backend = &rule.backends[i];
        backend.picked.inc();
        let Some((to, next)) = resolve(backend) else {
            return Err(Failure::new(Reason::NoRouteBackend));
        };
        let fallback = rule.has_other(&tried);
        // Kept to send the request again elsewhere: only while there is
        // an elsewhere.
        let head = fallback.then(|| head_of(&req));
        if fallback {
            req.extensions_mut().insert(Elsewhere);
        } else {
            req.extensions_mut().remove::<Elsewhere>();
        }
        let answer = match to.ready().await {
            Ok(()) => super::call(next, req).await,
            Err(reason) => Err(Failure::unsent(reason, req.into_body())),
        };
        match (answer, head) {
            (Err(mut f), Some(head)) if movable(f.reason, idempotent) && f.unsent.is_some() => {
                let body = f.unsent.take().expect("checked");
                tracing::debug!(rule = %rule.label, backend = %to.label, reason = f.reason.as_str(),
                    "backend could not take the request; another backend of the rule will");
                req = head.with(body);
            }
            (answer, _) => return answer,
        }
    }
}

/// What a request is sent again with: its head and the extensions the
/// layers below read.
struct Head {
    parts: http::request::Parts,
}

impl Head {
    fn with(self, body: Body) -> Request<Body> {
        Request::from_parts(self.parts, body)
    }
}

fn head_of(req: &Request<Body>) -> Head {
    let mut r = Request::new(());
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    let ext = r.extensions_mut();
    if let Some(d) = req.extensions().get::<Deadline>() {
        ext.insert(*d);
    }
    if let Some(t) = req.extensions().get::<AttemptTimeout>() {
        ext.insert(*t);
    }
    Head {
        parts: r.into_parts().0,
    }
}

#[cfg(test)]
mod tests;
