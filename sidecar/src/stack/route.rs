//! Routing: the top of the stack, where a request meets the service it is
//! for. Today every request of an app connection goes to the service the
//! app dialled (its upstream port, or the cluster IP behind the transparent
//! listener); per-request routes (HTTPRoute) choose among backends here,
//! each backend with the layers below of its own. The route starts the
//! request's clock — every wait below ends by its `Deadline` — and holds
//! requests until discovery has answered for the service, at most the
//! discovery timeout.

use std::sync::Arc;

use http::Request;
use tokio::time::Instant;

use super::{Answer, BoxFuture, Deadline, Next, Step, StepLayer};
use crate::body::Body;
use crate::dest::Dest;

/// Sends requests to `dest`'s stack.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    dest: Arc<Dest>,
}

impl Route {
    pub(crate) fn layer(dest: Arc<Dest>) -> StepLayer<Self> {
        StepLayer(Self { dest })
    }
}

impl Step for Route {
    fn call(&self, below: Next, mut req: Request<Body>) -> BoxFuture<Answer> {
        let dest = self.dest.clone();
        let deadline = Instant::now() + dest.shared.timeouts.request;
        req.extensions_mut().insert(Deadline(deadline));
        if dest.answered() {
            return super::call(below, req);
        }
        Box::pin(async move {
            dest.ready().await?;
            super::call(below, req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::body::full;
    use crate::dest::testing::{dest, set};
    use crate::reason::Reason;
    use crate::stack::mock_below;

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_discovery_and_carries_its_deadline() {
        let (d, sets) = dest(256);
        let (svc, mut handle) = mock_below();
        let svc = Route::layer(d.clone()).layer(svc);
        let sent = Instant::now();
        let call = tokio::spawn(svc.oneshot(Request::new(full(""))));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            handle.poll_request().is_pending(),
            "held until discovery answers"
        );
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        let (req, answer) = handle.next_request().await.expect("passed on");
        let Deadline(deadline) = *req.extensions().get::<Deadline>().expect("deadline");
        assert_eq!(deadline, sent + d.shared.timeouts.request);
        answer.send_response(http::Response::new(full("ok")));
        assert_eq!(call.await.expect("task").expect("answer").status(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_from_discovery_is_discovery_unavailable() {
        let (d, _sets) = dest(256);
        let (svc, mut handle) = mock_below();
        handle.allow(1);
        let svc = Route::layer(d.clone()).layer(svc);
        let started = Instant::now();
        let failed = svc
            .oneshot(Request::new(full("")))
            .await
            .expect_err("failed");
        assert_eq!(failed.reason, Reason::DiscoveryUnavailable);
        assert_eq!(started.elapsed(), d.shared.timeouts.discovery);
        assert!(
            !matches!(handle.poll_request(), std::task::Poll::Ready(Some(_))),
            "never passed on"
        );
    }
}
