//! How steps and durations read in the report and on the terminal.

use std::time::Duration;

use super::spec::*;

pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(super) fn fmt_ms(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// One line for a step, as people read it.
pub fn describe(a: &Action) -> String {
    let target = |t: &Target| {
        format!(
            "{}{} of {}",
            t.replica
                .as_ref()
                .map(|r| format!("{r} of "))
                .unwrap_or_default(),
            t.pod
                .as_ref()
                .map(|p| format!("pod {p}"))
                .or(t.process.clone())
                .unwrap_or_default(),
            t.cluster
        )
    };
    match a {
        Action::Traffic(t) => format!(
            "traffic {}: {}/s from {}'s {} to {}",
            t.name, t.rate, t.from, t.caller, t.service
        ),
        Action::StopTraffic(n) => format!("stop traffic {n}"),
        Action::Sleep(d) => format!("sleep {}", fmt_ms(*d)),
        Action::Wait(c) => match c {
            Condition::ServedBy {
                traffic,
                cluster,
                calls,
            } => {
                format!("wait until {traffic} is served by {cluster} ({calls} calls in a row)")
            }
            Condition::Mirror {
                cluster,
                service,
                origin,
                state,
            } => format!("wait until {cluster}'s mirror of {service} from {origin} is {state:?}")
                .to_lowercase(),
            Condition::Ready { cluster, process } => {
                format!("wait until {process} of {cluster} is ready")
            }
            Condition::Leader { cluster, not } => match not {
                Some(step) => format!(
                    "wait until {cluster}'s controller has a leader other than the one at {step}"
                ),
                None => format!("wait until {cluster}'s controller has a leader"),
            },
        },
        Action::Kill(t) => format!("kill {}", target(t)),
        Action::Pause(t) => format!("pause (SIGSTOP) {}", target(t)),
        Action::Resume(t) => format!("resume (SIGCONT) {}", target(t)),
        Action::Start(t) => format!("start {}", target(t)),
        Action::Restart(t) => format!("restart {}", target(t)),
        Action::Rollout(t) => format!("rollout restart {}, one replica at a time", target(t)),
        Action::Partition(c) => format!("partition {} from the WAN", c.cluster),
        Action::Heal(c) => format!("heal {}'s partition", c.cluster),
        Action::Degrade(d) => format!("degrade {}'s WAN link", d.cluster),
        Action::Undegrade(c) => format!("restore {}'s WAN link", c.cluster),
        Action::Rotate(r) => match &r.cluster {
            Some(c) => format!("rotate {c}'s intermediate CA"),
            None => "rotate the root CA".into(),
        },
        Action::Export(r) => format!("export {} in {}", r.service, r.cluster),
        Action::Unexport(r) => format!("unexport {} in {}", r.service, r.cluster),
        Action::Link(l) => format!("link {} to {}", l.cluster, l.peer),
        Action::Unlink(l) => format!("unlink {} from {}", l.cluster, l.peer),
        Action::Route(r) => format!(
            "apply HTTPRoute {} in {}",
            r.route.metadata.name.as_deref().unwrap_or_default(),
            r.cluster
        ),
        Action::Assert(a) => match a {
            Assertion::SuccessRate { traffic, min, .. } => {
                format!("assert success-rate of {traffic} ≥ {min}%")
            }
            Assertion::ServedBy {
                traffic,
                cluster,
                service,
                ..
            } => {
                let who = [service.as_deref(), cluster.as_deref()];
                let who: Vec<&str> = who.into_iter().flatten().collect();
                format!("assert share of {traffic} served by {}", who.join(" in "))
            }
            Assertion::Latency {
                traffic,
                percentile,
                ..
            } => format!("assert p{percentile} latency of {traffic}"),
            Assertion::NoRequestTo {
                traffic,
                cluster,
                after,
            } => {
                format!("assert no request of {traffic} to {cluster} after {after}")
            }
            Assertion::Metric {
                cluster,
                process,
                name,
                op,
                value,
                ..
            } => {
                format!("assert {name} of {process} in {cluster} {op} {value}")
            }
            Assertion::MirrorsUnchanged { cluster, since } => {
                format!("assert {cluster}'s mirrors unchanged since {since}")
            }
            Assertion::MirrorNever {
                cluster,
                service,
                origin,
                state,
                since,
            } => format!(
                "assert {cluster}'s mirror of {service} from {origin} never {} since {since}",
                format!("{state:?}").to_lowercase()
            ),
        },
        Action::Probe(p) => format!(
            "probe {} from {}: expect {:?}",
            p.to.service
                .clone()
                .or(p.to.process.clone())
                .unwrap_or_default(),
            p.from,
            p.expect
        )
        .to_lowercase(),
    }
}
