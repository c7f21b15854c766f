//! The endpoint layer against real mesh servers (mTLS with the test CA).

use std::time::Duration;

use http::{Request, Version};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::config::{Breakers, Timeouts};
use crate::connect::{ALPN_H2, ALPN_HTTP1};
use crate::dest::testing::{MeshServer, Relay, dest, dest_full, set};
use crate::stack::Deadline;

/// An attempt as the balance layer hands it down: `version` as the app
/// spoke, to the endpoint `dest` picks.
fn attempt(dest: &Arc<Dest>, version: Version, path: &str) -> Request<Body> {
    let pick = dest.pick(&[]).expect("picked");
    let mut req = Request::new(crate::body::full(""));
    *req.uri_mut() = format!("http://api.shop{path}").parse().expect("uri");
    *req.version_mut() = version;
    req.extensions_mut().insert(pick);
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(10)));
    req
}

async fn text(resp: http::Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// Sends HTTP/1.1 requests until one goes as HTTP/1.1: the first finds no
/// idle HTTP/1.1 connection and goes as HTTP/2 while one is made.
async fn warm(svc: &Endpoint, d: &Arc<Dest>) {
    for _ in 0..100 {
        let resp = svc
            .clone()
            .oneshot(attempt(d, Version::HTTP_11, "/"))
            .await
            .expect("answer");
        if text(resp).await == "HTTP/1.1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no HTTP/1.1 connection made");
}

#[tokio::test]
async fn an_http1_request_goes_as_http2_until_an_http1_connection_is_idle() {
    let server = MeshServer::start(&[ALPN_HTTP1, ALPN_H2]).await;
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&server.addr.to_string(), true)]));
    let svc = Endpoint::new(d.clone());
    let first = svc
        .clone()
        .oneshot(attempt(&d, Version::HTTP_11, "/"))
        .await
        .expect("answer");
    assert_eq!(text(first).await, "HTTP/2.0", "nothing idle yet");
    warm(&svc, &d).await;
    for _ in 0..3 {
        let resp = svc
            .clone()
            .oneshot(attempt(&d, Version::HTTP_11, "/"))
            .await
            .expect("answer");
        assert_eq!(text(resp).await, "HTTP/1.1");
    }
    // The HTTP/2 connection and one HTTP/1.1 connection, reused.
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn an_http2_request_goes_as_http2_on_one_connection() {
    let server = MeshServer::start(&[ALPN_HTTP1, ALPN_H2]).await;
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&server.addr.to_string(), true)]));
    let svc = Endpoint::new(d.clone());
    let calls = (0..3).map(|_| {
        svc.clone()
            .oneshot(attempt(&d, Version::HTTP_2, "/sleep/50"))
    });
    for resp in futures::future::join_all(calls).await {
        assert_eq!(text(resp.expect("answer")).await, "HTTP/2.0");
    }
    assert_eq!(server.accepted(), 1, "multiplexed");
}

