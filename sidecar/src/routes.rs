//! A service's HTTPRoutes as the sidecar applies them: discovery sends the
//! rules of the service port already flattened, one per match, in the
//! Gateway API's order of precedence; here they are compiled once per
//! change (header names parsed, targets checked, counters found) and a
//! request takes the first rule that matches. With routes in place a
//! request that matches none is answered 404, as the Gateway API says.
//!
//! Within a rule, a backend is picked by weight among those that can serve
//! now; one with no healthy endpoint gets none of the traffic (its share
//! goes to the others, counted). A backend whose reference did not resolve
//! keeps its share, which is answered 500, as the Gateway API says.

mod matcher;
mod metrics;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use meshfed_api::discovery::RouteRule;
use prometheus_client::metrics::counter::Counter;

use self::matcher::Matcher;
pub(crate) use self::metrics::RouteMetrics;
use crate::config::ServiceTarget;
use crate::dest::Dest;
use crate::stack::Next;
use crate::stack::route::Backends;

/// The compiled routes of one service port.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    /// What discovery sent, to know when it changes.
    wire: Vec<RouteRule>,
    rules: Vec<Rule>,
}

/// One match of one rule, and what the rule does.
#[derive(Debug)]
pub(crate) struct Rule {
    /// `namespace/name#rule`, for logs.
    pub(crate) label: Arc<str>,
    matcher: Matcher,
    pub(crate) backends: Vec<Backend>,
    pub(crate) headers: HeaderEdits,
    pub(crate) mirrors: Vec<Mirror>,
    /// `None`: the sidecar's default; `Some(None)`: no timeout.
    pub(crate) request_timeout: Option<Option<Duration>>,
    /// Each attempt's own limit, if any.
    pub(crate) backend_timeout: Option<Duration>,
}

/// A backend of a rule.
#[derive(Debug)]
pub(crate) struct Backend {
    /// `None`: the reference did not resolve; its share is answered 500.
    pub(crate) target: Option<ServiceTarget>,
    weight: u32,
    /// Requests sent to it by this rule.
    pub(crate) picked: Counter,
    /// Requests whose pick passed it by: it had no endpoint able to serve.
    pub(crate) passed_over: Counter,
    /// Its destination and the stack below its route, found on first use.
    pub(crate) resolved: OnceLock<(Arc<Dest>, Next)>,
}

/// A copy of matched requests to another backend.
#[derive(Debug)]
pub(crate) struct Mirror {
    pub(crate) target: ServiceTarget,
    numerator: u32,
    denominator: u32,
    pub(crate) counters: metrics::MirrorCounters,
    /// As a backend's.
    pub(crate) resolved: OnceLock<(Arc<Dest>, Next)>,
}

/// `RequestHeaderModifier`.
#[derive(Debug, Default)]
pub(crate) struct HeaderEdits {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl RouteTable {
    /// Compiles the rules discovery sent for `service`. What does not parse
    /// (a peer's bad input) is left out of the rule, never a panic: a bad
    /// header name edits nothing, a bad target is a backend that answers 500.
    pub(crate) fn compile(wire: &[RouteRule], service: &Arc<str>, metrics: &RouteMetrics) -> Self {
        let rules = wire
            .iter()
            .map(|r| {
                let label: Arc<str> = format!("{}#{}", r.route, r.rule).into();
                let target = |name: &str, namespace: &str, port: u32| {
                    let port = u16::try_from(port).ok()?;
                    ServiceTarget::new(name, namespace, port).ok()
                };
                let backends = r
                    .backends
                    .iter()
                    .map(|b| {
                        let target = if b.invalid {
                            None
                        } else {
                            target(&b.name, &b.namespace, b.port)
                        };
                        let name = format!("{}.{}:{}", b.name, b.namespace, b.port);
                        let (picked, passed_over) =
                            metrics.backend(service, &r.route, r.rule, &name);
                        Backend {
                            target,
                            weight: b.weight,
                            picked,
                            passed_over,
                            resolved: OnceLock::new(),
                        }
                    })
                    .collect();
                let mirrors = r
                    .mirrors
                    .iter()
                    .filter_map(|m| {
                        let t = target(&m.name, &m.namespace, m.port)?;
                        let counters = metrics.mirror(service, &r.route, &t.to_string());
                        Some(Mirror {
                            target: t,
                            numerator: m.numerator,
                            denominator: m.denominator.max(1),
                            counters,
                            resolved: OnceLock::new(),
                        })
                    })
                    .collect();
                let ms = Duration::from_millis;
                Rule {
                    label,
                    matcher: Matcher::compile(r.r#match.as_ref()),
                    backends,
                    headers: r
                        .request_headers
                        .as_ref()
                        .map(HeaderEdits::compile)
                        .unwrap_or_default(),
                    mirrors,
                    request_timeout: r.request_timeout_ms.map(|t| (t > 0).then(|| ms(t))),
                    backend_timeout: r.backend_request_timeout_ms.filter(|t| *t > 0).map(ms),
                }
            })
            .collect();
        Self {
            wire: wire.to_vec(),
            rules,
        }
    }

    /// The rules as discovery sent them.
    pub(crate) fn wire(&self) -> &[RouteRule] {
        &self.wire
    }

    /// Whether there are routes at all (then a request that matches none
    /// is refused).
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that matches any request (what an opaque
    /// connection, which has no request to match, follows).
    pub(crate) fn catch_all(&self) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matcher.is_catch_all())
    }

