use std::collections::HashMap;
use std::time::Duration;

use http_body_util::BodyExt;
use meshfed_api::discovery::{
    HeaderModifier, NameValue, PathMatch, RouteBackend, RouteMatch, RouteRule, path_match,
};
use tower::{Layer, ServiceExt};

use super::*;
use crate::body::full;
use crate::dest::testing::{Sets, dest, dest_of, set};
use crate::stack::IntoNext;
use crate::stack::{Below, mock_below};

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_discovery_and_carries_its_deadline() {
    let (d, sets) = dest(256);
    let (svc, mut handle) = mock_below();
    let svc = Route::layer(d.clone(), Arc::new(NoBackends)).layer(svc);
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
    let svc = Route::layer(d.clone(), Arc::new(NoBackends)).layer(svc);
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

/// A service without routes has no backends to find.
struct NoBackends;

impl Backends for NoBackends {
    fn backend(&self, target: &ServiceTarget) -> (Arc<Dest>, Next) {
        panic!("no backend expected, asked for {target}")
    }
}

/// Backends by target, each a destination of its own over a mock.
struct Mocked(HashMap<String, (Arc<Dest>, Next)>);

impl Backends for Mocked {
    fn backend(&self, target: &ServiceTarget) -> (Arc<Dest>, Next) {
        self.0
            .get(&target.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("unknown backend {target}"))
    }
}

/// `api.shop:80` with `rules`, and `api-v2.shop:80` and `api-west.shop:80`
/// beside it: each with one endpoint (ready as `ready` says) and a mock
/// below.
struct Split {
    dest: Arc<Dest>,
    route: Next,
    api: Below,
    v2: Below,
    west: Below,
    _sets: Vec<Sets>,
}

fn split(rules: Vec<RouteRule>, ready: [bool; 3]) -> Split {
    let (api, api_sets) = dest(256);
    let mut with_routes = (*set(&[("10.0.0.1:80", ready[0])]).expect("set")).clone();
    with_routes.routes = rules;
    api_sets.send_replace(Some(Arc::new(with_routes)));
    let mut mocks = HashMap::new();
    let mut sets = vec![api_sets];
    let mut handles = Vec::new();
    for (name, addr, ready) in [
        ("api-v2.shop:80", "10.0.0.2:80", ready[1]),
        ("api-west.shop:80", "10.0.0.3:80", ready[2]),
    ] {
        let (d, tx) = dest_of(name, &api.shared);
        tx.send_replace(set(&[(addr, ready)]));
        let (next, handle) = mock_below();
        mocks.insert(name.to_owned(), (d, next));
        sets.push(tx);
        handles.push(handle);
    }
    let (own, api_handle) = mock_below();
    let route = Route::layer(api.clone(), Arc::new(Mocked(mocks)))
        .layer(own)
        .into_next();
    let west = handles.pop().expect("west");
    let v2 = handles.pop().expect("v2");
    Split {
        dest: api,
        route,
        api: api_handle,
        v2,
        west,
        _sets: sets,
    }
}

fn backend(name: &str, weight: u32) -> RouteBackend {
    RouteBackend {
        name: name.into(),
        namespace: "shop".into(),
        port: 80,
        weight,
        invalid: false,
    }
}

fn rule(matched: RouteMatch, backends: Vec<RouteBackend>) -> RouteRule {
    RouteRule {
        route: "shop/api".into(),
        rule: 0,
        r#match: Some(matched),
        backends,
        ..RouteRule::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch {
            kind: path_match::Kind::Prefix.into(),
            value: p.into(),
        }),
        ..RouteMatch::default()
    }
}

fn header(name: &str, value: &str) -> RouteMatch {
    RouteMatch {
        headers: vec![NameValue {
            name: name.into(),
            value: value.into(),
        }],
        ..prefix("/")
    }
}

