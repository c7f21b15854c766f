//! The scenario checked as a whole: every cluster, process, service,
//! traffic and earlier step a step names exists by the time it runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use super::{
    Action, Assertion, CaKind, Condition, OPS, Protocol, Replica, SERVICES, Scenario, Target,
};

/// Cross-references: every name a step uses exists, and exists by then.
pub(super) fn check_steps(s: &Scenario) -> anyhow::Result<()> {
    let spec = crate::scenario::local::plan_spec(s, Path::new("/nonexistent"), None);
    let topology = crate::dev::plan(&spec);
    let cluster = |at: &str, c: &str| -> anyhow::Result<&crate::dev::ClusterTopology> {
        topology.cluster(c).map_err(|_| {
            let names: Vec<&str> = s.clusters.iter().map(|c| c.name.as_str()).collect();
            anyhow::anyhow!("{at}: no cluster {c:?} (clusters: {})", names.join(", "))
        })
    };
    let process = |at: &str, c: &str, p: &str| -> anyhow::Result<()> {
        let ct = cluster(at, c)?;
        if ct.group(p).is_empty() {
            let mut names: Vec<&str> = ct.processes.iter().map(|p| p.name.as_str()).collect();
            names.extend(ct.processes.iter().filter_map(|p| p.replica_of.as_deref()));
            names.sort();
            names.dedup();
            bail!(
                "{at}: cluster {c} has no process {p:?} (processes: {})",
                names.join(", ")
            );
        }
        Ok(())
    };
    let service = |at: &str, svc: &str| -> anyhow::Result<()> {
        if SERVICES.contains(&svc) {
            Ok(())
        } else {
            bail!("{at}: no service {svc:?} (services: api, echo)")
        }
    };
    // A replica of a replicated process, and one that exists.
    let replica = |at: &str, t: &Target, r: &Replica| -> anyhow::Result<()> {
        let ct = cluster(at, &t.cluster)?;
        let Some(p) = &t.process else {
            bail!("{at}: replica: picks a replica of a process, not of a pod");
        };
        if !ct.replicated(p) {
            let replicated: std::collections::BTreeSet<&str> = ct
                .processes
                .iter()
                .filter_map(|p| p.replica_of.as_deref())
                .collect();
            bail!(
                "{at}: replica: {p} of cluster {} runs as one process, not as replicas \
                 (replicated: {})",
                t.cluster,
                replicated.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        let n = ct.group(p).len();
        if let Replica::Index(i) = r
            && *i >= n
        {
            bail!(
                "{at}: replica: {i}: {p} of cluster {} has {n} replicas (0 to {})",
                t.cluster,
                n - 1
            );
        }
        Ok(())
    };
    let mut names = BTreeSet::new();
    let mut traffic = BTreeSet::new();
    for st in &s.steps {
        let at = format!("step {}", st.number);
        let earlier = |n: &Option<String>, names: &BTreeSet<String>| -> anyhow::Result<()> {
            match n {
                Some(n) if !names.contains(n) => {
                    bail!("{at}: no earlier step named {n:?}")
                }
                _ => Ok(()),
            }
        };
        earlier(&st.since, &names)?;
        let seen = |t: &str| -> anyhow::Result<()> {
            if traffic.contains(t) {
                Ok(())
            } else {
                bail!("{at}: no traffic named {t:?} was started before")
            }
        };
        match &st.action {
            Action::Traffic(t) => {
                let ct = cluster(&at, &t.from)?;
                service(&at, &t.service)?;
                if t.rate == 0 || t.rate > 2000 {
                    bail!("{at}: rate: 1 to 2000 requests per second");
                }
                let sidecar = format!("{}-sidecar", t.caller);
                if ct.process(&sidecar).is_err() {
                    bail!(
                        "{at}: cluster {} has no client pod {:?} (declare it under callers)",
                        t.from,
                        t.caller
                    );
                }
                if t.service == "echo" && t.protocol == Some(Protocol::Http) {
                    bail!("{at}: echo is a TCP service: protocol tcp");
                }
                if !traffic.insert(t.name.clone()) {
                    bail!("{at}: a traffic named {:?} was started before", t.name);
                }
            }
            Action::StopTraffic(t) => seen(t)?,
            Action::Sleep(_) => {}
            Action::Wait(c) => match c {
                Condition::ServedBy {
                    traffic: t,
                    cluster: c,
                    calls,
                } => {
                    seen(t)?;
                    cluster(&at, c)?;
                    if *calls == 0 {
                        bail!("{at}: calls: at least 1");
                    }
                }
                Condition::Mirror {
                    cluster: c,
                    service: svc,
                    origin,
                    ..
                } => {
                    cluster(&at, c)?;
                    cluster(&at, origin)?;
                    service(&at, svc)?;
                }
                Condition::Ready {
                    cluster: c,
                    process: p,
                } => process(&at, c, p)?,
                Condition::Leader { cluster: c, not } => {
                    cluster(&at, c)?;
                    earlier(not, &names)?;
                }
            },
            Action::Kill(t)
            | Action::Pause(t)
            | Action::Resume(t)
            | Action::Start(t)
            | Action::Restart(t) => {
                match (&t.process, &t.pod) {
                    (Some(p), None) => process(&at, &t.cluster, p)?,
                    (None, Some(pod)) => {
                        process(&at, &t.cluster, pod)?;
                        process(&at, &t.cluster, &format!("{pod}-sidecar"))?;
                    }
                    _ => bail!("{at}: give either process or pod"),
                }
                if let Some(r) = &t.replica {
                    replica(&at, t, r)?;
                }
            }
            Action::Rollout(t) => match (&t.process, &t.pod, &t.replica) {
                (Some(p), None, None) => process(&at, &t.cluster, p)?,
                (_, _, Some(_)) => {
                    bail!("{at}: rollout restarts every replica in turn: no replica")
                }
                _ => bail!("{at}: rollout: give the process (e.g. controller)"),
            },
            Action::Partition(c) | Action::Heal(c) | Action::Undegrade(c) => {
                cluster(&at, &c.cluster)?;
            }
            Action::Degrade(d) => {
                cluster(&at, &d.cluster)?;
                if d.latency.is_none() && d.loss.is_none() {
                    bail!("{at}: give latency, loss or both");
                }
            }
            Action::Rotate(r) => match (r.ca, &r.cluster) {
                _ if s.leaf_ttl.is_none_or(|t| t > Duration::from_secs(120)) => bail!(
                    "{at}: rotate: set leafTtl (at most 120s, e.g. 15s) so every workload renews \
                     within the scenario"
                ),
                (CaKind::Intermediate, Some(c)) => {
                    cluster(&at, c)?;
                }
                (CaKind::Intermediate, None) => {
                    bail!("{at}: rotating an intermediate needs its cluster")
                }
                (CaKind::Root, None) => {}
                (CaKind::Root, Some(_)) => bail!("{at}: the root is the federation's: no cluster"),
            },
            Action::Export(r) | Action::Unexport(r) => {
                cluster(&at, &r.cluster)?;
                service(&at, &r.service)?;
            }
            Action::Route(r) => {
                cluster(&at, &r.cluster)?;
            }
            Action::Link(l) | Action::Unlink(l) => {
                cluster(&at, &l.cluster)?;
                cluster(&at, &l.peer)?;
                if l.cluster == l.peer {
                    bail!("{at}: a cluster cannot link to itself");
                }
            }
            Action::Assert(a) => match a {
                Assertion::SuccessRate {
                    traffic: t, since, ..
                } => {
                    seen(t)?;
                    earlier(since, &names)?;
                }
                Assertion::ServedBy {
                    traffic: t,
                    cluster: c,
                    service: s,
                    min,
                    max,
                    since,
                } => {
                    seen(t)?;
                    match (c, s) {
                        (None, None) => bail!("{at}: served-by: give cluster, service or both"),
                        (Some(c), _) => {
                            cluster(&at, c)?;
                        }
                        (None, Some(_)) => {}
                    }
                    earlier(since, &names)?;
                    if min.is_none() && max.is_none() {
                        bail!("{at}: served-by: give min, max or both");
                    }
                }
                Assertion::Latency {
                    traffic: t,
                    percentile,
                    min,
                    max,
                    since,
                } => {
                    seen(t)?;
                    earlier(since, &names)?;
                    if !(*percentile > 0.0 && *percentile <= 100.0) {
                        bail!("{at}: latency: percentile above 0 and at most 100 (e.g. 99)");
                    }
                    match (min, max) {
                        (None, None) => bail!("{at}: latency: give min, max or both"),
                        (Some(a), Some(b)) if a > b => {
                            bail!("{at}: latency: min is above max")
                        }
                        _ => {}
                    }
                }
                Assertion::NoRequestTo {
                    traffic: t,
                    cluster: c,
                    after,
                } => {
                    seen(t)?;
                    cluster(&at, c)?;
                    earlier(&Some(after.clone()), &names)?;
                }
                Assertion::Metric {
                    cluster: c,
                    process: p,
                    op,
                    since,
                    per_call,
                    ..
                } => {
                    process(&at, c, p)?;
                    earlier(since, &names)?;
                    if let Some(t) = per_call {
                        seen(t)?;
                    }
                    if !OPS.contains(&op.as_str()) {
                        bail!("{at}: op: one of {}", OPS.join(" "));
                    }
                }
                Assertion::MirrorsUnchanged { cluster: c, since } => {
                    cluster(&at, c)?;
                    earlier(&Some(since.clone()), &names)?;
                }
                Assertion::MirrorNever {
                    cluster: c,
                    service: svc,
                    origin,
                    since,
                    ..
                } => {
                    cluster(&at, c)?;
                    cluster(&at, origin)?;
                    service(&at, svc)?;
                    earlier(&Some(since.clone()), &names)?;
                }
            },
            Action::Probe(p) => {
                cluster(&at, &p.from)?;
                match (&p.caller, &p.to.service, &p.to.process) {
                    (Some(caller), Some(svc), None) => {
                        if let Some(c) = &p.served_by {
                            cluster(&at, c)?;
                        }
                        service(&at, svc)?;
                        process(&at, &p.from, &format!("{caller}-sidecar"))?;
                    }
                    (None, None, Some(proc_name)) => {
                        if p.served_by.is_some() || p.identity.is_some() {
                            bail!("{at}: servedBy and identity need a caller");
                        }
                        process(&at, &p.to.cluster, proc_name)?;
                        if let Some(l) = &p.to.listener {
                            let ct = cluster(&at, &p.to.cluster)?;
                            // Replicas share their listeners: the first says.
                            let pr = ct.group(proc_name)[0];
                            if !pr.listen.contains_key(l) {
                                let ls: Vec<&str> = pr.listen.keys().map(String::as_str).collect();
                                bail!(
                                    "{at}: {proc_name} has no listener {l:?} ({})",
                                    ls.join(", ")
                                );
                            }
                        }
                    }
                    _ => bail!("{at}: probe: either caller with to.service, or to.process"),
                }
            }
        }
        if let Some(n) = &st.name
            && !names.insert(n.clone())
        {
            bail!("{at}: the name {n:?} is used twice");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Action, Condition, Replica, parse};

    fn scenario(steps: &str) -> anyhow::Result<super::super::Scenario> {
        let text = format!("name: t\nclusters: [{{name: east}}, {{name: west}}]\nsteps:\n{steps}");
        parse(&text, Path::new("t.yaml"))
    }

    fn error(steps: &str) -> String {
        format!("{:#}", scenario(steps).expect_err("invalid"))
    }

    #[test]
    fn controller_replicas_leaders_and_rollouts_read_and_are_checked() {
        let s = scenario(
            "- kill: {cluster: west, process: controller, replica: leader}\n  name: kill\n\
             - wait: {leader: {cluster: west, not: kill}}\n  within: {local: 2s, kind: 13s}\n\
             - start: {cluster: west, process: controller}\n\
             - pause: {cluster: west, process: controller, replica: 1}\n\
             - resume: {cluster: west, process: controller-1}\n\
             - rollout: {cluster: west, process: controller}\n\
             - wait: {ready: {cluster: west, process: controller}}\n\
             - assert: {mirror-never: {cluster: east, service: api, origin: west, state: withdrawn, since: kill}}\n",
        )
        .expect("valid");
        let Action::Kill(t) = &s.steps[0].action else {
            panic!("{:?}", s.steps[0].action)
        };
        assert_eq!(t.replica, Some(Replica::Leader));
        assert!(
            matches!(&s.steps[1].action, Action::Wait(Condition::Leader { not: Some(n), .. }) if n == "kill")
        );
        assert_eq!(
            (s.steps[1].within, s.steps[1].within_kind),
            (
                Some(std::time::Duration::from_secs(2)),
                Some(std::time::Duration::from_secs(13))
            )
        );

        for (steps, why) in [
            (
                "- kill: {cluster: west, process: gateway, replica: leader}\n",
                "step 1: replica: gateway of cluster west runs as one process, not as replicas (replicated: controller)",
            ),
            (
                "- kill: {cluster: west, process: controller, replica: 2}\n",
                "step 1: replica: 2: controller of cluster west has 2 replicas (0 to 1)",
            ),
            (
                "- kill: {cluster: west, pod: api-a, replica: 0}\n",
                "step 1: replica: picks a replica of a process, not of a pod",
            ),
            (
                "- kill: {cluster: west, process: controller, replica: boss}\n",
                "\"boss\" is not leader, follower or an index",
            ),
            (
                "- rollout: {cluster: west, process: controller, replica: leader}\n",
                "step 1: rollout restarts every replica in turn: no replica",
            ),
            (
                "- rollout: {cluster: west, process: controllers}\n",
                "step 1: cluster west has no process \"controllers\"",
            ),
            (
                "- wait: {leader: {cluster: west, not: later}}\n",
                "step 1: no earlier step named \"later\"",
            ),
            (
                "- sleep: 1s\n  name: a\n- assert: {mirror-never: {cluster: east, service: api, origin: north, state: withdrawn, since: a}}\n",
                "step 2: no cluster \"north\"",
            ),
            (
                "- wait: {leader: {cluster: west}}\n  within: {local: 2s}\n",
                "within: give local and kind",
            ),
        ] {
            let e = error(steps);
            assert!(e.contains(why), "{steps}: {e}");
        }
    }

    #[test]
    fn routes_headers_and_served_by_a_service_read_and_are_checked() {
        let route = "{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: r}, \
                     spec: {parentRefs: [{kind: Service, group: '', name: api}], rules: [{backendRefs: [{name: api, port: 8080}]}]}}";
        let s = scenario(&format!(
            "- route: {{cluster: east, manifest: {route}}}\n\
             - traffic: {{name: t, from: east, service: api, headers: {{x-canary: '1'}}}}\n\
             - assert: {{served-by: {{traffic: t, service: api-v2, min: 100%}}}}\n"
        ))
        .expect("valid");
        let Action::Route(r) = &s.steps[0].action else {
            panic!("{:?}", s.steps[0].action)
        };
        assert_eq!(
            r.route.metadata.namespace.as_deref(),
            Some("shop"),
            "the sample namespace"
        );
        for (steps, why) in [
            (
                "- route: {cluster: east, manifest: {apiVersion: v1, kind: Service, metadata: {name: x}}}\n".to_owned(),
                "route: manifest: expected an HTTPRoute of gateway.networking.k8s.io/v1, got Service",
            ),
            (
                "- route: {cluster: east, manifest: {apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {}, spec: {}}}\n".to_owned(),
                "metadata.name is missing",
            ),
            (
                format!("- route: {{cluster: north, manifest: {route}}}\n"),
                "no cluster \"north\"",
            ),
            (
                "- traffic: {name: t, from: east, service: api}\n- assert: {served-by: {traffic: t, min: 1%}}\n".to_owned(),
                "served-by: give cluster, service or both",
            ),
        ] {
            let e = error(&steps);
            assert!(e.contains(why), "{steps}: {e}");
        }
        let bad_version = "name: t\nclusters: [{name: east, versions: [two]}, {name: west}]\nsteps:\n- sleep: 1s\n";
        let e = format!(
            "{:#}",
            parse(bad_version, Path::new("t.yaml")).expect_err("invalid")
        );
        assert!(
            e.contains("versions: \"two\" is not v followed by a number"),
            "{e}"
        );
    }
}
