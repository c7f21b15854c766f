//! Session affinity: a key keeps its endpoint, and when one of N endpoints
//! goes only its keys move.

use std::collections::HashMap;

use http::HeaderMap;

use super::tests::{balancer, ep, group, set};
use super::*;

/// One group of `n` endpoints, affinity by header `x-user`.
fn keyed(n: usize) -> meshfed_api::discovery::EndpointSet {
    let eps = (0..n)
        .map(|i| ep(&format!("10.0.0.{}:80", i + 1), true))
        .collect();
    let mut s = set(vec![group("east", "a", false, eps, 0.7)], 0);
    if let Some(p) = s.policy.as_mut() {
        p.hash_header = "x-user".into();
    }
    s
}

fn key(b: &Balancer, user: &str) -> u64 {
    let mut h = HeaderMap::new();
    h.insert("x-user", user.parse().expect("value"));
    b.affinity
        .as_ref()
        .expect("affinity")
        .key(&h)
        .expect("a key")
}

/// Where each of `users` goes.
fn placed(b: &mut Balancer, now: Instant, users: &[String]) -> HashMap<String, String> {
    users
        .iter()
        .map(|u| {
            let k = key(b, u);
            let p = b.pick_keyed(now, k, &[]).expect("pick");
            (u.clone(), p.endpoint.addr.to_string())
        })
        .collect()
}

#[test]
fn a_key_stays_on_its_endpoint_in_every_sidecar() {
    let now = Instant::now();
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let mut a = balancer(&keyed(5), now);
    let mut b = balancer(&keyed(5), now);
    let first = placed(&mut a, now, &users);
    assert_eq!(first, placed(&mut a, now, &users), "the same sidecar again");
    assert_eq!(first, placed(&mut b, now, &users), "another sidecar");
    // Spread: each of 5 endpoints has its fifth of the keys, give or take.
    let mut per: HashMap<&String, usize> = HashMap::new();
    for e in first.values() {
        *per.entry(e).or_default() += 1;
    }
    assert_eq!(per.len(), 5);
    assert!(per.values().all(|n| (120..=280).contains(n)), "{per:?}");
}

#[test]
fn when_one_of_n_endpoints_goes_only_its_keys_move() {
    let now = Instant::now();
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    for n in [4usize, 10, 25] {
        let mut b = balancer(&keyed(n), now);
        let before = placed(&mut b, now, &users);
        let gone = "10.0.0.2:80";
        let key_of = |b: &Balancer| b.index[&*pick_key(b, gone)];
        let slot = key_of(&b);
        let k = b.states[slot].key.clone();
        b.connect_failed(&k, now, now);
        let after = placed(&mut b, now, &users);
        let moved: Vec<&String> = users.iter().filter(|u| before[*u] != after[*u]).collect();
        assert!(
            moved.iter().all(|u| before[*u] == gone),
            "n={n}: only the gone endpoint's keys move"
        );
        assert!(after.values().all(|e| e != gone));
        let share = moved.len() as f64 / users.len() as f64;
        assert!(
            share <= 1.5 / n as f64,
            "n={n}: {:.3} of the keys moved, more than 1.5/N",
            share
        );
        // Back: its keys come home.
        let slot = key_of(&b);
        let k = b.states[slot].key.clone();
        b.connected(&k, now);
        assert_eq!(placed(&mut b, now, &users), before, "n={n}");
    }
}

#[test]
fn the_key_is_read_from_a_header_or_a_cookie_and_tried_endpoints_are_passed_over() {
    let now = Instant::now();
    let mut s = keyed(3);
    if let Some(p) = s.policy.as_mut() {
        p.hash_header = String::new();
        p.hash_cookie = "session".into();
    }
    let mut b = balancer(&s, now);
    let affinity = b.affinity.clone().expect("affinity");
    let mut h = HeaderMap::new();
    h.append("cookie", "theme=dark; session=abc".parse().expect("v"));
    let k = affinity.key(&h).expect("the cookie's value");
    let mut other = HeaderMap::new();
    other.append("cookie", "session=abc".parse().expect("v"));
    assert_eq!(
        affinity.key(&other),
        Some(k),
        "the value, wherever the cookie is"
    );
    assert_eq!(affinity.key(&HeaderMap::new()), None);
    let first = b.pick_keyed(now, k, &[]).expect("pick");
    let again = b
        .pick_keyed(now, k, std::slice::from_ref(&first.endpoint.key))
        .expect("pick");
    assert_ne!(
        first.endpoint.key, again.endpoint.key,
        "a retry goes elsewhere"
    );
    // Without affinity in the policy there is none.
    let plain = balancer(&super::tests::zone_a(vec![ep("10.0.0.1:80", true)]), now);
    assert!(plain.affinity.is_none());
}

/// The balancer's key of the endpoint at `addr`.
fn pick_key(b: &Balancer, addr: &str) -> Arc<str> {
    b.groups
        .iter()
        .flat_map(|g| g.members.iter())
        .find(|m| m.info.addr.to_string() == addr)
        .map(|m| m.info.key.clone())
        .expect("listed")
}
