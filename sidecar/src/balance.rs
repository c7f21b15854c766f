//! Which endpoint serves the next call to a service.
//!
//! Discovery hands over the endpoints in priority groups (caller's zone,
//! other local zones, remote clusters in policy order). The balancer
//! recomputes each group's share with what it sees itself — an endpoint that
//! refuses connections, or is ejected for failing, is not healthy whatever
//! the controller last said — and walks the groups by the spill rule of
//! `meshfed_api::priority`. A group's health drops at once but rises only
//! after holding steady for the policy's failback hold, so traffic fails over
//! fast and comes back once, without flapping. Within the chosen group it is
//! power of two choices over peak-EWMA latency times requests in flight.
//!
//! Two kinds of bad endpoint:
//! - *down*: a connect failed. Nothing can be served from what cannot be
//!   reached, so it is out until a probe connect succeeds (backoff 100 ms,
//!   doubling to 2 s) — never capped by the ejection percentage.
//! - *ejected*: it answered, but with consecutive 5xx/resets. Out for the
//!   ejection time × times ejected, and never more than the policy's
//!   `max_ejected_percent` of the service's ready endpoints at once (a bad
//!   deploy everywhere must not empty the service; nor may the one ready
//!   endpoint beside a killed pod still listed as not ready).

mod affinity;
#[cfg(test)]
mod affinity_tests;
mod attempt;
mod endpoint;
mod failback;
mod health;
mod params;
mod peak_ewma;
#[cfg(test)]
mod tests;
mod update;
#[cfg(test)]
mod update_tests;

use std::sync::Arc;

use meshfed_api::priority::{GroupHealth, shares};
use tokio::time::Instant;

pub(crate) use affinity::Affinity;
pub(crate) use endpoint::EndpointInfo;
pub(crate) use params::Params;

use crate::FastMap;
use failback::{GroupState, hold};
use health::EndpointState;

/// Groups are known across updates by where they are. Every pick carries
/// one: cloning it counts references.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub(crate) cluster: Arc<str>,
    pub(crate) zone: Arc<str>,
    pub(crate) remote: bool,
}

#[derive(Debug)]
struct Member {
    info: Arc<EndpointInfo>,
    weight: f64,
    ready: bool,
    /// Its state: `Balancer::states[state]`.
    state: usize,
}

#[derive(Debug)]
struct Group {
    key: GroupKey,
    /// Its state: `Balancer::group_states[state]`.
    state: usize,
    members: Vec<Member>,
    /// The controller's counts (for a remote group, the remote cluster's).
    healthy: u32,
    total: u32,
    spill: f64,
    /// Where keys land, with session affinity (empty without).
    ring: Vec<(u64, u32)>,
}

/// A pick: the endpoint, the group it came from and that group's calls at
/// that moment.
#[derive(Debug, Clone)]
pub(crate) struct Pick {
    pub(crate) endpoint: Arc<EndpointInfo>,
    pub(crate) group: GroupKey,
    pub(crate) load: Load,
    /// Where the balancer keeps the endpoint's and the group's state, while
    /// the endpoint set it was picked from lasts; `None`: found by name.
    pub(crate) at: Option<Slots>,
}

/// Where an endpoint's and its group's state are, as of one endpoint set
/// (`epoch`). What follows a pick (the attempt's start and end, its
/// answer) finds them here, not by hashing the endpoint's name and the
/// group's for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slots {
    epoch: u64,
    endpoint: usize,
    group: usize,
}

/// A group's calls at the moment of a pick, for the circuit breakers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Requests in flight.
    pub(crate) requests: usize,
    /// Requests waiting for a connection.
    pub(crate) pending: usize,
    /// Opaque connections open.
    pub(crate) connections: usize,
}

/// Why nothing was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// Discovery lists no endpoint at all.
    NoEndpoints,
    /// Endpoints exist, none can serve now.
    NoneHealthy,
}

/// What has been seen of one endpoint, and its name.
#[derive(Debug)]
struct Slot {
    key: Arc<str>,
    state: EndpointState,
}

/// The endpoints of one service port and what has been seen of them.
///
/// Members and groups point at their state by index: a pick reads no map.
/// The states are rebuilt by name at each endpoint set, which counts as a
/// new `epoch`; a pick's `Slots` of an older epoch are found by name.
#[derive(Debug, Default)]
pub(crate) struct Balancer {
    params: Params,
    /// The policy's session affinity, if it asks for one.
    pub(crate) affinity: Option<Affinity>,
    groups: Vec<Group>,
    /// Each group's, and a group no longer listed while calls on it last.
    group_states: Vec<(GroupKey, GroupState)>,
    /// Each listed endpoint's, and one no longer listed while attempts on
    /// it last.
    states: Vec<Slot>,
    /// `states` by name.
    index: FastMap<Arc<str>, usize>,
    epoch: u64,
    /// Each group's health as last observed, and the shares computed from
    /// it: health changes far less often than requests come.
    health: Vec<GroupHealth>,
    shares: Vec<u32>,
    /// The picked group's candidates (kept to spare an allocation a pick).
    candidates: Vec<usize>,
}

impl Balancer {
    pub(crate) fn params(&self) -> Params {
        self.params
    }

    /// Every endpoint listed now (for pruning connection pools).
    pub(crate) fn keys(&self) -> Vec<Arc<str>> {
        self.states
            .iter()
            .filter(|s| s.state.listed)
            .map(|s| s.key.clone())
            .collect()
    }

