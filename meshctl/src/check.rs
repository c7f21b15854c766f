//! `meshctl check`: ordered checks of one or more clusters, each a ✔ or a
//! ✖ with what was seen and how to fix it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::Args;
use meshfed_api::crd::Link;
use meshfed_api::labels;
use meshfed_trust::{CertInfo, TrustBundle};
use serde::Serialize;

use crate::cluster::{ClusterInfo, LINK_ROOTS, shared_roots};
use crate::output::Report;
use crate::target::{Cluster, open};

/// Skew the mesh tolerates in certificate validity checks is 60 s; warn well before.
const MAX_SKEW: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl check                                   # the current context
  meshctl check --context east --context west     # both, and what links them
  meshctl check --state ./east --state ./west -o json")]
pub struct CheckArgs {
    /// Kubeconfig context of a cluster to check. Repeatable.
    #[arg(long = "context")]
    pub contexts: Vec<String>,
    /// Manifest directory of a file store cluster to check. Repeatable.
    #[arg(long = "state")]
    pub states: Vec<PathBuf>,
    /// Certificates expiring sooner than this fail.
    #[arg(long, default_value = "720h", value_parser = humantime::parse_duration)]
    pub expiry_warning: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Report,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The cluster (or where it was read from when its name is unknown).
    pub cluster: String,
    pub check: String,
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// How to fix a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Does not apply to this cluster.
    Skip,
}

pub async fn run(a: CheckArgs) -> anyhow::Result<()> {
    let mut clusters = Vec::new();
    for c in &a.contexts {
        clusters.push(open(Some(c), None).await?);
    }
    for s in &a.states {
        clusters.push(open(None, Some(s)).await?);
    }
    if clusters.is_empty() {
        clusters.push(open(None, None).await?);
    }
    let outcomes = check(&clusters, a.expiry_warning).await;
    match a.output {
        Report::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        Report::Text => print!("{}", render(&outcomes)),
    }
    let failed = outcomes.iter().filter(|o| o.status == Status::Fail).count();
    if failed > 0 {
        bail!("{failed} of {} checks failed", outcomes.len());
    }
    Ok(())
}

/// Every check of every cluster, in order.
pub async fn check(clusters: &[Cluster], expiry_warning: Duration) -> Vec<Outcome> {
    // What each cluster says about itself, so links between checked clusters
    // are checked from both ends.
    let mut infos = Vec::new();
    for c in clusters {
        infos.push(c.info().await);
    }
    let known: Known<'_> = infos
        .iter()
        .zip(clusters)
        .filter_map(|(i, c)| i.as_ref().ok().map(|i| (i.cluster.clone(), (i, c))))
        .collect();
    let mut out = Vec::new();
    for (c, info) in clusters.iter().zip(&infos) {
        let mut r = Checks {
            cluster: c.describe(),
            out: &mut out,
        };
        let info = match info {
            Ok(i) => {
                r.cluster = format!("{} ({})", i.cluster, c.describe());
                let i = i.clone();
                r.pass(
                    "Meshfed installed",
                    format!("cluster {}, trust domain {}", i.cluster, i.trust_domain),
                );
                i
            }
            Err(e) => {
                r.fail(
                    "Meshfed installed",
                    format!("{e:#}"),
                    "install it: meshctl install --cluster NAME --ca DIR --apply (or --state DIR)",
                );
                continue;
            }
        };
        crds(c, &mut r).await;
        components(c, &info, &mut r).await;
        let bundle = certificates(&info, expiry_warning, &c.describe(), &mut r);
        match c.links().await {
            Ok(links) => {
                for link in &links {
                    link_checks(link, &info, bundle.as_ref(), &known, &mut r);
                }
                if links.is_empty() {
                    r.skip(
                        "links",
                        "no Link: this cluster imports from no other cluster",
                    );
                }
                mirrors(c, &links, &known, &mut r).await;
            }
            Err(e) => r.fail(
                "links readable",
                format!("{e:#}"),
                "check the CRDs are installed (meshctl install) and you may list links.meshfed.io",
            ),
        }
        clock(c, &mut r).await;
    }
    out
}

/// The checked clusters that could be read, by name.
type Known<'a> = BTreeMap<String, (&'a ClusterInfo, &'a Cluster)>;

struct Checks<'a> {
    cluster: String,
    out: &'a mut Vec<Outcome>,
}

