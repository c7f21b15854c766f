//! Statuses: each Link's `Accepted` and `Alive` conditions, liveness,
//! probe latency, imported service count, resolved addresses and last
//! error; each FailoverPolicy's and RateLimitPolicy's `Accepted`; each
//! HTTPRoute's entries for its Service parents (`Accepted`,
//! `ResolvedRefs`). Written only when they change, at most once per period
//! per object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use meshfed_resources::crd::{
    CONDITION_MIRRORS_WRITTEN, FailoverPolicyStatus, LinkStatus, UnwritableMirror,
};
use tokio::sync::watch;

use crate::httproute::{check, status_parents};
use crate::metrics::{ErrorLabels, LinkLabels, Metrics};
use crate::mirrors::{Unwritable, lock, selected};
use futures::future::BoxFuture;
use meshfed_resources::route::{
    CONTROLLER_NAME, HttpRouteStatus, HttpRouteStatusParents, RouteTime, RouteTimestamp,
};

use crate::store::{ObjKey, Store, StoreError};
use crate::validate::{
    FieldError, accepted_condition, validate_failover_policy, validate_link,
    validate_rate_limit_policy,
};
use crate::world::{PeerState, Withdrawn, World};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The condition type that says whether a linked cluster receives traffic.
pub const CONDITION_ALIVE: &str = "Alive";

pub(crate) async fn run(
    store: Arc<dyn Store>,
    world: watch::Receiver<Arc<World>>,
    metrics: Arc<Metrics>,
    period: Duration,
    unwritable: Unwritable,
) {
    let mut written_links: HashMap<ObjKey, LinkStatus> = HashMap::new();
    let mut written_policies: HashMap<ObjKey, FailoverPolicyStatus> = HashMap::new();
    let mut written_rate_limits: HashMap<ObjKey, FailoverPolicyStatus> = HashMap::new();
    let mut written_routes: HashMap<ObjKey, Vec<HttpRouteStatusParents>> = HashMap::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let w = world.borrow().clone();
        let now = Time(Timestamp::now());
        let problems = lock(&unwritable).clone();
        for (key, link) in &w.local.links {
            let peer = w.peers.get(key).map(|p| &**p);
            let labels = LinkLabels {
                link: key.to_string(),
            };
            if let Some(p) = peer {
                metrics
                    .peer_alive
                    .get_or_create(&labels)
                    .set(i64::from(p.alive()));
            }
            let unwritable_here: Vec<UnwritableMirror> = problems
                .iter()
                .filter(|(_, (l, _))| **l == *key.name)
                .map(|(m, (_, why))| UnwritableMirror {
                    mirror: m.to_string(),
                    reason: why.clone(),
                })
                .collect();
            metrics
                .mirrors_unwritable
                .get_or_create(&labels)
                .set(i64::try_from(unwritable_here.len()).unwrap_or(i64::MAX));
            let previous = written_links
                .get(key)
                .or(link.status.as_ref())
                .cloned()
                .unwrap_or_default();
            let validation = validate_link(&link.spec);
            let gen_ = link.metadata.generation;
            let mut next = link_status(peer, &previous);
            next.unwritable_mirror_count = u32::try_from(unwritable_here.len()).unwrap_or(u32::MAX);
            let written = mirrors_condition(&unwritable_here, gen_, now.clone());
            next.unwritable_mirrors = unwritable_here
                .into_iter()
                .take(MAX_LISTED_MIRRORS)
                .collect();
            next.conditions = merge_conditions(
                &previous.conditions,
                vec![
                    accepted_condition(&validation, gen_, now.clone()),
                    alive_condition(peer, gen_, now.clone()),
                    written,
                ],
            );
            next.observed_generation = gen_;
            let current = link.status.as_ref();
            publish(key, next, current, &mut written_links, &metrics, |k, s| {
                store.set_link_status(k, s)
            })
            .await;
        }
        written_links.retain(|k, _| w.local.links.contains_key(k));
        accepted_statuses(
            &w.local.policies,
            |p| {
                (
                    validate_failover_policy(&p.spec),
                    &p.metadata,
                    p.status.as_ref(),
                )
            },
            &mut written_policies,
            &now,
            &metrics,
            |k, s| store.set_policy_status(k, s),
        )
        .await;
        accepted_statuses(
            &w.local.rate_limits,
            |p| {
                (
                    validate_rate_limit_policy(&p.spec),
                    &p.metadata,
                    p.status.as_ref(),
                )
            },
            &mut written_rate_limits,
            &now,
            &metrics,
            |k, s| store.set_rate_limit_status(k, s),
        )
        .await;
        let route_now = RouteTime(RouteTimestamp::now());
        for (key, route) in &w.local.routes {
            let ours: Vec<HttpRouteStatusParents> = route
                .status
                .iter()
                .flat_map(|s| s.parents.iter())
                .filter(|p| p.controller_name == CONTROLLER_NAME)
                .cloned()
                .collect();
            let verdicts = check(route, key, &w.local);
            if verdicts.is_empty() && ours.is_empty() {
                // Not a mesh route (its parents are Gateways): another
                // controller's to report on.
                continue;
            }
            // What was written last, else what the route carries: a
            // condition's transition time holds while its status does (the
            // file store never reads statuses back into its objects).
            let previous = written_routes
                .get(key)
                .map(|parents| HttpRouteStatus {
                    parents: parents.clone(),
                })
                .or_else(|| route.status.clone());
            let mut next = status_parents(
                &verdicts,
                route.metadata.generation,
                &route_now,
                previous.as_ref(),
            );
            // The Gateway API holds at most 32 parents in a status.
            next.truncate(32);
            publish(
                key,
                next,
                Some(&ours),
                &mut written_routes,
                &metrics,
                |k, s| store.set_route_status(k, s),
            )
            .await;
        }
        written_routes.retain(|k, _| w.local.routes.contains_key(k));
    }
}

