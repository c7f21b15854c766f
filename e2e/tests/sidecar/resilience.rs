//! When the sidecar answers itself: no endpoints, a request too slow, a
//! full circuit breaker — each with its status and `meshfed-error`; and
//! a failing answer is retried within the budget, then passed on as is;
//! a request on a connection whose peer went silent fails over once a
//! ping goes unanswered, while a slow answer on a live one is waited for;
//! an opaque connection across a silent partition of the remote cluster's
//! gateway is closed at both ends.

use std::time::Duration;

use meshfed_sidecar::{Breakers, Timeouts};

use crate::netns::{Netns, can_run, sh};
use crate::support::*;

fn any() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_itself_with_a_reason_when_nothing_can_serve() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    // api exists, with no endpoint anywhere.
    east.write("api.yaml", &api_manifest(false, &[]));
    let timeouts = Timeouts {
        request: Duration::from_millis(300),
        ..Timeouts::default()
    };
    let breakers = Breakers {
        max_requests: 1,
        ..Breakers::default()
    };
    let client = client_sidecar_with(&east, "a", FRONTEND, timeouts, breakers).await;
    let up = client.upstream.expect("upstream");
    let http = http_client();
    let (status, reason, _) = get_path(&http, up, "/").await.expect("answer");
    assert_eq!((status, reason.as_deref()), (503, Some("no_endpoints")));

    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    east.write("api.yaml", &api_manifest(false, &[(a1.addr, "a")]));
    until_served_by(&http, up, "east-a1", 1).await;

    // Slower than the request timeout.
    let (status, reason, _) = get_path(&http, up, "/sleep/2000").await.expect("answer");
    assert_eq!((status, reason.as_deref()), (504, Some("request_timeout")));

    // One request in flight at most: a second one finds the circuit open.
    let slow_client =
        client_sidecar_with(&east, "a", FRONTEND, Timeouts::default(), breakers).await;
    let up2 = slow_client.upstream.expect("upstream");
    until_served_by(&http, up2, "east-a1", 1).await;
    let first = tokio::spawn(async move { get_path(&http_client(), up2, "/sleep/1000").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, reason, _) = get_path(&http, up2, "/").await.expect("answer");
    assert_eq!((status, reason.as_deref()), (503, Some("circuit_open")));
    let (status, _, _) = first.await.expect("task").expect("answer");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_answer_is_retried_then_passed_on() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    east.write("api.yaml", &api_manifest(false, &[(a1.addr, "a")]));
    let client = client_sidecar(&east, "a", FRONTEND).await;
    let up = client.upstream.expect("upstream");
    let http = http_client();
    until_served_by(&http, up, "east-a1", 1).await;
    // The app's own 503 comes back (no meshfed-error), after retries.
    let (status, reason, body) = get_path(&http, up, "/status/503").await.expect("answer");
    assert_eq!((status, reason), (503, None));
    assert!(body.starts_with("east-a1"), "{body}");
    let m = client.metrics();
    assert_eq!(metric(&m, "meshfed_sidecar_retries_total"), 4.0, "{m}");
    // A 500 is not retried (it is not a transport failure).
    let (status, _, _) = get_path(&http, up, "/status/500").await.expect("answer");
    assert_eq!(status, 500);
    assert_eq!(
        metric(&client.metrics(), "meshfed_sidecar_retries_total"),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_peer_gone_silent_fails_over_when_a_ping_goes_unanswered() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    let b1 = Endpoint::start(&east, "east-b1", any()).await;
    // a1 is reached through a relay that can go silent, as a partition does.
    let relay = Relay::start(a1.addr).await;
    east.write(
        "api.yaml",
        &api_manifest(false, &[(relay.addr, "a"), (b1.addr, "b")]),
    );
    let timeouts = Timeouts {
        liveness: Duration::from_millis(300),
        request: Duration::from_secs(10),
        ..Timeouts::default()
    };
    let client = client_sidecar_with(&east, "a", FRONTEND, timeouts, Breakers::default()).await;
    let up = client.upstream.expect("upstream");
    let http = http_client();
    until_served_by(&http, up, "east-a1", 1).await;

    // Slower than three pings: the live peer answers them, nothing is retried.
    let (status, reason, body) = get_path(&http, up, "/sleep/1000").await.expect("answer");
    assert_eq!((status, reason), (200, None));
    assert!(body.starts_with("east-a1"), "{body}");
    assert_eq!(
        metric(&client.metrics(), "meshfed_sidecar_retries_total"),
        0.0
    );

    // The same, but a1 goes silent while it sleeps: the ping is not
    // answered, the connection closes and the GET is sent to b1.
    let slow = tokio::spawn(async move { get_path(&http_client(), up, "/sleep/1000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.freeze();
    let (status, reason, body) = slow.await.expect("task").expect("answer");
    assert_eq!((status, reason), (200, None), "{body}");
    assert!(body.starts_with("east-b1"), "{body}");
    assert_eq!(
        metric(&client.metrics(), "meshfed_sidecar_retries_total"),
        1.0
    );
}

#[test]
fn an_opaque_connection_across_a_partition_is_closed_at_both_ends() {
    if !can_run(
        "resilience::an_opaque_connection_across_a_partition_is_closed_at_both_ends",
        &["ip", "iptables"],
    ) {
        return;
    }
    let ns = Netns::create("ka");
    let name = ns.0.clone();
    let inside = ns.run(move || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};

        let mesh = Mesh::new();
        let east = Cluster::start(&mesh, "east").await;
        let west = Cluster::start(&mesh, "west").await;
        let gateway = gateway(&west).await;
        // A TCP echo in west that says when a connection of its ends.
        let app = TcpListener::bind(any()).await.expect("bind");
        let app_addr = app.local_addr().expect("addr");
        let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = app.accept().await {
                let ended = ended_tx.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = ended.send(());
                });
            }
        });
        let server = app_sidecar(&west, any(), app_addr, meshfed_sidecar::Allow::Mesh).await;
        west.write(
            "api.yaml",
            &api_manifest(true, &[(server.bound_inbound[0], "w")]),
        );
        east.write("api.yaml", &api_manifest(false, &[]));
        east.link("west", gateway.addr);
        until_remote_group(&east, "west", "a").await;
        let timeouts = Timeouts {
            liveness: Duration::from_secs(1),
            ..Timeouts::default()
        };
        let client = client_sidecar_with(&east, "a", FRONTEND, timeouts, Breakers::default()).await;
        let up = client.upstream.expect("upstream");
        // Two app connections through the mesh, both echoing (once the
        // client sidecar has learnt the endpoint).
        let echoing = async || -> std::io::Result<TcpStream> {
            let mut c = TcpStream::connect(up).await?;
            c.write_all(b"ping\n").await?;
            let mut back = [0u8; 5];
            c.read_exact(&mut back).await?;
            assert_eq!(&back, b"ping\n");
            Ok(c)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut conns = Vec::new();
        while conns.len() < 2 {
            match tokio::time::timeout_at(deadline, echoing()).await {
                Ok(Ok(c)) => conns.push(c),
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => panic!("no echo through the mesh within 10 s"),
            }
        }

        // The partition: nothing crosses to or from west's gateway any
        // more, and nothing is closed either.
        let port = gateway.addr.port().to_string();
        for dir in ["--dport", "--sport"] {
            sh(&[
                "ip", "netns", "exec", &name, "iptables", "-A", "INPUT", "-p", "tcp", dir, &port,
                "-j", "DROP",
            ]);
        }
        let cut = tokio::time::Instant::now();
        // One connection stays idle (keepalive finds it dead); the other
        // has bytes in flight that will never be acknowledged.
        conns[1].write_all(&[7u8; 1000]).await.expect("write");
        for (i, c) in conns.iter_mut().enumerate() {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(15), c.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("connection {i} still open 15 s into the partition"));
            assert!(matches!(read, Ok(0) | Err(_)), "connection {i}: {read:?}");
        }
        let client_side = cut.elapsed();
        // In west the gateway (liveness 1 s) closes its side, and so the
        // endpoint's sidecar the app's.
        for i in 0..2 {
            tokio::time::timeout(Duration::from_secs(15), ended.recv())
                .await
                .unwrap_or_else(|_| panic!("app connection {i} still open 15 s into the partition"))
                .expect("echo running");
        }
        println!(
            "closed {client_side:?} (client side, liveness 1 s) and {:?} (app side, gateway liveness 1 s) into the partition",
            cut.elapsed()
        );
    });
    inside.join().expect("the test inside the namespace");
}