impl Checks<'_> {
    fn push(&mut self, check: &str, status: Status, detail: String, hint: Option<String>) {
        self.out.push(Outcome {
            cluster: self.cluster.clone(),
            check: check.to_owned(),
            status,
            detail,
            hint,
        });
    }
    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, Status::Pass, detail.into(), None);
    }
    fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, Status::Skip, detail.into(), None);
    }
    fn fail(&mut self, check: &str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(check, Status::Fail, detail.into(), Some(hint.into()));
    }
}

async fn crds(c: &Cluster, r: &mut Checks<'_>) {
    let check = "CRDs installed and current";
    let installed = match c.crds().await {
        Ok(None) => {
            return r.skip(
                check,
                "file store: the controller reads the CRD types it was built with",
            );
        }
        Ok(Some(i)) => i,
        Err(e) => {
            return r.fail(
                check,
                format!("{e:#}"),
                "you need read access to customresourcedefinitions",
            );
        }
    };
    let want: BTreeMap<String, _> = meshfed_api::crd::all()
        .into_iter()
        .map(|c| (c.metadata.name.clone().unwrap_or_default(), c))
        .collect();
    let mut problems = Vec::new();
    for (name, have) in &installed {
        match (have, want.get(name)) {
            (None, _) => problems.push(format!("{name} missing")),
            (Some(have), Some(want)) => {
                // Versions carry the schema, columns and subresources; the API
                // server adds defaults elsewhere, so only these are compared.
                let have = serde_json::to_value(&have.spec.versions).unwrap_or_default();
                let want = serde_json::to_value(&want.spec.versions).unwrap_or_default();
                if have != want {
                    problems.push(format!("{name} differs from this meshctl's"));
                }
            }
            (Some(_), None) => {}
        }
    }
    if problems.is_empty() {
        r.pass(
            check,
            format!("{} CRDs match this meshctl", installed.len()),
        );
    } else {
        r.fail(
            check,
            problems.join("; "),
            "apply the CRDs of this release: meshctl install ... --apply (or kubectl apply -f deploy/crds/)",
        );
    }
}

async fn components(c: &Cluster, info: &ClusterInfo, r: &mut Checks<'_>) {
    let check = "components ready";
    match c.components(info).await {
        Ok(list) if list.is_empty() => r.skip(
            check,
            "no admin addresses recorded (meshctl install --state DIR --admin COMPONENT=ADDR)",
        ),
        Ok(list) => {
            let bad: Vec<String> = list
                .iter()
                .filter_map(|c| c.ready.as_ref().err().map(|e| format!("{}: {e}", c.name)))
                .collect();
            if bad.is_empty() {
                let good: Vec<String> = list
                    .iter()
                    .map(|c| format!("{} {}", c.name, c.ready.as_deref().unwrap_or_default()))
                    .collect();
                r.pass(check, good.join(", "));
            } else {
                let hint = match c {
                    Cluster::Kube(_) => {
                        "look at the component's logs: kubectl -n meshfed-system logs deploy/NAME"
                    }
                    Cluster::File(_) => {
                        "is the process running? its admin address must answer GET /ready with 200"
                    }
                };
                r.fail(check, bad.join("; "), hint);
            }
        }
        Err(e) => r.fail(
            check,
            format!("{e:#}"),
            "you need read access to meshfed-system",
        ),
    }
}

