//! Requests that find no endpoint able to serve wait for one: the only
//! endpoint frozen for a while (its connection closed by an unanswered
//! ping, every connect hanging) costs no request once it answers again;
//! with a short request timeout, or a full queue, they fail as before.

use std::time::Duration;

use meshfed_sidecar::{Breakers, Timeouts};

use crate::support::*;

const WAITS: &str = r#"meshfed_sidecar_endpoint_waits_total{service="api.shop:80""#;
const WAITING: &str = r#"meshfed_sidecar_endpoint_waiting{service="api.shop:80"}"#;

fn any() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn waits(client: &Running, outcome: &str) -> f64 {
    metric(
        &client.metrics(),
        &format!(r#"{WAITS},outcome="{outcome}"}}"#),
    )
}

/// Quick to find a frozen endpoint: pings after 200 ms of silence, connects
/// given up after 200 ms.
fn impatient(request: Duration) -> Timeouts {
    Timeouts {
        liveness: Duration::from_millis(200),
        connect: Duration::from_millis(200),
        request,
        ..Timeouts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_out_the_only_endpoint_frozen_for_a_while() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    let relay = Relay::start(a1.addr).await;
    east.write("api.yaml", &api_manifest(false, &[(relay.addr, "a")]));
    let timeouts = impatient(Duration::from_secs(10));
    let client = client_sidecar_with(&east, "a", FRONTEND, timeouts, Breakers::default()).await;
    let up = client.upstream.expect("upstream");
    until_served_by(&http_client(), up, "east-a1", 1).await;

    let stream = Stream::start(up, 4, Duration::from_millis(5));
    stream.wait_for(100).await;
    // Long enough for the ping to go unanswered (the connection closes, its
    // requests are retried) and connects to time out (the endpoint is down).
    relay.freeze();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.thaw();
    stream.wait_for(200).await;
    let outcomes = stream.finish().await;

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    println!(
        "requests: {}, failed: {}, waits served: {}",
        outcomes.len(),
        failed.len(),
        waits(&client, "served")
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(waits(&client, "served") > 0.0, "{}", client.metrics());
    assert_eq!(
        waits(&client, "timeout") + waits(&client, "queue_full"),
        0.0
    );
    assert_eq!(metric(&client.metrics(), WAITING), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_timeout_or_a_full_queue_still_fails_fast() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    let relay = Relay::start(a1.addr).await;
    east.write("api.yaml", &api_manifest(false, &[(relay.addr, "a")]));
    // Frozen before anyone connects: every connect hangs until it is given up.
    relay.freeze();
    let http = http_client();

    // A short request timeout: the wait ends with it, and the answer is the
    // one a request got before there was a wait.
    let short = client_sidecar_with(
        &east,
        "a",
        FRONTEND,
        impatient(Duration::from_millis(1000)),
        Breakers::default(),
    )
    .await;
    let up = short.upstream.expect("upstream");
    // Until the controller has read the manifest, api has no endpoint.
    let listed = tokio::time::Instant::now() + Duration::from_secs(10);
    while get_path(&http, up, "/").await.expect("answer").1.as_deref() == Some("no_endpoints") {
        assert!(tokio::time::Instant::now() < listed, "api never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        let (status, reason, _) =
            tokio::time::timeout(Duration::from_secs(10), get_path(&http, up, "/"))
                .await
                .expect("answered within its timeout, give or take")
                .expect("answer");
        assert_eq!(status, 503);
        // The first found the endpoint by connecting to it; the second
        // found it down already.
        assert!(
            matches!(
                reason.as_deref(),
                Some("connect_failed" | "no_healthy_endpoints")
            ),
            "{reason:?}"
        );
    }
    assert!(waits(&short, "timeout") >= 1.0, "{}", short.metrics());

    // A queue of one: the first request waits (its timeout is long), the
    // second is refused at once, and the first is served once the endpoint
    // answers again.
    let patient = client_sidecar_with(
        &east,
        "a",
        FRONTEND,
        impatient(Duration::from_secs(30)),
        Breakers {
            max_waiting: 1,
            ..Breakers::default()
        },
    )
    .await;
    let up = patient.upstream.expect("upstream");
    let first = tokio::spawn(async move { get_path(&http_client(), up, "/").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&patient.metrics(), WAITING) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first request never waited: {}",
            patient.metrics()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Far less than the first one's 30 s: it did not wait.
    let (status, reason, _) =
        tokio::time::timeout(Duration::from_secs(10), get_path(&http, up, "/"))
            .await
            .expect("refused, not queued")
            .expect("answer");
    assert_eq!(
        (status, reason.as_deref()),
        (503, Some("no_healthy_endpoints"))
    );
    assert_eq!(waits(&patient, "queue_full"), 1.0);
    assert!(!first.is_finished(), "the first still waits");

    relay.thaw();
    let (status, reason, body) = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("served once thawed")
        .expect("task")
        .expect("answer");
    assert_eq!((status, reason), (200, None), "{body}");
    assert!(body.starts_with("east-a1"), "{body}");
    assert_eq!(waits(&patient, "served"), 1.0);
}
