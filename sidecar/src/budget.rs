//! The retry budget: retries may add at most a percentage of the requests
//! of the last ten seconds, plus a floor per second, so a failing service
//! sees a bounded extra load rather than a retry storm.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::balance::Params;
use crate::metrics::{Metrics, ServiceLabels};

const WINDOW_SECS: usize = 10;

/// A service's retry budget as the request path uses it: the window, the
/// policy's share and floor (updated with each endpoint set), and the
/// metrics that count what it granted and refused.
#[derive(Debug)]
pub(crate) struct Budget {
    window: Mutex<RetryBudget>,
    percent: AtomicU32,
    min_per_second: AtomicU32,
    metrics: Arc<Metrics>,
    labels: ServiceLabels,
}

impl Budget {
    pub(crate) fn new(metrics: Arc<Metrics>, service: Arc<str>) -> Self {
        let p = Params::default();
        Self {
            window: Mutex::new(RetryBudget::new(Instant::now())),
            percent: AtomicU32::new(p.retry_percent),
            min_per_second: AtomicU32::new(p.min_retries_per_second),
            metrics,
            labels: ServiceLabels { service },
        }
    }

    /// Takes the policy's share and floor.
    pub(crate) fn set(&self, p: &Params) {
        self.percent.store(p.retry_percent, Ordering::Relaxed);
        self.min_per_second
            .store(p.min_retries_per_second, Ordering::Relaxed);
    }

    /// Counts a new call.
    pub(crate) fn request(&self) {
        self.window
            .lock()
            .expect("budget lock")
            .request(Instant::now());
    }

    /// Whether another attempt may go (counted in the metrics either way).
    pub(crate) fn try_retry(&self) -> bool {
        let ok = self.window.lock().expect("budget lock").try_retry(
            Instant::now(),
            self.percent.load(Ordering::Relaxed),
            self.min_per_second.load(Ordering::Relaxed),
        );
        let family = if ok {
            &self.metrics.retries
        } else {
            &self.metrics.retries_refused
        };
        family.get_or_create(&self.labels).inc();
        ok
    }
}

/// Requests and retries per second over the last window.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    start: Instant,
    /// (second since start, requests, retries), one slot per second of the window.
    slots: [(u64, u32, u32); WINDOW_SECS],
}

impl RetryBudget {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            start: now,
            slots: [(u64::MAX, 0, 0); WINDOW_SECS],
        }
    }

    fn slot(&mut self, now: Instant) -> &mut (u64, u32, u32) {
        let sec = now.saturating_duration_since(self.start).as_secs();
        let slot = &mut self.slots[(sec % WINDOW_SECS as u64) as usize];
        if slot.0 != sec {
            *slot = (sec, 0, 0);
        }
        slot
    }

    fn totals(&self, now: Instant) -> (u64, u64) {
        let sec = now.saturating_duration_since(self.start).as_secs();
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && sec.saturating_sub(s.0) < WINDOW_SECS as u64)
            .fold((0, 0), |(r, t), s| (r + u64::from(s.1), t + u64::from(s.2)))
    }

    /// Counts a new request.
    pub(crate) fn request(&mut self, now: Instant) {
        self.slot(now).1 += 1;
    }

    /// Takes a retry from the budget if one is left.
    pub(crate) fn try_retry(&mut self, now: Instant, percent: u32, min_per_second: u32) -> bool {
        let (requests, retries) = self.totals(now);
        let allowed =
            u64::from(min_per_second) * WINDOW_SECS as u64 + requests * u64::from(percent) / 100;
        if retries >= allowed {
            return false;
        }
        self.slot(now).2 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        for _ in 0..100 {
            b.request(t0);
        }
        // Floor 1/s over 10 s = 10, plus 20 % of 100 = 20.
        let granted = (0..100).filter(|_| b.try_retry(t0, 20, 1)).count();
        assert_eq!(granted, 30);
        // A window later, the old requests and retries are forgotten.
        let later = t0 + Duration::from_secs(11);
        let granted = (0..100).filter(|_| b.try_retry(later, 20, 1)).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn no_floor_and_no_share_means_no_retries() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0);
        b.request(t0);
        assert!(!b.try_retry(t0, 0, 0));
    }
}
