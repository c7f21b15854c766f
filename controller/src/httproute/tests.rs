use std::sync::Arc;

use meshfed_api::discovery::{RouteRule, path_match};
use meshfed_resources::route::HttpRoute;

use super::check::check;
use super::rules_for;
use crate::fixtures;
use crate::store::{ClusterState, ObjKey};

/// `shop` with Services api, api-v2 and api-west (port 80, named http),
/// and `routes` (YAML documents).
fn state(routes: &[&str]) -> ClusterState {
    let mut s = ClusterState::default();
    for name in ["api", "api-v2", "api-west", "api-primary", "api-canary"] {
        let svc = fixtures::service("shop", name, &[("http", 80)], false);
        s.services.insert(ObjKey::new("shop", name), svc.into());
    }
    for text in routes {
        let route = parse(text);
        let key = ObjKey::new(
            route.metadata.namespace.as_deref().unwrap_or("default"),
            route.metadata.name.as_deref().unwrap_or_default(),
        );
        s.routes.insert(key, Arc::new(route));
    }
    s
}

fn parse(text: &str) -> HttpRoute {
    serde_saphyr::from_str(text).expect("route parses")
}

/// A route `name` in shop on Service api with `rules` (YAML, indented
/// as under `spec:`), created at second `created`.
fn route(name: &str, created: u32, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  \
         namespace: shop\n  generation: 3\n  creationTimestamp: \"2026-01-01T00:00:{created:02}Z\"\n\
         spec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: api\n    port: 80\n{rules}"
    )
}

fn verdict(s: &ClusterState, name: &str) -> super::check::ParentVerdict {
    let key = ObjKey::new("shop", name);
    let route = s.routes.get(&key).expect("route");
    let mut v = check(route, &key, s);
    assert_eq!(v.len(), 1, "one Service parent");
    v.remove(0)
}

/// Each rule as `route#rule path-kind path`.
fn order(rules: &[RouteRule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().expect("match");
            let p = m.path.as_ref().expect("path");
            let kind = if p.kind() == path_match::Kind::Exact {
                "exact"
            } else {
                "prefix"
            };
            let extra = format!(
                "{}{}{}",
                if m.method.is_empty() { "" } else { " method" },
                " header".repeat(m.headers.len()),
                " query".repeat(m.query.len())
            );
            format!("{}#{} {kind} {}{extra}", r.route, r.rule, p.value)
        })
        .collect()
}

#[test]
fn matches_take_the_gateway_api_s_precedence_across_routes() {
    let older = route(
        "b-older",
        1,
        "  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /api}\n    backendRefs: [{name: api, port: 80}]\n  \
         - matches:\n    - path: {type: PathPrefix, value: /api}\n      headers: [{name: x-a, value: \"1\"}]\n    backendRefs: [{name: api, port: 80}]\n  \
         - backendRefs: [{name: api, port: 80}]\n",
    );
    let newer = route(
        "a-newer",
        2,
        "  rules:\n  - matches:\n    - path: {type: Exact, value: /api}\n    - path: {type: PathPrefix, value: /api/v1/}\n    backendRefs: [{name: api-v2, port: 80}]\n  \
         - matches:\n    - path: {type: PathPrefix, value: /api}\n      method: GET\n    - path: {type: PathPrefix, value: /api}\n    backendRefs: [{name: api-v2, port: 80}]\n",
    );
    let s = state(&[&older, &newer]);
    let rules = rules_for(&s, &ObjKey::new("shop", "api"), 80);
    assert_eq!(
        order(&rules),
        [
            "shop/a-newer#0 exact /api",
            "shop/a-newer#0 prefix /api/v1",
            "shop/a-newer#1 prefix /api method",
            "shop/b-older#1 prefix /api header",
            // Equal matches: the older route first.
            "shop/b-older#0 prefix /api",
            "shop/a-newer#1 prefix /api",
            "shop/b-older#2 prefix /",
        ]
    );
    // The route applies to port 80 only.
    assert!(rules_for(&s, &ObjKey::new("shop", "api"), 81).is_empty());
}

