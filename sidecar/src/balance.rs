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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_api::discovery::{EndpointSet, Policy};
use meshfed_api::priority::{GroupHealth, shares};
use meshfed_trust::{ExpectedIds, SpiffeId};
use rand::Rng;
use tokio::time::Instant;

/// How fast the latency estimate forgets (linkerd's default).
const DECAY: Duration = Duration::from_secs(10);
/// Estimate for an endpoint never measured.
const DEFAULT_RTT: Duration = Duration::from_millis(1);
const DOWN_MIN: Duration = Duration::from_millis(100);
const DOWN_MAX: Duration = Duration::from_secs(2);
const EJECTION_CAP: Duration = Duration::from_secs(300);

/// An endpoint as the connector needs it.
#[derive(Debug)]
pub(crate) struct EndpointInfo {
    /// Address and server name: one endpoint, also across updates.
    pub(crate) key: Arc<str>,
    pub(crate) addr: SocketAddr,
    /// Server name sent: the gateway routes on it; a sidecar ignores it.
    pub(crate) sni: String,
    /// Identities the server may present.
    pub(crate) expected: ExpectedIds,
    /// `expected` as one string (TLS configs are cached by it).
    pub(crate) ids_key: String,
    pub(crate) cluster: String,
    pub(crate) zone: String,
}

/// The policy's knobs, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    pub(crate) consecutive_failures: u32,
    pub(crate) ejection: Duration,
    pub(crate) max_ejected_percent: u32,
    pub(crate) failback_hold: Duration,
    pub(crate) retry_percent: u32,
    pub(crate) min_retries_per_second: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
            failback_hold: Duration::from_secs(10),
            retry_percent: 20,
            min_retries_per_second: 10,
        }
    }
}

impl Params {
    fn from_wire(p: Option<&Policy>) -> Self {
        let d = Self::default();
        let Some(p) = p else { return d };
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        Self {
            consecutive_failures: or(p.consecutive_failures, d.consecutive_failures),
            ejection: Duration::from_millis(u64::from(or(
                p.ejection_time_ms,
                d.ejection.as_millis() as u32,
            ))),
            max_ejected_percent: p.max_ejected_percent.min(100),
            failback_hold: Duration::from_millis(u64::from(p.failback_hold_ms)),
            retry_percent: p.retry_budget_percent,
            min_retries_per_second: p.min_retries_per_second,
        }
    }
}

/// Groups are known across updates by where they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub(crate) cluster: String,
    pub(crate) zone: String,
    pub(crate) remote: bool,
}

#[derive(Debug)]
struct Member {
    info: Arc<EndpointInfo>,
    weight: f64,
    ready: bool,
}

#[derive(Debug)]
struct Group {
    key: GroupKey,
    members: Vec<Member>,
    /// The controller's counts (for a remote group, the remote cluster's).
    healthy: u32,
    total: u32,
    spill: f64,
}

/// What the balancer remembers about a group across updates.
#[derive(Debug, Default)]
struct GroupState {
    /// The healthy count used for shares (None: not yet seen).
    effective: Option<u32>,
    /// Since when the observed count has been above `effective`.
    rising_since: Option<Instant>,
    in_flight: usize,
    pending: usize,
    connections: usize,
}

#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    backoff: Duration,
    probing: bool,
}

#[derive(Debug)]
struct EndpointState {
    rtt_ns: f64,
    stamp: Instant,
    pending: u32,
    consecutive: u32,
    down: Option<Down>,
    ejected_until: Option<Instant>,
    ejections: u32,
    /// When a connect to it last succeeded.
    connected_at: Option<Instant>,
    /// In the latest endpoint set. An endpoint no longer listed is kept
    /// only while attempts on it are in flight; what they show is not
    /// held against it if it is listed again (a cluster withdrawn in a
    /// partition comes back as a new endpoint, not an ejected one).
    listed: bool,
}

impl EndpointState {
    fn new(now: Instant) -> Self {
        Self {
            rtt_ns: DEFAULT_RTT.as_nanos() as f64,
            stamp: now,
            pending: 0,
            consecutive: 0,
            down: None,
            ejected_until: None,
            ejections: 0,
            connected_at: None,
            listed: true,
        }
    }