/// Checks the bundle and the intermediate; returns the bundle when usable.
fn certificates(
    info: &ClusterInfo,
    warning: Duration,
    source: &str,
    r: &mut Checks<'_>,
) -> Option<TrustBundle> {
    let check = "certificates valid";
    let bundle = match info.bundle(source) {
        Ok(b) => b,
        Err(e) => {
            r.fail(
                check,
                format!("{e:#}"),
                "meshctl install --ca DIR writes the trust bundle",
            );
            return None;
        }
    };
    let now = SystemTime::now();
    let mut problems = Vec::new();
    let mut soonest: Option<(SystemTime, String)> = None;
    let look = |what: String,
                info: &CertInfo,
                problems: &mut Vec<String>,
                soonest: &mut Option<(SystemTime, String)>| {
        if info.not_before > now {
            problems.push(format!(
                "{what} is not valid before {}",
                rfc3339(info.not_before)
            ));
        } else if info.not_after <= now {
            problems.push(format!("{what} expired {}", rfc3339(info.not_after)));
        } else if info.not_after < now + warning {
            problems.push(format!("{what} expires soon: {}", rfc3339(info.not_after)));
        }
        if soonest.as_ref().is_none_or(|(t, _)| info.not_after < *t) {
            *soonest = Some((info.not_after, what));
        }
    };
    let mut roots = Vec::new();
    for der in bundle.roots() {
        match CertInfo::parse(der) {
            Ok(i) => {
                look(
                    format!("root {}…", &i.fingerprint_sha256[..11]),
                    &i,
                    &mut problems,
                    &mut soonest,
                );
                roots.push(i);
            }
            Err(e) => problems.push(format!("a root does not parse: {e}")),
        }
    }
    if let Some(pem) = &info.intermediate_pem {
        match meshfed_trust::parse_certs(pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .map(|der| CertInfo::parse(&der))
        {
            Some(Ok(i)) => {
                if !roots.iter().any(|root| root.subject == i.issuer) {
                    problems.push(format!(
                        "the intermediate was issued by {:?}, which no root of the bundle is",
                        i.issuer
                    ));
                }
                look("intermediate".to_owned(), &i, &mut problems, &mut soonest);
            }
            _ => problems.push("the intermediate certificate does not parse".to_owned()),
        }
    }
    if problems.is_empty() {
        let (until, what) = soonest.unwrap_or((now, "nothing".into()));
        r.pass(
            check,
            format!(
                "{} root(s); first to expire: {what} on {}",
                roots.len(),
                rfc3339(until)
            ),
        );
    } else {
        r.fail(
            check,
            problems.join("; "),
            "rotate: meshctl trust issue-cluster (a new intermediate), then meshctl install --ca DIR --apply",
        );
    }
    Some(bundle)
}

fn link_checks(
    link: &Link,
    info: &ClusterInfo,
    bundle: Option<&TrustBundle>,
    known: &Known<'_>,
    r: &mut Checks<'_>,
) {
    let peer = &link.spec.cluster;
    // Trust: the roots recorded when the link was made, and the peer's own
    // bundle when it is checked too.
    let check = format!("link {peer}: trust roots shared");
    if let Some(bundle) = bundle {
        let ours = bundle.fingerprints();
        let recorded: Vec<String> = link
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LINK_ROOTS))
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let peer_result = known.get(peer).map(|(p, _)| {
            p.bundle(peer)
                .and_then(|pb| shared_roots((p, &pb), (info, bundle)))
        });
        match peer_result {
            Some(Err(e)) => r.fail(
                &check,
                format!("{e:#}"),
                "both clusters must trust a common root (meshctl trust issue-cluster --extra-root during a rotation)",
            ),
            Some(Ok(shared)) => r.pass(&check, format!("{} root(s) in common", shared.len())),
            None if recorded.is_empty() => r.skip(
                &check,
                format!("{peer} is not among the checked clusters and the Link records no roots"),
            ),
            None if recorded.iter().any(|f| ours.contains(f)) => r.pass(
                &check,
                "a root recorded when the link was made is still trusted here",
            ),
            None => r.fail(
                &check,
                "none of the roots recorded when the link was made is trusted here any more",
                format!("check {peer} too (add its --context/--state) and re-run meshctl link after a root rotation"),
            ),
        }
    }
    let status = link.status.as_ref();
    let last_error = status
        .and_then(|s| s.last_error.clone())
        .map_or(String::new(), |e| format!("; last error: {e}"));
    let reported = |r: &mut Checks<'_>, check: &str| -> bool {
        if status.is_none() {
            r.fail(
                check,
                "the controller has not written this Link's status",
                "is the controller running? (components ready, above)",
            );
            return false;
        }
        true
    };
    let check = format!("link {peer}: federation stream up");
    if reported(r, &check) {
        match status.and_then(|s| s.federation_up) {
            Some(true) => r.pass(&check, "the peer controller spoke within its lease"),
            _ => r.fail(
                &check,
                format!("the peer controller was silent past the lease TTL; its services are withdrawn{last_error}"),
                format!("is {peer}'s controller running and its gateway reachable? meshctl check on {peer}"),
            ),
        }
    }
    let check = format!("link {peer}: gateway alive");
    if reported(r, &check) {
        let s = status.expect("reported");
        let latency = format!(
            "p50 {} p99 {}",
            s.latency_p50.as_deref().unwrap_or("-"),
            s.latency_p99.as_deref().unwrap_or("-")
        );
        match s.gateway_alive {
            Some(true) => r.pass(
                &check,
                format!(
                    "{} answers probes, {latency}",
                    link.spec.gateway.addresses.join(",")
                ),
            ),
            _ => r.fail(
                &check,
                format!(
                    "{}:{} does not answer probes{last_error}",
                    link.spec.gateway.addresses.join(","),
                    link.spec.gateway.port
                ),
                format!(
                    "is {peer}'s gateway running and reachable from here (firewall, load balancer)?"
                ),
            ),
        }
    }
}