#[test]
fn a_gamma_split_with_a_header_route_is_served_as_written() {
    // The GAMMA documentation's shape: a header match to v2, a weighted
    // split across versions and clusters for the rest.
    let text = route(
        "api-split",
        1,
        "  rules:\n  - matches:\n    - headers:\n      - name: X-Canary\n        value: \"1\"\n    backendRefs:\n    - name: api-v2\n      port: 80\n  \
         - backendRefs:\n    - {group: \"\", kind: Service, name: api, port: 80, weight: 90}\n    - {name: api-west, port: 80, weight: 10}\n    - {name: api-v2, port: 80, weight: 0}\n    \
         timeouts: {request: 10s, backendRequest: 2s}\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: X-Split, value: \"yes\"}]\n    \
         - type: RequestMirror\n      requestMirror:\n        backendRef: {name: api-west, port: 80}\n        percent: 25\n",
    );
    let s = state(&[&text]);
    let v = verdict(&s, "api-split");
    assert_eq!(v.accepted, Ok(()));
    assert_eq!(v.resolved, Ok(()));
    let rules = rules_for(&s, &ObjKey::new("shop", "api"), 80);
    assert_eq!(rules.len(), 2);
    let header = &rules[0];
    let m = header.r#match.as_ref().expect("match");
    assert_eq!(m.headers[0].name, "x-canary", "names compare lowercase");
    assert_eq!(header.backends[0].name, "api-v2");
    let split = &rules[1];
    let weights: Vec<_> = split
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight, b.invalid))
        .collect();
    assert_eq!(
        weights,
        [
            ("api", 90, false),
            ("api-west", 10, false),
            ("api-v2", 0, false)
        ]
    );
    assert_eq!(split.request_timeout_ms, Some(10_000));
    assert_eq!(split.backend_request_timeout_ms, Some(2_000));
    let edits = split.request_headers.as_ref().expect("edits");
    assert_eq!(edits.set[0].name, "x-split");
    let mirror = &split.mirrors[0];
    assert_eq!(
        (mirror.name.as_str(), mirror.numerator, mirror.denominator),
        ("api-west", 25, 100)
    );
}