    fn available(&self, now: Instant) -> bool {
        self.down.is_none() && self.ejected_until.is_none_or(|t| t <= now)
    }

    /// Peak EWMA decayed to `now`, times the work queued on it.
    fn cost(&self, now: Instant, weight: f64) -> f64 {
        let dt = now.saturating_duration_since(self.stamp).as_secs_f64();
        let rtt = self.rtt_ns * (-dt / DECAY.as_secs_f64()).exp();
        rtt * f64::from(self.pending + 1) / weight.max(1.0)
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        if sample > self.rtt_ns {
            // Peak: a slow answer counts at once.
            self.rtt_ns = sample;
        } else {
            let dt = now.saturating_duration_since(self.stamp).as_secs_f64();
            let w = (-dt / DECAY.as_secs_f64()).exp();
            self.rtt_ns = self.rtt_ns * w + sample * (1.0 - w);
        }
        self.stamp = now;
    }
}

/// A pick: the endpoint and the group it came from.
#[derive(Debug, Clone)]
pub(crate) struct Pick {
    pub(crate) endpoint: Arc<EndpointInfo>,
    pub(crate) group: GroupKey,
}

/// Why nothing was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// Discovery lists no endpoint at all.
    NoEndpoints,
    /// Endpoints exist, none can serve now.
    NoneHealthy,
}

/// The endpoints of one service port and what has been seen of them.
#[derive(Debug, Default)]
pub(crate) struct Balancer {
    params: Params,
    groups: Vec<Group>,
    group_state: HashMap<GroupKey, GroupState>,
    states: HashMap<Arc<str>, EndpointState>,
}

impl Balancer {
    pub(crate) fn params(&self) -> Params {
        self.params
    }

