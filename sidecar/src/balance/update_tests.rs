//! The balancer across endpoint sets: what is kept of an endpoint listed
//! again, and an attempt picked before an update.

use std::time::Duration;

use meshfed_api::discovery::PriorityGroup;

use super::tests::*;
use super::*;

#[tokio::test(start_paused = true)]
async fn an_endpoint_listed_again_starts_afresh() {
    let now = Instant::now();
    let (mut b, _) = local_down_remote_up(now);
    let west: Arc<str> = "192.0.2.1:15443/api.shop.80.svc.meshfed.local".into();
    let p = b.pick(now, &[]).expect("west");
    assert_eq!(p.endpoint.key, west);
    // Two calls in flight to west when it is withdrawn (a partition);
    // both then fail, enough to eject a listed endpoint.
    b.start(&p);
    b.start(&p);
    let without_west = set(vec![group_of_one("east", "a", "10.0.0.1:80")], 1000);
    b.update(&without_west, "east", "api.shop.80.svc.meshfed.local", now);
    assert!(!b.keys().contains(&west), "{:?}", b.keys());
    for _ in 0..2 {
        b.answered(&p, Duration::from_secs(3), true, now);
        b.end(&p);
    }
    // Back after the heal: served at once, not ejected for 30 s.
    let again = set(
        vec![
            group_of_one("east", "a", "10.0.0.1:80"),
            group("west", "", true, vec![ep("192.0.2.1:15443", true)], 0.7),
        ],
        1000,
    );
    let t = now + Duration::from_millis(10);
    b.update(&again, "east", "api.shop.80.svc.meshfed.local", t);
    b.connect_failed(&"10.0.0.1:80/api.shop.80.svc.meshfed.local".into(), t, t);
    assert_eq!(picks(&mut b, t, 10).get("192.0.2.1:15443"), Some(&10));
}

fn group_of_one(cluster: &str, zone: &str, addr: &str) -> PriorityGroup {
    group(cluster, zone, false, vec![ep(addr, true)], 0.0)
}

#[tokio::test(start_paused = true)]
async fn an_attempt_picked_before_an_update_ends_on_its_own_endpoint() {
    let now = Instant::now();
    let (one, two) = (
        "10.0.0.1:80/api.shop.80.svc.meshfed.local",
        "10.0.0.2:80/api.shop.80.svc.meshfed.local",
    );
    let mut b = balancer(&zone_a(vec![ep("10.0.0.2:80", true)]), now);
    let p = b.pick(now, &[]).expect("pick");
    b.start(&p);
    // Another endpoint listed before it: every state has a new place.
    let both = zone_a(vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)]);
    b.update(&both, "east", "api.shop.80.svc.meshfed.local", now);
    let pending = |b: &Balancer, key: &str| b.states[b.index[key]].state.pending;
    let in_flight = |b: &Balancer| b.group_states[b.groups[0].state].1.in_flight;
    assert_eq!(
        (pending(&b, one), pending(&b, two), in_flight(&b)),
        (0, 1, 1)
    );
    b.answered(&p, Duration::from_millis(1), false, now);
    b.end(&p);
    assert_eq!(
        (pending(&b, one), pending(&b, two), in_flight(&b)),
        (0, 0, 0)
    );
    // A pick of this set finds its places without a name.
    let q = b.pick(now, &[]).expect("pick");
    b.start(&q);
    assert_eq!(pending(&b, &q.endpoint.key), 1);
    assert_eq!(in_flight(&b), 1);
}