#[test]
fn the_route_flagger_writes_is_accepted_at_each_step() {
    // Flagger's Gateway API router: parentRefs copied from the Canary's
    // gatewayRefs (group core, with the port), primary and canary backends
    // with explicit weights, and for A/B testing a header rule first.
    for (primary, canary) in [(100, 0), (90, 10), (50, 50), (0, 100)] {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata:\n  name: api\n  namespace: shop\n\
             spec:\n  parentRefs:\n  - {{group: core, kind: Service, namespace: shop, name: api, port: 80}}\n  rules:\n  \
             - matches:\n    - path: {{type: PathPrefix, value: /}}\n      headers: [{{type: Exact, name: x-canary, value: insider}}]\n    backendRefs:\n    \
             - {{group: \"\", kind: Service, name: api-primary, port: 80, weight: 0}}\n    - {{group: \"\", kind: Service, name: api-canary, port: 80, weight: 100}}\n  \
             - matches:\n    - path: {{type: PathPrefix, value: /}}\n    backendRefs:\n    \
             - {{group: \"\", kind: Service, name: api-primary, port: 80, weight: {primary}}}\n    - {{group: \"\", kind: Service, name: api-canary, port: 80, weight: {canary}}}\n"
        );
        let s = state(&[&text]);
        let v = verdict(&s, "api");
        assert_eq!((&v.accepted, &v.resolved), (&Ok(()), &Ok(())));
        let rules = rules_for(&s, &ObjKey::new("shop", "api"), 80);
        assert_eq!(rules.len(), 2);
        let weights = |r: &RouteRule| r.backends.iter().map(|b| b.weight).collect::<Vec<_>>();
        assert_eq!(weights(&rules[0]), [0, 100], "the header rule first");
        assert_eq!(weights(&rules[1]), [primary, canary]);
    }
}

#[test]
fn every_unsupported_field_refuses_the_route_naming_it() {
    let cases = [
        ("    retry: {attempts: 2}\n", "spec.rules[0].retry"),
        (
            "    sessionPersistence: {sessionName: s}\n",
            "spec.rules[0].sessionPersistence",
        ),
        (
            "    matches: [{path: {type: RegularExpression, value: \"/a.*\"}}]\n",
            "spec.rules[0].matches[0].path.type",
        ),
        (
            "    matches: [{headers: [{type: RegularExpression, name: x, value: \"a.*\"}]}]\n",
            "spec.rules[0].matches[0].headers[0].type",
        ),
        (
            "    matches: [{queryParams: [{type: RegularExpression, name: x, value: \"a.*\"}]}]\n",
            "spec.rules[0].matches[0].queryParams[0].type",
        ),
        (
            "    filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: a, value: b}]}}]\n",
            "spec.rules[0].filters[0].type",
        ),
        (
            "    filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]\n",
            "spec.rules[0].filters[0].type",
        ),
        (
            "    filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]\n",
            "spec.rules[0].filters[0].type",
        ),
        (
            "    filters: [{type: ExtensionRef, extensionRef: {group: g, kind: K, name: n}}]\n",
            "spec.rules[0].filters[0].type",
        ),
        (
            "    filters: [{type: CORS, cors: {allowOrigins: [\"*\"]}}]\n",
            "spec.rules[0].filters[0].type",
        ),
        (
            "    timeouts: {request: 1s, backendRequest: 2s}\n",
            "spec.rules[0].timeouts.backendRequest",
        ),
        (
            "    timeouts: {request: 10x}\n",
            "spec.rules[0].timeouts.request",
        ),
        (
            "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api-west, port: 80}, percent: 5, fraction: {numerator: 1}}}]\n",
            "spec.rules[0].filters[0]",
        ),
    ];
    for (rule, field) in cases {
        let text = route(
            "r",
            1,
            &format!("  rules:\n  - backendRefs: [{{name: api, port: 80}}]\n{rule}"),
        );
        let s = state(&[&text]);
        let v = verdict(&s, "r");
        let refusal = v.accepted.expect_err(field);
        assert_eq!(refusal.reason, "UnsupportedValue", "{field}");
        assert!(
            refusal.message.starts_with(&format!("{field}:")),
            "{field}: {}",
            refusal.message
        );
        assert!(
            rules_for(&s, &ObjKey::new("shop", "api"), 80).is_empty(),
            "a refused route routes nothing ({field})"
        );
    }
    let text = route(
        "r",
        1,
        "  rules:\n  - backendRefs:\n    - name: api\n      port: 80\n      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}]\n",
    );
    let refusal = verdict(&state(&[&text]), "r")
        .accepted
        .expect_err("refused");
    assert!(
        refusal
            .message
            .starts_with("spec.rules[0].backendRefs[0].filters:")
    );
}

#[test]
fn parents_and_backends_that_do_not_resolve_say_why() {
    let mut gone = route(
        "r",
        1,
        "  rules:\n  - backendRefs: [{name: api, port: 80}]\n",
    );
    gone = gone.replace("name: api\n    port: 80", "name: nope\n    port: 80");
    let s = state(&[&gone]);
    let v = verdict(&s, "r");
    assert_eq!(
        v.accepted.expect_err("no parent").reason,
        "NoMatchingParent"
    );

    let wrong_port = route(
        "r",
        1,
        "  rules:\n  - backendRefs: [{name: api, port: 80}]\n",
    )
    .replace("port: 80\n  rules", "port: 81\n  rules");
    let refusal = verdict(&state(&[&wrong_port]), "r")
        .accepted
        .expect_err("port");
    assert_eq!(refusal.reason, "NoMatchingParent");
    assert!(
        refusal.message.contains("no port 81"),
        "{}",
        refusal.message
    );

    let consumer = route(
        "r",
        1,
        "  rules:\n  - backendRefs: [{name: api, port: 80}]\n",
    )
    .replace(
        "namespace: shop\n  generation",
        "namespace: web\n  generation",
    )
    .replace(
        "name: api\n    port: 80",
        "name: api\n    namespace: shop\n    port: 80",
    );
    let mut s = state(&[]);
    let route = parse(&consumer);
    let key = ObjKey::new("web", "r");
    s.routes.insert(key.clone(), Arc::new(route.clone()));
    let v = check(&route, &key, &s);
    assert_eq!(
        v[0].accepted.clone().expect_err("consumer").reason,
        "UnsupportedValue"
    );

    let backends = route_text_with_backends(
        "    - {name: missing, port: 80}\n    - {name: api-v2, port: 9999}\n    - {group: apps, kind: Deployment, name: api, port: 80}\n    - {name: api, port: 80}\n",
    );
    let s = state(&[&backends]);
    let v = verdict(&s, "r");
    assert_eq!(
        v.accepted,
        Ok(()),
        "a bad backend does not refuse the route"
    );
    let refusal = v.resolved.expect_err("unresolved");
    assert_eq!(refusal.reason, "BackendNotFound");
    assert!(
        refusal.message.contains("(and 2 more)"),
        "{}",
        refusal.message
    );
    let rules = rules_for(&s, &ObjKey::new("shop", "api"), 80);
    let invalid: Vec<bool> = rules[0].backends.iter().map(|b| b.invalid).collect();
    assert_eq!(
        invalid,
        [true, true, true, false],
        "their shares are answered 500"
    );

    let kind_only =
        route_text_with_backends("    - {group: apps, kind: Deployment, name: api, port: 80}\n");
    let refusal = verdict(&state(&[&kind_only]), "r")
        .resolved
        .expect_err("kind");
    assert_eq!(refusal.reason, "InvalidKind");
}

fn route_text_with_backends(backends: &str) -> String {
    route("r", 1, &format!("  rules:\n  - backendRefs:\n{backends}"))
}

#[test]
fn a_route_on_a_gateway_is_not_the_mesh_s() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: edge, namespace: shop}\n\
                spec:\n  parentRefs: [{name: public-gateway}]\n  rules: [{backendRefs: [{name: api, port: 80}]}]\n";
    let s = state(&[text]);
    let key = ObjKey::new("shop", "edge");
    assert!(check(s.routes.get(&key).expect("route"), &key, &s).is_empty());
    assert!(s.routes_of(&ObjKey::new("shop", "api")).is_empty());
}