    /// Takes a new endpoint set; what is known of endpoints and groups that
    /// remain is kept.
    pub(crate) fn update(
        &mut self,
        set: &EndpointSet,
        caller_cluster: &str,
        sni: &str,
        now: Instant,
    ) {
        self.params = Params::from_wire(set.policy.as_ref());
        self.groups = set
            .groups
            .iter()
            .map(|g| {
                let loc = g.locality.clone().unwrap_or_default();
                let key = GroupKey {
                    cluster: loc.cluster,
                    zone: if g.remote { String::new() } else { loc.zone },
                    remote: g.remote,
                };
                let members = g
                    .endpoints
                    .iter()
                    .filter_map(|e| endpoint_info(e, g.remote, caller_cluster, sni))
                    .map(|(info, weight, ready)| Member {
                        info: Arc::new(info),
                        weight,
                        ready,
                    })
                    .collect();
                Group {
                    key,
                    members,
                    healthy: g.healthy,
                    total: g.total,
                    spill: g.spill_threshold,
                }
            })
            .collect();
        let live: std::collections::HashSet<Arc<str>> = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(|m| m.info.key.clone()))
            .collect();
        for k in &live {
            match self.states.get_mut(k) {
                Some(s) if !s.listed => {
                    *s = EndpointState {
                        pending: s.pending,
                        ..EndpointState::new(now)
                    };
                }
                Some(_) => {}
                None => {
                    self.states.insert(k.clone(), EndpointState::new(now));
                }
            }
        }
        self.states.retain(|k, s| {
            s.listed = live.contains(k);
            s.listed || s.pending > 0
        });
        let keys: Vec<GroupKey> = self.groups.iter().map(|g| g.key.clone()).collect();
        self.group_state
            .retain(|k, s| keys.contains(k) || s.in_flight + s.pending + s.connections > 0);
    }

    /// Every endpoint listed now (for pruning connection pools).
    pub(crate) fn keys(&self) -> Vec<Arc<str>> {
        self.states
            .iter()
            .filter(|(_, s)| s.listed)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Each group's share in permille, as traffic is split now.
    pub(crate) fn shares(&mut self, now: Instant) -> Vec<(GroupKey, u32)> {
        let health: Vec<GroupHealth> = (0..self.groups.len())
            .map(|i| {
                let observed = self.observed_healthy(i, now);
                let g = &self.groups[i];
                let st = self.group_state.entry(g.key.clone()).or_default();
                let effective = hold(st, observed, now, self.params.failback_hold);
                GroupHealth {
                    healthy: effective,
                    total: g.total.max(g.members.len() as u32),
                    spill_threshold: g.spill,
                }
            })
            .collect();
        self.groups
            .iter()
            .map(|g| g.key.clone())
            .zip(shares(&health))
            .collect()
    }

    /// Picks an endpoint, avoiding `exclude` (those already tried) while
    /// any other can serve.
    pub(crate) fn pick(&mut self, now: Instant, exclude: &[Arc<str>]) -> Result<Pick, NoPick> {
        if self.groups.iter().all(|g| g.members.is_empty()) {
            return Err(NoPick::NoEndpoints);
        }
        let shares = self.shares(now);
        let mut candidates: Vec<Vec<usize>> = (0..self.groups.len())
            .map(|i| self.candidates(i, now, exclude))
            .collect();
        if candidates.iter().all(Vec::is_empty) {
            // Avoiding what was tried is a preference: with nothing else
            // left, an endpoint that answered may be asked again.
            candidates = (0..self.groups.len())
                .map(|i| self.candidates(i, now, &[]))
                .collect();
        }
        let weighted: Vec<(usize, u32)> = shares
            .iter()
            .enumerate()
            .filter(|(i, (_, s))| *s > 0 && !candidates[*i].is_empty())
            .map(|(i, (_, s))| (i, *s))
            .collect();
        let total: u32 = weighted.iter().map(|(_, s)| s).sum();
        let group = if total > 0 {
            let mut roll = rand::rng().random_range(0..total);
            weighted
                .iter()
                .find(|(_, s)| {
                    if roll < *s {
                        true
                    } else {
                        roll -= s;
                        false
                    }
                })
                .map(|(i, _)| *i)
        } else {
            // No group with a share can serve (what it had is tried or just
            // went down): the first group, in priority order, that can.
            (0..self.groups.len()).find(|i| !candidates[*i].is_empty())
        };
        let Some(gi) = group else {
            return Err(NoPick::NoneHealthy);
        };
        let mi = self.p2c(gi, &candidates[gi], now);
        let g = &self.groups[gi];
        Ok(Pick {
            endpoint: g.members[mi].info.clone(),
            group: g.key.clone(),
        })
    }

    fn candidates(&self, gi: usize, now: Instant, exclude: &[Arc<str>]) -> Vec<usize> {
        self.groups[gi]
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.ready && !exclude.contains(&m.info.key))
            .filter(|(_, m)| {
                self.states
                    .get(&m.info.key)
                    .is_some_and(|s| s.available(now))
            })
            .map(|(i, _)| i)
            .collect()
    }

    fn p2c(&self, gi: usize, candidates: &[usize], now: Instant) -> usize {
        let g = &self.groups[gi];
        if candidates.len() == 1 {
            return candidates[0];
        }
        let mut rng = rand::rng();
        let a = rng.random_range(0..candidates.len());
        let mut b = rng.random_range(0..candidates.len() - 1);
        if b >= a {
            b += 1;
        }
        let cost = |i: usize| {
            let m = &g.members[candidates[i]];
            self.states
                .get(&m.info.key)
                .map_or(f64::MAX, |s| s.cost(now, m.weight))
        };
        if cost(a) <= cost(b) {
            candidates[a]
        } else {
            candidates[b]
        }
    }

    /// Healthy endpoints of group `gi` as this sidecar sees them.
    fn observed_healthy(&self, gi: usize, now: Instant) -> u32 {
        let g = &self.groups[gi];
        let reachable = g
            .members
            .iter()
            .filter(|m| m.ready)
            .filter(|m| {
                self.states
                    .get(&m.info.key)
                    .is_some_and(|s| s.available(now))
            })
            .count() as u32;
        if g.key.remote {
            // The members are the remote cluster's gateways; the endpoints
            // behind them are counted by the remote controller.
            if reachable > 0 { g.healthy } else { 0 }
        } else {
            reachable
        }
    }

    // --- what happened to a call ---

    /// A call starts on `key`.
    pub(crate) fn start(&mut self, key: &Arc<str>, group: &GroupKey) {
        if let Some(s) = self.states.get_mut(key) {
            s.pending += 1;
        }
        self.group_state.entry(group.clone()).or_default().in_flight += 1;
    }

    /// A call on `key` ended (however it ended).
    pub(crate) fn end(&mut self, key: &Arc<str>, group: &GroupKey) {
        if let Some(s) = self.states.get_mut(key) {
            s.pending = s.pending.saturating_sub(1);
        }
        if let Some(g) = self.group_state.get_mut(group) {
            g.in_flight = g.in_flight.saturating_sub(1);
        }
    }

    /// Counters of a group, for circuit breaking.
    pub(crate) fn in_flight(&self, group: &GroupKey) -> (usize, usize, usize) {
        self.group_state
            .get(group)
            .map_or((0, 0, 0), |g| (g.in_flight, g.pending, g.connections))
    }

    pub(crate) fn pending(&mut self, group: &GroupKey, delta: isize) {
        let g = self.group_state.entry(group.clone()).or_default();
        g.pending = g.pending.saturating_add_signed(delta);
    }

    pub(crate) fn connections(&mut self, group: &GroupKey, delta: isize) {
        let g = self.group_state.entry(group.clone()).or_default();
        g.connections = g.connections.saturating_add_signed(delta);
    }

    /// A connect to `key` failed: down until a probe connects.
    ///
    /// A connect begun (`started`) before the last one that succeeded says
    /// nothing new: the endpoint is reachable, and the failure (a dial to
    /// the old process, a handshake that timed out meanwhile) is ignored
    /// rather than taking it down again.
    pub(crate) fn connect_failed(&mut self, key: &Arc<str>, started: Instant, now: Instant) {
        if let Some(s) = self.states.get_mut(key) {
            if s.connected_at.is_some_and(|t| t > started) {
                return;
            }
            let backoff = s.down.map_or(DOWN_MIN, |d| (d.backoff * 2).min(DOWN_MAX));
            s.down = Some(Down {
                until: now + backoff,
                backoff,
                probing: false,
            });
        }
    }

    /// A connect to `key` succeeded; `true` when it was down until now.
    pub(crate) fn connected(&mut self, key: &Arc<str>, now: Instant) -> bool {
        let Some(s) = self.states.get_mut(key) else {
            return false;
        };
        s.connected_at = Some(now);
        s.down.take().is_some()
    }

    /// When, with no news, a ready endpoint that cannot serve now may: a
    /// down one's probe falls due, or an ejection ends. `None` when only
    /// news can change anything (a probe's result, a new endpoint set).
    pub(crate) fn next_change(&self, now: Instant) -> Option<Instant> {
        self.ready_states()
            .filter_map(|s| match s.down {
                Some(d) if d.probing => None,
                Some(d) => Some(d.until),
                None => s.ejected_until.filter(|t| *t > now),
            })
            .min()
    }

    /// Down endpoints whose backoff ran out: the caller probes them (and
    /// reports `connected` or `connect_failed`).
    pub(crate) fn due_probes(&mut self, now: Instant) -> Vec<Arc<EndpointInfo>> {
        let mut due = Vec::new();
        for g in &self.groups {
            for m in &g.members {
                if let Some(s) = self.states.get_mut(&m.info.key)
                    && let Some(d) = &mut s.down
                    && !d.probing
                    && d.until <= now
                {
                    d.probing = true;
                    due.push(m.info.clone());
                }
            }
        }
        due
    }

    /// An answer from `key`: its latency, and whether it failed (5xx, reset).
    pub(crate) fn answered(&mut self, key: &Arc<str>, rtt: Duration, failed: bool, now: Instant) {
        let params = self.params;
        let Some(s) = self.states.get_mut(key) else {
            return;
        };
        s.observe(rtt, now);
        if !failed {
            s.consecutive = 0;
            return;
        }
        s.consecutive += 1;
        if s.consecutive < params.consecutive_failures {
            return;
        }
        // The cap is a share of the endpoints that could serve: counting
        // those the controller says are not ready (a killed pod's) would
        // let the last ready one be ejected and empty the service.
        let (ejected_now, total) = self.ejected_of_ready(now);
        let room = (ejected_now + 1) * 100 <= total.max(1) * params.max_ejected_percent as usize;
        let Some(s) = self.states.get_mut(key) else {
            return;
        };
        if room {
            s.ejections += 1;
            let time = params
                .ejection
                .saturating_mul(s.ejections)
                .min(EJECTION_CAP);
            s.ejected_until = Some(now + time);
            s.consecutive = 0;
            tracing::info!(endpoint = %key, ejected_for = ?time, "endpoint ejected");
        }
    }

    /// What is known of the listed endpoints the controller says are ready.
    fn ready_states(&self) -> impl Iterator<Item = &EndpointState> {
        self.groups
            .iter()
            .flat_map(|g| &g.members)
            .filter(|m| m.ready)
            .filter_map(|m| self.states.get(&m.info.key))
    }

    /// Of the ready endpoints: how many are ejected now, and how many there are.
    fn ejected_of_ready(&self, now: Instant) -> (usize, usize) {
        self.ready_states().fold((0, 0), |(ejected, total), s| {
            let out = s.ejected_until.is_some_and(|t| t > now);
            (ejected + usize::from(out), total + 1)
        })
    }
}

