//! The app's HTTP/1.1 connections: reused while the app keeps them open,
//! replaced when it closes them between requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::AppPort;
use crate::body::{Body, full};
use crate::config::{Allow, Plaintext};
use crate::dest::testing::shared;

/// An HTTP/1.1 app answering `ok` to each request; with `close_after_one`
/// it closes each connection after its first answer without saying so
/// (no `Connection: close`), as an app whose keep-alive ran out does.
/// Counts the connections it accepted.
async fn app(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut seen = Vec::new();
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).await.is_err() || close_after_one {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn port(app: SocketAddr) -> AppPort {
    let shared = shared(Default::default(), Default::default());
    AppPort::new(
        9000,
        (app, None),
        Allow::Mesh,
        Plaintext::Permissive,
        shared,
    )
}

async fn get(port: &AppPort) -> Result<String, crate::body::BoxError> {
    let req = Request::get("/")
        .header("host", "app")
        .body(full(""))
        .expect("request");
    let resp = port.send_h1(req).await?;
    assert_eq!(resp.status(), 200);
    let body: Body = resp.into_body();
    let bytes = body.collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn one_connection_carries_requests_one_after_another() {
    let (addr, accepted) = app(false).await;
    let port = port(addr);
    for _ in 0..5 {
        assert_eq!(get(&port).await.expect("answered"), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_app_closed_between_requests_is_replaced_not_failed() {
    let (addr, accepted) = app(true).await;
    let port = port(addr);
    for i in 0..5 {
        let answered = get(&port).await;
        assert_eq!(answered.expect("answered").as_str(), "ok", "request {i}");
        // Sometimes at once, sometimes after the close is seen.
        if i % 2 == 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn an_answer_cut_by_a_stop_fails_rather_than_ending_short() {
    // Says ten bytes, sends five, then waits.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0; 4096];
        let _ = conn.read(&mut buf).await;
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
        conn.write_all(head).await.expect("write");
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
    let port = port(addr);
    let req = Request::get("/")
        .header("host", "app")
        .body(full(""))
        .expect("request");
    let mut body = port.send_h1(req).await.expect("answered").into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data").as_ref(), b"hello");
    port.shared.stop.cancel();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await;
    let rest = rest.expect("the cut is seen at once");
    assert!(
        matches!(rest, Some(Err(_))),
        "a cut answer must fail, not end: {rest:?}"
    );
}

/// Counts how often a future is polled.
struct Polls<F> {
    fut: std::pin::Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> Future for Polls<F> {
    type Output = (F::Output, usize);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.polls += 1;
        let polls = self.polls;
        self.fut.as_mut().poll(cx).map(|out| (out, polls))
    }
}

#[tokio::test]
async fn a_request_on_a_pooled_connection_is_polled_once_per_wake_of_its_socket() {
    // The connection is driven by the request's task, and what it does —
    // hand the answer over, ask for the body to be read — must not wake
    // that task to be polled again (each poll runs the whole request's
    // chain): once to send, once when the answer (one segment) arrives.
    let (addr, _accepted) = app(false).await;
    let port = port(addr);
    assert_eq!(get(&port).await.expect("answered"), "ok");
    let (answer, polls) = Polls {
        fut: Box::pin(get(&port)),
        polls: 0,
    }
    .await;
    assert_eq!(answer.expect("answered"), "ok");
    assert!(polls <= 2, "polled {polls} times");
}
