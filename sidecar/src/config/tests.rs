//! Parsing and checking the configuration.

use std::collections::BTreeMap;

use meshfed_trust::SpiffeId;

use super::*;

#[test]
fn parses_upstreams_and_inbound_ports() {
    let u: Upstream = "api.shop:80=9001".parse().expect("upstream");
    assert_eq!(u.target.to_string(), "api.shop:80");
    assert_eq!(u.listen, "127.0.0.1:9001".parse().expect("addr"));
    let u: Upstream = "db.data:5432=10.0.0.1:6000".parse().expect("upstream");
    assert_eq!(u.listen.port(), 6000);
    let i: Inbound = "15006=8080".parse().expect("inbound");
    assert_eq!(i.listen, "0.0.0.0:15006".parse().expect("addr"));
    assert_eq!(i.app, "127.0.0.1:8080".parse().expect("addr"));
}

#[test]
fn rejects_what_it_cannot_use() {
    for bad in [
        "api:80=9001",
        "api.shop=9001",
        "api.shop:0=9001",
        "API.shop:80=9001",
        "api.shop:80",
        "api.shop:80=x",
    ] {
        assert!(bad.parse::<Upstream>().is_err(), "{bad}");
    }
    assert!("15006".parse::<Inbound>().is_err());
    assert!("15006=frontend".parse::<AllowRule>().is_err());
    assert!("x=spiffe://td/ns/a/sa/b".parse::<AllowRule>().is_err());
}

#[test]
fn allow_rules_attach_to_their_port() {
    let mut c = SidecarConfig {
        inbound: vec!["15006=8080".parse().expect("inbound")],
        ..SidecarConfig::default()
    };
    let rule: AllowRule = "15006=spiffe://td/ns/web/sa/frontend"
        .parse()
        .expect("rule");
    c.apply_allow(vec![rule]).expect("applies");
    let id = SpiffeId::parse("spiffe://td/ns/web/sa/frontend").expect("id");
    let other = SpiffeId::parse("spiffe://td/ns/web/sa/other").expect("id");
    assert!(c.inbound[0].allow.permits(&id));
    assert!(!c.inbound[0].allow.permits(&other));
    let stray: AllowRule = "9999=spiffe://td/ns/a/sa/b".parse().expect("rule");
    assert!(c.apply_allow(vec![stray]).is_err());
}

#[test]
fn transparent_ports_take_allow_rules_and_policies_by_app_port() {
    let mut c = SidecarConfig {
        inbound: vec!["15006=8080".parse().expect("inbound")],
        ..SidecarConfig::default()
    };
    let strict: PortPolicy = "9090=strict".parse().expect("policy");
    let err = c
        .apply_port_policies(vec![strict])
        .expect_err("no such port");
    assert!(
        err.to_string()
            .starts_with("--inbound-port-policy names port 9090"),
        "{err}"
    );
    c.transparent_inbound = Some(TransparentInbound {
        listen: "0.0.0.0:4144".parse().expect("addr"),
        allow: BTreeMap::new(),
        plaintext: Plaintext::Permissive,
    });
    c.apply_port_policies(vec![strict, "15006=permissive".parse().expect("policy")])
        .expect("applies");
    assert_eq!(
        c.plaintext_ports.of(9090, Plaintext::Permissive),
        Plaintext::Strict
    );
    assert_eq!(
        c.plaintext_ports.of(15006, Plaintext::Strict),
        Plaintext::Permissive
    );
    assert_eq!(
        c.plaintext_ports.of(8080, Plaintext::Strict),
        Plaintext::Strict
    );
    assert!(c.apply_port_policies(vec![strict]).is_err(), "twice");
    let rule: AllowRule = "8080=spiffe://td/ns/web/sa/frontend".parse().expect("rule");
    c.apply_allow(vec![rule]).expect("applies");
    let t = c.transparent_inbound.as_ref().expect("transparent");
    let id = SpiffeId::parse("spiffe://td/ns/web/sa/frontend").expect("id");
    assert_eq!(t.allow.get(&8080), Some(&Allow::Only(vec![id])));
    assert_eq!(c.inbound[0].allow, Allow::Mesh, "15006 keeps its own");
    for bad in ["8080", "8080=open", "x=strict", "70000=strict"] {
        let err = bad.parse::<PortPolicy>().expect_err(bad);
        assert!(
            err.to_string().contains("expected PORT=strict|permissive"),
            "{err}"
        );
    }
}

#[test]
fn a_listen_address_is_used_once() {
    let c = SidecarConfig {
        upstreams: vec!["api.shop:80=9001".parse().expect("upstream")],
        transparent: Some("127.0.0.1:9001".parse().expect("addr")),
        ..SidecarConfig::default()
    };
    assert!(c.validate().is_err());
}