/// The failback hold: drops at once, rises after holding for `hold`.
fn hold(st: &mut GroupState, observed: u32, now: Instant, hold: Duration) -> u32 {
    let effective = st.effective.get_or_insert(observed);
    if observed <= *effective {
        *effective = observed;
        st.rising_since = None;
    } else {
        let since = *st.rising_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= hold {
            *effective = observed;
            st.rising_since = None;
        }
    }
    *effective
}

fn endpoint_info(
    e: &meshfed_api::discovery::Endpoint,
    remote: bool,
    caller_cluster: &str,
    local_sni: &str,
) -> Option<(EndpointInfo, f64, bool)> {
    let addr: SocketAddr = match e.address.parse() {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(address = %e.address, "discovery listed an endpoint that is not ip:port; skipped");
            return None;
        }
    };
    let mut ids: Vec<SpiffeId> = e
        .identities
        .iter()
        .filter_map(|i| SpiffeId::parse(i).ok())
        .collect();
    ids.sort();
    ids.dedup();
    let ids_key = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let Some(expected) = ExpectedIds::new(ids) else {
        tracing::warn!(address = %e.address, "discovery listed an endpoint with no identity; skipped");
        return None;
    };
    let sni = if remote && !e.sni.is_empty() {
        e.sni.clone()
    } else {
        local_sni.to_owned()
    };
    let loc = e.locality.clone().unwrap_or_default();
    let cluster = if loc.cluster.is_empty() {
        caller_cluster.to_owned()
    } else {
        loc.cluster
    };
    Some((
        EndpointInfo {
            key: format!("{addr}/{sni}").into(),
            addr,
            sni,
            expected,
            ids_key,
            cluster,
            zone: loc.zone,
        },
        f64::from(e.weight.max(1)),
        e.ready,
    ))
}

