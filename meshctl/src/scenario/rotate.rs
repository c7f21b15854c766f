//! CA rotation under traffic, as an operator does it: a new cluster
//! intermediate is written to the cluster's CA directory, handed to the
//! cluster (kind: its CA Secret and trust ConfigMaps) and the identity
//! service restarted on it; every certificate holder then renews on its own
//! schedule (70 % of its leaf's lifetime) and the step waits until all have.
//! A root rotates in three such rounds, so no two workloads ever disagree on
//! what to trust: every bundle gains the new root, then every intermediate
//! moves under it, then the old root leaves the bundles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshfed_ca::{ClusterCa, KeyAlgorithm, RootCa};
use rustls_pki_types::CertificateDer;

use super::probe;
use super::run::Runner;
use super::spec::{CaKind, Rotate, Target};

/// Rotated CAs live as long as the ones `dev up` makes.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 86400);
/// Slack past the latest renewal for a retry after a failed one.
const SLACK: Duration = Duration::from_secs(3);

pub(super) async fn rotate(r: &mut Runner<'_>, spec: &Rotate) -> anyhow::Result<()> {
    let ttl =
        r.s.leaf_ttl
            .context("rotation needs leafTtl (checked when the file was read)")?;
    let trust_dir = r.env.root_dir();
    let old_root = RootCa::load(&trust_dir).context("loading the federation's root")?;
    let all: Vec<String> = r.s.clusters.iter().map(|c| c.name.clone()).collect();
    let issue =
        |r: &Runner<'_>, root: &RootCa, cluster: &str, extra: Vec<CertificateDer<'static>>| {
            let dir = r.env.ca_dir(cluster)?;
            root.issue_cluster(cluster, CA_VALIDITY, extra)
                .with_context(|| format!("issuing {cluster}'s intermediate"))?
                .save(&dir, true)
                .with_context(|| format!("writing {}", dir.display()))?;
            anyhow::Ok(())
        };
    match spec.ca {
        CaKind::Intermediate => {
            let cluster = spec.cluster.as_deref().context("checked: a cluster")?;
            // Keep whatever else the bundle trusts.
            let current = ClusterCa::load(&r.env.ca_dir(cluster)?)?;
            let extra: Vec<CertificateDer<'static>> = current
                .bundle()
                .roots()
                .iter()
                .filter(|r| *r != old_root.cert())
                .cloned()
                .collect();
            issue(r, &old_root, cluster, extra)?;
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
                issue(r, &old_root, c, vec![next.cert().clone()])?;
            }
            reissue(r, &all, ttl).await?;
            for c in &all {
                issue(r, &next, c, vec![old_root.cert().clone()])?;
            }
            reissue(r, &all, ttl).await?;
            for c in &all {
                issue(r, &next, c, Vec::new())?;
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
    let identity = |cluster: &str| Target {
        cluster: cluster.to_owned(),
        process: Some("identity".to_owned()),
        pod: None,
        replica: None,
    };
    for c in clusters {
        r.env.ca_written(c).await?;
        r.env.start(&identity(c), None, true).await?;
    }
    let restarted = Instant::now();
    let due = restarted + ttl.mul_f64(0.7) + SLACK;
    let give_up = restarted + ttl + Duration::from_secs(15);
    let mut holders = BTreeMap::new();
    for c in clusters {
        holders.insert(c.clone(), r.env.holders(c).await?);
    }
    loop {
        let now = Instant::now();
        let mut behind = Vec::new();
        for (c, want) in &holders {
            let issued = match r.env.metrics(c, "identity").await {
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
