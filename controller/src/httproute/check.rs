//! Whether a route's Service parents accept it and its references resolve:
//! the `Accepted` and `ResolvedRefs` conditions of each parent's entry in
//! the route's status, with the Gateway API's reasons.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Service;
use meshfed_resources::route::condition::{
    ACCEPTED, REASON_ACCEPTED, REASON_BACKEND_NOT_FOUND, REASON_INVALID_KIND,
    REASON_NO_MATCHING_PARENT, REASON_RESOLVED_REFS, REASON_UNSUPPORTED_VALUE, RESOLVED_REFS,
};
use meshfed_resources::route::{
    CONTROLLER_NAME, HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteStatusParents,
    HttpRouteStatusParentsParentRef, RouteCondition, RouteTime, is_service_ref,
};

use crate::store::{ClusterState, ObjKey};

/// Why a condition is False.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

/// What one Service parent of a route makes of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParentVerdict {
    /// The parentRef as the route's spec has it (status echoes it exactly:
    /// that is how its writer finds its entry).
    pub(crate) parent_ref: HttpRouteParentRefs,
    /// The Service it names.
    pub(crate) service: ObjKey,
    /// The Service port it is limited to; `None`: all of them.
    pub(crate) port: Option<u16>,
    pub(crate) accepted: Result<(), Refusal>,
    pub(crate) resolved: Result<(), Refusal>,
}

/// A backend reference, resolved: the Service port it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Backend {
    pub(crate) service: ObjKey,
    pub(crate) port: u16,
}

/// The verdict of each Service parent of route `key` (other parents, such
/// as Gateways, are another controller's and get none).
pub(crate) fn check(route: &HttpRoute, key: &ObjKey, state: &ClusterState) -> Vec<ParentVerdict> {
    let unsupported = super::fields::unsupported(route);
    let unresolved = unresolved_refs(route, key, state);
    let parents = route.spec.parent_refs.iter().flatten();
    parents
        .filter(|p| is_service_ref(p.group.as_deref(), p.kind.as_deref(), "Gateway"))
        .map(|p| {
            let namespace = p.namespace.as_deref().unwrap_or(&key.namespace);
            let service = key.sibling(&p.name);
            let service = ObjKey::new(namespace, &*service.name);
            let (port, parent) = parent_port(p, &service, key, state);
            let accepted = match (&unsupported, parent) {
                (_, Err(r)) => Err(r),
                (Some(message), Ok(())) => Err(Refusal {
                    reason: REASON_UNSUPPORTED_VALUE,
                    message: message.clone(),
                }),
                (None, Ok(())) => Ok(()),
            };
            ParentVerdict {
                parent_ref: p.clone(),
                service,
                port,
                accepted,
                resolved: unresolved.clone(),
            }
        })
        .collect()
}

/// The Service port a parentRef limits the route to, and whether the
/// parent exists to take it.
fn parent_port(
    p: &HttpRouteParentRefs,
    service: &ObjKey,
    route: &ObjKey,
    state: &ClusterState,
) -> (Option<u16>, Result<(), Refusal>) {
    let no_parent = |message: String| Refusal {
        reason: REASON_NO_MATCHING_PARENT,
        message,
    };
    if service.namespace != route.namespace {
        let message = format!(
            "parent Service {service} is in another namespace: consumer routes are not supported \
             by Meshfed; put the route in namespace {}",
            service.namespace
        );
        return (
            None,
            Err(Refusal {
                reason: REASON_UNSUPPORTED_VALUE,
                message,
            }),
        );
    }
    let Some(svc) = state.services.get(service) else {
        return (None, Err(no_parent(format!("Service {service} not found"))));
    };
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        let message = format!("Service {service} is headless: a parent needs a cluster IP");
        return (None, Err(no_parent(message)));
    }
    let ports = service_ports(svc);
    let by_port = p.port.map(|want| {
        ports
            .iter()
            .find(|(n, _)| i32::from(*n) == want)
            .ok_or_else(|| no_parent(format!("Service {service} has no port {want}")))
    });
    let by_name = p.section_name.as_deref().map(|want| {
        ports
            .iter()
            .find(|(_, name)| name.as_deref() == Some(want))
            .ok_or_else(|| no_parent(format!("Service {service} has no port named {want}")))
    });
    match (by_port, by_name) {
        (Some(Err(e)), _) | (_, Some(Err(e))) => (None, Err(e)),
        (Some(Ok(a)), Some(Ok(b))) if a.0 != b.0 => (
            None,
            Err(no_parent(format!(
                "Service {service}'s port {} is not the one named {}",
                a.0,
                b.1.as_deref().unwrap_or_default()
            ))),
        ),
        (Some(Ok(a)), _) | (None, Some(Ok(a))) => (Some(a.0), Ok(())),
        (None, None) => (None, Ok(())),
    }
}

/// A Service's ports and their names.
fn service_ports(svc: &Service) -> Vec<(u16, Option<String>)> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.clone())))
        .collect()
}