#[cfg(test)]
mod tests {
    use meshfed_api::discovery::{Endpoint, Locality, PriorityGroup};

    use super::*;

    const ID: &str = "spiffe://mesh.test/ns/shop/sa/api";

    fn ep(addr: &str, ready: bool) -> Endpoint {
        Endpoint {
            address: addr.into(),
            weight: 1,
            identities: vec![ID.into()],
            locality: None,
            ready,
            sni: String::new(),
        }
    }

    fn group(cluster: &str, zone: &str, remote: bool, eps: Vec<Endpoint>, t: f64) -> PriorityGroup {
        let healthy = eps.iter().filter(|e| e.ready).count() as u32;
        PriorityGroup {
            locality: Some(Locality {
                cluster: cluster.into(),
                region: String::new(),
                zone: zone.into(),
            }),
            remote,
            total: eps.len() as u32,
            healthy,
            endpoints: eps,
            spill_threshold: t,
            load_permille: 0,
        }
    }

    fn set(groups: Vec<PriorityGroup>, hold_ms: u32) -> EndpointSet {
        EndpointSet {
            exists: true,
            groups,
            policy: Some(Policy {
                spill_threshold: 0.7,
                consecutive_failures: 2,
                ejection_time_ms: 1000,
                max_ejected_percent: 50,
                failback_hold_ms: hold_ms,
                retry_budget_percent: 20,
                min_retries_per_second: 10,
            }),
            revision: 1,
        }
    }

