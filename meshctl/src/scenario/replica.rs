//! Picking one replica of a replicated process (the controller) for a
//! step: the Lease's holder, a replica it does not name, or one by index —
//! decided when the step runs, from what the provider says runs and what
//! the Lease says, so the same file means the same on every provider.

use anyhow::bail;

use super::env::Env;
use super::spec::{Replica, Target};

/// The name of the replica `r` picks among `replicas` (in order, each with
/// whether it runs), given the Lease's holder.
pub(super) fn pick(
    what: &str,
    replicas: &[(String, bool)],
    leader: Option<&str>,
    r: &Replica,
) -> anyhow::Result<String> {
    let running = |n: &str| replicas.iter().any(|(r, up)| r == n && *up);
    match r {
        Replica::Leader => match leader {
            Some(l) if running(l) => Ok(l.to_owned()),
            Some(l) => {
                bail!("the Lease names {l} as the leader of {what}, which is not a running replica")
            }
            None => bail!("no replica of {what} leads: the Lease names no holder"),
        },
        Replica::Follower => replicas
            .iter()
            .find(|(n, up)| *up && Some(n.as_str()) != leader)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no running replica of {what} is a follower (replicas: {})",
                    list(replicas)
                )
            }),
        Replica::Index(i) => match replicas.get(*i) {
            Some((n, _)) => Ok(n.clone()),
            None => bail!("{what} has no replica {i} (replicas: {})", list(replicas)),
        },
    }
}

fn list(replicas: &[(String, bool)]) -> String {
    if replicas.is_empty() {
        return "none running".into();
    }
    replicas
        .iter()
        .map(|(n, up)| {
            if *up {
                n.clone()
            } else {
                format!("{n} (not running)")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The replica `t.replica` picks now, if the step names one.
pub(super) async fn resolve(env: &Env, t: &Target) -> anyhow::Result<Option<String>> {
    let (Some(r), Some(process)) = (&t.replica, &t.process) else {
        return Ok(None);
    };
    let replicas = env.replicas(&t.cluster, process).await?;
    let leader = env.leader(&t.cluster).await?;
    let what = format!("{process} of cluster {}", t.cluster);
    pick(&what, &replicas, leader.as_deref(), r).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(up: &[(&str, bool)]) -> Vec<(String, bool)> {
        up.iter().map(|(n, u)| ((*n).to_owned(), *u)).collect()
    }

    #[test]
    fn leader_follower_and_index_pick_by_the_lease_and_order() {
        let r = replicas(&[("controller-0", true), ("controller-1", true)]);
        let lead = Some("controller-1");
        assert_eq!(
            pick("c", &r, lead, &Replica::Leader).expect("leader"),
            "controller-1"
        );
        assert_eq!(
            pick("c", &r, lead, &Replica::Follower).expect("follower"),
            "controller-0"
        );
        assert_eq!(
            pick("c", &r, lead, &Replica::Index(1)).expect("index"),
            "controller-1"
        );
        let e = pick("c", &r, lead, &Replica::Index(2)).expect_err("out of range");
        assert!(e.to_string().contains("has no replica 2"), "{e}");
    }

    #[test]
    fn a_dead_holder_or_no_running_follower_is_said_not_guessed() {
        let r = replicas(&[("controller-0", false), ("controller-1", true)]);
        let e = pick(
            "controller of west",
            &r,
            Some("controller-0"),
            &Replica::Leader,
        )
        .expect_err("dead holder");
        assert!(e.to_string().contains("not a running replica"), "{e}");
        let e = pick(
            "controller of west",
            &r,
            Some("controller-1"),
            &Replica::Follower,
        )
        .expect_err("the only running one leads");
        assert!(e.to_string().contains("controller-0 (not running)"), "{e}");
        let e = pick("controller of west", &r, None, &Replica::Leader).expect_err("no lease");
        assert!(
            e.to_string()
                .contains("no replica of controller of west leads"),
            "{e}"
        );
    }
}
