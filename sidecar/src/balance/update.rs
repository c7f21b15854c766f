//! A new endpoint set: the groups and members it lists, each given the
//! state already known of it.

use std::sync::Arc;

use meshfed_api::discovery::EndpointSet;
use tokio::time::Instant;

use super::endpoint::endpoint_info;
use super::failback::GroupState;
use super::health::EndpointState;
use super::{Balancer, Group, GroupKey, Member, Params, Slot};

impl Balancer {
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
        self.affinity = super::Affinity::from_wire(set.policy.as_ref());
        self.epoch += 1;
        self.groups = set
            .groups
            .iter()
            .map(|g| {
                let loc = g.locality.clone().unwrap_or_default();
                let key = GroupKey {
                    cluster: loc.cluster.into(),
                    zone: if g.remote { "".into() } else { loc.zone.into() },
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
                        state: 0,
                    })
                    .collect();
                Group {
                    key,
                    state: 0,
                    members,
                    healthy: g.healthy,
                    total: g.total,
                    spill: g.spill_threshold,
                    ring: Vec::new(),
                }
            })
            .collect();
        if self.affinity.is_some() {
            for g in &mut self.groups {
                g.ring = super::affinity::ring(g);
            }
        }
        self.restate_endpoints(now);
        self.restate_groups();
    }

    /// Gives every member the state of its endpoint (kept by name, new
    /// when unknown); keeps an endpoint no longer listed while attempts on
    /// it are in flight.
    fn restate_endpoints(&mut self, now: Instant) {
        let old_index = std::mem::take(&mut self.index);
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.states)
            .into_iter()
            .map(Some)
            .collect();
        for m in self.groups.iter_mut().flat_map(|g| g.members.iter_mut()) {
            if let Some(&i) = self.index.get(&m.info.key) {
                // Listed twice: one state.
                m.state = i;
                continue;
            }
            let kept = old_index.get(&m.info.key).and_then(|&i| old[i].take());
            let state = match kept {
                Some(Slot { mut state, .. }) => {
                    if !state.listed {
                        state.relisted(now);
                    }
                    state
                }
                None => EndpointState::new(now),
            };
            m.state = self.states.len();
            self.index.insert(m.info.key.clone(), m.state);
            self.states.push(Slot {
                key: m.info.key.clone(),
                state,
            });
        }
        for mut slot in old.into_iter().flatten() {
            if slot.state.pending > 0 {
                slot.state.listed = false;
                self.index.insert(slot.key.clone(), self.states.len());
                self.states.push(slot);
            }
        }
    }

    /// Gives every group its state (kept by key); keeps a group no longer
    /// listed while calls on it last.
    fn restate_groups(&mut self) {
        let mut old: Vec<Option<(GroupKey, GroupState)>> = std::mem::take(&mut self.group_states)
            .into_iter()
            .map(Some)
            .collect();
        for g in &mut self.groups {
            if let Some(i) = self.group_states.iter().position(|(k, _)| *k == g.key) {
                g.state = i;
                continue;
            }
            let kept = old
                .iter_mut()
                .find(|o| o.as_ref().is_some_and(|(k, _)| *k == g.key))
                .and_then(Option::take);
            g.state = self.group_states.len();
            self.group_states
                .push(kept.unwrap_or_else(|| (g.key.clone(), GroupState::default())));
        }
        for (key, st) in old.into_iter().flatten() {
            if st.in_flight + st.pending + st.connections > 0 {
                self.group_states.push((key, st));
            }
        }
    }
}