    /// One group, east's zone a, with no failback hold.
    fn zone_a(eps: Vec<Endpoint>) -> EndpointSet {
        set(vec![group("east", "a", false, eps, 0.7)], 0)
    }

    fn balancer(s: &EndpointSet, now: Instant) -> Balancer {
        let mut b = Balancer::default();
        b.update(s, "east", "api.shop.80.svc.meshfed.local", now);
        b
    }

    fn picks(b: &mut Balancer, now: Instant, n: usize) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for _ in 0..n {
            let p = b.pick(now, &[]).expect("pick");
            *out.entry(p.endpoint.addr.to_string()).or_default() += 1;
        }
        out
    }

    fn two_zones_and_remote() -> EndpointSet {
        set(
            vec![
                group(
                    "east",
                    "a",
                    false,
                    vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)],
                    0.7,
                ),
                group("east", "", false, vec![ep("10.0.1.1:80", true)], 0.0),
                group("west", "", true, vec![ep("192.0.2.1:7460", true)], 0.7),
            ],
            1000,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn same_zone_takes_everything_while_healthy() {
        let now = Instant::now();
        let mut b = balancer(&two_zones_and_remote(), now);
        let seen = picks(&mut b, now, 200);
        assert_eq!(seen.keys().len(), 2, "{seen:?}");
        assert!(seen.contains_key("10.0.0.1:80") && seen.contains_key("10.0.0.2:80"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_down_endpoint_spills_part_of_its_zone_then_everything() {
        let now = Instant::now();
        let mut b = balancer(&two_zones_and_remote(), now);
        b.connect_failed(
            &"10.0.0.1:80/api.shop.80.svc.meshfed.local".into(),
            now,
            now,
        );
        let s = b.shares(now);
        // h = 1/2 below 0.7: 714 stays, the rest spills to the other zone.
        assert_eq!(
            s.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            vec![714, 286, 0]
        );
        b.connect_failed(
            &"10.0.0.2:80/api.shop.80.svc.meshfed.local".into(),
            now,
            now,
        );
        b.connect_failed(
            &"10.0.1.1:80/api.shop.80.svc.meshfed.local".into(),
            now,
            now,
        );
        let seen = picks(&mut b, now, 20);
        assert_eq!(seen.get("192.0.2.1:7460"), Some(&20), "{seen:?}");
    }

    /// One local endpoint (down since `t0`) behind a barrier, then west;
    /// failback hold 1 s.
    fn local_down_remote_up(t0: Instant) -> (Balancer, Arc<str>) {
        let s = set(
            vec![
                group("east", "a", false, vec![ep("10.0.0.1:80", true)], 0.0),
                group("west", "", true, vec![ep("192.0.2.1:7460", true)], 0.7),
            ],
            1000,
        );
        let mut b = balancer(&s, t0);
        let key: Arc<str> = "10.0.0.1:80/api.shop.80.svc.meshfed.local".into();
        b.connect_failed(&key, t0, t0);
        (b, key)
    }

    #[tokio::test(start_paused = true)]
    async fn failback_waits_for_the_hold_and_then_switches_once() {
        let t0 = Instant::now();
        let (mut b, key) = local_down_remote_up(t0);
        assert_eq!(picks(&mut b, t0, 10).get("192.0.2.1:7460"), Some(&10));
        // The probe is due after the backoff and connects.
        let t1 = t0 + Duration::from_millis(150);
        let due = b.due_probes(t1);
        assert_eq!(due.len(), 1);
        b.connected(&key, t1);
        // Healthy again, but held for a second: still remote.
        for ms in [0u64, 300, 900] {
            let t = t1 + Duration::from_millis(ms);
            assert_eq!(
                picks(&mut b, t, 10).get("192.0.2.1:7460"),
                Some(&10),
                "at {ms}"
            );
        }
        let t2 = t1 + Duration::from_millis(1000);
        assert_eq!(picks(&mut b, t2, 10).get("10.0.0.1:80"), Some(&10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_that_failed_after_a_newer_one_succeeded_takes_nothing_down() {
        let t0 = Instant::now();
        let (mut b, key) = local_down_remote_up(t0);
        // A request's connect begins at 100 ms and hangs; the probe at
        // 150 ms connects; the hung connect fails at 1.1 s.
        let started = t0 + Duration::from_millis(100);
        let t1 = t0 + Duration::from_millis(150);
        let _ = b.shares(t1);
        b.connected(&key, t1);
        let _ = b.shares(t1 + Duration::from_millis(10));
        b.connect_failed(&key, started, t0 + Duration::from_millis(1100));
        // The hold that began with the probe is not restarted.
        let t2 = t1 + Duration::from_millis(1010);
        assert_eq!(picks(&mut b, t2, 10).get("10.0.0.1:80"), Some(&10));
        // A connect begun after that success still counts.
        let t3 = t2 + Duration::from_millis(10);
        b.connect_failed(&key, t3, t3);
        assert_eq!(picks(&mut b, t3, 10).get("192.0.2.1:7460"), Some(&10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dip_during_the_hold_restarts_it() {
        let t0 = Instant::now();
        let (mut b, key) = local_down_remote_up(t0);
        let _ = b.shares(t0);
        b.connected(&key, t0);
        let _ = b.shares(t0 + Duration::from_millis(100));
        let t = t0 + Duration::from_millis(600);
        b.connect_failed(&key, t, t);
        let _ = b.shares(t);
        b.connected(&key, t0 + Duration::from_millis(1200));
        // Seen healthy again at 1.2 s: the hold starts over from there.
        for ms in [1200u64, 1700, 2100] {
            let t = t0 + Duration::from_millis(ms);
            assert_eq!(
                picks(&mut b, t, 10).get("192.0.2.1:7460"),
                Some(&10),
                "at {ms}"
            );
        }
        let t = t0 + Duration::from_millis(2200);
        assert_eq!(picks(&mut b, t, 10).get("10.0.0.1:80"), Some(&10));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_is_capped_by_the_policy() {
        let now = Instant::now();
        let mut b = balancer(
            &zone_a(vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)]),
            now,
        );
        let k1: Arc<str> = "10.0.0.1:80/api.shop.80.svc.meshfed.local".into();
        let k2: Arc<str> = "10.0.0.2:80/api.shop.80.svc.meshfed.local".into();
        for _ in 0..2 {
            b.answered(&k1, Duration::from_millis(1), true, now);
            b.answered(&k2, Duration::from_millis(1), true, now);
        }
        // 50 % of two: one ejected, the other kept serving.
        let seen = picks(&mut b, now, 10);
        assert_eq!(seen.len(), 1, "{seen:?}");
        // Ejection ends after its time.
        let later = now + Duration::from_millis(1001);
        assert_eq!(picks(&mut b, later, 50).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_ready_endpoint_is_never_ejected() {
        let now = Instant::now();
        // A killed pod stays listed, not ready: the cap is half of the one
        // endpoint that can serve, not of the two listed.
        let mut b = balancer(
            &zone_a(vec![ep("10.0.0.1:80", false), ep("10.0.0.2:80", true)]),
            now,
        );
        let k2: Arc<str> = "10.0.0.2:80/api.shop.80.svc.meshfed.local".into();
        for _ in 0..10 {
            b.answered(&k2, Duration::from_secs(4), true, now);
        }
        assert_eq!(picks(&mut b, now, 10).get("10.0.0.2:80"), Some(&10));
        assert_eq!(b.next_change(now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_change_is_the_first_probe_due_or_ejection_over() {
        let t0 = Instant::now();
        let (mut b, key) = local_down_remote_up(t0);
        // Down: its probe falls due after the first backoff.
        assert_eq!(b.next_change(t0), Some(t0 + DOWN_MIN));
        // Probing: only the probe's result tells.
        let t1 = t0 + DOWN_MIN;
        assert_eq!(b.due_probes(t1).len(), 1);
        assert_eq!(b.next_change(t1), None);
        assert!(b.connected(&key, t1), "back from down");
        assert!(!b.connected(&key, t1), "already up");
        // Ejected (two failures, one of two ready endpoints): until it ends.
        for _ in 0..2 {
            b.answered(&key, Duration::from_millis(1), true, t1);
        }
        assert_eq!(b.next_change(t1), Some(t1 + Duration::from_secs(1)));
        assert_eq!(b.next_change(t1 + Duration::from_secs(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn slower_endpoints_get_less() {
        let now = Instant::now();
        let mut b = balancer(
            &zone_a(vec![ep("10.0.0.1:80", true), ep("10.0.0.2:80", true)]),
            now,
        );
        b.answered(
            &"10.0.0.1:80/api.shop.80.svc.meshfed.local".into(),
            Duration::from_millis(50),
            false,
            now,
        );
        b.answered(
            &"10.0.0.2:80/api.shop.80.svc.meshfed.local".into(),
            Duration::from_micros(500),
            false,
            now,
        );
        // With two endpoints P2C always compares both.
        let seen = picks(&mut b, now, 50);
        assert_eq!(seen.get("10.0.0.2:80"), Some(&50), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_listed_and_nothing_healthy_differ() {
        let now = Instant::now();
        let mut b = balancer(&set(vec![], 0), now);
        assert_eq!(b.pick(now, &[]).map(|_| ()), Err(NoPick::NoEndpoints));
        let s = set(
            vec![group(
                "east",
                "a",
                false,
                vec![ep("10.0.0.1:80", false)],
                0.7,
            )],
            0,
        );
        let mut b = balancer(&s, now);
        assert_eq!(b.pick(now, &[]).map(|_| ()), Err(NoPick::NoneHealthy));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_listed_again_starts_afresh() {
        let now = Instant::now();
        let (mut b, _) = local_down_remote_up(now);
        let west: Arc<str> = "192.0.2.1:7460/api.shop.80.svc.meshfed.local".into();
        let wg = b.pick(now, &[]).expect("west").group;
        // Two calls in flight to west when it is withdrawn (a partition);
        // both then fail, enough to eject a listed endpoint.
        b.start(&west, &wg);
        b.start(&west, &wg);
        let without_west = set(vec![group_of_one("east", "a", "10.0.0.1:80")], 1000);
        b.update(&without_west, "east", "api.shop.80.svc.meshfed.local", now);
        assert!(!b.keys().contains(&west), "{:?}", b.keys());
        for _ in 0..2 {
            b.answered(&west, Duration::from_secs(3), true, now);
            b.end(&west, &wg);
        }
        // Back after the heal: served at once, not ejected for 30 s.
        let again = set(
            vec![
                group_of_one("east", "a", "10.0.0.1:80"),
                group("west", "", true, vec![ep("192.0.2.1:7460", true)], 0.7),
            ],
            1000,
        );
        let t = now + Duration::from_millis(10);
        b.update(&again, "east", "api.shop.80.svc.meshfed.local", t);
        b.connect_failed(&"10.0.0.1:80/api.shop.80.svc.meshfed.local".into(), t, t);
        assert_eq!(picks(&mut b, t, 10).get("192.0.2.1:7460"), Some(&10));
    }

    fn group_of_one(cluster: &str, zone: &str, addr: &str) -> PriorityGroup {
        group(cluster, zone, false, vec![ep(addr, true)], 0.0)
    }
}
