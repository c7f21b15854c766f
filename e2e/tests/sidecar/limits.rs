//! Inbound rate limits end to end: a RateLimitPolicy written to the file
//! store is accepted by the real controller, reaches the api pod's sidecar
//! through discovery (found by the pod's IP in api's EndpointSlice), and
//! each caller gets its own bucket: 429 with `Retry-After` past it, while
//! another caller still gets through. Removing the policy lifts it.

use std::net::SocketAddr;
use std::time::Duration;

use meshfed_sidecar::{Allow, Inbound, Locality, SidecarConfig};
use tokio::time::Instant;

use crate::support::*;

/// The api pod's address: its own, so its EndpointSlice names it alone.
const POD_IP: &str = "127.0.0.71";

const POLICY: &str = "apiVersion: meshfed.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: api-limit, namespace: shop, generation: 1}
spec:
  service: api
  port: 80
  total: {requestsPerSecond: 1000}
  perCaller: {requestsPerSecond: 1, burst: 3}
";

/// GETs through `up` until one is answered `want`, within 10 s; the answer.
async fn until_status(up: SocketAddr, want: u16) -> http::Response<hyper::body::Incoming> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let uri: http::Uri = format!("http://{up}/").parse().expect("uri");
        if let Ok(resp) = http_client().get(uri).await
            && resp.status() == want
        {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "never answered {want} through {up}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_gets_its_own_bucket_and_a_429_with_retry_after() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let app = App::start("east-a1").await;
    let config = SidecarConfig {
        locality: Locality {
            cluster: "east".into(),
            ..Locality::default()
        },
        inbound: vec![Inbound {
            listen: format!("{POD_IP}:0").parse().expect("addr"),
            app: app.addr,
            allow: Allow::Mesh,
        }],
        pod_ip: Some(POD_IP.parse().expect("ip")),
        ..SidecarConfig::default()
    };
    let api = Running::start(config, creds(&east.ca, API), &source(&east)).await;
    let pod = api.bound_inbound[0];
    east.write("api.yaml", &api_manifest(false, &[(pod, "a")]));
    let frontend = client_sidecar(&east, "a", FRONTEND).await;
    let other = client_sidecar(&east, "a", "/ns/web/sa/other").await;
    let (up, other_up) = (
        frontend.upstream.expect("upstream"),
        other.upstream.expect("upstream"),
    );
    until_served_by(&http_client(), up, "east-a1", 1).await;

    east.write("limit.yaml", POLICY);
    let resp = until_status(up, 429).await;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(meshfed_sidecar::ERROR_HEADER).as_deref(),
        Some("rate_limited")
    );
    // The frontend's bucket is empty; the other caller's is full: its
    // burst of 3 gets through at once, then it is refused too.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(&http_client(), other_up).await.expect("answer").0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // A second later each caller has one more token.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&http_client(), other_up).await.expect("answer").0, 200);
    assert_eq!(get(&http_client(), up).await.expect("answer").0, 200);

    let metrics = api.metrics();
    let limited = metric(&metrics, "meshfed_sidecar_rate_limited_total{port=\"");
    assert!(limited >= 3.0, "refusals counted: {metrics}");
    assert!(
        metrics.contains("policy=\"shop/api-limit\",limit=\"per_caller\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("reason=\"rate_limited\""),
        "refusals by reason: {metrics}"
    );

    // Accepted in status; removing the policy lifts the limit.
    let status = std::fs::read_to_string(
        east.dir
            .path()
            .join("status/ratelimitpolicies/shop.api-limit.yaml"),
    )
    .unwrap_or_default();
    assert!(
        status.contains("type: Accepted") && status.contains("reason: Valid"),
        "{status}"
    );
    std::fs::remove_file(east.dir.path().join("limit.yaml")).expect("remove");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut ok = 0;
        for _ in 0..10 {
            ok += usize::from(get(&http_client(), up).await.expect("answer").0 == 200);
        }
        if ok == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the limit outlived its policy");
    }
}
