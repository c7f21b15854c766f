//! The retry layer over a mock of the layers below.

use std::time::Duration;

use http::{Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock::SendResponse;

use super::*;
use crate::balance::Params;
use crate::body::BoxError;
use crate::dest::testing::endpoint;
use crate::metrics::{Metrics, ServiceLabels};
use crate::stack::{Below, Deadline, Stepped, mock_below};

/// A retry layer over a mock, its budget `percent` of requests plus `floor`
/// per second.
fn retry(percent: u32, floor: u32) -> (Stepped<Retry>, Below, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let budget = Arc::new(Budget::new(metrics.clone(), "api.shop:80".into()));
    budget.set(&Params {
        retry_percent: percent,
        min_retries_per_second: floor,
        ..Params::default()
    });
    let (below, handle) = mock_below();
    (Retry::layer(budget).layer(below), handle, metrics)
}

fn retries(metrics: &Metrics) -> (u64, u64) {
    let labels = ServiceLabels {
        service: "api.shop:80".into(),
    };
    (
        metrics.retries.get_or_create(&labels).get(),
        metrics.retries_refused.get_or_create(&labels).get(),
    )
}

fn request(method: Method, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = "http://api.shop/".parse().expect("uri");
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(10)));
    req
}

/// A body of unknown length: streamed, never kept.
fn streamed(text: &'static str) -> Body {
    let frames = futures::stream::iter([Ok::<_, BoxError>(hyper::body::Frame::data(Bytes::from(
        text,
    )))]);
    crate::body::boxed(http_body_util::StreamBody::new(frames))
}

fn answer(status: u16, from: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{status} from {from}")));
    *resp.status_mut() = StatusCode::from_u16(status).expect("status");
    resp.extensions_mut().insert(ServedBy(endpoint(from)));
    resp
}

fn fail(send: SendResponse<Response<Body>>, reason: Reason, from: &str, unsent: Option<Body>) {
    send.send_error(Failure {
        reason,
        endpoint: Some(endpoint(from)),
        unsent,
    });
}

