//! CA rotation under traffic, as an operator does it: a new cluster
//! intermediate is written to the cluster's CA directory and the identity
//! service restarted on it; every certificate holder then renews on its own
//! schedule (70 % of its leaf's lifetime) and the step waits until all have.
//! A root rotates in three such rounds, so no two workloads ever disagree on
//! what to trust: every bundle gains the new root, then every intermediate
//! moves under it, then the old root leaves the bundles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshfed_trust::{ClusterCa, KeyAlgorithm, RootCa};
use rustls_pki_types::CertificateDer;

use super::probe;
use super::run::Runner;
use super::spec::{CaKind, Rotate};
use crate::dev::Kind;

/// Rotated CAs live as long as the ones `dev up` makes.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Slack past the latest renewal for a retry after a failed one.
const SLACK: Duration = Duration::from_secs(3);

pub(super) async fn rotate(r: &mut Runner<'_>, spec: &Rotate) -> anyhow::Result<()> {
    let ttl = r
        .scenario()
        .leaf_ttl
        .context("rotation needs leafTtl (checked when the file was read)")?;
    let t = r.topology().clone();
    let trust_dir = t.dir.join("trust");
    let old_root = RootCa::load(&trust_dir).context("loading the federation's root")?;
    let all: Vec<String> = t.clusters.iter().map(|c| c.name.clone()).collect();
    let issue = |root: &RootCa, cluster: &str, extra: Vec<CertificateDer<'static>>| {
        let c = t.cluster(cluster)?;
        root.issue_cluster(cluster, CA_VALIDITY, extra)
            .with_context(|| format!("issuing {cluster}'s intermediate"))?
            .save(&c.ca_dir, true)
            .with_context(|| format!("writing {}", c.ca_dir.display()))?;
        anyhow::Ok(())
    };
    match spec.ca {
        CaKind::Intermediate => {
            let cluster = spec.cluster.as_deref().context("checked: a cluster")?;
            let c = t.cluster(cluster)?;
            // Keep whatever else the bundle trusts.
            let current = ClusterCa::load(&c.ca_dir)?;
            let extra: Vec<CertificateDer<'static>> = current
                .bundle()
                .roots()
                .iter()
                .filter(|r| *r != old_root.cert())
                .cloned()
                .collect();
            issue(&old_root, cluster, extra)?;
            reissue(r, &[cluster.to_owned()], ttl).await?;
        }
        CaKind::Root => {
            let next = RootCa::generate(
                old_root.trust_domain(),
                KeyAlgorithm::EcdsaP256,
                CA_VALIDITY,
            )
            .context("creating the new root")?;
            for c in &all {
                issue(&old_root, c, vec![next.cert().clone()])?;
            }
            reissue(r, &all, ttl).await?;
            for c in &all {
                issue(&next, c, vec![old_root.cert().clone()])?;
            }
            reissue(r, &all, ttl).await?;
            for c in &all {
                issue(&next, c, Vec::new())?;
            }
            reissue(r, &all, ttl).await?;
            next.save(&trust_dir, true).context("saving the new root")?;
        }
    }
    Ok(())
}

/// Restarts the identity service of each cluster on its new CA, then waits
/// until every certificate holder must have renewed from it — 70 % of a
/// leaf's lifetime, plus slack — and its identity service confirms as many
/// certificates issued as the cluster has holders.
async fn reissue(r: &mut Runner<'_>, clusters: &[String], ttl: Duration) -> anyhow::Result<()> {
    for c in clusters {
        r.restart_process(c, "identity").await?;
    }
    let restarted = Instant::now();
    let due = restarted + ttl.mul_f64(0.7) + SLACK;
    let give_up = restarted + ttl + Duration::from_secs(15);
    let holders: BTreeMap<String, usize> = clusters
        .iter()
        .map(|c| {
            let n = r
                .topology()
                .cluster(c)
                .map(|c| {
                    c.processes
                        .iter()
                        .filter(|p| {
                            p.identity.is_some() && !matches!(p.kind, Kind::Identity | Kind::Client)
                        })
                        .count()
                })
                .unwrap_or_default();
            (c.clone(), n)
        })
        .collect();
    loop {
        let now = Instant::now();
        let mut behind = Vec::new();
        for (c, want) in &holders {
            let issued = match r.metrics(c, "identity").await {
                Ok(m) => probe::sum(
                    &m,
                    "meshfed_identity_certify_total",
                    &BTreeMap::from([("result".to_owned(), "issued".to_owned())]),
                ),
                Err(_) => 0.0,
            };
            if issued < *want as f64 {
                behind.push(format!(
                    "{c}: {issued} of {want} certificate holders renewed"
                ));
            }
        }
        if now >= due && behind.is_empty() {
            return Ok(());
        }
        if now >= give_up {
            bail!(
                "workloads did not renew from the new CA within {:.1} s: {}",
                (now - restarted).as_secs_f64(),
                behind.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
