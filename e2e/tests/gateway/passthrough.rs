//! What goes through: exported services (end-to-end mTLS, the callee sees
//! the caller's own identity), federation, probes.

use std::time::Duration;

use meshfed_api::sni;
use meshfed_gateway::GatewayConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn the_endpoint_sees_the_callers_own_identity() {
    let mut env = Env::start(GatewayConfig::default()).await;
    let a = Backend::start(&env.cluster.ca, "a").await;
    let b = Backend::start(&env.cluster.ca, "b").await;
    // Linked with `west` (written first: the routes that name api also name west).
    let link = meshfed_resources::objects::link(
        "meshfed-system",
        "west",
        &["127.0.0.1"],
        9,
        &id(GATEWAY).to_string(),
        &id(CONTROLLER).to_string(),
    );
    env.write("link-west.yaml", &yaml(&link)).await;
    env.write(
        "api.yaml",
        &service_manifest("api", 443, true, &[(a.addr, true), (b.addr, true)]),
    )
    .await;
    env.until_metric("meshfed_gateway_routes ", 1.0).await;

    let mut served = std::collections::BTreeSet::new();
    for i in 0..20 {
        // Half claim a linked cluster, half a cluster nobody linked.
        let source = if i % 2 == 0 { "west" } else { "nowhere" };
        let sni = sni::service_from("api", "shop", 443, source);
        let mut tls = env
            .connect(FRONTEND, &sni, API)
            .await
            .expect("through the gateway");
        let answer = ask(&mut tls, "hello").await;
        let (who, caller) = answer.split_once(' ').expect("two words");
        assert_eq!(
            caller,
            id(FRONTEND).to_string(),
            "end-to-end mTLS: the caller's own ID"
        );
        served.insert(who.to_owned());
        // A second request on the same connection: bytes flow both ways.
        assert_eq!(ask(&mut tls, "again").await, answer);
    }
    assert_eq!(served.len(), 2, "both endpoints serve: {served:?}");
    // A claimed source becomes a label only when it names a linked cluster.
    let m = env.metrics();
    for line in [
        r#"meshfed_gateway_connections_total{service="shop/api:443",source_cluster="west"} 10"#,
        r#"meshfed_gateway_connections_total{service="shop/api:443",source_cluster="unknown"} 10"#,
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
    assert!(
        env.metric(r#"meshfed_gateway_bytes_total{service="shop/api:443",direction="ingress"}"#)
            > 0.0
    );
    assert_eq!(env.metric("meshfed_gateway_refused_total"), 0.0);
    let drained = env.shutdown().await;
    assert_eq!(drained.forced, 0);
}

#[tokio::test]
async fn a_client_hello_in_many_small_writes_still_routes() {
    let (env, _a) = Env::with_api(GatewayConfig::default()).await;
    let tcp = TcpStream::connect(env.gateway).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let trickle = Trickle {
        inner: tcp,
        limit: 4096,
        sent: 0,
        pause: None,
    };
    let mut tls = tls_connect(
        creds(&env.cluster.ca, FRONTEND),
        trickle,
        &sni::service("api", "shop", 443),
        API,
    )
    .await
    .expect("handshake through the gateway, one byte per write");
    assert!(
        tls.get_ref().0.sent >= 200,
        "the hello went out byte by byte"
    );
    assert_eq!(ask(&mut tls, "hi").await, format!("a {}", id(FRONTEND)));
}

#[tokio::test]
async fn a_dead_endpoint_is_retried_on_another_before_any_byte_is_forwarded() {
    let env = Env::start(GatewayConfig::default()).await;
    let live = Backend::start(&env.cluster.ca, "live").await;
    // A port nobody listens on: connects are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    env.write(
        "api.yaml",
        &service_manifest("api", 443, true, &[(dead, true), (live.addr, true)]),
    )
    .await;
    env.until_metric("meshfed_gateway_routes ", 1.0).await;
    for _ in 0..30 {
        let mut tls = env
            .connect(FRONTEND, &sni::service("api", "shop", 443), API)
            .await
            .expect("every connection is served");
        assert!(ask(&mut tls, "x").await.starts_with("live "));
    }
    assert!(
        env.metric("meshfed_gateway_upstream_connect_failures_total") > 0.0,
        "the dead endpoint was tried (and retried past)"
    );
}

#[tokio::test]
async fn federation_reaches_the_controller_and_probes_the_gateway() {
    let env = Env::start(GatewayConfig::default()).await;
    // The federation name is passed through: the controller itself answers.
    let mut tls = env
        .connect(CONTROLLER, sni::FEDERATION, CONTROLLER)
        .await
        .expect("TLS with the controller through the gateway");
    tls.shutdown().await.expect("close");
    // The probe name is answered by the gateway with its own identity.
    let mut probe = env
        .connect(CONTROLLER, sni::PROBE, GATEWAY)
        .await
        .expect("TLS with the gateway itself");
    probe
        .write_all(b"GET /ready HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut probe, &mut answer),
    )
    .await
    .expect("in time")
    .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let m = env.metrics();
    assert!(m.contains(r#"service="federation""#), "{m}");
    assert!(m.contains(r#"service="probe""#), "{m}");
}