    /// The first rule `req` matches.
    pub(crate) fn find<B>(&self, req: &http::Request<B>) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matcher.matches(req))
    }
}

impl Backend {
    /// Its destination and the stack below its route: `called`'s own
    /// (`own`) when it names the service called, else the one `backends`
    /// has; found once. `None`: its reference did not resolve.
    pub(crate) fn resolve(
        &self,
        called: &Arc<Dest>,
        own: &Next,
        backends: &dyn Backends,
    ) -> Option<(Arc<Dest>, Next)> {
        let target = self.target.as_ref()?;
        let found = self.resolved.get_or_init(|| {
            if *target == called.target {
                (called.clone(), own.clone())
            } else {
                backends.backend(target)
            }
        });
        Some(found.clone())
    }
}

impl Rule {
    /// A backend by weight among those `usable` says can serve, `tried`
    /// left out; when none can, by weight among the rest not tried (their
    /// own stacks then wait or fail as they do without routes). `None`:
    /// no backend with a weight is left.
    pub(crate) fn pick(&self, usable: impl Fn(&Backend) -> bool, tried: &[usize]) -> Option<usize> {
        let open = |i: usize, b: &Backend| b.weight > 0 && !tried.contains(&i);
        let serving = |i: usize, b: &Backend| open(i, b) && (b.target.is_none() || usable(b));
        // An invalid backend keeps its share only beside one that can
        // serve: with none, the weights decide among all.
        let live =
            (self.backends.iter().enumerate()).any(|(i, b)| b.target.is_some() && serving(i, b));
        let chosen = if live {
            weighted(&self.backends, serving)
        } else {
            weighted(&self.backends, open)
        };
        if let Some(chosen) = chosen {
            for (i, b) in self.backends.iter().enumerate() {
                if i != chosen && open(i, b) && !serving(i, b) {
                    b.passed_over.inc();
                }
            }
        }
        chosen
    }

    /// Whether a backend other than `tried` could take the request.
    pub(crate) fn has_other(&self, tried: &[usize]) -> bool {
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| b.weight > 0 && b.target.is_some() && !tried.contains(&i))
    }
}

/// One of `backends` that `eligible` admits, by weight.
fn weighted(backends: &[Backend], eligible: impl Fn(usize, &Backend) -> bool) -> Option<usize> {
    let total: u64 = backends
        .iter()
        .enumerate()
        .filter(|(i, b)| eligible(*i, b))
        .map(|(_, b)| u64::from(b.weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut roll = fastrand::u64(0..total);
    for (i, b) in backends.iter().enumerate() {
        if !eligible(i, b) {
            continue;
        }
        let w = u64::from(b.weight);
        if roll < w {
            return Some(i);
        }
        roll -= w;
    }
    None
}

impl Mirror {
    /// Whether this request is copied.
    pub(crate) fn chosen(&self) -> bool {
        self.numerator >= self.denominator || fastrand::u32(0..self.denominator) < self.numerator
    }
}

// === impl HeaderEdits ===

impl HeaderEdits {
    fn compile(m: &meshfed_api::discovery::HeaderModifier) -> Self {
        let pair = |h: &meshfed_api::discovery::NameValue| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        };
        Self {
            set: m.set.iter().filter_map(pair).collect(),
            add: m.add.iter().filter_map(pair).collect(),
            remove: m
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
        }
    }

    /// Applies the edits: `set` replaces, `add` appends, `remove` removes.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}
