//! When the sidecar answers itself: no endpoints, a request too slow, a
//! full circuit breaker — each with its status and `meshfed-error`; and
//! a failing answer is retried within the budget, then passed on as is;
//! a request on a connection whose peer went silent fails over once a
//! ping goes unanswered, while a slow answer on a live one is waited for.

use std::time::Duration;

use meshfed_sidecar::{Breakers, Locality, SidecarConfig, Timeouts, Upstream};

use crate::support::*;

fn any() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn client_config(timeouts: Timeouts, breakers: Breakers) -> SidecarConfig {
    SidecarConfig {
        locality: Locality {
            cluster: "east".into(),
            region: String::new(),
            zone: "a".into(),
        },
        upstreams: vec![Upstream {
            target: api_target(),
            listen: any(),
        }],
        timeouts,
        breakers,
        ..SidecarConfig::default()
    }
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
    let client = Running::start(
        client_config(timeouts, breakers),
        creds(&east.ca, FRONTEND),
        &east.source(),
    )
    .await;
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
    let slow_client = Running::start(
        client_config(Timeouts::default(), breakers),
        creds(&east.ca, FRONTEND),
        &east.source(),
    )
    .await;
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
    let client = Running::start(
        client_config(timeouts, Breakers::default()),
        creds(&east.ca, FRONTEND),
        &east.source(),
    )
    .await;
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