/// Sends `req` through the route, answering 200 on whichever mock gets it;
/// which one did (0 api, 1 v2, 2 west), and the request it saw.
async fn served(s: &mut Split, req: Request<Body>) -> (usize, Request<Body>, Answer) {
    let call = tokio::spawn(crate::stack::call(s.route.clone(), req));
    let (which, (got, answer)) = tokio::select! {
        r = s.api.next_request() => (0, r.expect("api")),
        r = s.v2.next_request() => (1, r.expect("v2")),
        r = s.west.next_request() => (2, r.expect("west")),
    };
    let (parts, body) = got.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    answer.send_response(http::Response::new(full("ok")));
    let out = call.await.expect("task");
    (which, Request::from_parts(parts, full(bytes)), out)
}

fn allow_all(s: &mut Split) {
    for h in [&mut s.api, &mut s.v2, &mut s.west] {
        h.allow(1000);
    }
}

#[tokio::test(start_paused = true)]
async fn a_header_match_wins_over_the_split_and_edits_apply() {
    let mut canary = rule(header("x-canary", "1"), vec![backend("api-v2", 1)]);
    canary.request_headers = Some(HeaderModifier {
        set: vec![NameValue {
            name: "x-route".into(),
            value: "canary".into(),
        }],
        remove: vec!["x-secret".into()],
        ..HeaderModifier::default()
    });
    canary.request_timeout_ms = Some(2000);
    let rest = rule(prefix("/"), vec![backend("api", 1)]);
    let mut s = split(vec![canary, rest], [true; 3]);
    allow_all(&mut s);
    let started = Instant::now();
    let req = Request::builder()
        .header("x-canary", "1")
        .header("x-secret", "s")
        .body(full(""))
        .expect("req");
    let (which, got, out) = served(&mut s, req).await;
    assert_eq!(which, 1, "to v2");
    assert_eq!(got.headers()["x-route"], "canary");
    assert!(got.headers().get("x-secret").is_none());
    let Deadline(deadline) = *got.extensions().get::<Deadline>().expect("deadline");
    assert_eq!(deadline, started + Duration::from_secs(2));
    assert_eq!(out.expect("ok").status(), 200);

    let (which, _, _) = served(&mut s, Request::new(full(""))).await;
    assert_eq!(which, 0, "without the header: the rest rule");
}

#[tokio::test(start_paused = true)]
async fn a_request_no_rule_matches_is_404_and_a_rule_without_backends_500() {
    let only_v1 = rule(prefix("/v1"), vec![backend("api", 1)]);
    let zero = rule(prefix("/zero"), vec![backend("api", 0)]);
    let mut s = split(vec![only_v1, zero], [true; 3]);
    let req = Request::builder().uri("/v2/x").body(full("")).expect("req");
    let failed = crate::stack::call(s.route.clone(), req)
        .await
        .expect_err("no rule");
    assert_eq!(failed.reason, Reason::NoRouteMatch);
    assert_eq!(failed.reason.status(), 404);
    let req = Request::builder().uri("/zero").body(full("")).expect("req");
    let failed = crate::stack::call(s.route.clone(), req)
        .await
        .expect_err("weight 0");
    assert_eq!(failed.reason, Reason::NoRouteBackend);
    assert_eq!(failed.reason.status(), 500);
    s.api.allow(1);
    let req = Request::builder().uri("/v1/x").body(full("")).expect("req");
    let (which, _, _) = served(&mut s, req).await;
    assert_eq!(which, 0);
}

