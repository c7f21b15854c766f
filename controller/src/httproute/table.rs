//! The rules a Service port's callers apply: every accepted route attached
//! to it, one entry per match, sorted by the Gateway API's precedence —
//! exact path, then longest prefix, then a method, then most headers, then
//! most query parameters; ties to the oldest route, then `namespace/name`,
//! then the rule and match order within a route.

use std::cmp::Reverse;
use std::sync::Arc;

use meshfed_api::discovery::{
    HeaderModifier, NameValue, PathMatch, RouteBackend, RouteMatch, RouteMirror, RouteRule,
    path_match,
};
use meshfed_resources::route::{
    HttpRoute, HttpRouteRules, HttpRouteRulesFiltersRequestHeaderModifier, HttpRouteRulesMatches,
    HttpRouteRulesMatchesMethod, HttpRouteRulesMatchesPathType, is_service_ref, mirror_fraction,
};

use super::check::{Ref, check, resolve};
use super::fields::duration;
use crate::store::{ClusterState, ObjKey};

/// Which routes name each Service as a parent.
pub(crate) type RouteIndex = crate::store::Table<ObjKey, Arc<[ObjKey]>>;

/// The Services route `key` names as parents.
pub(crate) fn parents_of(key: &ObjKey, route: &HttpRoute) -> Vec<ObjKey> {
    let mut parents: Vec<ObjKey> = route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter(|p| is_service_ref(p.group.as_deref(), p.kind.as_deref(), "Gateway"))
        .map(|p| ObjKey::new(p.namespace.as_deref().unwrap_or(&key.namespace), &p.name))
        .collect();
    parents.sort();
    parents.dedup();
    parents
}

/// The routing rules of Service `service`, port `port`, in precedence order.
pub(crate) fn rules_for(state: &ClusterState, service: &ObjKey, port: u16) -> Vec<RouteRule> {
    let mut entries: Vec<(SortKey, RouteRule)> = Vec::new();
    for (key, route) in state.routes_of(service) {
        let attached = check(route, &key, state).into_iter().any(|v| {
            v.service == *service && v.port.is_none_or(|p| p == port) && v.accepted.is_ok()
        });
        if !attached {
            continue;
        }
        let created = route.metadata.creation_timestamp.clone().map(|t| t.0);
        for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
            let default = [HttpRouteRulesMatches::default()];
            let matches = match rule.matches.as_deref() {
                Some(m) if !m.is_empty() => m,
                _ => &default[..],
            };
            for (j, m) in matches.iter().enumerate() {
                let wire = wire_match(m);
                let sort = SortKey {
                    specificity: specificity(&wire),
                    created,
                    route: key.clone(),
                    rule: i,
                    matched: j,
                };
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                entries.push((sort, wire_rule(state, &key, index, rule, wire)));
            }
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(_, r)| r).collect()
}

/// Orders entries: most specific first, then oldest route, then by name.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    specificity: Reverse<(bool, usize, bool, usize, usize)>,
    /// `None` sorts first: a route not yet stored has no timestamp, and
    /// only the file store's models hold such.
    created: Option<k8s_openapi::jiff::Timestamp>,
    route: ObjKey,
    rule: usize,
    matched: usize,
}

fn specificity(m: &RouteMatch) -> Reverse<(bool, usize, bool, usize, usize)> {
    let path = m.path.as_ref();
    let exact = path.is_some_and(|p| p.kind() == path_match::Kind::Exact);
    let prefix = path.map_or(0, |p| p.value.len());
    Reverse((
        exact,
        prefix,
        !m.method.is_empty(),
        m.headers.len(),
        m.query.len(),
    ))
}

