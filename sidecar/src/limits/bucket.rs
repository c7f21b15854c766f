//! A token bucket: `rate` tokens a second, holding at most `burst`, full
//! when made. Time is tokio's, so tests can pause it.

use std::time::Duration;

use tokio::time::Instant;

/// A bucket's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Tokens a second (at least 1).
    pub(crate) per_second: u32,
    /// Most tokens held (at least 1).
    pub(crate) burst: u32,
}

impl Rate {
    /// `None` for numbers the controller would never send (zero).
    pub(crate) fn new(per_second: u32, burst: u32) -> Option<Self> {
        (per_second > 0 && burst > 0).then_some(Self { per_second, burst })
    }
}

/// Billionths of a token: a token accrues every `1e9 / rate` ns, and in
/// whole numbers the count never drifts.
const ONE: u64 = 1_000_000_000;

/// The tokens of one bucket as of `at`, in billionths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: u64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: u64::from(rate.burst) * ONE,
            at: now,
        }
    }

    /// Adds what accrued since it was last looked at.
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_nanos();
        let accrued = elapsed.saturating_mul(u128::from(rate.per_second));
        let cap = u64::from(rate.burst) * ONE;
        self.tokens = u128::from(self.tokens)
            .saturating_add(accrued)
            .min(u128::from(cap))
            .try_into()
            .unwrap_or(cap);
        self.at = now;
    }

    /// Whether a token is there now; if not, how long until one is.
    pub(crate) fn ready(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        match ONE.checked_sub(self.tokens) {
            None | Some(0) => Ok(()),
            Some(missing) => Err(Duration::from_nanos(
                missing.div_ceil(u64::from(rate.per_second)),
            )),
        }
    }

    /// Takes the token [`Bucket::ready`] found.
    pub(crate) fn take(&mut self) {
        self.tokens = self.tokens.saturating_sub(ONE);
    }

    /// Full as of `now`: the same as a fresh bucket, so it can be forgotten.
    pub(crate) fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= u64::from(rate.burst) * ONE
    }
}
