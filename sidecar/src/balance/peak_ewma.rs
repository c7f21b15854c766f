//! Within a group, power of two choices over peak-EWMA latency times the
//! requests in flight: two candidates drawn at random, the cheaper one
//! taken (linkerd's and Finagle's rule).

use std::time::Duration;

use tokio::time::Instant;

/// How fast the latency estimate forgets (linkerd's default).
const DECAY: Duration = Duration::from_secs(10);
/// Estimate for an endpoint never measured.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// An endpoint's latency estimate: a slow answer counts at once (the peak),
/// then it decays towards what answers show.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeakEwma {
    rtt_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            rtt_ns: DEFAULT_RTT.as_nanos() as f64,
            stamp: now,
        }
    }

    /// The estimate decayed to `now`, times the work queued on the
    /// endpoint (`pending` in flight, and this one), per unit of `weight`.
    pub(super) fn cost(&self, now: Instant, pending: u32, weight: f64) -> f64 {
        let dt = now.saturating_duration_since(self.stamp).as_secs_f64();
        let rtt = self.rtt_ns * (-dt / DECAY.as_secs_f64()).exp();
        rtt * f64::from(pending + 1) / weight.max(1.0)
    }

    /// Takes in one answer's latency.
    pub(super) fn observe(&mut self, rtt: Duration, now: Instant) {
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

/// Of `candidates` (not empty), the cheaper of two drawn at random by
/// `cost` (which takes an index into `candidates`).
pub(super) fn p2c(candidates: &[usize], cost: impl Fn(usize) -> f64) -> usize {
    if candidates.len() == 1 {
        return candidates[0];
    }
    let a = fastrand::usize(0..candidates.len());
    let mut b = fastrand::usize(0..candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    if cost(a) <= cost(b) {
        candidates[a]
    } else {
        candidates[b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_answer_counts_at_once_and_fast_ones_bring_it_down() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(t0);
        e.observe(Duration::from_millis(50), t0);
        assert!((e.cost(t0, 0, 1.0) - 50e6).abs() < 1.0);
        let t1 = t0 + DECAY;
        e.observe(Duration::from_millis(1), t1);
        let after = e.cost(t1, 0, 1.0);
        assert!(after < 50e6 && after > 1e6, "{after}");
    }

    #[test]
    fn cost_grows_with_the_work_queued_and_shrinks_with_weight() {
        let now = Instant::now();
        let e = PeakEwma::new(now);
        assert!(e.cost(now, 3, 1.0) > e.cost(now, 0, 1.0));
        assert!(e.cost(now, 0, 4.0) < e.cost(now, 0, 1.0));
    }

    #[test]
    fn two_choices_take_the_cheaper_and_a_single_candidate_is_taken() {
        assert_eq!(p2c(&[7], |_| 0.0), 7);
        // Index 0 is always the cheaper of any two drawn from two.
        for _ in 0..100 {
            assert_eq!(p2c(&[3, 9], |i| i as f64), 3);
        }
    }
}
