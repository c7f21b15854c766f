//! What a scenario run produced, and its three renderings: a table for
//! people, JSON (timings, success rates, shares) and JUnit XML for CI.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::spec::{Scenario, Step};
use super::traffic::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passed,
    Failed,
    /// A step could not run on this machine (e.g. no netem); said loudly.
    Skipped,
    /// The run itself broke (the federation did not come up, teardown failed).
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Passed,
    Failed,
    Skipped,
    NotRun,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    pub name: String,
    pub file: String,
    pub description: String,
    pub status: Status,
    pub duration_ms: f64,
    /// How long the federation took to come up.
    pub startup_ms: Option<f64>,
    /// Why it did not pass.
    pub message: Option<String>,
    /// Budgeted waits and rotations, by step name: milliseconds.
    pub measurements: BTreeMap<String, f64>,
    pub traffic: Vec<TrafficSummary>,
    pub steps: Vec<StepResult>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub number: usize,
    pub name: Option<String>,
    pub action: String,
    pub status: StepStatus,
    /// When it started, from the first step.
    pub at_ms: f64,
    pub duration_ms: f64,
    pub measured_ms: Option<f64>,
    pub budget_ms: Option<f64>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSummary {
    pub name: String,
    pub from: String,
    pub caller: String,
    pub service: String,
    pub calls: usize,
    pub failures: usize,
    /// Percent.
    pub success_rate: f64,
    /// Percent of answered calls, by serving cluster (HTTP only).
    pub served_by: BTreeMap<String, f64>,
    /// Latency of answered calls: median and 99th percentile.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub first_failure: Option<String>,
}

impl TrafficSummary {
    pub fn of(def: &super::spec::Traffic, calls: &[Outcome]) -> Self {
        let failures = calls.iter().filter(|o| o.result.is_err()).count();
        let answered = calls.len() - failures;
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for c in calls {
            if let Some(cluster) = c.served_by() {
                *by.entry(cluster.to_owned()).or_default() += 1;
            }
        }
        let pct = |n: usize, of: usize| {
            if of == 0 {
                0.0
            } else {
                (10_000.0 * n as f64 / of as f64).round() / 100.0
            }
        };
        let mut latencies: Vec<f64> = calls
            .iter()
            .filter(|o| o.result.is_ok())
            .map(|o| super::describe::ms(o.done - o.sent))
            .collect();
        latencies.sort_by(f64::total_cmp);
        Self {
            p50_ms: super::traffic::percentile(&latencies, 50.0),
            p99_ms: super::traffic::percentile(&latencies, 99.0),
            name: def.name.clone(),
            from: def.from.clone(),
            caller: def.caller.clone(),
            service: def.service.clone(),
            calls: calls.len(),
            failures,
            success_rate: pct(answered, calls.len()),
            served_by: by.into_iter().map(|(c, n)| (c, pct(n, answered))).collect(),
            first_failure: calls.iter().find_map(|o| o.result.as_ref().err().cloned()),
        }
    }
}

impl StepResult {
    pub fn not_run(st: &Step, action: String, budget: Option<std::time::Duration>) -> Self {
        Self {
            number: st.number,
            name: st.name.clone(),
            action,
            status: StepStatus::NotRun,
            at_ms: 0.0,
            duration_ms: 0.0,
            measured_ms: None,
            budget_ms: budget.map(super::describe::ms),
            message: None,
        }
    }
}

impl ScenarioResult {
    pub fn new(s: &Scenario) -> Self {
        Self {
            name: s.name.clone(),
            file: s.file.display().to_string(),
            description: s.description.clone(),
            status: Status::Passed,
            duration_ms: 0.0,
            startup_ms: None,
            message: None,
            measurements: BTreeMap::new(),
            traffic: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The run broke; the first such message is kept first.
    pub fn error(&mut self, message: String) {
        if self.status != Status::Error {
            self.status = Status::Error;
        }
        self.message = Some(match self.message.take() {
            Some(m) => format!("{m}; {message}"),
            None => message,
        });
    }

    /// The status the steps give.
    pub fn settle_status(&mut self) {
        if let Some(bad) = self
            .steps
            .iter()
            .find(|s| matches!(s.status, StepStatus::Failed | StepStatus::Skipped))
        {
            self.status = if bad.status == StepStatus::Failed {
                Status::Failed
            } else {
                Status::Skipped
            };
            self.message = Some(format!(
                "step {}{}: {}",
                bad.number,
                bad.name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                bad.message.clone().unwrap_or_default()
            ));
        }
    }

    pub fn done(mut self, began: Instant) -> Self {
        self.duration_ms = super::describe::ms(began.elapsed());
        self
    }
}

/// All results of one `scenario run`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub errors: usize,
    pub scenarios: Vec<ScenarioResult>,
}

impl Results {
    pub fn of(scenarios: Vec<ScenarioResult>) -> Self {
        let count = |s: Status| scenarios.iter().filter(|r| r.status == s).count();
        Self {
            passed: count(Status::Passed),
            failed: count(Status::Failed),
            skipped: count(Status::Skipped),
            errors: count(Status::Error),
            scenarios,
        }
    }

    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors == 0
    }
}

