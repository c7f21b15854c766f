//! The assertions a timeline makes about what clients saw and what the
//! clusters say: success rates, served-by shares, no request to a withdrawn
//! cluster, metric values and growth, mirrors left alone. Each failure says
//! which assertion, what was expected and what was observed.

use std::collections::BTreeMap;

use super::describe::fmt_ms;
use super::probe;
use super::run::Runner;
use super::spec::Assertion;
use super::traffic::{self, Traffic};

impl Runner<'_> {
    /// `Ok(Ok(()))` when `a` holds, `Ok(Err(why not))` when it does not.
    pub(super) async fn check(&self, a: &Assertion) -> anyhow::Result<Result<(), String>> {
        let window = |tr: &Traffic, since: &Option<String>| match since
            .as_ref()
            .and_then(|n| self.marks.get(n))
        {
            Some(m) => tr.since(m.end),
            None => tr.outcomes(),
        };
        Ok(match a {
            Assertion::SuccessRate {
                traffic,
                min,
                since,
            } => {
                let calls = window(&self.traffic[traffic].1, since);
                let failed: Vec<&traffic::Outcome> =
                    calls.iter().filter(|o| o.result.is_err()).collect();
                if calls.is_empty() {
                    Err(format!(
                        "success-rate of {traffic}: expected ≥ {min}%, observed no calls"
                    ))
                } else {
                    let rate = 100.0 * (calls.len() - failed.len()) as f64 / calls.len() as f64;
                    if rate + 1e-9 >= *min {
                        Ok(())
                    } else {
                        Err(format!(
                            "success-rate of {traffic}: expected ≥ {min}%, observed {rate:.2}% \
                             ({} of {} calls failed; first: {})",
                            failed.len(),
                            calls.len(),
                            failed[0].result.as_ref().err().map_or("", String::as_str)
                        ))
                    }
                }
            }
            Assertion::ServedBy {
                traffic,
                cluster,
                service,
                min,
                max,
                since,
            } => {
                let calls = window(&self.traffic[traffic].1, since);
                let ok: Vec<&traffic::Outcome> =
                    calls.iter().filter(|o| o.result.is_ok()).collect();
                let by = ok
                    .iter()
                    .filter(|o| {
                        cluster
                            .as_ref()
                            .is_none_or(|c| o.served_by() == Some(c.as_str()))
                            && service
                                .as_ref()
                                .is_none_or(|s| o.service.as_ref() == Some(s))
                    })
                    .count();
                let who = match (cluster, service) {
                    (Some(c), Some(s)) => format!("{s} in {c}"),
                    (Some(c), None) => c.clone(),
                    (None, s) => s.clone().unwrap_or_default(),
                };
                let share = if ok.is_empty() {
                    0.0
                } else {
                    100.0 * by as f64 / ok.len() as f64
                };
                let low = min.is_some_and(|m| share + 1e-9 < m);
                let high = max.is_some_and(|m| share - 1e-9 > m);
                if ok.is_empty() || low || high {
                    let expected = bounds(*min, *max, |p| format!("{p}%"));
                    Err(format!(
                        "served-by {who} of {traffic}: expected {expected}, observed {share:.2}% \
                         of {} answered calls (by cluster: {})",
                        ok.len(),
                        shares(&calls)
                    ))
                } else {
                    Ok(())
                }
            }
            Assertion::Latency {
                traffic,
                percentile,
                min,
                max,
                since,
            } => {
                let calls = window(&self.traffic[traffic].1, since);
                let mut latencies: Vec<std::time::Duration> = calls
                    .iter()
                    .filter(|o| o.result.is_ok())
                    .map(|o| o.done - o.sent)
                    .collect();
                latencies.sort();
                let observed = traffic::percentile(&latencies, *percentile);
                let low = min.is_some_and(|m| observed.is_some_and(|o| o < m));
                let high = max.is_some_and(|m| observed.is_some_and(|o| o > m));
                if observed.is_none() || low || high {
                    let expected = bounds(*min, *max, fmt_ms);
                    let observed = observed.map_or("no answered call".into(), |o| {
                        format!("{} over {} answered calls", fmt_ms(o), latencies.len())
                    });
                    Err(format!(
                        "latency p{percentile} of {traffic}: expected {expected}, observed {observed}"
                    ))
                } else {
                    Ok(())
                }
            }
            Assertion::NoRequestTo {
                traffic,
                cluster,
                after,
            } => {
                let (def, tr) = &self.traffic[traffic];
                let mark = &self.marks[after];
                let served = tr
                    .since(mark.end)
                    .iter()
                    .filter(|o| o.served_by() == Some(cluster.as_str()))
                    .count();
                let sidecar = (def.from.clone(), format!("{}-sidecar", def.caller));
                let labels = BTreeMap::from([
                    ("direction".to_owned(), "outbound".to_owned()),
                    ("cluster".to_owned(), cluster.clone()),
                ]);
                const REQUESTS: &str = "meshfed_sidecar_requests_total";
                let before = mark
                    .metrics
                    .get(&sidecar)
                    .map(|m| probe::sum(m, REQUESTS, &labels));
                let now = probe::sum(
                    &self.env.metrics(&sidecar.0, &sidecar.1).await?,
                    REQUESTS,
                    &labels,
                );
                let sent = before.map(|b| now - b);
                if served > 0 || sent.is_some_and(|n| n > 0.0) {
                    Err(format!(
                        "no-request-to {cluster} after {after}: expected 0, observed {served} calls \
                         served by {cluster} and {} requests to it in {}'s metrics",
                        sent.unwrap_or_default(),
                        sidecar.1
                    ))
                } else if before.is_none() {
                    Err(format!(
                        "no-request-to {cluster}: {}'s metrics could not be read at {after}",
                        sidecar.1
                    ))
                } else {
                    Ok(())
                }
            }
            Assertion::Metric {
                cluster,
                process,
                name,
                labels,
                op,
                value,
                since,
                per_call,
            } => {
                let now = probe::sum(&self.env.metrics(cluster, process).await?, name, labels);
                let observed = match since {
                    Some(s) => match self.marks[s]
                        .metrics
                        .get(&(cluster.clone(), process.clone()))
                    {
                        Some(m) => now - probe::sum(m, name, labels),
                        None => {
                            return Ok(Err(format!(
                                "{process}'s metrics could not be read at {s}"
                            )));
                        }
                    },
                    None => now,
                };
                let observed = match per_call {
                    Some(t) => {
                        let calls = window(&self.traffic[t].1, since).len();
                        if calls == 0 {
                            return Ok(Err(format!("{name} per call of {t}: {t} sent no call")));
                        }
                        observed / calls as f64
                    }
                    None => observed,
                };
                let holds = match op.as_str() {
                    ">" => observed > *value,
                    ">=" => observed >= *value,
                    "==" => (observed - value).abs() < 1e-9,
                    "<=" => observed <= *value,
                    _ => observed < *value,
                };
                let what = match (since, per_call) {
                    (_, Some(t)) => format!("per call of {t}, "),
                    (Some(_), None) => "growth of ".to_owned(),
                    (None, None) => String::new(),
                };
                if holds {
                    Ok(())
                } else {
                    Err(format!(
                        "metric {what}{name}{} of {process} in {cluster}: expected {op} {value}, observed {observed}",
                        if labels.is_empty() {
                            String::new()
                        } else {
                            format!("{labels:?}")
                        }
                    ))
                }
            }
            Assertion::MirrorsUnchanged { cluster, since } => {
                let before = self.marks[since]
                    .mirrors
                    .get(cluster)
                    .cloned()
                    .unwrap_or_default();
                let now = self.env.mirrors(cluster).await?;
                let mut changes = Vec::new();
                for (name, (content, version)) in &now {
                    match before.get(name) {
                        None => changes.push(format!("{name} added")),
                        Some((c, _)) if c != content => changes.push(format!("{name} changed")),
                        Some((_, v)) if v != version => changes.push(format!("{name} rewritten")),
                        _ => {}
                    }
                }
                for name in before.keys().filter(|n| !now.contains_key(*n)) {
                    changes.push(format!("{name} deleted"));
                }
                if before.is_empty() {
                    Err(format!(
                        "mirrors-unchanged in {cluster}: there were no mirrors at {since}"
                    ))
                } else if changes.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "mirrors-unchanged in {cluster} since {since}: expected no change, observed {}",
                        changes.join(", ")
                    ))
                }
            }
            Assertion::MirrorNever {
                cluster,
                service,
                origin,
                state,
                since,
            } => {
                let key = (cluster.clone(), service.clone(), origin.clone());
                let samples = self
                    .samples
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("{cluster}'s mirror was not sampled"))?;
                let from = self.marks[since].end;
                samples
                    .never(*state, from, std::time::Instant::now())
                    .map(|_| ())
                    .map_err(|why| {
                        format!(
                            "mirror-never in {cluster}: expected {service}-{origin} never {} \
                             since {since}, observed: {why}",
                            format!("{state:?}").to_lowercase()
                        )
                    })
            }
        })
    }
}

/// `a to b`, `≥ a` or `≤ b`, each shown by `show`.
fn bounds<T>(min: Option<T>, max: Option<T>, show: impl Fn(T) -> String) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{} to {}", show(a), show(b)),
        (Some(a), None) => format!("≥ {}", show(a)),
        (None, Some(b)) => format!("≤ {}", show(b)),
        (None, None) => String::new(),
    }
}

/// `east 80.0%, west 20.0%, failed 3`.
pub(super) fn shares(calls: &[traffic::Outcome]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failed = 0;
    for c in calls {
        match &c.result {
            Ok(_) => *by.entry(c.served_by().unwrap_or("(tcp)")).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    let mut parts: Vec<String> = by.iter().map(|(c, n)| format!("{c} {n}")).collect();
    if failed > 0 {
        parts.push(format!("failed {failed}"));
    }
    if parts.is_empty() {
        "nobody (no calls yet)".into()
    } else {
        parts.join(", ")
    }
}
