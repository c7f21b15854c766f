//! Locality and failover as an app sees it through its sidecar: same zone
//! first; part of the traffic spills when the zone drops below its healthy
//! fraction; every local endpoint dead → the remote cluster through its
//! gateway, with no failed request; recovery → back home once, after the
//! failback hold.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

fn any() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn served_by(outcomes: &[Outcome]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        if let Ok(name) = &o.result {
            *m.entry(name.clone()).or_default() += 1;
        }
    }
    m
}

fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.result.is_err()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_zone_first_then_spill_below_the_healthy_fraction() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let mut a1 = Endpoint::start(&east, "east-a1", any()).await;
    let a2 = Endpoint::start(&east, "east-a2", any()).await;
    let b1 = Endpoint::start(&east, "east-b1", any()).await;
    let b2 = Endpoint::start(&east, "east-b2", any()).await;
    east.write(
        "api.yaml",
        &api_manifest(
            false,
            &[
                (a1.addr, "a"),
                (a2.addr, "a"),
                (b1.addr, "b"),
                (b2.addr, "b"),
            ],
        ),
    );
    let client = client_sidecar(&east, "a", FRONTEND).await;
    let upstream = client.upstream.expect("upstream");
    until_served_by(&http_client(), upstream, "east-a", 1).await;

    let stream = Stream::start(upstream, 4, Duration::from_millis(2));
    stream.wait_for(400).await;
    let healthy = stream.since(Duration::ZERO);
    let seen = served_by(&healthy);
    println!("all healthy: {seen:?}");
    assert!(failures(&healthy).is_empty(), "{:?}", failures(&healthy));
    assert_eq!(seen.keys().collect::<Vec<_>>(), vec!["east-a1", "east-a2"]);

    // Zone a at half its endpoints, below the 0.7 healthy fraction:
    // 0.5 / 0.7 = 71.4 % stays, 28.6 % spills to zone b.
    a1.kill().await;
    let killed = stream.now();
    stream.wait_for(1500).await;
    let outcomes = stream.finish().await;
    // Requests sent once a1 is gone: one answered by a1 just before the
    // kill may still be on its way back when the kill returns.
    let after: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| o.sent >= killed)
        .cloned()
        .collect();
    let seen = served_by(&after);
    println!("one of zone a dead: {seen:?}");
    assert!(failures(&after).is_empty(), "{:?}", failures(&after));
    let spilled = seen.get("east-b1").unwrap_or(&0) + seen.get("east-b2").unwrap_or(&0);
    let share = spilled as f64 / after.len() as f64;
    println!(
        "spilled to zone b: {:.1} % (expected 28.6 %)",
        share * 100.0
    );
    assert!((0.20..0.38).contains(&share), "spill share {share}");
    assert!(seen.get("east-a2").is_some_and(|n| *n > spilled));
    assert_eq!(seen.get("east-a1"), None);
    drop((a2, b1, b2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_through_the_gateway_and_back_without_a_failed_request() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let west = Cluster::start(&mesh, "west").await;
    let gateway = gateway(&west).await;
    let w1 = Endpoint::start(&west, "west-w1", any()).await;
    west.write("api.yaml", &api_manifest(true, &[(w1.addr, "w")]));
    let mut a1 = Endpoint::start(&east, "east-a1", any()).await;
    let mut a2 = Endpoint::start(&east, "east-a2", any()).await;
    let (addr1, addr2) = (a1.addr, a2.addr);
    east.write(
        "api.yaml",
        &api_manifest(false, &[(addr1, "a"), (addr2, "a")]),
    );
    east.policy(1);
    east.link("west", gateway.addr);
    until_remote_group(&east, "west", "a").await;

    let client = client_sidecar(&east, "a", FRONTEND).await;
    let upstream = client.upstream.expect("upstream");
    until_served_by(&http_client(), upstream, "east-a", 1).await;
    // The remote answer names the real caller: mTLS end to end through the gateway.
    let stream = Stream::start(upstream, 4, Duration::from_millis(3));
    stream.wait_for(300).await;

    a1.kill().await;
    a2.kill().await;
    let killed = stream.now();
    stream.wait_for(600).await;
    let down = stream.since(killed);
    let first_west = down
        .iter()
        .find(|o| o.result.as_deref() == Ok("west-w1"))
        .map(|o| o.at - killed)
        .expect("west served");
    // After the first few answers everything comes from west.
    let settled: Vec<&Outcome> = down
        .iter()
        .filter(|o| o.at > killed + first_west + Duration::from_millis(50))
        .collect();
    assert!(
        settled.iter().all(|o| o.result.as_deref() == Ok("west-w1")),
        "{:?}",
        served_by(&down)
    );

    let (status, body) = get(&http_client(), upstream).await.expect("answer");
    assert_eq!(
        (status, body.as_str()),
        (200, format!("west-w1 {}", id(FRONTEND)).as_str())
    );

    let a1 = Endpoint::start(&east, "east-a1", addr1).await;
    let a2 = Endpoint::start(&east, "east-a2", addr2).await;
    let back = stream.now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let since = stream.since(back);
        let tail: Vec<&Outcome> = since.iter().rev().take(200).collect();
        // Home, and both east endpoints back: a probe may readmit one of
        // them later than the other, and the flapping check needs both.
        let both = ["east-a1", "east-a2"]
            .iter()
            .all(|name| since.iter().any(|o| o.result.as_deref() == Ok(*name)));
        if both
            && tail.len() == 200
            && tail
                .iter()
                .all(|o| o.result.as_deref().is_ok_and(|n| n.starts_with("east-")))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failed back: {:?}",
            served_by(&since)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcomes = stream.finish().await;
    let metrics = client.metrics();

    let failed = failures(&outcomes);
    println!("requests: {}, failed: {}", outcomes.len(), failed.len());
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let recovered = outcomes.iter().filter(|o| o.at >= back).collect::<Vec<_>>();
    let first_east = recovered
        .iter()
        .find(|o| o.result.as_deref().is_ok_and(|n| n.starts_with("east-")))
        .map(|o| o.at - back)
        .expect("east served again");
    // No flapping: once traffic is home, no answer comes from west again.
    // "Home" is the first east answer when both east endpoints return
    // together; when their probes bring them back apart, the group is only
    // half healthy at first and spills to west by design (spill rule), so
    // home is when the second one answers plus the hold.
    let home_at = back + first_east;
    let first_of = |name: &str| {
        recovered
            .iter()
            .find(|o| o.result.as_deref() == Ok(name))
            .map(|o| o.at)
            .expect("both east endpoints serve again")
    };
    let whole_at = first_of("east-a1").max(first_of("east-a2"));
    let home_at = if whole_at > home_at + Duration::from_millis(50) {
        println!("east's endpoints came back {:?} apart", whole_at - home_at);
        whole_at + Duration::from_secs(1)
    } else {
        home_at
    };
    let strays = outcomes
        .iter()
        .filter(|o| {
            o.at > home_at + Duration::from_millis(50) && o.result.as_deref() == Ok("west-w1")
        })
        .count();
    let switches = recovered
        .iter()
        .filter(|o| o.at >= home_at)
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| {
            let c = |o: &Outcome| {
                o.result
                    .as_deref()
                    .map(|n| n.starts_with("east-"))
                    .unwrap_or(false)
            };
            c(w[0]) != c(w[1])
        })
        .count();
    println!(
        "failover: first answer from west {first_west:?} after the kill; failback: first answer from east {first_east:?} after recovery (hold 1 s); switches after recovery: {switches}; stray west answers: {strays}"
    );
    assert!(
        first_east >= Duration::from_millis(900),
        "failed back before the hold: {first_east:?}"
    );
    assert_eq!(strays, 0);
    assert!(switches <= 8, "flapping: {switches} switches");
    assert!(
        metric(&metrics, "meshfed_sidecar_retries_total") > 0.0,
        "{metrics}"
    );
    drop((a1, a2, w1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_last_endpoints_while_the_controller_is_away() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east").await;
    let a1 = Endpoint::start(&east, "east-a1", any()).await;
    east.write("api.yaml", &api_manifest(false, &[(a1.addr, "a")]));
    let relay = Relay::start(east.discovery).await;
    let config = meshfed_sidecar::SidecarConfig {
        locality: meshfed_sidecar::Locality {
            cluster: "east".into(),
            region: String::new(),
            zone: "a".into(),
        },
        upstreams: vec![meshfed_sidecar::Upstream {
            target: api_target(),
            listen: any(),
        }],
        ..meshfed_sidecar::SidecarConfig::default()
    };
    let source = meshfed_sidecar::DiscoverySource {
        addr: relay.addr.to_string(),
        controller_id: id(CONTROLLER),
    };
    let client = Running::start(config, creds(&east.ca, FRONTEND), &source).await;
    let up = client.upstream.expect("upstream");
    until_served_by(&http_client(), up, "east-a1", 1).await;
    assert_eq!(
        metric(&client.metrics(), "meshfed_sidecar_discovery_streams_up"),
        1.0
    );

    relay.cut();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&client.metrics(), "meshfed_sidecar_discovery_streams_up") > 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never broke"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The controller is unreachable; the last endpoints still serve.
    let http = http_client();
    for _ in 0..50 {
        let (status, body) = get(&http, up).await.expect("answer");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("east-a1"), "{body}");
    }
}