    /// Each group's share in permille, as traffic is split now.
    #[cfg(test)]
    pub(crate) fn shares(&mut self, now: Instant) -> Vec<(GroupKey, u32)> {
        self.update_shares(now);
        let keys = self.groups.iter().map(|g| g.key.clone());
        keys.zip(self.shares.iter().copied()).collect()
    }

    /// Brings `self.health` up to date (failback hold applied), and
    /// recomputes `self.shares` only when it changed.
    fn update_shares(&mut self, now: Instant) {
        let n = self.groups.len();
        let mut changed = self.health.len() != n;
        self.health.truncate(n);
        for i in 0..n {
            let observed = self.observed_healthy(i, now);
            let g = &self.groups[i];
            let st = &mut self.group_states[g.state].1;
            let h = GroupHealth {
                healthy: hold(st, observed, now, self.params.failback_hold),
                total: g.total.max(g.members.len() as u32),
                spill_threshold: g.spill,
            };
            match self.health.get_mut(i) {
                Some(old) if *old == h => {}
                Some(old) => (*old, changed) = (h, true),
                None => self.health.push(h),
            }
        }
        if changed {
            self.shares = shares(&self.health);
        }
    }

    /// Picks an endpoint, avoiding `exclude` (those already tried) while
    /// any other can serve.
    pub(crate) fn pick(&mut self, now: Instant, exclude: &[Arc<str>]) -> Result<Pick, NoPick> {
        if self.groups.iter().all(|g| g.members.is_empty()) {
            return Err(NoPick::NoEndpoints);
        }
        self.update_shares(now);
        // Avoiding what was tried is a preference: with nothing else left,
        // an endpoint that answered may be asked again.
        let any = |b: &Self, ex: &[Arc<str>]| (0..b.groups.len()).any(|i| b.can_serve(i, now, ex));
        let exclude = if any(self, exclude) { exclude } else { &[] };
        let serves = |i: usize| self.can_serve(i, now, exclude);
        let weighted = || {
            let shares = self.shares.iter().enumerate();
            shares.filter(move |(i, s)| **s > 0 && serves(*i))
        };
        let total: u32 = weighted().map(|(_, s)| *s).sum();
        let group = if total > 0 {
            let mut roll = fastrand::u32(0..total);
            weighted()
                .find(|(_, s)| {
                    if roll < **s {
                        true
                    } else {
                        roll -= **s;
                        false
                    }
                })
                .map(|(i, _)| i)
        } else {
            // No group with a share can serve (what it had is tried or just
            // went down): the first group, in priority order, that can.
            (0..self.groups.len()).find(|i| serves(*i))
        };
        let Some(gi) = group else {
            return Err(NoPick::NoneHealthy);
        };
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.extend(self.candidates(gi, now, exclude));
        let mi = self.p2c(gi, &candidates, now);
        self.candidates = candidates;
        Ok(self.pick_of(gi, mi))
    }

    /// Member `mi` of group `gi` as a pick, with the group's load now.
    fn pick_of(&self, gi: usize, mi: usize) -> Pick {
        let g = &self.groups[gi];
        let m = &g.members[mi];
        let st = &self.group_states[g.state].1;
        Pick {
            endpoint: m.info.clone(),
            group: g.key.clone(),
            load: Load {
                requests: st.in_flight,
                pending: st.pending,
                connections: st.connections,
            },
            at: Some(Slots {
                epoch: self.epoch,
                endpoint: m.state,
                group: g.state,
            }),
        }
    }

    /// Whether an endpoint set was taken in yet.
    pub(crate) fn has_set(&self) -> bool {
        self.epoch > 0
    }

    /// Whether any endpoint could take a request now.
    pub(crate) fn serving(&self, now: Instant) -> bool {
        (0..self.groups.len()).any(|i| self.can_serve(i, now, &[]))
    }

    fn can_serve(&self, gi: usize, now: Instant, exclude: &[Arc<str>]) -> bool {
        self.candidates(gi, now, exclude).next().is_some()
    }

    /// The members of group `gi` that can take a request now, but `exclude`.
    fn candidates<'a>(
        &'a self,
        gi: usize,
        now: Instant,
        exclude: &'a [Arc<str>],
    ) -> impl Iterator<Item = usize> + 'a {
        self.groups[gi]
            .members
            .iter()
            .enumerate()
            .filter(move |(_, m)| m.ready && !exclude.contains(&m.info.key))
            .filter(move |(_, m)| self.states[m.state].state.available(now))
            .map(|(i, _)| i)
    }

    fn p2c(&self, gi: usize, candidates: &[usize], now: Instant) -> usize {
        let g = &self.groups[gi];
        peak_ewma::p2c(candidates, |i| {
            let m = &g.members[candidates[i]];
            self.states[m.state].state.cost(now, m.weight)
        })
    }

    /// Healthy endpoints of group `gi` as this sidecar sees them.
    fn observed_healthy(&self, gi: usize, now: Instant) -> u32 {
        let g = &self.groups[gi];
        let reachable = g
            .members
            .iter()
            .filter(|m| m.ready && self.states[m.state].state.available(now))
            .count() as u32;
        if g.key.remote {
            // The members are the remote cluster's gateways; the endpoints
            // behind them are counted by the remote controller.
            if reachable > 0 { g.healthy } else { 0 }
        } else {
            reachable
        }
    }
}
