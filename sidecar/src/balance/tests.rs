//! The balancer as a whole: groups, shares, failover and failback, down
//! and ejected endpoints.

use std::collections::HashMap;
use std::time::Duration;

use meshfed_api::discovery::{Endpoint, EndpointSet, Locality, Policy, PriorityGroup};

use super::health::DOWN_MIN;
use super::*;

const ID: &str = "spiffe://mesh.test/ns/shop/sa/api";

pub(super) fn ep(addr: &str, ready: bool) -> Endpoint {
    Endpoint {
        address: addr.into(),
        weight: 1,
        identities: vec![ID.into()],
        locality: None,
        ready,
        sni: String::new(),
    }
}

pub(super) fn group(
    cluster: &str,
    zone: &str,
    remote: bool,
    eps: Vec<Endpoint>,
    t: f64,
) -> PriorityGroup {
    let healthy = eps.iter().filter(|e| e.ready).count() as u32;
    PriorityGroup {
        locality: Some(Locality {
            cluster: cluster.into(),
            region: String::new(),
            zone: zone.into(),
        }),
        remote,
        total: eps.len() as u32,
        healthy,
        endpoints: eps,
        spill_threshold: t,
        load_permille: 0,
    }
}

pub(super) fn set(groups: Vec<PriorityGroup>, hold_ms: u32) -> EndpointSet {
    EndpointSet {
        exists: true,
        groups,
        policy: Some(Policy {
            spill_threshold: 0.7,
            consecutive_failures: 2,
            ejection_time_ms: 1000,
            max_ejected_percent: 50,
            failback_hold_ms: hold_ms,
            retry_budget_percent: 20,
            min_retries_per_second: 10,
            hash_header: String::new(),
            hash_cookie: String::new(),
        }),
        revision: 1,
        routes: Vec::new(),
    }
}

/// One group, east's zone a, with no failback hold.
pub(super) fn zone_a(eps: Vec<Endpoint>) -> EndpointSet {
    set(vec![group("east", "a", false, eps, 0.7)], 0)
}

pub(super) fn balancer(s: &EndpointSet, now: Instant) -> Balancer {
    let mut b = Balancer::default();
    b.update(s, "east", "api.shop.80.svc.meshfed.local", now);
    b
}

/// A pick of the endpoint named `key`, as one from an earlier endpoint
/// set (found by name).
pub(super) fn pick_of(b: &Balancer, key: &str) -> Pick {
    let (g, m) = b
        .groups
        .iter()
        .find_map(|g| Some((g, g.members.iter().find(|m| &*m.info.key == key)?)))
        .expect("listed");
    Pick {
        endpoint: m.info.clone(),
        group: g.key.clone(),
        load: Load::default(),
        at: None,
    }
}

pub(super) fn picks(b: &mut Balancer, now: Instant, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let p = b.pick(now, &[]).expect("pick");
        *out.entry(p.endpoint.addr.to_string()).or_default() += 1;
    }
    out
}

fn two_zones_and_remote() -> EndpointSet {
    set(
        vec![
            group(
                "east",
                "a",
                false,
                vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)],
                0.7,
            ),
            group("east", "", false, vec![ep("10.0.1.1:80", true)], 0.0),
            group("west", "", true, vec![ep("192.0.2.1:15443", true)], 0.7),
        ],
        1000,
    )
}

#[tokio::test(start_paused = true)]
async fn same_zone_takes_everything_while_healthy() {
    let now = Instant::now();
    let mut b = balancer(&two_zones_and_remote(), now);
    let seen = picks(&mut b, now, 200);
    assert_eq!(seen.keys().len(), 2, "{seen:?}");
    assert!(seen.contains_key("10.0.0.1:80") && seen.contains_key("10.0.0.2:80"));
}

