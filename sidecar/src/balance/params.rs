//! The FailoverPolicy's balancing knobs as discovery sends them, with the
//! defaults filled in.

use std::time::Duration;

use meshfed_api::discovery::Policy;

/// The policy's knobs, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Params {
    pub(crate) consecutive_failures: u32,
    pub(crate) ejection: Duration,
    pub(crate) max_ejected_percent: u32,
    pub(crate) failback_hold: Duration,
    pub(crate) retry_percent: u32,
    pub(crate) min_retries_per_second: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
            failback_hold: Duration::from_secs(10),
            retry_percent: 20,
            min_retries_per_second: 10,
        }
    }
}

impl Params {
    pub(super) fn from_wire(p: Option<&Policy>) -> Self {
        let d = Self::default();
        let Some(p) = p else { return d };
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        Self {
            consecutive_failures: or(p.consecutive_failures, d.consecutive_failures),
            ejection: Duration::from_millis(u64::from(or(
                p.ejection_time_ms,
                d.ejection.as_millis() as u32,
            ))),
            max_ejected_percent: p.max_ejected_percent.min(100),
            failback_hold: Duration::from_millis(u64::from(p.failback_hold_ms)),
            retry_percent: p.retry_budget_percent,
            min_retries_per_second: p.min_retries_per_second,
        }
    }
}
