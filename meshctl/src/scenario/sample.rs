//! What a mirror looked like all along an interval, not only at its ends:
//! a background task reads the mirror's state over and over, and
//! `mirror-never` looks at every sample taken in its interval. A sampler
//! that could not read for a while fails the assertion rather than let an
//! unseen withdrawal pass.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::describe::fmt_ms;
use super::spec::MirrorState;

/// Longest stretch of an interval without a good sample that still counts
/// as watched.
pub(super) const MAX_GAP: Duration = Duration::from_secs(2);

/// One reading: when it was taken and what it found (`None`: no mirror;
/// `Some(ready)`), or why it could not read.
type Sample = (Instant, Result<Option<bool>, String>);

/// A running sampler; it stops when dropped.
pub(super) struct Samples {
    taken: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Samples {
    /// Calls `read` every `every` (or as fast as it answers, if slower).
    pub(super) fn start<F, Fut>(every: Duration, read: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Option<bool>>> + Send,
    {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let out = taken.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let got = read().await.map_err(|e| format!("{e:#}"));
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), got));
            }
        });
        Self { taken, task }
    }

    /// Whether the mirror was never seen in `state` between `from` and
    /// `to`: `Ok(what was seen)`, or `Err(when it was, or why the interval
    /// was not watched)`.
    pub(super) fn never(
        &self,
        state: MirrorState,
        from: Instant,
        to: Instant,
    ) -> Result<String, String> {
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        never(&taken, state, from, to)
    }
}

impl Drop for Samples {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(super) fn never(
    samples: &[Sample],
    state: MirrorState,
    from: Instant,
    to: Instant,
) -> Result<String, String> {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|(at, _)| *at >= from && *at <= to)
        .collect();
    if let Some((at, found)) = inside.iter().find_map(|(at, got)| {
        got.as_ref()
            .ok()
            .filter(|f| state.holds(**f))
            .map(|f| (at, f))
    }) {
        return Err(format!(
            "seen {} {} into the interval",
            MirrorState::describe(*found),
            fmt_ms(at.saturating_duration_since(from))
        ));
    }
    // Every stretch without a good reading, the interval's ends included.
    let good: Vec<Instant> = inside
        .iter()
        .filter(|(_, got)| got.is_ok())
        .map(|(at, _)| *at)
        .collect();
    let gap = std::iter::once(from)
        .chain(good.iter().copied())
        .zip(good.iter().copied().chain(std::iter::once(to)))
        .map(|(a, b)| b.saturating_duration_since(a))
        .max()
        .unwrap_or_default();
    if gap > MAX_GAP {
        let why = inside
            .iter()
            .find_map(|(_, got)| got.as_ref().err())
            .map(|e| format!(" (a read failed: {e})"))
            .unwrap_or_default();
        return Err(format!(
            "not watched: no reading for {} of the interval{why}",
            fmt_ms(gap)
        ));
    }
    Ok(format!(
        "{} readings over {}, none {}",
        good.len(),
        fmt_ms(to.saturating_duration_since(from)),
        format!("{state:?}").to_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn a_withdrawal_inside_the_interval_fails_and_one_outside_does_not() {
        let t0 = Instant::now();
        let mut samples: Vec<Sample> = (0..=40).map(|i| (at(t0, i * 50), Ok(Some(true)))).collect();
        // Withdrawn (present, no ready endpoint) for one reading at 1 s.
        samples[20].1 = Ok(Some(false));
        let got = never(&samples, MirrorState::Withdrawn, at(t0, 0), at(t0, 2000));
        assert_eq!(
            got,
            Err("seen present without ready endpoints 1.00 s into the interval".into())
        );
        // The same run watched only after the withdrawal passes.
        let got = never(&samples, MirrorState::Withdrawn, at(t0, 1010), at(t0, 2000));
        assert!(got.is_ok(), "{got:?}");
        // Absent counts as withdrawn too.
        samples[30].1 = Ok(None);
        let got = never(&samples, MirrorState::Withdrawn, at(t0, 1010), at(t0, 2000));
        assert!(got.is_err_and(|e| e.starts_with("seen absent")));
    }

    #[test]
    fn an_interval_without_readings_is_not_taken_as_watched() {
        let t0 = Instant::now();
        let samples: Vec<Sample> = vec![
            (at(t0, 0), Ok(Some(true))),
            (at(t0, 500), Err("store unreadable".into())),
            (at(t0, 3000), Ok(Some(true))),
        ];
        let got = never(&samples, MirrorState::Withdrawn, at(t0, 0), at(t0, 3000));
        assert_eq!(
            got,
            Err("not watched: no reading for 3.00 s of the interval (a read failed: store unreadable)".into())
        );
        let got = never(&[], MirrorState::Withdrawn, at(t0, 0), at(t0, 2500));
        assert!(got.is_err_and(|e| e.starts_with("not watched")));
    }
}
