//! An attempt in flight on an endpoint: counted on its endpoint and group
//! until it ends, and what it met taught to the balancer.

use std::sync::Arc;

use tokio::time::Instant;

use super::Dest;
use crate::balance::Pick;

/// An attempt in flight on an endpoint.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(super) dest: Arc<Dest>,
    pub(super) pick: Pick,
    pub(super) started: Instant,
    /// Ended by `answered` (one lock for both), not by the drop.
    pub(super) ended: bool,
}

impl InFlight {
    /// The endpoint answered (`failed`: 5xx or the stream broke); the
    /// attempt ends.
    pub(crate) fn answered(mut self, failed: bool) {
        if failed {
            self.dest.failure();
        }
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started);
        let mut b = self.dest.balancer.lock().expect("balancer lock");
        b.answered(&self.pick, rtt, failed, now);
        b.end(&self.pick);
        self.ended = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.dest
            .balancer
            .lock()
            .expect("balancer lock")
            .end(&self.pick);
    }
}
