//! `meshctl check`: ordered checks of one or more clusters, each a ✔ or a
//! ✖ with what was seen and how to fix it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use clap::Args;
use meshfed_api::labels;
use meshfed_resources::crd::{CONDITION_MIRRORS_WRITTEN, Link, LinkStatus};
use meshfed_trust::{CertInfo, TrustBundle};
use serde::Serialize;

use crate::cluster::{
    CONTROLLER, CONTROLLER_LEASE, CONTROLLER_REPLICAS, ClusterInfo, LINK_ROOTS, NAMESPACE,
    shared_roots,
};
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
    /// Works now, but one more fault and it would not; or will stop working
    /// at a known time.
    Warn,
    Fail,
    /// Does not apply to this cluster, or could not be looked at.
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
        leader(c, &mut r).await;
        let bundle = certificates(&info, expiry_warning, &c.describe(), &mut r);
        match c.links().await {
            Ok(links) => {
                for link in &links {
                    link_checks(c, link, &info, bundle.as_ref(), &known, &mut r);
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
        policies(c, &mut r).await;
        routes(c, &mut r).await;
        clock(c, &mut r).await;
    }
    out
}

/// Every FailoverPolicy and RateLimitPolicy accepted; the refused ones
/// named, with the fields at fault.
async fn policies(c: &Cluster, r: &mut Checks<'_>) {
    let policies = match c.policies().await {
        Ok(p) => p,
        Err(e) => {
            r.fail(
                "policies readable",
                format!("{e:#}"),
                "check the CRDs are installed (meshctl install) and you may list \
                 failoverpolicies.meshfed.io and ratelimitpolicies.meshfed.io",
            );
            return;
        }
    };
    if policies.is_empty() {
        r.skip("policies", "no FailoverPolicy or RateLimitPolicy");
        return;
    }
    let refused = |p: &&crate::target::PolicyVerdict| {
        p.accepted.as_ref().is_some_and(|c| c.status == "False")
    };
    let (bad, good): (Vec<_>, Vec<_>) = policies.iter().partition(refused);
    if bad.is_empty() {
        let judged = good.iter().filter(|p| p.accepted.is_some()).count();
        let detail = match good.len() - judged {
            0 => format!("{judged} accepted"),
            waiting => format!("{judged} accepted, {waiting} not judged by the controller yet"),
        };
        r.pass("policies", detail);
    }
    for p in bad {
        let why = p.accepted.as_ref().map_or("", |c| c.message.as_str());
        r.warn(
            "policies",
            format!("{} {} refused: {why}", p.kind, p.key),
            "fix the fields named; until the controller accepts it the policy has no effect",
        );
    }
}

/// Every HTTPRoute on a Service accepted with its backends resolved; the
/// rejected ones named, with the controller's reason.
async fn routes(c: &Cluster, r: &mut Checks<'_>) {
    let routes = match c.routes().await {
        Ok(routes) => routes,
        Err(e) => {
            r.skip(
                "routes",
                format!("HTTPRoutes cannot be listed, so none applies: {e:#}"),
            );
            return;
        }
    };
    let rows = crate::routes::rows(&routes, &[]);
    if rows.is_empty() {
        r.skip("routes", "no HTTPRoute is attached to a Service");
        return;
    }
    let rejected = crate::routes::rejected(&routes);
    if rejected.is_empty() {
        let mut named: Vec<&str> = rows.iter().map(|row| row.route.as_str()).collect();
        named.dedup();
        r.pass(
            "routes",
            format!("{} accepted, every backend resolved", named.join(", ")),
        );
    }
    for (route, why) in rejected {
        r.warn(
            "routes",
            format!("HTTPRoute {route}: {why}"),
            "fix the route (meshctl routes shows each rule and its status); until then its \
             Service is served as the controller's status says",
        );
    }
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
    fn warn(&mut self, check: &str, detail: impl Into<String>, hint: impl Into<String>) {
        self.push(check, Status::Warn, detail.into(), Some(hint.into()));
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
    let want: BTreeMap<String, _> = meshfed_resources::crd::all()
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
    let list = match c.components(info).await {
        Ok(list) if list.is_empty() => {
            return r.skip(
                check,
                "no admin addresses recorded (meshctl install --state DIR --admin COMPONENT=ADDR)",
            );
        }
        Ok(list) => list,
        Err(e) => {
            return r.fail(
                check,
                format!("{e:#}"),
                "you need read access to meshfed-system",
            );
        }
    };
    let (mut good, mut weak, mut bad) = (Vec::new(), Vec::new(), Vec::new());
    for comp in &list {
        match (&comp.ready, comp.replicas) {
            // One controller replica ready does the whole job (it leads);
            // without a second, nothing takes over when it stops.
            (_, Some((ready, want)))
                if comp.name == CONTROLLER
                    && ready > 0
                    && (ready < want || ready < i32::from(CONTROLLER_REPLICAS)) =>
            {
                weak.push(format!("{} {ready}/{want} ready", comp.name));
            }
            (Ok(ready), _) => good.push(format!("{} {ready}", comp.name)),
            (Err(e), _) => bad.push(format!("{}: {e}", comp.name)),
        }
    }
    if !bad.is_empty() {
        let hint = match c {
            Cluster::Kube(_) => {
                "look at the component's logs: kubectl -n meshfed-system logs deploy/NAME"
            }
            Cluster::File(_) => {
                "is the process running? its admin address must answer GET /ready with 200"
            }
        };
        bad.extend(weak);
        return r.fail(check, bad.join("; "), hint);
    }
    if weak.is_empty() {
        return r.pass(check, good.join(", "));
    }
    good.extend(weak);
    r.warn(
        check,
        format!(
            "{}; with fewer than {CONTROLLER_REPLICAS} controller replicas ready none takes \
             over when the leader stops, and mirrors and statuses go unwritten until it is back",
            good.join(", ")
        ),
        format!(
            "see why a replica is not ready: kubectl -n {NAMESPACE} get pods -l \
             app.kubernetes.io/name={CONTROLLER} (Pending: no node fits it; not ready: \
             kubectl -n {NAMESPACE} logs POD)"
        ),
    );
}

/// Which controller replica leads, from the leader Lease's holder.
async fn leader(c: &Cluster, r: &mut Checks<'_>) {
    let check = "controller leader";
    let lease_name = format!("Lease {NAMESPACE}/{CONTROLLER_LEASE}");
    let logs = match c {
        Cluster::Kube(_) => format!(
            "look at the controller replicas' logs: kubectl -n {NAMESPACE} logs -l \
             app.kubernetes.io/name={CONTROLLER} --prefix"
        ),
        Cluster::File(_) => "look at the controller processes' logs".to_owned(),
    };
    let lease = match c.controller_lease().await {
        Ok(l) => l,
        // Reading it takes get on leases in meshfed-system, which a user
        // allowed everything else check reads may not have.
        Err(e) => {
            return r.skip(
                check,
                format!("cannot tell which replica leads, the {lease_name} is not readable: {e:#}"),
            );
        }
    };
    let Some(spec) = lease.and_then(|l| l.spec) else {
        return r.warn(
            check,
            format!("no {lease_name}: no controller replica has led yet, so none writes"),
            format!("is the controller running (components ready, above)? {logs}"),
        );
    };
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return r.warn(
            check,
            format!(
                "no replica holds the {lease_name}: mirrors and statuses go unwritten until one \
                 takes it (about a second when a leader stops)"
            ),
            format!("if this stays, {logs}"),
        );
    };
    let renewed = spec.renew_time.map(|t| SystemTime::from(t.0));
    let lasts = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    let now = SystemTime::now();
    match (renewed, lasts) {
        (Some(renewed), Some(lasts)) => {
            let ago = round(now.duration_since(renewed).unwrap_or_default());
            let ago = humantime::format_duration(ago);
            // The API server's clock, not this machine's, renewed it: allow the skew.
            if renewed + lasts + MAX_SKEW < now {
                r.warn(
                    check,
                    format!(
                        "{holder} holds the {lease_name} but last renewed it {ago} ago (it lasts \
                         {}): a replica takes over once it runs out; until then nothing writes",
                        humantime::format_duration(lasts)
                    ),
                    format!("is {holder} still running? {logs}"),
                );
            } else {
                r.pass(check, format!("{holder} leads (renewed {ago} ago)"));
            }
        }
        _ => r.pass(check, format!("{holder} leads")),
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
    c: &Cluster,
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
        let s = status.expect("reported");
        match (s.federation_up, held(link, s)) {
            (Some(true), _) => r.pass(&check, "the peer controller spoke within its lease"),
            (_, Some(held)) => r.warn(
                &check,
                format!(
                    "the peer controller has been silent since {}, but its gateway answers \
                     probes: {peer}'s services are kept until {} ({} from now), then withdrawn \
                     unless it speaks again{last_error}",
                    held.since.map_or_else(|| "its lease ran out".to_owned(), rfc3339),
                    rfc3339(held.until),
                    humantime::format_duration(round(
                        held.until
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                    )),
                ),
                format!(
                    "look at {peer}'s controller pods (kubectl -n {NAMESPACE} get pods -l \
                     app.kubernetes.io/name={CONTROLLER} in {peer}; a rollout, a crash loop, or \
                     no replica ready), or meshctl check on {peer}"
                ),
            ),
            _ => r.fail(
                &check,
                format!(
                    "the peer controller was silent past the lease TTL{}; its services are \
                     withdrawn{last_error}",
                    if alive_reason(s) == Some("GraceExpired") {
                        " and its control-plane grace"
                    } else {
                        ""
                    }
                ),
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
    let check = format!("link {peer}: mirrors written");
    if reported(r, &check) {
        mirrors_written(c, link, status.expect("reported"), &check, r);
    }
}

/// Imports kept through the control-plane grace: since when the peer
/// controller is silent (when the Link says enough to know) and until when.
struct Held {
    since: Option<SystemTime>,
    until: SystemTime,
}

/// Whether the link's imports are held in grace (its controller silent,
/// its gateway answering), per its status.
fn held(link: &Link, s: &LinkStatus) -> Option<Held> {
    if s.federation_up == Some(true) || s.gateway_alive != Some(true) {
        return None;
    }
    let until = parse_time(s.imports_held_until.as_deref()?)?;
    if until <= SystemTime::now() {
        // Past: the services are withdrawn (or its status is stale).
        return None;
    }
    // importsHeldUntil is the grace after the stream went silent.
    let grace = Duration::from_secs(link.spec.control_plane_grace_seconds.into());
    Some(Held {
        since: until.checked_sub(grace),
        until,
    })
}

/// The reason of the Link's `Alive` condition.
fn alive_reason(s: &LinkStatus) -> Option<&str> {
    s.conditions
        .iter()
        .find(|c| c.type_ == meshfed_controller::CONDITION_ALIVE)
        .map(|c| c.reason.as_str())
}

/// An RFC 3339 time as the controller writes it.
fn parse_time(t: &str) -> Option<SystemTime> {
    t.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(SystemTime::from)
}

/// How many unwritable mirrors a detail names before "and N more".
const MIRRORS_NAMED: usize = 3;

/// Whether every imported service's mirror is written; when not, each one
/// (up to a few), what the cluster answered, and the fix.
fn mirrors_written(c: &Cluster, link: &Link, s: &LinkStatus, check: &str, r: &mut Checks<'_>) {
    let condition = s
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_MIRRORS_WRITTEN);
    let count = (s.unwritable_mirror_count as usize).max(s.unwritable_mirrors.len());
    if count == 0 {
        if let Some(c) = condition.filter(|c| c.status == "False") {
            return r.fail(
                check,
                format!(
                    "the controller says not every mirror is written ({}): {}",
                    c.reason, c.message
                ),
                "the leading controller replica's logs say which and why",
            );
        }
        return r.pass(
            check,
            format!(
                "{} imported service(s), each mirrored here",
                s.imported_services
            ),
        );
    }
    let named: Vec<String> = s
        .unwritable_mirrors
        .iter()
        .take(MIRRORS_NAMED)
        .map(|m| format!("{}: {}", m.mirror, m.reason))
        .collect();
    let mut detail = format!(
        "{count} imported service(s) of {} have no mirror here: {}",
        link.spec.cluster,
        named.join("; ")
    );
    if count > named.len() {
        detail.push_str(&format!("; and {} more", count - named.len()));
    }
    let link_name = format!(
        "{}/{}",
        link.metadata.namespace.as_deref().unwrap_or(NAMESPACE),
        link.metadata.name.as_deref().unwrap_or_default()
    );
    let mut missing: Vec<&str> = s
        .unwritable_mirrors
        .iter()
        .filter(|m| says_namespace_missing(&m.reason))
        .filter_map(|m| m.mirror.split_once('/').map(|(ns, _)| ns))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let mut hints: Vec<String> = missing
        .iter()
        .map(|ns| {
            let how = match c {
                Cluster::Kube(_) => format!("kubectl create namespace {ns}"),
                Cluster::File(_) => format!("a v1 Namespace {ns} among its manifests"),
            };
            format!(
                "create namespace {ns} in this cluster ({how}), or narrow the Link's selector \
                 (Link {link_name}, spec.selector) so it does not import it"
            )
        })
        .collect();
    let other = s
        .unwritable_mirrors
        .iter()
        .any(|m| !says_namespace_missing(&m.reason));
    if other || s.unwritable_mirrors.is_empty() {
        hints.push(
            "for the others, what the cluster answered says why; the leading controller \
             replica's logs say more"
                .to_owned(),
        );
    }
    r.fail(check, detail, hints.join("; "));
}

/// Whether what a store answered to a write says the object's namespace
/// does not exist: Kubernetes answers 404 `namespaces "shop" not found`; the
/// file store says it in words of its own.
fn says_namespace_missing(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("namespace")
        && (r.contains("not found")
            || r.contains("does not exist")
            || r.contains("doesn't exist")
            || r.contains("no such"))
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
        let status = link.status.as_ref();
        let live = status.is_some_and(|s| s.federation_up == Some(true) || held(link, s).is_some());
        if !live {
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
            Status::Warn => "!",
            Status::Fail => "✖",
            Status::Skip => "–",
        };
        out.push_str(&format!("  {mark} {}: {}\n", o.check, o.detail));
        if let Some(h) = &o.hint {
            out.push_str(&format!("      hint: {h}\n"));
        }
    }
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    out.push_str(&format!(
        "\n{} checks: {} passed, {} warned, {} failed, {} skipped\n",
        outcomes.len(),
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail),
        count(Status::Skip)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_recognised_in_either_store_s_words() {
        for said in [
            "404 Not Found: namespaces \"shop\" not found",
            "namespace shop does not exist",
            "Namespace \"shop\" doesn't exist in the store",
        ] {
            assert!(says_namespace_missing(said), "{said}");
        }
        for said in [
            "service shop/api-west exists and is not a mirror; not overwriting it",
            "403 Forbidden: services is forbidden",
            "endpointslices.discovery.k8s.io \"api-west\" not found",
        ] {
            assert!(!says_namespace_missing(said), "{said}");
        }
    }

    #[test]
    fn a_warning_is_marked_and_counted_apart() {
        let o = |check: &str, status: Status| Outcome {
            cluster: "east".into(),
            check: check.into(),
            status,
            detail: "seen".into(),
            hint: (status != Status::Pass).then(|| "do this".to_owned()),
        };
        let text = render(&[
            o("a", Status::Pass),
            o("b", Status::Warn),
            o("c", Status::Fail),
        ]);
        assert_eq!(
            text,
            "east\n  ✔ a: seen\n  ! b: seen\n      hint: do this\n  ✖ c: seen\n      hint: do this\n\n\
             3 checks: 1 passed, 1 warned, 1 failed, 0 skipped\n"
        );
        let json = serde_json::to_value(o("b", Status::Warn)).expect("json");
        assert_eq!(json["status"], "warn");
    }
}