#[test]
fn status_echoes_each_parent_ref_with_the_generation() {
    let text = route(
        "r",
        1,
        "  rules:\n  - backendRefs: [{name: api, port: 80}]\n",
    );
    let s = state(&[&text]);
    let key = ObjKey::new("shop", "r");
    let r = s.routes.get(&key).expect("route");
    let now =
        meshfed_resources::route::RouteTime(meshfed_resources::route::RouteTimestamp::UNIX_EPOCH);
    let parents = super::status_parents(&check(r, &key, &s), r.metadata.generation, &now, None);
    assert_eq!(parents.len(), 1);
    let p = &parents[0];
    assert_eq!(p.controller_name, "meshfed.io/mesh-controller");
    let spec_ref = &r.spec.parent_refs.as_ref().expect("refs")[0];
    assert_eq!(
        (
            p.parent_ref.group.as_deref(),
            p.parent_ref.kind.as_deref(),
            p.parent_ref.port
        ),
        (
            spec_ref.group.as_deref(),
            spec_ref.kind.as_deref(),
            spec_ref.port
        )
    );
    let types: Vec<_> = p
        .conditions
        .iter()
        .map(|c| {
            (
                c.type_.as_str(),
                c.status.as_str(),
                c.reason.as_str(),
                c.observed_generation,
            )
        })
        .collect();
    assert_eq!(
        types,
        [
            ("Accepted", "True", "Accepted", Some(3)),
            ("ResolvedRefs", "True", "ResolvedRefs", Some(3))
        ]
    );
}
