//! Local rate limits on the inbound side (RateLimitPolicy): the controller
//! tells this pod's sidecar which limits apply to which of its ports (the
//! port callers dial), and each HTTP request — or opaque TCP connection —
//! takes a token from every bucket in force there: each policy's total
//! bucket and the caller's own. A request is let through only when every
//! bucket has a token, and then takes one from each, so a refused request
//! costs no bucket anything; it is answered 429 with `Retry-After`.
//!
//! The buckets are this endpoint's own: a limit holds per endpoint, not
//! across the Service. A caller is its mesh identity, or, outside the
//! mesh, its source address. At most [`MAX_CALLERS`] callers are tracked
//! per policy and port; beyond that, callers idle long enough to have a
//! full bucket are forgotten (a full bucket is a fresh one), and if that
//! frees nothing the newcomers share one bucket.

mod bucket;
mod metrics;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshfed_api::discovery::PortLimit;
use meshfed_trust::SpiffeId;
use tokio::time::Instant;

use crate::FastMap;
pub(crate) use bucket::{Bucket, Rate};
pub(crate) use metrics::{LimitMetrics, Scope};

/// Most callers tracked per policy and port.
pub(crate) const MAX_CALLERS: usize = 10_000;

/// Who a per-caller bucket is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// A mesh workload, by its verified identity.
    Id(SpiffeId),
    /// A caller outside the mesh, by its address.
    Addr(IpAddr),
    /// Newcomers while [`MAX_CALLERS`] are busy.
    Overflow,
}

/// A request refused for want of a token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limited {
    /// The policy, `namespace/name`, whose bucket was empty.
    pub(crate) policy: Arc<str>,
    /// Which of its buckets.
    pub(crate) scope: Scope,
    /// When every bucket that refused will have a token again.
    pub(crate) retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub(crate) fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// One policy's numbers on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    name: Arc<str>,
    total: Option<Rate>,
    per_caller: Option<Rate>,
}

/// One policy's buckets on one port.
#[derive(Debug, Clone)]
struct Buckets {
    total: Option<Bucket>,
    callers: HashMap<Caller, Bucket>,
}

/// The limits of one port: its policies, and their buckets behind one
/// lock, so a request's tokens are found and taken together.
#[derive(Debug)]
struct PortLimits {
    policies: Vec<Policy>,
    buckets: Mutex<Vec<Buckets>>,
}

/// The limits of every port of this pod.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Whether any port has a limit: the common case, none, looks no further.
    any: AtomicBool,
    ports: RwLock<Arc<FastMap<u16, Arc<PortLimits>>>>,
    pub(crate) metrics: LimitMetrics,
}

impl Limits {
    /// Takes a token for `caller` on `port` from every bucket in force.
    pub(crate) fn check(&self, port: u16, caller: &Caller, now: Instant) -> Result<(), Limited> {
        if !self.any.load(Ordering::Relaxed) {
            return Ok(());
        }
        let limits = {
            let ports = self.ports.read().expect("limits lock");
            match ports.get(&port) {
                Some(l) => l.clone(),
                None => return Ok(()),
            }
        };
        let refused = limits.take(caller, now);
        if let Some(limited) = &refused {
            self.metrics.limited(port, limited);
        }
        refused.map_or(Ok(()), Err)
    }