fn wire_match(m: &HttpRouteRulesMatches) -> RouteMatch {
    let path = m.path.as_ref();
    let kind = match path.and_then(|p| p.r#type.as_ref()) {
        Some(HttpRouteRulesMatchesPathType::Exact) => path_match::Kind::Exact,
        _ => path_match::Kind::Prefix,
    };
    let mut value = path
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    // A prefix's trailing `/` is ignored: `/abc/` matches as `/abc`.
    if kind == path_match::Kind::Prefix && value.len() > 1 {
        value.truncate(value.trim_end_matches('/').len().max(1));
    }
    let nv = |name: String, value: &str| NameValue {
        name,
        value: value.to_owned(),
    };
    // Header names compare without case; of repeated names the first counts.
    let mut headers: Vec<NameValue> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        if !headers.iter().any(|x| x.name == name) {
            headers.push(nv(name, &h.value));
        }
    }
    let mut query: Vec<NameValue> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if !query.iter().any(|x| x.name == q.name) {
            query.push(nv(q.name.clone(), &q.value));
        }
    }
    RouteMatch {
        path: Some(PathMatch {
            kind: kind.into(),
            value,
        }),
        headers,
        query,
        method: m.method.as_ref().map(method).unwrap_or_default().to_owned(),
    }
}

fn method(m: &HttpRouteRulesMatchesMethod) -> &'static str {
    use HttpRouteRulesMatchesMethod as M;
    match m {
        M::Get => "GET",
        M::Head => "HEAD",
        M::Post => "POST",
        M::Put => "PUT",
        M::Delete => "DELETE",
        M::Connect => "CONNECT",
        M::Options => "OPTIONS",
        M::Trace => "TRACE",
        M::Patch => "PATCH",
    }
}

fn wire_rule(
    state: &ClusterState,
    route: &ObjKey,
    index: u32,
    rule: &HttpRouteRules,
    matched: RouteMatch,
) -> RouteRule {
    let backends = rule
        .backend_refs
        .iter()
        .flatten()
        .map(|b| {
            let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let namespace = b
                .namespace
                .clone()
                .unwrap_or_else(|| route.namespace.to_string());
            match resolve(&route.namespace, &Ref::backend(b), state) {
                Ok(r) => RouteBackend {
                    name: r.service.name.to_string(),
                    namespace: r.service.namespace.to_string(),
                    port: u32::from(r.port),
                    weight,
                    invalid: false,
                },
                Err(_) => RouteBackend {
                    name: b.name.clone(),
                    namespace,
                    port: b.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                    weight,
                    invalid: true,
                },
            }
        })
        .collect();
    let filters = rule.filters.iter().flatten();
    let request_headers = filters
        .clone()
        .find_map(|f| f.request_header_modifier.as_ref())
        .map(modifier);
    let mirrors = filters
        .filter_map(|f| f.request_mirror.as_ref())
        .filter_map(|m| {
            // An unresolved mirror is reported in status and sends nothing.
            let r = resolve(&route.namespace, &Ref::mirror(m), state).ok()?;
            let (numerator, denominator) = mirror_fraction(m);
            Some(RouteMirror {
                name: r.service.name.to_string(),
                namespace: r.service.namespace.to_string(),
                port: u32::from(r.port),
                numerator,
                denominator,
            })
        })
        .collect();
    let timeout = |v: Option<&String>| {
        let d = duration(v?).ok()?;
        Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    let timeouts = rule.timeouts.as_ref();
    RouteRule {
        route: route.to_string(),
        rule: index,
        r#match: Some(matched),
        backends,
        request_headers,
        mirrors,
        request_timeout_ms: timeout(timeouts.and_then(|t| t.request.as_ref())),
        backend_request_timeout_ms: timeout(timeouts.and_then(|t| t.backend_request.as_ref())),
    }
}

fn modifier(m: &HttpRouteRulesFiltersRequestHeaderModifier) -> HeaderModifier {
    let nv = |name: &str, value: &str| NameValue {
        name: name.to_ascii_lowercase(),
        value: value.to_owned(),
    };
    HeaderModifier {
        set: m
            .set
            .iter()
            .flatten()
            .map(|h| nv(&h.name, &h.value))
            .collect(),
        add: m
            .add
            .iter()
            .flatten()
            .map(|h| nv(&h.name, &h.value))
            .collect(),
        remove: m
            .remove
            .iter()
            .flatten()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
    }
}