async fn text(body: Body) -> String {
    let bytes = body.collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

fn tried(req: &Request<Body>) -> Vec<String> {
    req.extensions()
        .get::<Tried>()
        .map(|t| t.0.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failed_connect_sends_even_a_streamed_post_to_another_endpoint() {
    let (svc, mut below, budget) = retry(20, 10);
    let call = tokio::spawn(svc.oneshot(request(Method::POST, streamed("order"))));
    let (req, send) = below.next_request().await.expect("first attempt");
    assert!(
        req.extensions().get::<Replayable>().is_none(),
        "a POST is not replayable"
    );
    assert!(tried(&req).is_empty());
    // Nothing was sent: the body comes back with the failure.
    fail(
        send,
        Reason::ConnectFailed,
        "10.0.0.1:80",
        Some(req.into_body()),
    );
    let (req, send) = below.next_request().await.expect("second attempt");
    assert_eq!(tried(&req), ["10.0.0.1:80/api.shop"]);
    assert_eq!(text(req.into_body()).await, "order", "the same body, whole");
    send.send_response(answer(200, "10.0.0.2:80"));
    let resp = call.await.expect("task").expect("answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(retries(&budget), (1, 0));
}

#[tokio::test]
async fn a_broken_connection_is_retried_only_for_what_may_be_sent_again() {
    // A GET with a small body: kept, and sent again.
    let (svc, mut below, _) = retry(20, 10);
    let call = tokio::spawn(svc.oneshot(request(Method::GET, full("q"))));
    let (req, send) = below.next_request().await.expect("first attempt");
    assert!(req.extensions().get::<Replayable>().is_some());
    fail(send, Reason::UpstreamReset, "10.0.0.1:80", None);
    let (req, send) = below.next_request().await.expect("second attempt");
    assert_eq!(text(req.into_body()).await, "q", "a copy of the kept body");
    send.send_response(answer(200, "10.0.0.2:80"));
    assert_eq!(call.await.expect("task").expect("answer").status(), 200);

    // A POST: sent once, the failure is the app's to see.
    let (svc, mut below, budget) = retry(20, 10);
    let call = tokio::spawn(svc.oneshot(request(Method::POST, full("order"))));
    let (_, send) = below.next_request().await.expect("first attempt");
    fail(send, Reason::UpstreamReset, "10.0.0.1:80", None);
    let failure = call.await.expect("task").expect_err("not retried");
    assert_eq!(failure.reason, Reason::UpstreamReset);
    assert_eq!(retries(&budget), (0, 0));
}

#[tokio::test]
async fn a_5xx_is_set_aside_and_answers_if_nothing_does_better() {
    let (svc, mut below, budget) = retry(20, 10);
    let call = tokio::spawn(svc.oneshot(request(Method::GET, full(""))));
    let (_, send) = below.next_request().await.expect("first attempt");
    send.send_response(answer(503, "10.0.0.1:80"));
    // The retry finds nothing else able to serve.
    let (req, send) = below.next_request().await.expect("second attempt");
    assert_eq!(tried(&req), ["10.0.0.1:80/api.shop"]);
    send.send_error(Failure::new(Reason::NoHealthyEndpoints));
    let resp = call.await.expect("task").expect("the 503");
    assert_eq!(resp.status(), 503);
    assert_eq!(text(resp.into_body()).await, "503 from 10.0.0.1:80");
    assert_eq!(retries(&budget), (1, 0));
}

#[tokio::test]
async fn attempts_stop_at_five_and_the_last_failure_is_the_reason() {
    let (svc, mut below, budget) = retry(100, 100);
    let call = tokio::spawn(svc.oneshot(request(Method::GET, full(""))));
    for i in 0..MAX_ATTEMPTS {
        let (req, send) = below.next_request().await.expect("attempt");
        assert_eq!(tried(&req).len(), i);
        fail(send, Reason::ConnectFailed, &format!("10.0.0.{i}:80"), None);
    }
    let failure = call.await.expect("task").expect_err("failed");
    assert_eq!(failure.reason, Reason::ConnectFailed);
    assert_eq!(retries(&budget), (4, 0));
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_refuses_the_retry() {
    let (svc, mut below, budget) = retry(0, 0);
    let call = tokio::spawn(svc.oneshot(request(Method::GET, full(""))));
    let (_, send) = below.next_request().await.expect("first attempt");
    fail(send, Reason::ConnectFailed, "10.0.0.1:80", None);
    let failure = call.await.expect("task").expect_err("failed");
    assert_eq!(failure.reason, Reason::ConnectFailed);
    assert_eq!(retries(&budget), (0, 1));
}

#[tokio::test]
async fn a_timeout_or_an_open_circuit_is_not_retried() {
    for reason in [
        Reason::RequestTimeout,
        Reason::CircuitOpen,
        Reason::NoEndpoints,
    ] {
        let (svc, mut below, budget) = retry(100, 100);
        let call = tokio::spawn(svc.oneshot(request(Method::GET, full(""))));
        let (req, send) = below.next_request().await.expect("first attempt");
        fail(send, reason, "10.0.0.1:80", Some(req.into_body()));
        let failure = call.await.expect("task").expect_err("failed");
        assert_eq!(failure.reason, reason);
        assert_eq!(retries(&budget), (0, 0), "{reason:?}");
    }
}

#[tokio::test]
async fn a_large_body_streams_once() {
    let (svc, mut below, _) = retry(100, 100);
    let big = full(vec![b'x'; MAX_REPLAY as usize + 1]);
    let call = tokio::spawn(svc.oneshot(request(Method::PUT, big)));
    let (req, send) = below.next_request().await.expect("first attempt");
    assert!(req.extensions().get::<Replayable>().is_none(), "not kept");
    fail(send, Reason::UpstreamReset, "10.0.0.1:80", None);
    let failure = call.await.expect("task").expect_err("failed");
    assert_eq!(failure.reason, Reason::UpstreamReset);
}

#[test]
fn a_request_s_retry_future_stays_small() {
    // It is boxed for every request: past 1 KiB an allocation leaves the
    // allocator's fast path (mimalloc's small sizes, and glibc's per-thread
    // cache, end there; it was 1,272 bytes).
    let (below, _handle) = mock_below();
    let budget = Arc::new(Budget::new(
        Arc::new(Metrics::new(&mut Registry::default())),
        "api.shop:80".into(),
    ));
    let f = attempts(below, budget, request(Method::GET, full("")));
    let size = std::mem::size_of_val(&f);
    assert!(size <= 1024, "the retry layer's future is {size} bytes");
}