/// Resolves a backend reference of a route in namespace `ns`.
pub(crate) fn resolve(ns: &str, r: &Ref<'_>, state: &ClusterState) -> Result<Backend, Refusal> {
    let Ref {
        group,
        kind,
        name,
        namespace,
        port,
    } = *r;
    if !is_service_ref(group, kind, "Service") {
        return Err(Refusal {
            reason: REASON_INVALID_KIND,
            message: format!(
                "backend {name} is a {}/{}: only Services are backends",
                group.unwrap_or_default(),
                kind.unwrap_or("Service")
            ),
        });
    }
    let service = ObjKey::new(namespace.unwrap_or(ns), name);
    let not_found = |message| Refusal {
        reason: REASON_BACKEND_NOT_FOUND,
        message,
    };
    let Some(svc) = state.services.get(&service) else {
        return Err(not_found(format!("backend Service {service} not found")));
    };
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0) else {
        return Err(not_found(format!(
            "backend Service {service} is named without a port"
        )));
    };
    if !service_ports(svc).iter().any(|(p, _)| *p == port) {
        return Err(not_found(format!(
            "backend Service {service} has no port {port}"
        )));
    }
    Ok(Backend { service, port })
}

/// `ResolvedRefs`: every backend and mirror of every rule resolves.
fn unresolved_refs(route: &HttpRoute, key: &ObjKey, state: &ClusterState) -> Result<(), Refusal> {
    let mut first = None;
    let mut count = 0;
    for rule in route.spec.rules.iter().flatten() {
        for r in backend_refs(rule) {
            if let Err(e) = resolve(&key.namespace, &r, state) {
                count += 1;
                first.get_or_insert(e);
            }
        }
    }
    match first {
        None => Ok(()),
        Some(mut e) => {
            if count > 1 {
                let _ = write!(e.message, " (and {} more)", count - 1);
            }
            Err(e)
        }
    }
}

/// A backend reference, as a backendRef or a mirror names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ref<'a> {
    pub(crate) group: Option<&'a str>,
    pub(crate) kind: Option<&'a str>,
    pub(crate) name: &'a str,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) port: Option<i32>,
}

impl<'a> Ref<'a> {
    pub(crate) fn backend(b: &'a meshfed_resources::route::HttpRouteRulesBackendRefs) -> Self {
        Self {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        }
    }

    pub(crate) fn mirror(
        m: &'a meshfed_resources::route::HttpRouteRulesFiltersRequestMirror,
    ) -> Self {
        let b = &m.backend_ref;
        Self {
            group: b.group.as_deref(),
            kind: b.kind.as_deref(),
            name: &b.name,
            namespace: b.namespace.as_deref(),
            port: b.port,
        }
    }
}

/// Every backend a rule names: its backendRefs, then its mirrors'.
fn backend_refs(rule: &HttpRouteRules) -> impl Iterator<Item = Ref<'_>> {
    let backends = rule.backend_refs.iter().flatten().map(Ref::backend);
    let mirrors = rule
        .filters
        .iter()
        .flatten()
        .filter_map(|f| f.request_mirror.as_ref())
        .map(Ref::mirror);
    backends.chain(mirrors)
}

/// This controller's entries of the route's `status.parents`, one per
/// Service parent.
pub(crate) fn status_parents(
    verdicts: &[ParentVerdict],
    generation: Option<i64>,
    now: &RouteTime,
    previous: Option<&meshfed_resources::route::HttpRouteStatus>,
) -> Vec<HttpRouteStatusParents> {
    verdicts
        .iter()
        .map(|v| {
            let parent_ref = echo(&v.parent_ref);
            let before = previous
                .into_iter()
                .flat_map(|s| s.parents.iter())
                .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == parent_ref);
            let cond = |type_: &str, result: &Result<(), Refusal>, ok: &str, ok_msg: &str| {
                let (status, reason, message) = match result {
                    Ok(()) => ("True", ok.to_owned(), ok_msg.to_owned()),
                    Err(r) => ("False", r.reason.to_owned(), r.message.clone()),
                };
                // The transition time holds while the status does.
                let since = before
                    .and_then(|b| b.conditions.iter().find(|c| c.type_ == type_))
                    .filter(|c| c.status == status)
                    .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
                RouteCondition {
                    type_: type_.to_owned(),
                    status: status.to_owned(),
                    reason,
                    message,
                    observed_generation: generation,
                    last_transition_time: since,
                }
            };
            HttpRouteStatusParents {
                conditions: vec![
                    cond(
                        ACCEPTED,
                        &v.accepted,
                        REASON_ACCEPTED,
                        "the route applies to callers of the Service",
                    ),
                    cond(
                        RESOLVED_REFS,
                        &v.resolved,
                        REASON_RESOLVED_REFS,
                        "every backend resolves to a Service port",
                    ),
                ],
                controller_name: CONTROLLER_NAME.to_owned(),
                parent_ref,
            }
        })
        .collect()
}

/// The spec's parentRef as status carries it, field for field.
fn echo(p: &HttpRouteParentRefs) -> HttpRouteStatusParentsParentRef {
    HttpRouteStatusParentsParentRef {
        group: p.group.clone(),
        kind: p.kind.clone(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        port: p.port,
        section_name: p.section_name.clone(),
    }
}
