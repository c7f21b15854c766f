//! The balance layer: a real destination's balancer over a mock of the
//! layers below.

use std::time::Duration;

use http::Response;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::balance::Pick;
use crate::body::full;
use crate::dest::testing::{Sets, dest, set};
use crate::stack::{Below, Deadline, Load, Stepped, mock_below};

const A: &str = "10.0.0.1:80";
const B: &str = "10.0.0.2:80";

fn balance() -> (Stepped<Balance>, Below, Arc<Dest>, Sets) {
    let (d, sets) = dest(256);
    let (below, handle) = mock_below();
    (Balance::layer(d.clone()).layer(below), handle, d, sets)
}

fn request(d: &Dest, tried: &[&str], replayable: bool, wait: Duration) -> Request<Body> {
    let mut req = Request::new(full("hello"));
    let ext = req.extensions_mut();
    ext.insert(Deadline(Instant::now() + wait));
    ext.insert(Tried(
        tried
            .iter()
            .map(|a| format!("{a}/{}", d.target.sni()).into())
            .collect(),
    ));
    if replayable {
        ext.insert(Replayable);
    }
    req
}

fn picked(req: &Request<Body>) -> String {
    req.extensions()
        .get::<Pick>()
        .expect("a pick")
        .endpoint
        .addr
        .to_string()
}

#[tokio::test]
async fn an_attempt_goes_to_an_endpoint_not_tried_and_says_who_served() {
    let (svc, mut below, d, sets) = balance();
    sets.send_replace(set(&[(A, true), (B, true)]));
    for _ in 0..10 {
        let call =
            tokio::spawn(
                svc.clone()
                    .oneshot(request(&d, &[A], false, Duration::from_secs(5))),
            );
        let (req, send) = below.next_request().await.expect("passed on");
        assert_eq!(picked(&req), B);
        let load = req.extensions().get::<Pick>().map(|p| p.load);
        assert_eq!(
            load,
            Some(Load::default()),
            "the group's load, for the breaker"
        );
        assert!(req.extensions().get::<Tried>().is_none(), "used up here");
        send.send_response(Response::new(full("ok")));
        let resp = call.await.expect("task").expect("answer");
        let ServedBy(ep) = resp.extensions().get::<ServedBy>().expect("served by");
        assert_eq!(ep.addr.to_string(), B);
    }
}

#[tokio::test]
async fn the_attempt_is_in_flight_while_below_works_on_it() {
    let (svc, mut below, d, sets) = balance();
    sets.send_replace(set(&[(A, true)]));
    let call = tokio::spawn(
        svc.clone()
            .oneshot(request(&d, &[], false, Duration::from_secs(5))),
    );
    let (_, send) = below.next_request().await.expect("passed on");
    let load = d.pick(&[]).expect("picked").load;
    assert_eq!(load.requests, 1);
    send.send_response(Response::new(full("ok")));
    call.await.expect("task").expect("answer");
    let load = d.pick(&[]).expect("picked").load;
    assert_eq!(load, Load::default(), "ended with the answer");
}

#[tokio::test]
async fn failures_the_endpoint_caused_eject_it_others_do_not() {
    // The test policy ejects after one failure.
    for (reason, ejects) in [
        (Reason::UpstreamReset, true),
        (Reason::RequestTimeout, true),
        (Reason::ConnectFailed, false),
        (Reason::CircuitOpen, false),
    ] {
        let (svc, mut below, d, sets) = balance();
        sets.send_replace(set(&[(A, true)]));
        let call =
            tokio::spawn(
                svc.clone()
                    .oneshot(request(&d, &[], false, Duration::from_secs(5))),
            );
        let (_, send) = below.next_request().await.expect("passed on");
        send.send_error(Failure::new(reason));
        let failure = call.await.expect("task").expect_err("failed");
        assert_eq!(failure.reason, reason);
        assert_eq!(
            failure.endpoint.map(|e| e.addr.to_string()).as_deref(),
            Some(A),
            "the failure names the endpoint"
        );
        let next = d.pick(&[]).map(|_| ());
        assert_eq!(next.is_err(), ejects, "{reason:?}");
    }
}

#[tokio::test]
async fn a_5xx_answer_teaches_the_balancer() {
    let (svc, mut below, d, sets) = balance();
    sets.send_replace(set(&[(A, true)]));
    let call = tokio::spawn(
        svc.clone()
            .oneshot(request(&d, &[], false, Duration::from_secs(5))),
    );
    let (_, send) = below.next_request().await.expect("passed on");
    let mut resp = Response::new(full("down"));
    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    send.send_response(resp);
    let resp = call.await.expect("task").expect("the 503 passes up");
    assert_eq!(resp.status(), 503);
    assert_eq!(d.pick(&[]).map(|_| ()), Err(Reason::NoHealthyEndpoints));
}

#[tokio::test(start_paused = true)]
async fn only_a_replayable_request_waits_for_an_endpoint() {
    let (svc, mut below, d, sets) = balance();
    sets.send_replace(set(&[(A, false)]));
    // Not replayable: fails at once, its body given back.
    let failure = svc
        .clone()
        .oneshot(request(&d, &[], false, Duration::from_secs(5)))
        .await
        .expect_err("none can serve");
    assert_eq!(failure.reason, Reason::NoHealthyEndpoints);
    let body = failure
        .unsent
        .expect("unsent")
        .collect()
        .await
        .expect("body");
    assert_eq!(body.to_bytes(), "hello");
    // Replayable: waits until A is ready.
    let call = tokio::spawn(
        svc.clone()
            .oneshot(request(&d, &[], true, Duration::from_secs(5))),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    sets.send_replace(set(&[(A, true)]));
    let (req, send) = below
        .next_request()
        .await
        .expect("passed on after the wait");
    assert_eq!(picked(&req), A);
    send.send_response(Response::new(full("ok")));
    call.await.expect("task").expect("answer");
    // Within its deadline only.
    sets.send_replace(set(&[(A, false)]));
    let started = Instant::now();
    let failure = svc
        .oneshot(request(&d, &[], true, Duration::from_secs(2)))
        .await
        .expect_err("none came back");
    assert_eq!(failure.reason, Reason::NoHealthyEndpoints);
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[test]
fn an_attempt_s_balance_future_stays_small() {
    // It is boxed for every attempt: past 1 KiB an allocation leaves the
    // allocator's fast path (mimalloc's small sizes, and glibc's per-thread
    // cache, end there; it was 1,160 bytes).
    let (d, _sets) = dest(256);
    let (below, _handle) = mock_below();
    let f = attempt(
        below,
        d.clone(),
        request(&d, &[], true, Duration::from_secs(1)),
    );
    let size = std::mem::size_of_val(&f);
    assert!(size <= 1024, "the balance layer's future is {size} bytes");
}