/// The table people read.
pub fn table(r: &Results) -> String {
    let rows: Vec<Vec<String>> = r
        .scenarios
        .iter()
        .map(|s| {
            let calls: usize = s.traffic.iter().map(|t| t.calls).sum();
            let failed: usize = s.traffic.iter().map(|t| t.failures).sum();
            let measured: Vec<String> = s
                .measurements
                .iter()
                .map(|(k, v)| format!("{k} {}", human_ms(*v)))
                .collect();
            vec![
                s.name.clone(),
                format!("{:?}", s.status).to_uppercase(),
                human_ms(s.duration_ms),
                calls.to_string(),
                failed.to_string(),
                measured.join(", "),
            ]
        })
        .collect();
    let mut out = crate::output::table(
        &["SCENARIO", "RESULT", "TIME", "CALLS", "FAILED", "MEASURED"],
        &rows,
    );
    for s in r.scenarios.iter().filter(|s| s.status != Status::Passed) {
        out.push_str(&format!(
            "\n{} {}: {}\n",
            format!("{:?}", s.status).to_uppercase(),
            s.name,
            s.message.as_deref().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "\n{} passed, {} failed, {} skipped, {} errors\n",
        r.passed, r.failed, r.skipped, r.errors
    ));
    out
}

fn human_ms(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.0}ms")
    } else {
        format!("{:.2}s", v / 1000.0)
    }
}

/// JUnit XML: a test suite per scenario, a test case per step.
pub fn junit(r: &Results) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let tests: usize = r.scenarios.iter().map(|s| s.steps.len().max(1)).sum();
    let failures: usize = r
        .scenarios
        .iter()
        .map(|s| {
            s.steps
                .iter()
                .filter(|st| st.status == StepStatus::Failed)
                .count()
        })
        .sum();
    let time: f64 = r.scenarios.iter().map(|s| s.duration_ms).sum::<f64>() / 1000.0;
    out.push_str(&format!(
        "<testsuites name=\"meshfed-scenarios\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{}\" time=\"{time:.3}\">\n",
        r.errors
    ));
    for s in &r.scenarios {
        let failed = s
            .steps
            .iter()
            .filter(|st| st.status == StepStatus::Failed)
            .count();
        let skipped = s
            .steps
            .iter()
            .filter(|st| matches!(st.status, StepStatus::Skipped | StepStatus::NotRun))
            .count();
        let error = usize::from(s.status == Status::Error);
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failed}\" errors=\"{error}\" skipped=\"{skipped}\" time=\"{:.3}\">\n",
            xml(&s.name),
            s.steps.len().max(1),
            s.duration_ms / 1000.0
        ));
        if s.status == Status::Error {
            out.push_str(&format!(
                "    <testcase classname=\"scenario.{0}\" name=\"run\"><error message=\"{1}\">{1}</error></testcase>\n",
                xml(&s.name),
                xml(s.message.as_deref().unwrap_or(""))
            ));
        }
        for st in &s.steps {
            let name = format!(
                "{:02} {}{}",
                st.number,
                st.action,
                st.name
                    .as_ref()
                    .map(|n| format!(" [{n}]"))
                    .unwrap_or_default()
            );
            out.push_str(&format!(
                "    <testcase classname=\"scenario.{}\" name=\"{}\" time=\"{:.3}\"",
                xml(&s.name),
                xml(&name),
                st.duration_ms / 1000.0
            ));
            let msg = xml(st.message.as_deref().unwrap_or(""));
            match st.status {
                StepStatus::Passed => out.push_str("/>\n"),
                StepStatus::Failed => out.push_str(&format!(
                    "><failure message=\"{msg}\">{msg}</failure></testcase>\n"
                )),
                StepStatus::Skipped => {
                    out.push_str(&format!("><skipped message=\"{msg}\"/></testcase>\n"))
                }
                StepStatus::NotRun => out.push_str(
                    "><skipped message=\"not run: an earlier step did not pass\"/></testcase>\n",
                ),
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&apos;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}
