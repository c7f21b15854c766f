use meshfed_api::discovery::{
    NameValue, PathMatch, RouteBackend, RouteMatch, RouteRule, path_match,
};

use super::*;

fn table(rules: Vec<RouteRule>) -> RouteTable {
    RouteTable::compile(&rules, &Arc::from("api.shop:80"), &RouteMetrics::default())
}

fn path(kind: path_match::Kind, value: &str) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch {
            kind: kind.into(),
            value: value.into(),
        }),
        ..RouteMatch::default()
    }
}

fn rule(n: u32, m: RouteMatch) -> RouteRule {
    RouteRule {
        route: "shop/api".into(),
        rule: n,
        r#match: Some(m),
        backends: vec![RouteBackend {
            name: "api".into(),
            namespace: "shop".into(),
            port: 80,
            weight: 1,
            invalid: false,
        }],
        ..RouteRule::default()
    }
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

/// Which rule (by its number) `req` takes.
fn found(t: &RouteTable, req: &http::Request<()>) -> Option<Arc<str>> {
    t.find(req).map(|r| r.label.clone())
}

#[test]
fn a_prefix_matches_whole_path_elements_and_exact_only_itself() {
    let t = table(vec![
        rule(0, path(path_match::Kind::Exact, "/abc")),
        rule(1, path(path_match::Kind::Prefix, "/abc")),
    ]);
    let label = |n| Some(Arc::from(format!("shop/api#{n}")));
    assert_eq!(found(&t, &request("GET", "/abc", &[])), label(0));
    assert_eq!(found(&t, &request("GET", "/abc/", &[])), label(1));
    assert_eq!(found(&t, &request("GET", "/abc/def?x=1", &[])), label(1));
    assert_eq!(found(&t, &request("GET", "/abcd", &[])), None);
    assert_eq!(found(&t, &request("GET", "/Abc", &[])), None, "case counts");
    let root = table(vec![rule(0, path(path_match::Kind::Prefix, "/"))]);
    assert!(
        root.find(&request("GET", "/anything/at/all", &[]))
            .is_some()
    );
    assert!(root.catch_all().is_some());
    assert!(t.catch_all().is_none());
}

#[test]
fn headers_query_and_method_must_all_hold() {
    let m = RouteMatch {
        headers: vec![NameValue {
            name: "x-canary".into(),
            value: "1".into(),
        }],
        query: vec![NameValue {
            name: "tier".into(),
            value: "gold plus".into(),
        }],
        method: "POST".into(),
        ..path(path_match::Kind::Prefix, "/")
    };
    let t = table(vec![rule(0, m)]);
    let hit = request(
        "POST",
        "/x?a=b&tier=gold+plus&tier=silver",
        &[("X-Canary", "1")],
    );
    assert!(t.find(&hit).is_some());
    for miss in [
        request("GET", "/x?tier=gold%20plus", &[("x-canary", "1")]),
        request(
            "POST",
            "/x?tier=silver&tier=gold+plus",
            &[("x-canary", "1")],
        ),
        request("POST", "/x?tier=gold+plus", &[("x-canary", "2")]),
        request("POST", "/x", &[("x-canary", "1")]),
    ] {
        assert!(t.find(&miss).is_none(), "{miss:?}");
    }
    let encoded = request("POST", "/?tier=gold%20plus", &[("x-canary", "1")]);
    assert!(t.find(&encoded).is_some(), "percent-decoded");
}

#[test]
fn the_first_rule_in_the_order_discovery_sent_wins() {
    // The controller sorts by precedence; the sidecar keeps its order.
    let t = table(vec![
        rule(7, path(path_match::Kind::Prefix, "/")),
        rule(3, path(path_match::Kind::Exact, "/a")),
    ]);
    assert_eq!(
        found(&t, &request("GET", "/a", &[])),
        Some(Arc::from("shop/api#7"))
    );
}

fn weighted_rule(weights: &[(u32, bool)]) -> Rule {
    let backends = weights
        .iter()
        .enumerate()
        .map(|(i, (w, invalid))| RouteBackend {
            name: format!("b{i}"),
            namespace: "shop".into(),
            port: 80,
            weight: *w,
            invalid: *invalid,
        })
        .collect();
    let wire = RouteRule {
        backends,
        ..rule(0, path(path_match::Kind::Prefix, "/"))
    };
    let mut t = table(vec![wire]);
    t.rules.pop().expect("rule")
}

/// Shares of `n` picks, in percent.
fn shares(r: &Rule, usable: impl Fn(&Backend) -> bool + Copy, n: usize) -> Vec<f64> {
    let mut counts = vec![0usize; r.backends.len()];
    for _ in 0..n {
        counts[r.pick(usable, &[]).expect("a pick")] += 1;
    }
    counts
        .iter()
        .map(|c| *c as f64 * 100.0 / n as f64)
        .collect()
}

#[test]
fn picks_follow_the_weights() {
    let n = 200_000;
    // With n = 200k, one standard deviation of a 10% share is 0.07
    // points: ±0.5 points is seven of them.
    for weights in [vec![90, 10], vec![50, 50], vec![0, 100], vec![1, 2, 7]] {
        let spec: Vec<(u32, bool)> = weights.iter().map(|w| (*w, false)).collect();
        let r = weighted_rule(&spec);
        let got = shares(&r, |_| true, n);
        let total: u32 = weights.iter().sum();
        for (w, share) in weights.iter().zip(&got) {
            let want = f64::from(*w) * 100.0 / f64::from(total);
            assert!((share - want).abs() < 0.5, "{weights:?}: {got:?}");
        }
    }
}

#[test]
fn an_unusable_backend_s_share_goes_to_the_others_and_an_invalid_one_keeps_its_own() {
    let r = weighted_rule(&[(50, false), (30, false), (20, true)]);
    let not_b0 = |b: &Backend| b.target.as_ref().is_none_or(|t| t.name != "b0");
    let got = shares(&r, not_b0, 100_000);
    assert_eq!(got[0], 0.0);
    // b1 and the invalid b2 split what is left 30:20.
    assert!((got[1] - 60.0).abs() < 1.0, "{got:?}");
    assert!((got[2] - 40.0).abs() < 1.0, "{got:?}");
    // When none can serve, the weights decide among all (their own
    // stacks then wait or fail).
    let none = shares(&r, |_| false, 100_000);
    assert!((none[0] - 50.0).abs() < 1.0, "{none:?}");
    // Tried backends are left out.
    assert_eq!(r.pick(|_| true, &[0, 1]), Some(2));
    assert_eq!(r.pick(|_| true, &[0, 1, 2]), None);
    assert!(!r.has_other(&[0, 1]), "b2 does not resolve");
    let zero = weighted_rule(&[(0, false), (0, false)]);
    assert_eq!(zero.pick(|_| true, &[]), None);
}

#[test]
fn header_edits_set_add_and_remove() {
    let m = meshfed_api::discovery::HeaderModifier {
        set: vec![NameValue {
            name: "x-a".into(),
            value: "1".into(),
        }],
        add: vec![NameValue {
            name: "x-b".into(),
            value: "2".into(),
        }],
        remove: vec!["x-c".into(), "bad name".into()],
    };
    let edits = HeaderEdits::compile(&m);
    let mut h = HeaderMap::new();
    h.insert("x-a", HeaderValue::from_static("0"));
    h.insert("x-b", HeaderValue::from_static("1"));
    h.insert("x-c", HeaderValue::from_static("gone"));
    edits.apply(&mut h);
    assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1"]);
    assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(h.get("x-c").is_none());
}

#[test]
fn a_mirror_copies_its_fraction() {
    let mirror = |numerator, denominator| Mirror {
        target: "api-west.shop:80".parse().expect("target"),
        numerator,
        denominator,
        counters: RouteMetrics::default().mirror(&Arc::from("s"), "r", "b"),
        resolved: OnceLock::new(),
    };
    let all = mirror(100, 100);
    assert!((0..1000).all(|_| all.chosen()));
    let none = mirror(0, 100);
    assert!((0..1000).all(|_| !none.chosen()));
    let quarter = mirror(1, 4);
    let n = (0..100_000).filter(|_| quarter.chosen()).count();
    assert!((24_000..26_000).contains(&n), "{n}");
}
