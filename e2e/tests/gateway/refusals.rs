//! What never goes through: each refusal happens before any upstream is
//! dialled (the recorders behind every route accept nothing), and is
//! counted under its reason.

use std::net::SocketAddr;
use std::time::Duration;

use meshfed_api::labels;
use meshfed_api::sni;
use meshfed_gateway::{GatewayConfig, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Sends `bytes` to the gateway and reads until it closes: what came back.
async fn send_raw(gateway: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(gateway).await.expect("connect");
    tcp.write_all(bytes).await.expect("send");
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut back))
        .await
        .expect("the gateway closes the connection")
        .ok();
    back
}

fn refused(env: &Env, reason: &str) -> f64 {
    env.metric(&format!(
        "meshfed_gateway_refused_total{{reason=\"{reason}\"}}"
    ))
}

#[tokio::test]
async fn every_refusal_forwards_nothing_and_is_counted() {
    let recorder = Recorder::start().await;
    let ep = recorder.addr;
    let env = Env::start_with(GatewayConfig::default(), |dir| {
        let write = |f: &str, t: String| std::fs::write(dir.join(f), t).expect("write");
        // Exported, but on port 443 only.
        write(
            "api.yaml",
            service_manifest("api", 443, true, &[(ep, true)]),
        );
        // Not exported.
        write(
            "db.yaml",
            service_manifest("db", 5432, false, &[(ep, true)]),
        );
        // Exported, no ready endpoint.
        write(
            "down.yaml",
            service_manifest("down", 443, true, &[(ep, false)]),
        );
        // A mirror of another cluster's service: never routable here, even
        // if it carries the export label.
        let mirror = service_manifest("api-west", 443, true, &[(ep, true)]).replacen(
            "labels:\n",
            &format!("labels:\n    {}: west\n", labels::ORIGIN_CLUSTER),
            1,
        );
        assert!(mirror.contains(labels::ORIGIN_CLUSTER), "{mirror}");
        write("mirror.yaml", mirror);
    })
    .await;
    env.until_metric("meshfed_gateway_routes ", 2.0).await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "not_tls",
            b"GET / HTTP/1.1\r\nHost: api.shop\r\n\r\n".to_vec(),
        ),
        ("bad_hello", vec![22, 3, 1, 0, 4, 2, 0, 0, 0]),
        ("no_sni", raw_hello(None)),
        ("ip_literal", raw_hello(Some(&ep.ip().to_string()))),
        ("ip_literal", raw_hello(Some("[::1]"))),
        ("unknown_sni", raw_hello(Some("example.com"))),
        ("unknown_sni", raw_hello(Some(&format!("{}", ep)))),
        (
            "not_exported",
            raw_hello(Some(&sni::service("db", "shop", 5432))),
        ),
        (
            "not_exported",
            raw_hello(Some(&sni::service("api-west", "shop", 443))),
        ),
        (
            "not_exported",
            raw_hello(Some(&sni::service("api", "other", 443))),
        ),
        (
            "port_not_exported",
            raw_hello(Some(&sni::service("api", "shop", 80))),
        ),
        (
            "no_healthy_endpoint",
            raw_hello(Some(&sni::service("down", "shop", 443))),
        ),
    ];
    for (reason, bytes) in cases {
        let before = refused(&env, reason);
        let back = send_raw(env.gateway, &bytes).await;
        env.until_metric(
            &format!("meshfed_gateway_refused_total{{reason=\"{reason}\"}}"),
            before + 1.0,
        )
        .await;
        if reason != "not_tls" {
            assert_eq!(
                back.first(),
                Some(&21),
                "{reason}: a TLS alert is the only answer"
            );
        } else {
            assert!(back.is_empty(), "not TLS: no answer at all");
        }
        assert_eq!(recorder.accepted(), 0, "{reason}: nothing was dialled");
    }
    // A real TLS client without SNI (an IP address as the server name).
    let tcp = TcpStream::connect(env.gateway).await.expect("connect");
    let err = tls_connect(
        creds(&env.cluster.ca, FRONTEND),
        tcp,
        &ep.ip().to_string(),
        API,
    )
    .await;
    assert!(err.is_err());
    assert_eq!(recorder.accepted(), 0);
    assert_eq!(env.metric("meshfed_gateway_connections_total"), 0.0);
}

#[tokio::test]
async fn a_client_hello_that_never_completes_times_out() {
    let recorder = Recorder::start().await;
    let ep = recorder.addr;
    let config = GatewayConfig {
        handshake_timeout: Duration::from_millis(200),
        ..GatewayConfig::default()
    };
    let env = Env::start_with(config, |dir| {
        std::fs::write(
            dir.join("api.yaml"),
            service_manifest("api", 443, true, &[(ep, true)]),
        )
        .expect("write");
    })
    .await;
    let hello = raw_hello(Some(&sni::service("api", "shop", 443)));
    let mut tcp = TcpStream::connect(env.gateway).await.expect("connect");
    tcp.write_all(&hello[..hello.len() - 1])
        .await
        .expect("send");
    let mut back = Vec::new();
    let _ = tcp.read_to_end(&mut back).await;
    assert_eq!(refused(&env, "hello_timeout"), 1.0);
    assert_eq!(recorder.accepted(), 0);
}

#[tokio::test]
async fn connection_caps_shed_at_once() {
    let config = GatewayConfig {
        limits: Limits {
            max_connections: 3,
            max_per_source: 2,
        },
        ..GatewayConfig::default()
    };
    let (env, _a) = Env::with_api(config).await;
    let name = sni::service("api", "shop", 443);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = env.connect(FRONTEND, &name, API).await.expect("admitted");
        ask(&mut tls, "x").await;
        held.push(tls);
    }
    // A third from the same source is shed at once.
    assert!(env.connect(FRONTEND, &name, API).await.is_err());
    assert_eq!(refused(&env, "source_limit"), 1.0);
    // Another source (127.0.0.2) gets the last place under the global cap...
    let connect_from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{ip}:0").parse().expect("addr"))
            .expect("bind");
        socket.connect(env.gateway)
    };
    let tcp = connect_from("127.0.0.2").await.expect("connect");
    let mut third = tls_connect(creds(&env.cluster.ca, FRONTEND), tcp, &name, API)
        .await
        .expect("admitted");
    ask(&mut third, "x").await;
    // ...and beyond it everyone is shed.
    let tcp = connect_from("127.0.0.3").await.expect("connect");
    assert!(
        tls_connect(creds(&env.cluster.ca, FRONTEND), tcp, &name, API)
            .await
            .is_err()
    );
    assert_eq!(refused(&env, "overloaded"), 1.0);
    // Places free up when connections close.
    drop(held);
    env.until_metric("meshfed_gateway_open_connections", 0.0)
        .await;
    let t0 = tokio::time::Instant::now();
    loop {
        if let Ok(mut tls) = env.connect(FRONTEND, &name, API).await {
            ask(&mut tls, "x").await;
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "places were not freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
