//! The fields of a route Meshfed does not implement, and the rules the
//! Gateway API's CRD would enforce (a route in the file store, or under a
//! CRD generated from the types, is not checked by any API server): one
//! message naming the first field at fault, refusing the route as
//! `UnsupportedValue`.

use std::fmt::Write as _;

use meshfed_resources::route::{
    HttpRoute, HttpRouteRulesFiltersType, HttpRouteRulesMatchesHeadersType,
    HttpRouteRulesMatchesPathType, HttpRouteRulesMatchesQueryParamsType,
};

/// Most entries of a header modifier's `set`, `add` or `remove`.
const MAX_HEADER_EDITS: usize = 16;

/// The fields of the route Meshfed does not implement, or that break a
/// rule the Gateway API's CRD enforces, as one message; `None`: all good.
pub(super) fn unsupported(route: &HttpRoute) -> Option<String> {
    let mut found: Vec<String> = Vec::new();
    let mut add = |field: String, why: &str| found.push(format!("{field}: {why}"));
    for (i, rule) in route.spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        if rule.retry.is_some() {
            add(
                format!("{at}.retry"),
                "not supported (retries follow the FailoverPolicy's retry budget)",
            );
        }
        if rule.session_persistence.is_some() {
            add(
                format!("{at}.sessionPersistence"),
                "not supported (use the FailoverPolicy's consistent hash)",
            );
        }
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(path) = &m.path {
                if path.r#type == Some(HttpRouteRulesMatchesPathType::RegularExpression) {
                    add(
                        format!("{at}.path.type"),
                        "RegularExpression is not supported",
                    );
                }
                let value = path.value.as_deref().unwrap_or("/");
                if !value.starts_with('/') {
                    add(format!("{at}.path.value"), "must start with '/'");
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                if h.r#type == Some(HttpRouteRulesMatchesHeadersType::RegularExpression) {
                    add(
                        format!("{at}.headers[{k}].type"),
                        "RegularExpression is not supported",
                    );
                }
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    add(format!("{at}.headers[{k}].name"), "not a header name");
                }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                if q.r#type == Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) {
                    add(
                        format!("{at}.queryParams[{k}].type"),
                        "RegularExpression is not supported",
                    );
                }
            }
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            if b.filters.as_ref().is_some_and(|f| !f.is_empty()) {
                add(
                    format!("{at}.backendRefs[{j}].filters"),
                    "filters on a backend are not supported (put them on the rule)",
                );
            }
            if b.weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
                add(
                    format!("{at}.backendRefs[{j}].weight"),
                    "must be between 0 and 1000000",
                );
            }
        }
        let mut modifiers = 0;
        for (j, f) in rule.filters.iter().flatten().enumerate() {
            let at = format!("{at}.filters[{j}]");
            match f.r#type {
                HttpRouteRulesFiltersType::RequestHeaderModifier => {
                    modifiers += 1;
                    if modifiers > 1 {
                        add(at.clone(), "RequestHeaderModifier may appear once per rule");
                    }
                    match &f.request_header_modifier {
                        Some(m) => check_modifier(m, &at, &mut add),
                        None => add(at, "type RequestHeaderModifier needs requestHeaderModifier"),
                    }
                }
                HttpRouteRulesFiltersType::RequestMirror => match &f.request_mirror {
                    Some(m) => {
                        if m.percent.is_some() && m.fraction.is_some() {
                            add(at.clone(), "only one of percent and fraction may be set");
                        }
                        if m.percent.is_some_and(|p| !(0..=100).contains(&p)) {
                            add(
                                format!("{at}.requestMirror.percent"),
                                "must be between 0 and 100",
                            );
                        }
                        if let Some(fr) = &m.fraction {
                            let d = fr.denominator.unwrap_or(100);
                            if d < 1 || fr.numerator < 0 || fr.numerator > d {
                                add(
                                    format!("{at}.requestMirror.fraction"),
                                    "needs 0 <= numerator <= denominator and denominator >= 1",
                                );
                            }
                        }
                    }
                    None => add(at, "type RequestMirror needs requestMirror"),
                },
                ref other => add(
                    format!("{at}.type"),
                    &format!(
                        "{other:?} is not supported (supported: RequestHeaderModifier, RequestMirror)"
                    ),
                ),
            }
        }
        if let Some(t) = &rule.timeouts {
            let request = t.request.as_deref().map(|v| (v, duration(v)));
            let backend = t.backend_request.as_deref().map(|v| (v, duration(v)));
            for (name, parsed) in [("request", &request), ("backendRequest", &backend)] {
                if let Some((v, Err(why))) = parsed {
                    add(format!("{at}.timeouts.{name}"), &format!("{v:?}: {why}"));
                }
            }
            if let (Some((_, Ok(r))), Some((_, Ok(b)))) = (request, backend)
                && !r.is_zero()
                && (b.is_zero() || b > r)
            {
                add(
                    format!("{at}.timeouts.backendRequest"),
                    "must be no more than timeouts.request",
                );
            }
        }
    }
    if found.is_empty() {
        return None;
    }
    let more = found.len() - 1;
    let mut message = found.swap_remove(0);
    if more > 0 {
        let _ = write!(message, " (and {more} more)");
    }
    Some(message)
}

fn check_modifier(
    m: &meshfed_resources::route::HttpRouteRulesFiltersRequestHeaderModifier,
    at: &str,
    add: &mut impl FnMut(String, &str),
) {
    let mut names = Vec::new();
    let set = m.set.iter().flatten().map(|h| ("set", h.name.as_str()));
    let added = m.add.iter().flatten().map(|h| ("add", h.name.as_str()));
    let removed = m.remove.iter().flatten().map(|n| ("remove", n.as_str()));
    for (list, name) in set.chain(added).chain(removed) {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            add(
                format!("{at}.requestHeaderModifier.{list}"),
                &format!("{name:?} is not a header name"),
            );
        }
        let lower = name.to_ascii_lowercase();
        if names.contains(&lower) {
            add(
                format!("{at}.requestHeaderModifier.{list}"),
                &format!("header {name} has more than one action"),
            );
        }
        names.push(lower);
    }
    for (list, n) in [
        ("set", m.set.as_ref().map_or(0, Vec::len)),
        ("add", m.add.as_ref().map_or(0, Vec::len)),
        ("remove", m.remove.as_ref().map_or(0, Vec::len)),
    ] {
        if n > MAX_HEADER_EDITS {
            add(
                format!("{at}.requestHeaderModifier.{list}"),
                &format!("at most {MAX_HEADER_EDITS} entries"),
            );
        }
    }
}

/// A Gateway API duration (GEP-2257: `10s`, `1h30m`, `500ms`; `0s` turns
/// the timeout off).
pub(crate) fn duration(v: &str) -> Result<std::time::Duration, String> {
    let d: meshfed_resources::route::RouteDuration = v.parse().map_err(|e: String| e)?;
    let d = std::time::Duration::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    if !d.is_zero() && d < std::time::Duration::from_millis(1) {
        return Err("a timeout other than 0s must be at least 1ms".into());
    }
    Ok(d)
}
