//! The demo's summary: per step and in total, the calls made, the calls
//! failed, which cluster served what share, what was measured, and whether
//! the step behaved — as a table for people and as JSON for machines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::traffic::Call;
use crate::output::table;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Every step behaved.
    pub ok: bool,
    pub requests: usize,
    pub failures: usize,
    pub served_by: BTreeMap<String, Share>,
    /// Measured times in milliseconds, by name (failover, withdrawal,
    /// failback, propagation, rejoin, startup).
    pub timings_ms: BTreeMap<String, u64>,
    pub steps: Vec<StepReport>,
    /// The federation's directory (`topology.json`), left running with --keep.
    pub dir: String,
    pub kept: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    pub requests: usize,
    /// Of all successful calls, 0 to 1.
    pub share: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub name: String,
    pub ok: bool,
    pub requests: usize,
    pub failures: usize,
    pub served_by: BTreeMap<String, Share>,
    /// What was measured, in plain words.
    pub measured: Vec<String>,
    /// What did not behave.
    pub problems: Vec<String>,
    /// Failed calls' reasons (at most a few), for the curious.
    pub errors: Vec<String>,
}

/// Who served the successful calls among `calls`.
pub fn shares<'a>(calls: impl IntoIterator<Item = &'a Call>) -> BTreeMap<String, Share> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for c in calls {
        if let Some(by) = c.served_by() {
            *counts.entry(by.to_owned()).or_default() += 1;
        }
    }
    let total: usize = counts.values().sum();
    counts
        .into_iter()
        .map(|(k, n)| {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            (k, Share { requests: n, share })
        })
        .collect()
}

/// A step as it is told: its calls are those sent between `from` and `to`.
#[derive(Debug)]
pub struct Step {
    pub name: String,
    pub from: Instant,
    pub to: Option<Instant>,
    pub measured: Vec<String>,
    pub problems: Vec<String>,
}

impl Step {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            from: Instant::now(),
            to: None,
            measured: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Whether `call` was sent during this step.
    pub fn contains(&self, call: &Call) -> bool {
        call.sent >= self.from && self.to.is_none_or(|to| call.sent < to)
    }

    pub fn report(&self, calls: &[Call]) -> StepReport {
        let mine: Vec<&Call> = calls.iter().filter(|c| self.contains(c)).collect();
        let errors: Vec<String> = mine
            .iter()
            .filter_map(|c| c.result.as_ref().err().cloned())
            .collect();
        let mut problems = self.problems.clone();
        if !errors.is_empty() {
            problems.push(format!("{} call(s) failed", errors.len()));
        }
        StepReport {
            name: self.name.clone(),
            ok: problems.is_empty(),
            requests: mine.len(),
            failures: errors.len(),
            served_by: shares(mine.iter().copied()),
            measured: self.measured.clone(),
            problems,
            errors: errors.into_iter().take(5).collect(),
        }
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `east 80% · central 20%`
pub fn share_text(s: &BTreeMap<String, Share>) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.iter()
        .map(|(k, v)| format!("{k} {:.0}%", v.share * 100.0))
        .collect::<Vec<_>>()
        .join(" · ")
}

pub fn render(s: &Summary) -> String {
    let rows: Vec<Vec<String>> = s
        .steps
        .iter()
        .map(|st| {
            vec![
                if st.ok { "✔" } else { "✖" }.into(),
                st.name.clone(),
                st.requests.to_string(),
                st.failures.to_string(),
                share_text(&st.served_by),
                st.measured.join("; "),
            ]
        })
        .collect();
    let mut out = table(
        &["", "STEP", "CALLS", "FAILED", "SERVED BY", "MEASURED"],
        &rows,
    );
    out.push_str(&format!(
        "\n{} calls, {} failed; served by {}\n",
        s.requests,
        s.failures,
        share_text(&s.served_by)
    ));
    for st in s.steps.iter().filter(|st| !st.ok) {
        out.push_str(&format!("✖ {}: {}\n", st.name, st.problems.join("; ")));
        for e in &st.errors {
            out.push_str(&format!("    {e}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev::Served;

    fn call(at: Instant, by: Option<&str>) -> Call {
        Call {
            sent: at,
            done: at,
            result: by
                .map(|c| Served {
                    service: "api".into(),
                    cluster: c.into(),
                    zone: "z".into(),
                    pod: "p".into(),
                    caller: None,
                })
                .ok_or_else(|| "HTTP 503".to_owned()),
        }
    }

    #[test]
    fn a_step_counts_only_its_calls_and_fails_on_any_failed_call() {
        let t0 = Instant::now();
        let mut step = Step::new("s");
        step.from = t0 + Duration::from_millis(10);
        step.to = Some(t0 + Duration::from_millis(20));
        let calls = vec![
            call(t0, None),
            call(t0 + Duration::from_millis(10), Some("east")),
            call(t0 + Duration::from_millis(15), Some("east")),
            call(t0 + Duration::from_millis(16), Some("west")),
            call(t0 + Duration::from_millis(20), None),
        ];
        let r = step.report(&calls);
        assert_eq!((r.requests, r.failures, r.ok), (3, 0, true));
        assert_eq!(share_text(&r.served_by), "east 67% · west 33%");
        step.to = None;
        let r = step.report(&calls);
        assert_eq!((r.requests, r.failures, r.ok), (4, 1, false));
        assert_eq!(r.errors, vec!["HTTP 503".to_owned()]);
    }
}
