//! What this sidecar has seen of each endpoint, whatever the controller
//! last said: *down* after a failed connect (out until a probe connects,
//! backoff 100 ms doubling to 2 s, never capped), *ejected* after
//! consecutive failed answers (out for the ejection time × times ejected,
//! never more than the policy's share of the ready endpoints at once).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::peak_ewma::PeakEwma;
use super::{Balancer, EndpointInfo, Pick};

pub(super) const DOWN_MIN: Duration = Duration::from_millis(100);
const DOWN_MAX: Duration = Duration::from_secs(2);
const EJECTION_CAP: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Down {
    until: Instant,
    backoff: Duration,
    probing: bool,
}

#[derive(Debug)]
pub(super) struct EndpointState {
    pub(super) ewma: PeakEwma,
    /// Attempts in flight on it.
    pub(super) pending: u32,
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
    pub(super) listed: bool,
}

impl EndpointState {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            ewma: PeakEwma::new(now),
            pending: 0,
            consecutive: 0,
            down: None,
            ejected_until: None,
            ejections: 0,
            connected_at: None,
            listed: true,
        }
    }

    /// Listed again after it was not: a new endpoint, but for the
    /// attempts still in flight on it.
    pub(super) fn relisted(&mut self, now: Instant) {
        *self = Self {
            pending: self.pending,
            ..Self::new(now)
        };
    }

    pub(super) fn available(&self, now: Instant) -> bool {
        self.down.is_none() && self.ejected_until.is_none_or(|t| t <= now)
    }

    /// Its peak-EWMA cost to `now` (see `peak_ewma`).
    pub(super) fn cost(&self, now: Instant, weight: f64) -> f64 {
        self.ewma.cost(now, self.pending, weight)
    }
}

impl Balancer {
    /// A connect to `key` failed: down until a probe connects.
    ///
    /// A connect begun (`started`) before the last one that succeeded says
    /// nothing new: the endpoint is reachable, and the failure (a dial to
    /// the old process, a handshake that timed out meanwhile) is ignored
    /// rather than taking it down again.
    pub(crate) fn connect_failed(&mut self, key: &Arc<str>, started: Instant, now: Instant) {
        if let Some(s) = self.by_name(key) {
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
        let Some(s) = self.by_name(key) else {
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
                if let Some(d) = &mut self.states[m.state].state.down
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

    /// An answer from the endpoint of `pick`: its latency, and whether it
    /// failed (5xx, reset).
    pub(crate) fn answered(&mut self, pick: &Pick, rtt: Duration, failed: bool, now: Instant) {
        let params = self.params;
        let Some(i) = self.endpoint_of(pick) else {
            return;
        };
        let s = &mut self.states[i].state;
        s.ewma.observe(rtt, now);
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
        let s = &mut self.states[i].state;
        if room {
            s.ejections += 1;
            let time = params
                .ejection
                .saturating_mul(s.ejections)
                .min(EJECTION_CAP);
            s.ejected_until = Some(now + time);
            s.consecutive = 0;
            tracing::info!(endpoint = %pick.endpoint.key, ejected_for = ?time, "endpoint ejected");
        }
    }

    /// What is known of the listed endpoints the controller says are ready.
    fn ready_states(&self) -> impl Iterator<Item = &EndpointState> {
        self.groups
            .iter()
            .flat_map(|g| &g.members)
            .filter(|m| m.ready)
            .map(|m| &self.states[m.state].state)
    }

    fn by_name(&mut self, key: &Arc<str>) -> Option<&mut EndpointState> {
        let i = *self.index.get(key)?;
        Some(&mut self.states[i].state)
    }

    /// Of the ready endpoints: how many are ejected now, and how many there are.
    fn ejected_of_ready(&self, now: Instant) -> (usize, usize) {
        self.ready_states().fold((0, 0), |(ejected, total), s| {
            let out = s.ejected_until.is_some_and(|t| t > now);
            (ejected + usize::from(out), total + 1)
        })
    }
}