#[tokio::test]
async fn a_peer_speaking_only_http2_gets_http1_requests_as_http2() {
    let server = MeshServer::start(&[ALPN_H2]).await;
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&server.addr.to_string(), true)]));
    let svc = Endpoint::new(d.clone());
    for _ in 0..5 {
        let resp = svc
            .clone()
            .oneshot(attempt(&d, Version::HTTP_11, "/"))
            .await
            .expect("answer");
        assert_eq!(text(resp).await, "HTTP/2.0");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The HTTP/2 connection, and one offer of HTTP/1.1 it declined.
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_refused_connect_gives_the_body_back_and_takes_the_endpoint_down() {
    // A port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&addr.to_string(), true)]));
    let failed = Endpoint::new(d.clone())
        .oneshot(attempt(&d, Version::HTTP_11, "/"))
        .await
        .expect_err("refused");
    assert_eq!(failed.reason, Reason::ConnectFailed);
    assert!(failed.unsent.is_some(), "nothing was sent");
    assert_eq!(
        d.pick(&[]).map(|_| ()),
        Err(Reason::NoHealthyEndpoints),
        "down until a probe connects"
    );
}

#[tokio::test]
async fn a_request_to_a_peer_gone_silent_fails_when_a_ping_goes_unanswered() {
    let server = MeshServer::start(&[ALPN_HTTP1, ALPN_H2]).await;
    let relay = Relay::start(server.addr).await;
    let timeouts = Timeouts {
        liveness: Duration::from_millis(200),
        ..Timeouts::default()
    };
    let (d, sets) = dest_full(Breakers::default(), timeouts);
    sets.send_replace(set(&[(&relay.addr.to_string(), true)]));
    let svc = Endpoint::new(d.clone());
    warm(&svc, &d).await;
    // HTTP/1.1 has no ping: the endpoint's HTTP/2 connection has.
    let started = Instant::now();
    let slow = tokio::spawn(svc.oneshot(attempt(&d, Version::HTTP_11, "/sleep/5000")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    relay.freeze();
    let failed = slow.await.expect("task").expect_err("broken");
    assert_eq!(failed.reason, Reason::UpstreamReset);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "found within a few pings, not at the answer: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_small_answer_to_a_replayable_request_is_read_whole() {
    let server = MeshServer::start(&[ALPN_HTTP1, ALPN_H2]).await;
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&server.addr.to_string(), true)]));
    let svc = Endpoint::new(d.clone());
    warm(&svc, &d).await;
    let mut req = attempt(&d, Version::HTTP_11, "/");
    req.extensions_mut().insert(crate::stack::Replayable);
    let replayable = svc.clone().oneshot(req).await.expect("answer");
    // Read whole already: its connection serves the next request while the
    // first answer is still unread.
    let streamed = svc
        .clone()
        .oneshot(attempt(&d, Version::HTTP_11, "/"))
        .await
        .expect("answer");
    // Not replayable, so streamed: its connection is busy until it is read,
    // and the next request goes on HTTP/2.
    let third = svc
        .oneshot(attempt(&d, Version::HTTP_11, "/"))
        .await
        .expect("answer");
    assert_eq!(text(third).await, "HTTP/2.0");
    assert_eq!(text(replayable).await, "HTTP/1.1");
    assert_eq!(text(streamed).await, "HTTP/1.1");
}

#[tokio::test]
async fn an_attempt_without_a_pick_is_refused_unsent() {
    let (d, _sets) = dest(256);
    let mut req = Request::new(crate::body::full("x"));
    req.extensions_mut()
        .insert(Deadline(Instant::now() + Duration::from_secs(10)));
    let failed = Endpoint::new(d).oneshot(req).await.expect_err("refused");
    assert_eq!(failed.reason, Reason::NoEndpoints);
    assert!(failed.unsent.is_some());
}

#[tokio::test]
async fn only_a_request_waiting_for_a_connection_counts_as_pending() {
    // A peer that accepts and never answers the TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&addr.to_string(), true)]));
    let call = tokio::spawn(Endpoint::new(d.clone()).oneshot(attempt(&d, Version::HTTP_2, "/")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let load = d.pick(&[]).expect("picked").load;
    assert_eq!(load.pending, 1, "waiting for the connect");
    let failed = call.await.expect("task").expect_err("no handshake");
    assert_eq!(failed.reason, Reason::ConnectFailed);

    // On a connection ready in the pool, a request is never pending.
    let server = MeshServer::start(&[ALPN_HTTP1, ALPN_H2]).await;
    let (d, sets) = dest(256);
    sets.send_replace(set(&[(&server.addr.to_string(), true)]));
    let svc = Endpoint::new(d.clone());
    warm(&svc, &d).await;
    let call = tokio::spawn(svc.oneshot(attempt(&d, Version::HTTP_11, "/sleep/300")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let load = d.pick(&[]).expect("picked").load;
    assert_eq!(load.pending, 0);
    call.await.expect("task").expect("answer");
}

#[test]
fn an_attempt_s_future_stays_small() {
    // It is boxed for every attempt: connecting (rare, and large) is boxed
    // apart, so the common attempt moves a few KiB, not 8.
    let (d, _sets) = dest(256);
    let f = send(d, Request::new(crate::body::full("")));
    let size = std::mem::size_of_val(&f);
    assert!(size <= 4096, "the endpoint's future is {size} bytes");
}
