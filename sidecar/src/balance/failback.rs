//! Per group across updates: its effective healthy count under the
//! failback hold (it drops at once and rises only after holding steady, so
//! traffic fails over fast and comes back once), and the counters the
//! circuit breaker reads.

use std::time::Duration;

use tokio::time::Instant;

/// What the balancer remembers about a group across updates.
#[derive(Debug, Default)]
pub(super) struct GroupState {
    /// The healthy count used for shares (None: not yet seen).
    pub(super) effective: Option<u32>,
    /// Since when the observed count has been above `effective`.
    pub(super) rising_since: Option<Instant>,
    pub(super) in_flight: usize,
    pub(super) pending: usize,
    pub(super) connections: usize,
}

/// The failback hold: drops at once, rises after holding for `hold`.
pub(super) fn hold(st: &mut GroupState, observed: u32, now: Instant, hold: Duration) -> u32 {
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
