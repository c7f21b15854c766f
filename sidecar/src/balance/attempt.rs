//! What happened to a call: an attempt's start and end, its wait for a
//! connection, an opaque connection's life. Each finds the state of the
//! endpoint and group it was picked from where the pick says.

use super::health::EndpointState;
use super::{Balancer, GroupState, Pick};

impl Balancer {
    /// The state of the endpoint `pick` chose: where the pick says while
    /// its endpoint set lasts, else by name; `None` once it is forgotten.
    pub(super) fn endpoint_of(&self, pick: &Pick) -> Option<usize> {
        match pick.at {
            Some(at) if at.epoch == self.epoch => Some(at.endpoint),
            _ => self.index.get(&pick.endpoint.key).copied(),
        }
    }

    /// The state of the group `pick` chose from (see `endpoint_of`).
    pub(super) fn group_of(&self, pick: &Pick) -> Option<usize> {
        match pick.at {
            Some(at) if at.epoch == self.epoch => Some(at.group),
            _ => self.group_states.iter().position(|(k, _)| *k == pick.group),
        }
    }

    pub(super) fn endpoint_mut(&mut self, pick: &Pick) -> Option<&mut EndpointState> {
        let i = self.endpoint_of(pick)?;
        Some(&mut self.states[i].state)
    }

    pub(super) fn group_mut(&mut self, pick: &Pick) -> Option<&mut GroupState> {
        let i = self.group_of(pick)?;
        Some(&mut self.group_states[i].1)
    }

    /// An attempt starts on `pick`.
    pub(crate) fn start(&mut self, pick: &Pick) {
        if let Some(s) = self.endpoint_mut(pick) {
            s.pending += 1;
        }
        if let Some(g) = self.group_mut(pick) {
            g.in_flight += 1;
        }
    }

    /// An attempt on `pick` ended (however it ended).
    pub(crate) fn end(&mut self, pick: &Pick) {
        if let Some(s) = self.endpoint_mut(pick) {
            s.pending = s.pending.saturating_sub(1);
        }
        if let Some(g) = self.group_mut(pick) {
            g.in_flight = g.in_flight.saturating_sub(1);
        }
    }

    /// Counts a request on `pick` waiting for a connection (`delta` ±1).
    pub(crate) fn pending(&mut self, pick: &Pick, delta: isize) {
        if let Some(g) = self.group_mut(pick) {
            g.pending = g.pending.saturating_add_signed(delta);
        }
    }

    /// Counts an opaque connection open on `pick` (`delta` ±1).
    pub(crate) fn connections(&mut self, pick: &Pick, delta: isize) {
        if let Some(g) = self.group_mut(pick) {
            g.connections = g.connections.saturating_add_signed(delta);
        }
    }
}
