//! Drain on shutdown and replicas sharing one address.

use std::time::Duration;

use meshfed_api::sni;
use meshfed_gateway::{GatewayConfig, bind_shared};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test]
async fn drain_stops_accepting_and_lets_open_connections_finish() {
    let config = GatewayConfig {
        drain_timeout: Duration::from_secs(30),
        ..GatewayConfig::default()
    };
    let (mut env, _a) = Env::with_api(config).await;
    let name = sni::service("api", "shop", 443);
    let mut open = env.connect(FRONTEND, &name, API).await.expect("connect");
    ask(&mut open, "before").await;

    let gateway = env.gateway;
    let drain = tokio::spawn(async move {
        let drained = env.shutdown().await;
        (env, drained)
    });
    // Not ready, and no longer accepting.
    let t0 = tokio::time::Instant::now();
    while TcpStream::connect(gateway).await.is_ok() {
        assert!(t0.elapsed() < Duration::from_secs(5), "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The open connection still works, then ends on its own.
    assert!(ask(&mut open, "during").await.starts_with("a "));
    drop(open);
    let (env, drained) = tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .expect("the drain ends once the last connection closes")
        .expect("task");
    assert_eq!(drained.forced, 0);
    assert!(!env.ready.get());
}

#[tokio::test]
async fn the_drain_deadline_closes_what_is_left() {
    let config = GatewayConfig {
        drain_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let (mut env, _a) = Env::with_api(config).await;
    let mut open = env
        .connect(FRONTEND, &sni::service("api", "shop", 443), API)
        .await
        .expect("connect");
    ask(&mut open, "before").await;
    let drained = env.shutdown().await;
    assert_eq!(drained.forced, 1);
    let mut buf = [0u8; 16];
    let n = tokio::io::AsyncReadExt::read(&mut open, &mut buf).await;
    assert!(matches!(n, Ok(0) | Err(_)), "closed by the gateway");
}

#[tokio::test]
async fn replicas_share_an_address_and_one_can_leave() {
    let (mut env, _a) = Env::with_api(GatewayConfig::default()).await;
    // A second gateway process on the same address.
    let (second, registry, _following) = env.gateway_on(GatewayConfig::default());
    let listener = bind_shared(env.gateway).expect("the address is shared");
    let (stop_second, _served) = serve(second, listener);
    let name = sni::service("api", "shop", 443);
    let t0 = tokio::time::Instant::now();
    while metric_in(&encode(&registry), "meshfed_gateway_routes ") < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..40 {
        let mut tls = env
            .connect(FRONTEND, &name, API)
            .await
            .expect("either replica");
        ask(&mut tls, "x").await;
    }
    let first = env.metric("meshfed_gateway_connections_total");
    let second = metric_in(&encode(&registry), "meshfed_gateway_connections_total");
    assert_eq!(first + second, 40.0);
    assert!(
        first > 0.0 && second > 0.0,
        "both replicas served: {first} / {second}"
    );
    // The first leaves; the second serves everyone.
    env.shutdown().await;
    for _ in 0..20 {
        let mut tls = env
            .connect(FRONTEND, &name, API)
            .await
            .expect("the remaining replica");
        ask(&mut tls, "x").await;
    }
    let _ = stop_second.send(());
}
