//! Circuit breaking per locality group: a group already carrying its
//! limit of requests in flight, or of requests waiting for a connection,
//! takes no more; the request is answered `circuit_open` (503) at once
//! rather than queued behind an overloaded group. The counts are the
//! group's at the moment of the pick (the `Pick`'s `Load`): no lock
//! here. Opaque connections have a limit of their own (`Kind::Connections`,
//! checked where they are made).

use http::Request;

use super::{Answer, BoxFuture, Failure, Load, Next, Step, StepLayer};
use crate::balance::Pick;
use crate::body::Body;
use crate::config::Breakers;
use crate::reason::Reason;

/// Which limits apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// HTTP: requests in flight and requests waiting for a connection.
    Requests,
    /// Opaque TCP: connections open.
    Connections,
}

/// Whether a group with `load` is over `limits` for a call of `kind`.
pub(crate) fn open(load: Load, limits: &Breakers, kind: Kind) -> bool {
    match kind {
        Kind::Requests => {
            load.requests >= limits.max_requests || load.pending >= limits.max_pending
        }
        Kind::Connections => load.connections >= limits.max_connections,
    }
}

/// Refuses requests to a group over its limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breaker {
    limits: Breakers,
}

impl Breaker {
    pub(crate) fn layer(limits: Breakers) -> StepLayer<Self> {
        StepLayer(Self { limits })
    }
}

impl Step for Breaker {
    fn call(&self, below: Next, req: Request<Body>) -> BoxFuture<Answer> {
        let load = req
            .extensions()
            .get::<Pick>()
            .map_or_else(Load::default, |p| p.load);
        if open(load, &self.limits, Kind::Requests) {
            tracing::debug!(?load, "circuit open");
            let refused = Failure::unsent(Reason::CircuitOpen, req.into_body());
            return Box::pin(std::future::ready(Err(refused)));
        }
        super::call(below, req)
    }
}

#[cfg(test)]
mod tests {
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::balance::GroupKey;
    use crate::body::full;
    use crate::dest::testing::endpoint;
    use crate::stack::mock_below;

    fn limits() -> Breakers {
        Breakers {
            max_requests: 3,
            max_pending: 2,
            max_connections: 1,
            ..Breakers::default()
        }
    }

    fn request(load: Load) -> Request<Body> {
        let mut req = Request::new(full("hello"));
        req.extensions_mut().insert(Pick {
            endpoint: endpoint("127.0.0.1:1"),
            group: GroupKey {
                cluster: "east".into(),
                zone: "a".into(),
                remote: false,
            },
            load,
            at: None,
        });
        req
    }

    #[tokio::test]
    async fn a_group_under_its_limits_is_called() {
        let (svc, mut handle) = mock_below();
        let svc = Breaker::layer(limits()).layer(svc);
        let load = Load {
            requests: 2,
            pending: 1,
            connections: 0,
        };
        let call = tokio::spawn(svc.oneshot(request(load)));
        let (req, answer) = handle.next_request().await.expect("called");
        let passed = req.extensions().get::<Pick>().map(|p| p.load);
        assert_eq!(passed, Some(load));
        answer.send_response(http::Response::new(full("ok")));
        let resp = call.await.expect("task").expect("answered");
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn too_many_requests_or_pending_open_the_circuit_without_a_call() {
        for load in [
            Load {
                requests: 3,
                ..Load::default()
            },
            Load {
                pending: 2,
                ..Load::default()
            },
        ] {
            let (svc, mut handle) = mock_below();
            handle.allow(1);
            let svc = Breaker::layer(limits()).layer(svc);
            let refused = svc.oneshot(request(load)).await.expect_err("refused");
            assert_eq!(refused.reason, Reason::CircuitOpen);
            // The body comes back whole: nothing was sent.
            let body = refused.unsent.expect("unsent body");
            let bytes = http_body_util::BodyExt::collect(body).await.expect("body");
            assert_eq!(bytes.to_bytes(), "hello");
            assert!(
                !matches!(handle.poll_request(), std::task::Poll::Ready(Some(_))),
                "never called"
            );
        }
    }

    #[test]
    fn opaque_connections_have_their_own_limit() {
        let l = limits();
        let busy = Load {
            requests: 10,
            pending: 10,
            connections: 0,
        };
        assert!(!open(busy, &l, Kind::Connections));
        assert!(open(busy, &l, Kind::Requests));
        let full = Load {
            connections: 1,
            ..Load::default()
        };
        assert!(open(full, &l, Kind::Connections));
        assert!(!open(full, &l, Kind::Requests));
    }
}