/// The status of each object of a kind whose status is only `Accepted`
/// (FailoverPolicy, RateLimitPolicy): its validation, written when it
/// changes; `read` gives an object's validation, metadata and status.
async fn accepted_statuses<'a, T>(
    objects: &crate::store::Table<ObjKey, T>,
    read: impl Fn(
        &T,
    ) -> (
        Result<(), Vec<FieldError>>,
        &ObjectMeta,
        Option<&FailoverPolicyStatus>,
    ),
    written: &mut HashMap<ObjKey, FailoverPolicyStatus>,
    now: &Time,
    metrics: &Metrics,
    write: impl Fn(ObjKey, FailoverPolicyStatus) -> BoxFuture<'a, Result<(), StoreError>>,
) {
    for (key, object) in objects {
        let (validation, meta, current) = read(object);
        let previous = written.get(key).or(current).cloned().unwrap_or_default();
        let gen_ = meta.generation;
        let next = FailoverPolicyStatus {
            conditions: merge_conditions(
                &previous.conditions,
                vec![accepted_condition(&validation, gen_, now.clone())],
            ),
            observed_generation: gen_,
        };
        publish(key, next, current, written, metrics, &write).await;
    }
    written.retain(|k, _| objects.contains_key(k));
}

/// Writes `next` unless the object already shows it or it was written last.
async fn publish<'a, S: PartialEq + Clone>(
    key: &ObjKey,
    next: S,
    current: Option<&S>,
    written: &mut HashMap<ObjKey, S>,
    metrics: &Metrics,
    write: impl FnOnce(ObjKey, S) -> BoxFuture<'a, Result<(), StoreError>>,
) {
    if current == Some(&next) || written.get(key) == Some(&next) {
        return;
    }
    match write(key.clone(), next.clone()).await {
        Ok(()) => {
            written.insert(key.clone(), next);
        }
        Err(StoreError::NotFound { .. }) => {
            // Deleted since this pass read the world: nothing to report on.
            tracing::debug!(object = %key, "object gone before its status was written");
            written.remove(key);
        }
        Err(e) => {
            tracing::warn!(object = %key, error = %e, "writing status failed");
            metrics
                .reconcile_errors
                .get_or_create(&ErrorLabels { what: "status" })
                .inc();
        }
    }
}

