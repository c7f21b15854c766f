use std::time::Duration;

use meshfed_api::discovery::{Bucket as WireBucket, PortLimit};
use meshfed_trust::SpiffeId;
use tokio::time::{Instant, advance};

use super::*;

fn limit(port: u32, policy: &str, total: Option<(u32, u32)>, per: Option<(u32, u32)>) -> PortLimit {
    let bucket = |b: Option<(u32, u32)>| {
        b.map(|(requests_per_second, burst)| WireBucket {
            requests_per_second,
            burst,
        })
    };
    PortLimit {
        port,
        policy: policy.into(),
        total: bucket(total),
        per_caller: bucket(per),
    }
}

fn id(sa: &str) -> Caller {
    Caller::Id(SpiffeId::parse(&format!("spiffe://mesh.test/ns/shop/sa/{sa}")).expect("id"))
}

/// How many of `n` back-to-back requests get through now.
fn admitted(limits: &Limits, port: u16, caller: &Caller, n: usize) -> usize {
    let now = Instant::now();
    (0..n)
        .filter(|_| limits.check(port, caller, now).is_ok())
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_bucket_gives_its_burst_then_its_rate() {
    let limits = Limits::default();
    limits.update(&[limit(8080, "shop/api", Some((10, 20)), None)]);
    let a = id("a");
    assert_eq!(admitted(&limits, 8080, &a, 100), 20, "the burst");
    let refused = limits
        .check(8080, &a, Instant::now())
        .expect_err("bucket empty");
    assert_eq!(refused.scope, Scope::total);
    assert_eq!(&*refused.policy, "shop/api");
    assert_eq!(refused.retry_after, Duration::from_millis(100));
    assert_eq!(refused.retry_after_secs(), 1);
    // 10 a second: one token per 100 ms, never more than accrued.
    advance(Duration::from_millis(99)).await;
    assert_eq!(admitted(&limits, 8080, &a, 5), 0);
    advance(Duration::from_millis(1)).await;
    assert_eq!(admitted(&limits, 8080, &a, 5), 1);
    advance(Duration::from_millis(550)).await;
    assert_eq!(admitted(&limits, 8080, &a, 20), 5);
    // A long quiet spell refills to the burst, not beyond.
    advance(Duration::from_secs(60)).await;
    assert_eq!(admitted(&limits, 8080, &a, 100), 20);
    // Over ten seconds at a steady offer of 50/s, 10/s get through.
    let mut through = 0;
    for _ in 0..500 {
        advance(Duration::from_millis(20)).await;
        through += admitted(&limits, 8080, &a, 1);
    }
    assert_eq!(through, 100);
    assert_eq!(
        limits.metrics.count(8080, "shop/api", Scope::total),
        80 + 1 + 5 + 4 + 15 + 80 + 400
    );
}

#[tokio::test(start_paused = true)]
async fn each_caller_has_its_own_bucket_within_the_total() {
    let limits = Limits::default();
    limits.update(&[limit(8080, "shop/api", Some((100, 5)), Some((1, 2)))]);
    let (a, b) = (id("a"), id("b"));
    let plain = Caller::Addr("10.0.0.9".parse().expect("ip"));
    assert_eq!(admitted(&limits, 8080, &a, 10), 2);
    assert_eq!(admitted(&limits, 8080, &b, 10), 2);
    // Only one left in the total for the third caller.
    let refused = limits.check(8080, &a, Instant::now()).expect_err("a's own");
    assert_eq!(refused.scope, Scope::per_caller);
    assert_eq!(refused.retry_after, Duration::from_secs(1));
    assert_eq!(admitted(&limits, 8080, &plain, 10), 1);
    // A refused request costs no bucket: after 1 s a has one token, and
    // the total (refilled to 5) gives it.
    advance(Duration::from_secs(1)).await;
    assert_eq!(admitted(&limits, 8080, &a, 10), 1);
    assert_eq!(
        limits.metrics.count(8080, "shop/api", Scope::per_caller),
        8 + 8 + 1 + 9
    );
    assert_eq!(limits.metrics.count(8080, "shop/api", Scope::total), 9);
}

#[tokio::test(start_paused = true)]
async fn every_policy_of_a_port_applies_and_other_ports_are_free() {
    let limits = Limits::default();
    limits.update(&[
        limit(8080, "shop/loose", Some((100, 100)), None),
        limit(8080, "shop/tight", Some((1, 3)), None),
    ]);
    let a = id("a");
    assert_eq!(admitted(&limits, 8080, &a, 10), 3);
    assert_eq!(admitted(&limits, 9090, &a, 1000), 1000);
    // The loose bucket gave 3, not 10: refused requests took nothing.
    // Removing the tight policy keeps the loose one's bucket as it was.
    limits.update(&[limit(8080, "shop/loose", Some((100, 100)), None)]);
    assert_eq!(admitted(&limits, 8080, &a, 1000), 97);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_policy_keeps_its_buckets_across_updates() {
    let limits = Limits::default();
    let table = [limit(8080, "shop/api", Some((1, 2)), None)];
    limits.update(&table);
    let a = id("a");
    assert_eq!(admitted(&limits, 8080, &a, 5), 2);
    limits.update(&table);
    assert_eq!(
        admitted(&limits, 8080, &a, 5),
        0,
        "not refilled by an update"
    );
    // New numbers: new, full buckets.
    limits.update(&[limit(8080, "shop/api", Some((1, 4)), None)]);
    assert_eq!(admitted(&limits, 8080, &a, 5), 4);
    // Gone: no limit.
    limits.update(&[]);
    assert_eq!(admitted(&limits, 8080, &a, 50), 50);
    // Nonsense from the wire (port 0, zero rates) limits nothing.
    limits.update(&[
        limit(0, "shop/zero-port", Some((1, 1)), None),
        limit(8080, "shop/zero-rate", Some((0, 5)), Some((5, 0))),
        limit(70_000, "shop/big-port", Some((1, 1)), None),
    ]);
    assert_eq!(admitted(&limits, 8080, &a, 50), 50);
}

#[tokio::test(start_paused = true)]
async fn callers_beyond_the_bound_share_one_bucket_until_idle_ones_are_forgotten() {
    let limits = Limits::default();
    limits.update(&[limit(8080, "shop/api", None, Some((1, 1)))]);
    for i in 0..MAX_CALLERS {
        let caller = Caller::Addr(std::net::IpAddr::from(std::net::Ipv6Addr::from(i as u128)));
        assert_eq!(admitted(&limits, 8080, &caller, 1), 1);
    }
    // Every tracked caller's bucket is empty: newcomers share one.
    let (x, y) = (id("x"), id("y"));
    assert_eq!(admitted(&limits, 8080, &x, 1), 1);
    assert_eq!(
        admitted(&limits, 8080, &y, 1),
        0,
        "the shared bucket is spent"
    );
    // A second later every bucket is full again: the idle are forgotten
    // and newcomers get their own.
    advance(Duration::from_secs(1)).await;
    assert_eq!(admitted(&limits, 8080, &y, 1), 1);
    assert_eq!(admitted(&limits, 8080, &x, 1), 1);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    let limited = |ms| Limited {
        policy: "p".into(),
        scope: Scope::total,
        retry_after: Duration::from_millis(ms),
    };
    assert_eq!(limited(0).retry_after_secs(), 1);
    assert_eq!(limited(1).retry_after_secs(), 1);
    assert_eq!(limited(1000).retry_after_secs(), 1);
    assert_eq!(limited(1001).retry_after_secs(), 2);
}