#[tokio::test(start_paused = true)]
async fn a_down_endpoint_spills_part_of_its_zone_then_everything() {
    let now = Instant::now();
    let mut b = balancer(&two_zones_and_remote(), now);
    b.connect_failed(
        &"10.0.0.1:80/api.shop.80.svc.meshfed.local".into(),
        now,
        now,
    );
    let s = b.shares(now);
    // h = 1/2 below 0.7: 714 stays, the rest spills to the other zone.
    assert_eq!(
        s.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        vec![714, 286, 0]
    );
    b.connect_failed(
        &"10.0.0.2:80/api.shop.80.svc.meshfed.local".into(),
        now,
        now,
    );
    b.connect_failed(
        &"10.0.1.1:80/api.shop.80.svc.meshfed.local".into(),
        now,
        now,
    );
    let seen = picks(&mut b, now, 20);
    assert_eq!(seen.get("192.0.2.1:15443"), Some(&20), "{seen:?}");
}

/// One local endpoint (down since `t0`) behind a barrier, then west;
/// failback hold 1 s.
pub(super) fn local_down_remote_up(t0: Instant) -> (Balancer, Arc<str>) {
    let s = set(
        vec![
            group("east", "a", false, vec![ep("10.0.0.1:80", true)], 0.0),
            group("west", "", true, vec![ep("192.0.2.1:15443", true)], 0.7),
        ],
        1000,
    );
    let mut b = balancer(&s, t0);
    let key: Arc<str> = "10.0.0.1:80/api.shop.80.svc.meshfed.local".into();
    b.connect_failed(&key, t0, t0);
    (b, key)
}