#[tokio::test(start_paused = true)]
async fn a_backend_without_a_healthy_endpoint_gets_none_of_the_split() {
    let half = rule(prefix("/"), vec![backend("api", 1), backend("api-west", 1)]);
    // West's only endpoint is not ready.
    let mut s = split(vec![half], [true, true, false]);
    allow_all(&mut s);
    for _ in 0..50 {
        let (which, _, out) = served(&mut s, Request::new(full(""))).await;
        assert_eq!(which, 0, "west cannot serve");
        assert!(out.is_ok());
    }
    let routes = &s.dest.shared.metrics.routes;
    let (picked, passed_over) = routes.backend(&s.dest.label, "shop/api", 0, "api-west.shop:80");
    assert_eq!((picked.get(), passed_over.get()), (0, 50));
    let (picked, _) = routes.backend(&s.dest.label, "shop/api", 0, "api.shop:80");
    assert_eq!(picked.get(), 50);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_sent_nothing_hands_the_request_to_another() {
    let half = rule(prefix("/"), vec![backend("api", 1), backend("api-west", 1)]);
    let mut s = split(vec![half], [true; 3]);
    allow_all(&mut s);
    let mut moved = 0;
    for _ in 0..40 {
        let req = Request::builder()
            .method("PUT")
            .body(full("payload"))
            .expect("req");
        let call = tokio::spawn(crate::stack::call(s.route.clone(), req));
        // Whichever backend is asked first has every connect refused.
        tokio::select! {
            r = s.api.next_request() => {
                let (req, answer) = r.expect("api");
                assert!(req.extensions().get::<Elsewhere>().is_some());
                answer.send_error(Failure::unsent(Reason::ConnectFailed, req.into_body()));
                let (req, answer) = s.west.next_request().await.expect("west");
                let body = req.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(body, "payload");
                answer.send_response(http::Response::new(full("west")));
                moved += 1;
            }
            r = s.west.next_request() => {
                let (req, answer) = r.expect("west");
                answer.send_error(Failure::unsent(Reason::NoHealthyEndpoints, req.into_body()));
                let (req, answer) = s.api.next_request().await.expect("api");
                assert!(req.extensions().get::<Elsewhere>().is_none(), "the last one left");
                answer.send_response(http::Response::new(full("api")));
                moved += 1;
            }
        }
        assert_eq!(call.await.expect("task").expect("answer").status(), 200);
    }
    assert_eq!(moved, 40);
}

#[tokio::test(start_paused = true)]
async fn a_mirrored_copy_never_holds_the_request_up() {
    let mut shadowed = rule(prefix("/"), vec![backend("api", 1)]);
    shadowed.mirrors = vec![meshfed_api::discovery::RouteMirror {
        name: "api-west".into(),
        namespace: "shop".into(),
        port: 80,
        numerator: 100,
        denominator: 100,
    }];
    let mut s = split(vec![shadowed], [true; 3]);
    allow_all(&mut s);
    let req = Request::builder()
        .method("POST")
        .header("content-length", "7")
        .body(full("payload"))
        .expect("req");
    let call = tokio::spawn(crate::stack::call(s.route.clone(), req));
    let (copy, copy_answer) = s.west.next_request().await.expect("a copy");
    assert_eq!(copy.method(), "POST");
    let (original, answer) = s.api.next_request().await.expect("the request");
    let body = original
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "payload", "the original keeps its body");
    answer.send_response(http::Response::new(full("ok")));
    // Answered while the copy is still out.
    let got = call.await.expect("task").expect("answer");
    assert_eq!(got.status(), 200);
    let body = copy
        .into_body()
        .collect()
        .await
        .expect("copy body")
        .to_bytes();
    assert_eq!(body, "payload", "the copy has the body too");
    copy_answer.send_error(Failure::new(Reason::ConnectFailed));
    let counters =
        s.dest
            .shared
            .metrics
            .routes
            .mirror(&s.dest.label, "shop/api", "api-west.shop:80");
    // The copy's answer is counted on a worker thread: real time, bounded.
    for _ in 0..2000 {
        if counters.failed.get() == 1 {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!((counters.answered.get(), counters.failed.get()), (0, 1));
    assert_eq!(
        s.dest
            .shared
            .mirrors_in_flight
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // A body of unknown length is not copied (it would hold the request).
    let streamed = Request::builder()
        .method("POST")
        .body(crate::body::boxed(http_body_util::StreamBody::new(
            futures::stream::iter(vec![Ok::<_, std::convert::Infallible>(
                hyper::body::Frame::data(bytes::Bytes::from("a")),
            )]),
        )))
        .expect("req");
    let call = tokio::spawn(crate::stack::call(s.route.clone(), streamed));
    let (_, answer) = s.api.next_request().await.expect("the request");
    answer.send_response(http::Response::new(full("ok")));
    assert_eq!(call.await.expect("task").expect("answer").status(), 200);
    assert_eq!(counters.skipped_body.get(), 1);
}