fn link_status(peer: Option<&PeerState>, previous: &LinkStatus) -> LinkStatus {
    let Some(p) = peer else {
        return LinkStatus {
            alive: Some(false),
            last_error: previous.last_error.clone(),
            ..LinkStatus::default()
        };
    };
    LinkStatus {
        conditions: Vec::new(),
        alive: Some(p.alive()),
        federation_up: Some(p.stream_up && p.quiet_since.is_none()),
        imports_held_until: p.held_until.map(|h| h.wall.to_string()),
        gateway_alive: Some(p.probe_alive && !p.gateways.is_empty()),
        latency_p50: p.latency.map(|(p50, _)| format_latency(p50)),
        latency_p99: p.latency.map(|(_, p99)| format_latency(p99)),
        imported_services: u32::try_from(selected(p).count()).unwrap_or(u32::MAX),
        resolved_addresses: p.gateways.iter().map(ToString::to_string).collect(),
        last_error: p.last_error.clone(),
        observed_generation: None,
        ..LinkStatus::default()
    }
}

fn alive_condition(peer: Option<&PeerState>, generation: Option<i64>, now: Time) -> Condition {
    let (status, reason, message) = match peer {
        None => (
            "False",
            "NotLinked",
            "the Link is not valid; no peer runs".to_owned(),
        ),
        Some(p) if p.alive() && p.held_until.is_some() => (
            "True",
            "ControlPlaneGrace",
            format!(
                "the remote controller is silent, but its gateway answers probes: its services \
                 are kept until {} (spec.controlPlaneGraceSeconds) or until the gateway stops \
                 answering",
                p.held_until.map(|h| h.wall.to_string()).unwrap_or_default()
            ),
        ),
        Some(p) if p.alive() => (
            "True",
            "ProbeAndLease",
            "gateway answers probes and the federation lease is current".to_owned(),
        ),
        Some(p) if p.gateways.is_empty() => (
            "False",
            "Unresolved",
            "no gateway address resolved".to_owned(),
        ),
        Some(p) if !p.lease_alive && p.withdrawn == Some(Withdrawn::GraceExpired) => (
            "False",
            "GraceExpired",
            "the remote controller stayed silent past the control-plane grace; its services \
             are withdrawn until it speaks again"
                .to_owned(),
        ),
        Some(p) if !p.lease_alive => (
            "False",
            "LeaseExpired",
            "the remote controller and gateway were silent past the lease TTL".to_owned(),
        ),
        Some(_) => (
            "False",
            "ProbeFailing",
            "the gateway does not answer probes".to_owned(),
        ),
    };
    Condition {
        type_: CONDITION_ALIVE.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Most unwritable mirrors a Link's status names (the count has them all).
const MAX_LISTED_MIRRORS: usize = 20;

/// `MirrorsWritten`: whether every imported service has its mirror here.
fn mirrors_condition(
    unwritable: &[UnwritableMirror],
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = match unwritable {
        [] => (
            "True",
            "Written",
            "every imported service's mirror is written".to_owned(),
        ),
        [first, rest @ ..] => {
            let more = if rest.is_empty() {
                String::new()
            } else {
                format!(" (and {} more)", rest.len())
            };
            (
                "False",
                "WriteFailed",
                format!(
                    "mirror {} cannot be written: {}{more}",
                    first.mirror, first.reason
                ),
            )
        }
    };
    Condition {
        type_: CONDITION_MIRRORS_WRITTEN.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// Keeps a condition's transition time while its status stays the same.
fn merge_conditions(previous: &[Condition], next: Vec<Condition>) -> Vec<Condition> {
    next.into_iter()
        .map(|mut c| {
            if let Some(old) = previous.iter().find(|o| o.type_ == c.type_)
                && old.status == c.status
            {
                c.last_transition_time = old.last_transition_time.clone();
            }
            c
        })
        .collect()
}

/// Two significant figures, in the unit that suits: `850µs`, `1.2ms`, `35ms`, `1.5s`.
pub(crate) fn format_latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    let (v, unit) = if us < 1000.0 {
        (us, "µs")
    } else if us < 1e6 {
        (us / 1e3, "ms")
    } else {
        (us / 1e6, "s")
    };
    if v < 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_reads_well() {
        assert_eq!(format_latency(Duration::from_micros(850)), "850µs");
        assert_eq!(format_latency(Duration::from_micros(1234)), "1.2ms");
        assert_eq!(format_latency(Duration::from_millis(35)), "35ms");
        assert_eq!(format_latency(Duration::from_millis(1500)), "1.5s");
    }
}
