//! The layers of the outbound request path, each a tower `Layer` in a
//! module of its own, and what they hand each other. The stack is built,
//! top to bottom, in `outbound::http::stack`:
//!
//! ```text
//! route ─► retry (budget) ─► balance (pick, wait, outlier feedback) ─► breaker ─► endpoint (pool, mTLS)
//! ```
//!
//! The route sends a request to the stack below of the service it is for,
//! or, where HTTPRoutes split the service, of the backend it picked: every
//! backend a service of its own, with the layers below of its own.
//!
//! A layer's service answers `Result<Response<Body>, Failure>`: an answer
//! from an endpoint (any status), or why there was none. What a layer tells
//! the ones below travels in the request's extensions (`Deadline`,
//! `Replayable`, `Tried`, the `Pick` with its group's `Load`); what the
//! balancer tells the ones above, in the answer's (`ServedBy`) or the
//! `Failure`.

pub(crate) mod balance;
pub(crate) mod breaker;
pub(crate) mod endpoint;
mod mirror;
pub(crate) mod retry;
pub(crate) mod route;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::Response;
use tokio::time::Instant;

use crate::balance::EndpointInfo;
pub(crate) use crate::balance::Load;
use crate::body::Body;
use crate::reason::Reason;

/// A layer's future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What every layer's service answers.
pub(crate) type Answer = Result<Response<Body>, Failure>;

/// The layer below, shared. A tower service is called through `&mut`, so
/// a boxed tower service is cloned — the whole chain below it, an
/// allocation per layer — for every call; the layers here are called
/// through `&`, and passing one on is a reference count.
#[derive(Clone)]
pub(crate) struct Next(Arc<dyn Dispatch>);

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}

/// A layer's service called through `&`: what `Next` holds.
pub(crate) trait Dispatch: Send + Sync + 'static {
    fn dispatch(&self, req: http::Request<Body>) -> BoxFuture<Answer>;
}

impl Next {
    pub(crate) fn new(below: impl Dispatch) -> Self {
        Self(Arc::new(below))
    }

    /// Any tower service as the layer below (each call clones it and
    /// waits for its readiness): the layers' tests use tower-test's mock.
    #[cfg(test)]
    pub(crate) fn service(svc: impl Inner) -> Self {
        Self::new(TowerService(svc))
    }
}

/// What a layer can wrap: a service that becomes `Next`.
pub(crate) trait IntoNext {
    fn into_next(self) -> Next;
}

impl IntoNext for Next {
    fn into_next(self) -> Next {
        self
    }
}

impl<S: Step> IntoNext for Stepped<S> {
    fn into_next(self) -> Next {
        Next::new(self)
    }
}

/// A tower service as a tower service is called: cloned, then ready, then
/// called.
#[cfg(test)]
struct TowerService<S>(S);

#[cfg(test)]
impl<S: Inner> Dispatch for TowerService<S> {
    fn dispatch(&self, req: http::Request<Body>) -> BoxFuture<Answer> {
        use tower::ServiceExt;
        Box::pin(self.0.clone().oneshot(req))
    }
}

/// A tower service a test can put below a layer.
#[cfg(test)]
pub(crate) trait Inner:
    tower::Service<http::Request<Body>, Response = Response<Body>, Error = Failure, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

#[cfg(test)]
impl<S> Inner for S where
    S: tower::Service<
            http::Request<Body>,
            Response = Response<Body>,
            Error = Failure,
            Future: Send,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// What a layer does with a request, given the layer below. A `Step` is
/// made a tower layer by `StepLayer`; the layers differ only in this.
pub(crate) trait Step: Send + Sync + 'static {
    fn call(&self, below: Next, req: http::Request<Body>) -> BoxFuture<Answer>;
}

/// A `Step` as a tower `Layer`.
#[derive(Debug, Clone)]
pub(crate) struct StepLayer<S>(pub(crate) S);

impl<S: Step + Clone, I: IntoNext> tower::Layer<I> for StepLayer<S> {
    type Service = Stepped<S>;

    fn layer(&self, below: I) -> Stepped<S> {
        Stepped {
            step: self.0.clone(),
            below: below.into_next(),
        }
    }
}

/// A `Step` over the layer below: the service a `StepLayer` makes.
#[derive(Debug, Clone)]
pub(crate) struct Stepped<S> {
    step: S,
    below: Next,
}

impl<S: Step> Dispatch for Stepped<S> {
    fn dispatch(&self, req: http::Request<Body>) -> BoxFuture<Answer> {
        self.step.call(self.below.clone(), req)
    }
}

impl<S: Step> tower::Service<http::Request<Body>> for Stepped<S> {
    type Response = Response<Body>;
    type Error = Failure;
    type Future = BoxFuture<Answer>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Failure>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.dispatch(req)
    }
}

/// Calls the layer below.
pub(crate) fn call(below: Next, req: http::Request<Body>) -> BoxFuture<Answer> {
    below.0.dispatch(req)
}

/// Why a request (or one attempt of it) got no answer from an endpoint.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) reason: Reason,
    /// The endpoint the attempt went to, once one was picked.
    pub(crate) endpoint: Option<Arc<EndpointInfo>>,
    /// The request's body when none of it was sent (nothing picked, a
    /// breaker refused, a connect failed): another attempt may send it.
    pub(crate) unsent: Option<Body>,
}

impl Failure {
    pub(crate) fn new(reason: Reason) -> Self {
        Self {
            reason,
            endpoint: None,
            unsent: None,
        }
    }

    /// A failure before any of `body` was sent.
    pub(crate) fn unsent(reason: Reason, body: Body) -> Self {
        Self {
            reason,
            endpoint: None,
            unsent: Some(body),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason.as_str())?;
        if let Some(ep) = &self.endpoint {
            write!(f, " ({})", ep.key)?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl From<Reason> for Failure {
    fn from(reason: Reason) -> Self {
        Self::new(reason)
    }
}

/// When the request times out (set by the route; every wait below ends by it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(pub(crate) Instant);

/// The request may be sent again (idempotent, its body kept): it may wait
/// for an endpoint, and a small answer is read whole so that an endpoint
/// dying mid-answer is a retry, not a broken answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replayable;

/// Endpoints earlier attempts of the request went to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tried(pub(crate) Vec<Arc<str>>);

/// The endpoint that answered (in the answer's extensions).
#[derive(Debug, Clone)]
pub(crate) struct ServedBy(pub(crate) Arc<EndpointInfo>);

/// The request's deadline; a request that reached a layer without one
/// (only tests build such) has the default request timeout.
pub(crate) fn deadline<B>(req: &http::Request<B>) -> Instant {
    req.extensions().get::<Deadline>().map_or_else(
        || Instant::now() + crate::config::Timeouts::default().request,
        |d| d.0,
    )
}

/// The test's end of `mock_below`.
#[cfg(test)]
pub(crate) type Below = tower_test::mock::Handle<http::Request<Body>, Response<Body>>;

/// A mock of the layer below for the layers' tests: it answers what the
/// test sends on its handle, and fails with the `Failure` the test sends
/// (boxed, as the mock carries errors).
#[cfg(test)]
pub(crate) fn mock_below() -> (
    Next,
    tower_test::mock::Handle<http::Request<Body>, Response<Body>>,
) {
    use tower::ServiceExt;
    let (svc, handle) = tower_test::mock::pair::<http::Request<Body>, Response<Body>>();
    let svc = svc.map_err(|e| match e.downcast::<Failure>() {
        Ok(f) => *f,
        Err(other) => panic!("the mock failed on its own: {other}"),
    });
    (Next::service(svc), handle)
}
