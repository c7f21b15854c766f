//! Choosing an endpoint: power of two choices over the connections each
//! endpoint has open through this gateway, among ready endpoints not tried
//! yet for this connection.

use std::sync::atomic::Ordering;

use rand::Rng;

use crate::routes::Upstream;

/// The index of the endpoint to try next, skipping `tried`.
pub(crate) fn pick(endpoints: &[Upstream], tried: &[usize]) -> Option<usize> {
    let candidates: Vec<usize> = (0..endpoints.len())
        .filter(|i| endpoints[*i].ready && !tried.contains(i))
        .collect();
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let load = |i: usize| endpoints[candidates[i]].active.load(Ordering::Relaxed);
            Some(candidates[if load(b) < load(a) { b } else { a }])
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn up(port: u16, ready: bool, active: usize) -> Upstream {
        Upstream {
            addr: ([10, 0, 0, 1], port).into(),
            ready,
            active: Arc::new(AtomicUsize::new(active)),
        }
    }

    #[test]
    fn ready_untried_and_less_loaded() {
        let eps = [up(1, true, 50), up(2, false, 0), up(3, true, 0)];
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[pick(&eps, &[]).expect("some")] += 1;
        }
        assert_eq!(counts[1], 0, "never an endpoint that is not ready");
        assert_eq!(counts[2], 1000, "of two, the less loaded always wins");
        assert_eq!(
            pick(&eps, &[2]),
            Some(0),
            "a failed endpoint is not retried"
        );
        assert_eq!(pick(&eps, &[0, 2]), None);
        let even = [up(1, true, 0), up(2, true, 0), up(3, true, 0)];
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pick(&even, &[]).expect("some")] += 1;
        }
        assert!(
            counts.iter().all(|c| *c > 700),
            "equal loads spread: {counts:?}"
        );
    }
}