async fn mirrors(c: &Cluster, links: &[Link], known: &Known<'_>, r: &mut Checks<'_>) {
    let check = "mirrors backed by live exports";
    let mirrors = match c.mirrors().await {
        Ok(m) => m,
        Err(e) => return r.fail(check, format!("{e:#}"), "you need read access to services"),
    };
    let mut bad = Vec::new();
    for m in &mirrors {
        let meta = &m.metadata;
        let label = |k: &str| {
            meta.labels
                .as_ref()
                .and_then(|l| l.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = format!("{ns}/{}", meta.name.as_deref().unwrap_or_default());
        let (origin, via) = (label(labels::ORIGIN_CLUSTER), label(labels::LINK));
        let link = links
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(via.as_str()));
        let Some(link) = link else {
            bad.push(format!("{name}: its Link {via} is gone"));
            continue;
        };
        if link.status.as_ref().and_then(|s| s.federation_up) != Some(true) {
            bad.push(format!("{name}: cluster {origin} is not live"));
            continue;
        }
        // When the origin cluster is checked too, look at the export itself.
        if let Some((_, other)) = known.get(&origin) {
            let service = label(labels::ORIGIN_SERVICE);
            match other.service(&ns, &service).await {
                Ok(Some(s)) if labels::is_exported(s.metadata.labels.as_ref()) => {}
                Ok(_) => bad.push(format!("{name}: {origin} no longer exports {ns}/{service}")),
                Err(e) => bad.push(format!("{name}: {e:#}")),
            }
        }
    }
    if mirrors.is_empty() {
        r.skip(check, "no mirrors");
    } else if bad.is_empty() {
        r.pass(
            check,
            format!("{} mirror(s), each of a live export", mirrors.len()),
        );
    } else {
        r.fail(
            check,
            bad.join("; "),
            "the controller removes such mirrors within a second; if they stay, is it running?",
        );
    }
}

async fn clock(c: &Cluster, r: &mut Checks<'_>) {
    let check = "clock skew";
    match c.clock_skew().await {
        Ok(None) => r.skip(
            check,
            "file store: the components share this machine's clock",
        ),
        Ok(Some((skew, ahead))) => {
            let side = if ahead { "ahead of" } else { "behind" };
            let detail = format!(
                "the API server is {} {side} this machine",
                humantime::format_duration(round(skew))
            );
            if skew <= MAX_SKEW {
                r.pass(check, detail);
            } else {
                r.fail(
                    check,
                    detail,
                    "certificates allow 60 s of skew: fix NTP on the nodes (or on this machine)",
                );
            }
        }
        Err(e) => r.fail(
            check,
            format!("{e:#}"),
            "the API server must answer GET /version",
        ),
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// ✔ / ✖ / – lines, grouped by cluster, hints indented under failures.
pub fn render(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let mut current = None;
    for o in outcomes {
        if current != Some(&o.cluster) {
            if current.is_some() {
                out.push('\n');
            }
            out.push_str(&format!("{}\n", o.cluster));
            current = Some(&o.cluster);
        }
        let mark = match o.status {
            Status::Pass => "✔",
            Status::Fail => "✖",
            Status::Skip => "–",
        };
        out.push_str(&format!("  {mark} {}: {}\n", o.check, o.detail));
        if let Some(h) = &o.hint {
            out.push_str(&format!("      hint: {h}\n"));
        }
    }
    let failed = outcomes.iter().filter(|o| o.status == Status::Fail).count();
    out.push_str(&format!(
        "\n{} checks: {} passed, {failed} failed, {} skipped\n",
        outcomes.len(),
        outcomes.iter().filter(|o| o.status == Status::Pass).count(),
        outcomes.iter().filter(|o| o.status == Status::Skip).count()
    ));
    out
}