    /// Puts `limits` (the controller's whole table for this pod) in force.
    /// A policy unchanged on a port keeps its buckets there; a new or
    /// changed one starts with full ones.
    pub(crate) fn update(&self, limits: &[PortLimit]) {
        let now = Instant::now();
        let mut wanted: FastMap<u16, Vec<Policy>> = FastMap::default();
        for l in limits {
            let Ok(port) = u16::try_from(l.port) else {
                continue;
            };
            let rate = |b: &Option<meshfed_api::discovery::Bucket>| {
                b.and_then(|b| Rate::new(b.requests_per_second, b.burst))
            };
            let policy = Policy {
                name: l.policy.as_str().into(),
                total: rate(&l.total),
                per_caller: rate(&l.per_caller),
            };
            if port != 0 && (policy.total.is_some() || policy.per_caller.is_some()) {
                wanted.entry(port).or_default().push(policy);
            }
        }
        let mut ports = self.ports.write().expect("limits lock");
        let next: FastMap<u16, Arc<PortLimits>> = wanted
            .into_iter()
            .map(|(port, policies)| match ports.get(&port) {
                Some(same) if same.policies == policies => (port, same.clone()),
                old => (port, Arc::new(PortLimits::new(policies, old, now))),
            })
            .collect();
        let summary: Vec<String> = next
            .iter()
            .flat_map(|(port, l)| {
                l.policies
                    .iter()
                    .map(move |p| format!("{port}: {}", p.name))
            })
            .collect();
        tracing::info!(limits = ?summary, "inbound rate limits in force");
        self.any.store(!next.is_empty(), Ordering::Relaxed);
        *ports = Arc::new(next);
    }
}

impl PortLimits {
    /// The buckets of each policy that `old` has too, else full ones.
    fn new(policies: Vec<Policy>, old: Option<&Arc<PortLimits>>, now: Instant) -> Self {
        let kept = old.map(|o| (&o.policies, o.buckets.lock().expect("bucket lock")));
        let buckets = policies
            .iter()
            .map(|p| {
                let same = kept.as_ref().and_then(|(policies, buckets)| {
                    let i = policies.iter().position(|o| o == p)?;
                    Some(buckets[i].clone())
                });
                same.unwrap_or_else(|| Buckets {
                    total: p.total.map(|r| Bucket::full(r, now)),
                    callers: HashMap::new(),
                })
            })
            .collect();
        Self {
            policies,
            buckets: Mutex::new(buckets),
        }
    }

    /// `None` when every bucket had a token and gave it; else why not.
    fn take(&self, caller: &Caller, now: Instant) -> Option<Limited> {
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let mut refused: Option<Limited> = None;
        let mut refuse = |policy: &Policy, scope, wait: Duration| {
            let later = refused.as_ref().is_none_or(|r| wait > r.retry_after);
            if later {
                refused = Some(Limited {
                    policy: policy.name.clone(),
                    scope,
                    retry_after: wait,
                });
            }
        };
        let overflow = Caller::Overflow;
        let mut keys = Vec::with_capacity(self.policies.len());
        for (policy, b) in self.policies.iter().zip(buckets.iter_mut()) {
            if let (Some(rate), Some(total)) = (policy.total, b.total.as_mut())
                && let Err(wait) = total.ready(rate, now)
            {
                refuse(policy, Scope::total, wait);
            }
            let key = policy.per_caller.map(|rate| {
                let own = caller_slot(&mut b.callers, caller, rate, now);
                (rate, if own { caller } else { &overflow })
            });
            if let Some((rate, key)) = key
                && let Some(bucket) = b.callers.get_mut(key)
                && let Err(wait) = bucket.ready(rate, now)
            {
                refuse(policy, Scope::per_caller, wait);
            }
            keys.push(key.map(|(_, k)| k));
        }
        if refused.is_some() {
            return refused;
        }
        for (b, key) in buckets.iter_mut().zip(keys) {
            if let Some(total) = b.total.as_mut() {
                total.take();
            }
            if let Some(bucket) = key.and_then(|k| b.callers.get_mut(k)) {
                bucket.take();
            }
        }
        None
    }
}

/// Makes `caller`'s bucket (full) if it has none: whether it has its own
/// now, or — [`MAX_CALLERS`] tracked and none of them can be forgotten —
/// shares the overflow bucket.
fn caller_slot(
    callers: &mut HashMap<Caller, Bucket>,
    caller: &Caller,
    rate: Rate,
    now: Instant,
) -> bool {
    if callers.contains_key(caller) {
        return true;
    }
    if callers.len() >= MAX_CALLERS {
        callers.retain(|_, b| !b.is_full(rate, now));
    }
    let own = callers.len() < MAX_CALLERS;
    let key = if own {
        caller.clone()
    } else {
        Caller::Overflow
    };
    callers
        .entry(key)
        .or_insert_with(|| Bucket::full(rate, now));
    own
}
