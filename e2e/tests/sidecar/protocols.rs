//! What the app speaks decides how it is carried: HTTP/1.1 and HTTP/2
//! (prior knowledge, as gRPC clients do) per request, anything else — a
//! server-first protocol included — as opaque TCP; trace context follows
//! the request across both hops.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshfed_sidecar::{Allow, Breakers, Timeouts};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

fn any() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// East's client sidecar taking a connection as opaque after 200 ms of silence.
async fn quick_detect(east: &Cluster) -> Running {
    let timeouts = Timeouts {
        detect: Duration::from_millis(200),
        ..Timeouts::default()
    };
    client_sidecar_with(east, "a", FRONTEND, timeouts, Breakers::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_trace_context_cross_both_sidecars() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    east.write("api.yaml", &api_manifest(false, &[(a1.addr, "a")]));
    let client = client_sidecar(&east, "a", FRONTEND).await;
    let up = client.upstream.expect("upstream");
    until_served_by(&http_client(), up, "east-a1", 1).await;

    // An HTTP/2 client with prior knowledge (what gRPC does).
    let h2: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = h2
        .get(format!("http://{up}/").parse().expect("uri"))
        .await
        .expect("h2 answer");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, format!("east-a1 {}", id(FRONTEND)).as_bytes());

    // The app sees the caller's trace with the hop's own span as parent.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = http::Request::get(format!("http://{up}/"))
        .header("traceparent", parent)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = http_client().request(req).await.expect("answer");
    let seen = resp
        .headers()
        .get("x-seen-traceparent")
        .and_then(|v| v.to_str().ok())
        .expect("app saw a traceparent")
        .to_owned();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert_ne!(seen, parent);

    // A caller's claim to an identity is dropped; the app sees the real one.
    let req = http::Request::get(format!("http://{up}/"))
        .header(
            meshfed_sidecar::CLIENT_ID,
            "spiffe://mesh.test/ns/kube-system/sa/admin",
        )
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = http_client().request(req).await.expect("answer");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, format!("east-a1 {}", id(FRONTEND)).as_bytes());

    let metrics = client.metrics();
    assert!(
        metric(
            &metrics,
            "meshfed_sidecar_requests_total{direction=\"outbound\",service=\"api.shop:80\",cluster=\"east\",zone=\"a\",status=\"200\""
        ) >= 3.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("meshfed_sidecar_request_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_protocols_are_carried_as_opaque_tcp_even_server_first() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    // A server-first echo: it greets, then echoes lines.
    let app = TcpListener::bind(any()).await.expect("bind");
    let app_addr = app.local_addr().expect("addr");
    let echo = tokio::spawn(async move {
        while let Ok((tcp, _)) = app.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                if w.write_all(b"hello from echo\n").await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = app_sidecar(&east, any(), app_addr, Allow::Mesh).await;
    east.write(
        "api.yaml",
        &api_manifest(false, &[(server.bound_inbound[0], "a")]),
    );
    let client = quick_detect(&east).await;
    let up = client.upstream.expect("upstream");
    // The app says nothing first: after the detect timeout it is opaque TCP.
    let tcp = TcpStream::connect(up).await.expect("connect");
    let (r, mut w) = tcp.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("greeting in time")
        .expect("read")
        .expect("a line");
    assert_eq!(greeting, "hello from echo");
    w.write_all(b"ping\n").await.expect("write");
    let echoed = lines.next_line().await.expect("read").expect("a line");
    assert_eq!(echoed, "ping");
    drop(w);
    drop(lines);
    let metrics = client.metrics();
    assert!(
        metric(
            &metrics,
            "meshfed_sidecar_tcp_connections_total{direction=\"outbound\",service=\"api.shop:80\""
        ) >= 1.0,
        "{metrics}"
    );
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_crosses_the_gateway_and_its_app_sees_the_real_caller() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let west = Cluster::start(&mesh, "west").await;
    let gateway = gateway(&west).await;
    // A WebSocket app in west: it greets with the caller ID its sidecar
    // gave in the handshake, then echoes every message.
    let app = TcpListener::bind(any()).await.expect("bind");
    let app_addr = app.local_addr().expect("addr");
    let ws_app = tokio::spawn(async move {
        while let Ok((tcp, _)) = app.accept().await {
            tokio::spawn(async move {
                let mut caller = String::from("none");
                // tungstenite's handshake callback type fixes the error type.
                #[allow(clippy::result_large_err)]
                let seen = |req: &Request, resp: Response| {
                    if let Some(v) = req.headers().get(meshfed_sidecar::CLIENT_ID) {
                        caller = v.to_str().unwrap_or("bad").to_owned();
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, seen).await else {
                    return;
                };
                if ws
                    .send(Message::text(format!("west {caller}")))
                    .await
                    .is_err()
                {
                    return;
                }
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = app_sidecar(&west, any(), app_addr, Allow::Mesh).await;
    west.write(
        "api.yaml",
        &api_manifest(true, &[(server.bound_inbound[0], "w")]),
    );
    east.write("api.yaml", &api_manifest(false, &[]));
    east.link("west", gateway.addr);
    until_remote_group(&east, "west", "a").await;
    let client = client_sidecar(&east, "a", FRONTEND).await;
    let up = client.upstream.expect("upstream");

    // A WebSocket client, as an unmodified app would open one, claiming an
    // identity that is not its own.
    let tcp = TcpStream::connect(up).await.expect("connect");
    let req = http::Request::get(format!("ws://{up}/chat"))
        .header("host", "api.shop")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header(
            meshfed_sidecar::CLIENT_ID,
            "spiffe://mesh.test/ns/kube-system/sa/admin",
        )
        .body(())
        .expect("request");
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    assert_eq!(resp.status(), 101);
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>| {
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("message")
    };
    let greeting = next(&mut ws).await;
    assert_eq!(greeting, Message::text(format!("west {}", id(FRONTEND))));
    // Both ways, many times over, text and binary: the tunnel stays open.
    for i in 0..50 {
        let m = if i % 2 == 0 {
            Message::text(format!("ping {i}"))
        } else {
            Message::binary(vec![i as u8; 70_000])
        };
        ws.send(m.clone()).await.expect("send");
        assert_eq!(next(&mut ws).await, m);
    }
    let metrics = client.metrics();
    assert!(
        metric(
            &metrics,
            "meshfed_sidecar_requests_total{direction=\"outbound\",service=\"api.shop:80\",cluster=\"west\",zone=\"\",status=\"101\""
        ) >= 1.0,
        "{metrics}"
    );
    // Counted as they pass, while the tunnel is open.
    let sent = metric(
        &metrics,
        "meshfed_sidecar_tcp_bytes_total{direction=\"outbound\",service=\"api.shop:80\",cluster=\"west\",flow=\"sent\"",
    );
    assert!(sent >= 25.0 * 70_000.0, "{sent}: {metrics}");
    ws.close(None).await.expect("close");
    ws_app.abort();
    drop((server, gateway));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_client_silent_past_the_detect_timeout_is_still_balanced_per_request() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    east.write("api.yaml", &api_manifest(false, &[(a1.addr, "a")]));
    let client = quick_detect(&east).await;
    let up = client.upstream.expect("upstream");
    until_served_by(&http_client(), up, "east-a1", 1).await;
    let before = metric(
        &client.metrics(),
        "meshfed_sidecar_requests_total{direction=\"outbound\",service=\"api.shop:80\",cluster=\"east\"",
    );

    // A pooled HTTP/1 connection opened ahead of use: silent past the
    // detect timeout, so it starts as opaque TCP, then used for requests.
    let tcp = TcpStream::connect(up).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = http::Request::get("/")
            .header("host", "api.shop")
            .body(Empty::<Bytes>::new())
            .expect("request");
        send.ready().await.expect("connection ready");
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("answer in time")
            .expect("answer");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, format!("east-a1 {}", id(FRONTEND)).as_bytes());
    }
    // Each went through the HTTP path (balanced, retried, counted), not
    // through a connection pinned to the endpoint picked when it was silent.
    let metrics = client.metrics();
    let after = metric(
        &metrics,
        "meshfed_sidecar_requests_total{direction=\"outbound\",service=\"api.shop:80\",cluster=\"east\"",
    );
    assert_eq!(after - before, 3.0, "{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "meshfed_sidecar_tcp_connections_total{direction=\"outbound\""
        ),
        0.0,
        "{metrics}"
    );
    drop(a1);
}