#[tokio::test(start_paused = true)]
async fn failback_waits_for_the_hold_and_then_switches_once() {
    let t0 = Instant::now();
    let (mut b, key) = local_down_remote_up(t0);
    assert_eq!(picks(&mut b, t0, 10).get("192.0.2.1:15443"), Some(&10));
    // The probe is due after the backoff and connects.
    let t1 = t0 + Duration::from_millis(150);
    let due = b.due_probes(t1);
    assert_eq!(due.len(), 1);
    b.connected(&key, t1);
    // Healthy again, but held for a second: still remote.
    for ms in [0u64, 300, 900] {
        let t = t1 + Duration::from_millis(ms);
        assert_eq!(
            picks(&mut b, t, 10).get("192.0.2.1:15443"),
            Some(&10),
            "at {ms}"
        );
    }
    let t2 = t1 + Duration::from_millis(1000);
    assert_eq!(picks(&mut b, t2, 10).get("10.0.0.1:80"), Some(&10));
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_failed_after_a_newer_one_succeeded_takes_nothing_down() {
    let t0 = Instant::now();
    let (mut b, key) = local_down_remote_up(t0);
    // A request's connect begins at 100 ms and hangs; the probe at
    // 150 ms connects; the hung connect fails at 1.1 s.
    let started = t0 + Duration::from_millis(100);
    let t1 = t0 + Duration::from_millis(150);
    let _ = b.shares(t1);
    b.connected(&key, t1);
    let _ = b.shares(t1 + Duration::from_millis(10));
    b.connect_failed(&key, started, t0 + Duration::from_millis(1100));
    // The hold that began with the probe is not restarted.
    let t2 = t1 + Duration::from_millis(1010);
    assert_eq!(picks(&mut b, t2, 10).get("10.0.0.1:80"), Some(&10));
    // A connect begun after that success still counts.
    let t3 = t2 + Duration::from_millis(10);
    b.connect_failed(&key, t3, t3);
    assert_eq!(picks(&mut b, t3, 10).get("192.0.2.1:15443"), Some(&10));
}

#[tokio::test(start_paused = true)]
async fn a_dip_during_the_hold_restarts_it() {
    let t0 = Instant::now();
    let (mut b, key) = local_down_remote_up(t0);
    let _ = b.shares(t0);
    b.connected(&key, t0);
    let _ = b.shares(t0 + Duration::from_millis(100));
    let t = t0 + Duration::from_millis(600);
    b.connect_failed(&key, t, t);
    let _ = b.shares(t);
    b.connected(&key, t0 + Duration::from_millis(1200));
    // Seen healthy again at 1.2 s: the hold starts over from there.
    for ms in [1200u64, 1700, 2100] {
        let t = t0 + Duration::from_millis(ms);
        assert_eq!(
            picks(&mut b, t, 10).get("192.0.2.1:15443"),
            Some(&10),
            "at {ms}"
        );
    }
    let t = t0 + Duration::from_millis(2200);
    assert_eq!(picks(&mut b, t, 10).get("10.0.0.1:80"), Some(&10));
}

#[tokio::test(start_paused = true)]
async fn ejection_is_capped_by_the_policy() {
    let now = Instant::now();
    let mut b = balancer(
        &zone_a(vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)]),
        now,
    );
    let k1 = pick_of(&b, "10.0.0.1:80/api.shop.80.svc.meshfed.local");
    let k2 = pick_of(&b, "10.0.0.2:80/api.shop.80.svc.meshfed.local");
    for _ in 0..2 {
        b.answered(&k1, Duration::from_millis(1), true, now);
        b.answered(&k2, Duration::from_millis(1), true, now);
    }
    // 50 % of two: one ejected, the other kept serving.
    let seen = picks(&mut b, now, 10);
    assert_eq!(seen.len(), 1, "{seen:?}");
    // Ejection ends after its time.
    let later = now + Duration::from_millis(1001);
    assert_eq!(picks(&mut b, later, 50).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_last_ready_endpoint_is_never_ejected() {
    let now = Instant::now();
    // A killed pod stays listed, not ready: the cap is half of the one
    // endpoint that can serve, not of the two listed.
    let mut b = balancer(
        &zone_a(vec![ep("10.0.0.1:80", false), ep("10.0.0.2:80", true)]),
        now,
    );
    let k2 = pick_of(&b, "10.0.0.2:80/api.shop.80.svc.meshfed.local");
    for _ in 0..10 {
        b.answered(&k2, Duration::from_secs(4), true, now);
    }
    assert_eq!(picks(&mut b, now, 10).get("10.0.0.2:80"), Some(&10));
    assert_eq!(b.next_change(now), None);
}

#[tokio::test(start_paused = true)]
async fn the_next_change_is_the_first_probe_due_or_ejection_over() {
    let t0 = Instant::now();
    let (mut b, key) = local_down_remote_up(t0);
    // Down: its probe falls due after the first backoff.
    assert_eq!(b.next_change(t0), Some(t0 + DOWN_MIN));
    // Probing: only the probe's result tells.
    let t1 = t0 + DOWN_MIN;
    assert_eq!(b.due_probes(t1).len(), 1);
    assert_eq!(b.next_change(t1), None);
    assert!(b.connected(&key, t1), "back from down");
    assert!(!b.connected(&key, t1), "already up");
    // Ejected (two failures, one of two ready endpoints): until it ends.
    let p = pick_of(&b, &key);
    for _ in 0..2 {
        b.answered(&p, Duration::from_millis(1), true, t1);
    }
    assert_eq!(b.next_change(t1), Some(t1 + Duration::from_secs(1)));
    assert_eq!(b.next_change(t1 + Duration::from_secs(1)), None);
}

#[tokio::test(start_paused = true)]
async fn slower_endpoints_get_less() {
    let now = Instant::now();
    let mut b = balancer(
        &zone_a(vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)]),
        now,
    );
    b.answered(
        &pick_of(&b, "10.0.0.1:80/api.shop.80.svc.meshfed.local"),
        Duration::from_millis(50),
        false,
        now,
    );
    b.answered(
        &pick_of(&b, "10.0.0.2:80/api.shop.80.svc.meshfed.local"),
        Duration::from_micros(500),
        false,
        now,
    );
    // With two endpoints P2C always compares both.
    let seen = picks(&mut b, now, 50);
    assert_eq!(seen.get("10.0.0.2:80"), Some(&50), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn nothing_listed_and_nothing_healthy_differ() {
    let now = Instant::now();
    let mut b = balancer(&set(vec![], 0), now);
    assert_eq!(b.pick(now, &[]).map(|_| ()), Err(NoPick::NoEndpoints));
    let s = set(
        vec![group(
            "east",
            "a",
            false,
            vec![ep("10.0.0.1:80", false)],
            0.7,
        )],
        0,
    );
    let mut b = balancer(&s, now);
    assert_eq!(b.pick(now, &[]).map(|_| ()), Err(NoPick::NoneHealthy));
}
