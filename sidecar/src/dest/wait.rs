//! Requests waiting for an endpoint. When a destination has endpoints but
//! none able to serve now — down after a failed connect, ejected, or not
//! ready — a request that may be sent again waits for one rather than
//! failing at once: the only endpoint may be a remote gateway frozen for a
//! few seconds, or a cluster withdrawn while its lease renews.
//!
//! - **Bounded:** at most `Breakers::max_waiting` (default 256) requests of
//!   a destination wait at once; past it a request fails at once, as
//!   before, with `no_healthy_endpoints`. Each waits at most what is left
//!   of its request timeout, then fails as it would have without waiting.
//! - **Woken, not polling:** a waiter looks again when a probe reports, a
//!   down endpoint connects, or discovery sends a new endpoint set; else it
//!   sleeps until the balancer's next known change in time (a probe falls
//!   due — its pick starts the probe — or an ejection ends).
//! - Nothing here runs on the request path while an endpoint can serve.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::Dest;
use crate::balance::Pick;
use crate::metrics::{ServiceLabels, WaitLabels, WaitOutcome};
use crate::reason::Reason;

impl Dest {
    /// Waits, within `deadline`, until an endpoint can take the request
    /// whose attempts went to `tried`, and picks it. Called when a pick
    /// found none able to serve; fails with `no_healthy_endpoints` when the
    /// queue is full or the deadline passes.
    pub(crate) async fn wait_for_endpoint(
        self: &Arc<Self>,
        tried: &[Arc<str>],
        deadline: Instant,
    ) -> Result<Pick, Reason> {
        let Some(_place) = Place::take(self) else {
            self.waited(WaitOutcome::queue_full);
            return Err(Reason::NoHealthyEndpoints);
        };
        let mut sets = self.set.lock().expect("set lock").clone();
        sets.borrow_and_update();
        let mut discovery_open = true;
        loop {
            // Listening before looking: a change between the two still wakes.
            let mut changed = pin!(self.changes.notified());
            changed.as_mut().enable();
            match self.pick(tried) {
                Ok(pick) => {
                    self.waited(WaitOutcome::served);
                    return Ok(pick);
                }
                Err(Reason::NoHealthyEndpoints) => {}
                Err(other) => {
                    self.waited(WaitOutcome::failed);
                    return Err(other);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.waited(WaitOutcome::timeout);
                return Err(Reason::NoHealthyEndpoints);
            }
            let wake = self.next_change(now).map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = changed => {}
                sent = sets.changed(), if discovery_open => discovery_open = sent.is_ok(),
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn next_change(&self, now: Instant) -> Option<Instant> {
        self.balancer
            .lock()
            .expect("balancer lock")
            .next_change(now)
    }

    fn waited(&self, outcome: WaitOutcome) {
        self.shared
            .metrics
            .endpoint_waits
            .get_or_create(&WaitLabels {
                service: self.label.clone(),
                outcome,
            })
            .inc();
    }

    fn waiting_gauge(&self, delta: i64) {
        self.shared
            .metrics
            .endpoint_waiting
            .get_or_create(&ServiceLabels {
                service: self.label.clone(),
            })
            .inc_by(delta);
    }
}

/// A place in a destination's queue, given back when dropped.
struct Place<'a>(&'a Dest);

impl<'a> Place<'a> {
    fn take(dest: &'a Dest) -> Option<Self> {
        let max = dest.shared.breakers.max_waiting;
        dest.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        dest.waiting_gauge(1);
        Some(Self(dest))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting_gauge(-1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dest::testing::{dest, set};

    fn waits(d: &Dest, outcome: WaitOutcome) -> u64 {
        d.shared
            .metrics
            .endpoint_waits
            .get_or_create(&WaitLabels {
                service: d.label.clone(),
                outcome,
            })
            .get()
    }

    fn waiting(d: &Dest) -> i64 {
        d.shared
            .metrics
            .endpoint_waiting
            .get_or_create(&ServiceLabels {
                service: d.label.clone(),
            })
            .get()
    }

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_set_ends_the_wait() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        assert_eq!(d.pick(&[]).map(|_| ()), Err(Reason::NoHealthyEndpoints));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_endpoint(&[], in_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!waiter.is_finished(), "nothing can serve yet");
        assert_eq!(waiting(&d), 1);
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        let pick = waiter.await.expect("task").expect("picked");
        assert_eq!(pick.endpoint.addr.to_string(), "10.0.0.1:80");
        assert_eq!(waits(&d, WaitOutcome::served), 1);
        assert_eq!(waiting(&d), 0, "the place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_that_ends_ends_the_wait_without_news() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        let pick = d.pick(&[]).expect("picked");
        d.start(&pick).answered(true);
        let ejected = Instant::now();
        assert_eq!(d.pick(&[]).map(|_| ()), Err(Reason::NoHealthyEndpoints));
        let pick = d
            .wait_for_endpoint(&[], in_secs(10))
            .await
            .expect("picked after the ejection");
        assert_eq!(pick.endpoint.addr.to_string(), "10.0.0.1:80");
        // Woken when the ejection ended (1 s), not at the deadline.
        assert!(ejected.elapsed() < Duration::from_secs(2));
        assert_eq!(waits(&d, WaitOutcome::served), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_ends_the_wait_with_the_same_reason() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        let deadline = in_secs(3);
        let waited = d.wait_for_endpoint(&[], deadline).await.map(|_| ());
        assert_eq!(waited, Err(Reason::NoHealthyEndpoints));
        assert!(Instant::now() >= deadline);
        assert_eq!(waits(&d, WaitOutcome::timeout), 1);
        // A deadline already past: one look, no wait.
        let now = Instant::now();
        let waited = d.wait_for_endpoint(&[], now).await.map(|_| ());
        assert_eq!(waited, Err(Reason::NoHealthyEndpoints));
        assert_eq!(Instant::now(), now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_fails_at_once() {
        let (d, sets) = dest(1);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        let first = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_endpoint(&[], in_secs(10)).await })
        };
        while waiting(&d) == 0 {
            tokio::task::yield_now().await;
        }
        let now = Instant::now();
        let second = d.wait_for_endpoint(&[], in_secs(10)).await.map(|_| ());
        assert_eq!(second, Err(Reason::NoHealthyEndpoints));
        assert_eq!(Instant::now(), now, "no time passed");
        assert_eq!(waits(&d, WaitOutcome::queue_full), 1);
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        first.await.expect("task").expect("the first is served");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_left_with_no_endpoint_ends_the_wait() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_endpoint(&[], in_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        sets.send_replace(set(&[]));
        let waited = waiter.await.expect("task").map(|_| ());
        assert_eq!(waited, Err(Reason::NoEndpoints));
        assert_eq!(waits(&d, WaitOutcome::failed), 1);
    }
}
