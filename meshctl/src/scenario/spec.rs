//! The scenario file: what federation to build and a timeline of steps to
//! run against it. Parsed from YAML, then checked as a whole — every cluster,
//! process, traffic and step a step names must exist — so a mistake is
//! reported with where it is before anything starts. The format is
//! documented in `scenarios/README.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A whole scenario file.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub file: PathBuf,
    pub clusters: Vec<ClusterDef>,
    /// `(cluster, peer)`: cluster holds a Link to peer. `None`: every pair.
    pub links: Option<Vec<(String, String)>>,
    pub lease_ttl: Duration,
    pub leaf_ttl: Option<Duration>,
    /// `(cluster, FailoverPolicy manifest)`.
    pub policies: Vec<(String, Value)>,
    pub steps: Vec<Step>,
    /// The whole run, start-up included, must end within this.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterDef {
    pub name: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default = "one")]
    pub zones: u8,
    #[serde(default = "api_only")]
    pub exported: Vec<String>,
    #[serde(default)]
    pub callers: Vec<String>,
}

fn one() -> u8 {
    1
}

fn api_only() -> Vec<String> {
    vec!["api".into()]
}

/// One step of the timeline.
#[derive(Debug, Clone)]
pub struct Step {
    /// From 1, as people count.
    pub number: usize,
    /// What later steps call it (`since:`, `after:`).
    pub name: Option<String>,
    pub action: Action,
    /// For `wait`: the budget, measured from `since` (default: the end of
    /// the step before).
    pub within: Option<Duration>,
    pub since: Option<String>,
    /// For `wait`: how long to wait at most (default 30 s, or `within`
    /// plus 30 s).
    pub timeout: Option<Duration>,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    Traffic(Traffic),
    StopTraffic(String),
    Sleep(Duration),
    Wait(Condition),
    /// SIGKILL a process, or a pod (its app and sidecar, and its endpoint
    /// turns not ready).
    Kill(Target),
    /// SIGSTOP.
    Pause(Target),
    /// SIGCONT.
    Resume(Target),
    /// Start a killed process or pod again (a pod's endpoint turns ready).
    Start(Target),
    /// SIGTERM, then start again.
    Restart(Target),
    Partition(ClusterRef),
    Heal(ClusterRef),
    Degrade(Degrade),
    Undegrade(ClusterRef),
    Rotate(Rotate),
    Export(ServiceRef),
    Unexport(ServiceRef),
    Link(LinkRef),
    Unlink(LinkRef),
    Assert(Assertion),
    Probe(Probe),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Traffic {
    pub name: String,
    pub from: String,
    /// `api` (HTTP) or `echo` (TCP).
    pub service: String,
    /// Requests per second.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Stops by itself after this (default: at `stop-traffic`, or the end).
    #[serde(default, with = "humantime_serde_opt")]
    pub duration: Option<Duration>,
    /// `http` or `tcp` (default: api is http, echo tcp).
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The client pod: `client` (default) or one of the cluster's callers.
    #[serde(default = "default_caller")]
    pub caller: String,
}

fn default_rate() -> u32 {
    50
}

fn default_caller() -> String {
    "client".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Target {
    pub cluster: String,
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRef {
    pub cluster: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Degrade {
    pub cluster: String,
    #[serde(default, with = "humantime_serde_opt")]
    pub latency: Option<Duration>,
    /// Percent of packets lost.
    #[serde(default, deserialize_with = "percent_opt")]
    pub loss: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotate {
    /// `intermediate` (one cluster's) or `root` (the federation's).
    pub ca: CaKind,
    #[serde(default)]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKind {
    Intermediate,
    Root,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    pub cluster: String,
    pub service: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LinkRef {
    /// The cluster that holds the Link (and imports).
    pub cluster: String,
    pub peer: String,
}

/// What a `wait` waits for.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Condition {
    /// The last `calls` calls of `traffic` were all served by `cluster`.
    ServedBy {
        traffic: String,
        cluster: String,
        #[serde(default = "default_settle")]
        calls: usize,
    },
    /// Cluster `cluster`'s mirror of `service` from `origin` is in `state`.
    Mirror {
        cluster: String,
        service: String,
        origin: String,
        state: MirrorState,
    },
    /// A process answers its readiness check.
    Ready { cluster: String, process: String },
}

fn default_settle() -> usize {
    20
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MirrorState {
    /// Present with ready endpoints.
    Ready,
    /// Absent, or present with no ready endpoint: no traffic goes there.
    Withdrawn,
    /// Absent.
    Absent,
}

/// What an `assert` checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Assertion {
    /// Share of calls that succeeded, over the traffic so far (or since a step).
    SuccessRate {
        traffic: String,
        #[serde(deserialize_with = "percent")]
        min: f64,
        #[serde(default)]
        since: Option<String>,
    },
    /// Share of successful calls `cluster` served.
    ServedBy {
        traffic: String,
        cluster: String,
        #[serde(default, deserialize_with = "percent_opt")]
        min: Option<f64>,
        #[serde(default, deserialize_with = "percent_opt")]
        max: Option<f64>,
        #[serde(default)]
        since: Option<String>,
    },
    /// After step `after` ended, no call of `traffic` was served by
    /// `cluster` and the caller's sidecar sent it no request.
    NoRequestTo {
        traffic: String,
        cluster: String,
        after: String,
    },
    /// A Prometheus metric of a process, summed over the series whose
    /// labels match, compared with `value`.
    Metric {
        cluster: String,
        process: String,
        name: String,
        #[serde(default)]
        labels: std::collections::BTreeMap<String, String>,
        #[serde(default = "default_op")]
        op: String,
        value: f64,
        /// Compare the growth since the end of this step instead.
        #[serde(default)]
        since: Option<String>,
    },
    /// No mirror in `cluster` was written, deleted or added since step `since`.
    MirrorsUnchanged { cluster: String, since: String },
}

fn default_op() -> String {
    ">=".into()
}

/// A one-shot connection from a pod in `from`, and what it must get.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub from: String,
    pub to: ProbeTarget,
    /// TLS with this server name and no client certificate (omitted:
    /// plain HTTP).
    #[serde(default)]
    pub sni: Option<String>,
    pub expect: Expect,
    /// Through a caller's sidecar instead of a raw connection: call
    /// `service` as that client pod.
    #[serde(default)]
    pub caller: Option<String>,
    /// With `caller` and `expect: answered`: the cluster that must serve.
    #[serde(default)]
    pub served_by: Option<String>,
    /// With `caller` and `expect: answered`: the caller identity the
    /// serving sidecar must have verified.
    #[serde(default)]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeTarget {
    pub cluster: String,
    /// `gateway`, a process name, or with `caller`: the service (`api`).
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub service: Option<String>,
    /// Which of the process's listeners (default: its first).
    #[serde(default)]
    pub listener: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// An HTTP 2xx answer.
    Answered,
    /// No answer: the connection or handshake refused, or an error status.
    Refused,
}

mod humantime_serde_opt {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| super::duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration (e.g. 500ms, 3s): {e}"))
}

/// `99.5%`, or a plain number taken as percent.
fn parse_percent(v: &Value) -> Result<f64, String> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse().ok()),
        _ => None,
    };
    match n {
        Some(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "{v} is not a percentage from 0% to 100% (e.g. 99.5%)"
        )),
    }
}

fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    parse_percent(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn percent_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Option::<Value>::deserialize(d)?
        .map(|v| parse_percent(&v).map_err(serde::de::Error::custom))
        .transpose()
}

/// The step actions, as written.
const ACTIONS: &[&str] = &[
    "traffic",
    "stop-traffic",
    "sleep",
    "wait",
    "kill",
    "pause",
    "resume",
    "start",
    "restart",
    "partition",
    "heal",
    "degrade",
    "undegrade",
    "rotate",
    "export",
    "unexport",
    "link",
    "unlink",
    "assert",
    "probe",
];
const STEP_KEYS: &[&str] = &["name", "within", "since", "timeout"];

/// Reads and checks a scenario file.
pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, path).with_context(|| format!("{}: not a valid scenario", path.display()))
}

fn typed<T: DeserializeOwned>(v: &Value, at: &str) -> anyhow::Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| anyhow::anyhow!("{at}: {e}"))
}

pub fn parse(text: &str, file: &Path) -> anyhow::Result<Scenario> {
    let doc: Value = serde_saphyr::from_str(text).context("not YAML")?;
    let Value::Object(top) = doc else {
        bail!("expected a mapping with name, clusters and steps");
    };
    const TOP: &[&str] = &[
        "name",
        "description",
        "clusters",
        "links",
        "leaseTtl",
        "leafTtl",
        "failoverPolicies",
        "steps",
        "timeout",
    ];
    if let Some(k) = top.keys().find(|k| !TOP.contains(&k.as_str())) {
        bail!("unknown field `{k}`; expected one of: {}", TOP.join(", "));
    }
    let name: String = typed(top.get("name").context("`name` is missing")?, "name")?;
    meshfed_trust::cluster_name(&name)
        .map_err(|e| anyhow::anyhow!("name {name:?}: {e} (it names files and reports)"))?;
    let description = match top.get("description") {
        Some(v) => typed(v, "description")?,
        None => String::new(),
    };
    let clusters: Vec<ClusterDef> = typed(
        top.get("clusters").context("`clusters` is missing")?,
        "clusters",
    )?;
    check_clusters(&clusters)?;
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let cluster = |at: &str, c: &str| -> anyhow::Result<()> {
        if names.contains(&c) {
            Ok(())
        } else {
            bail!("{at}: no cluster {c:?} (clusters: {})", names.join(", "))
        }
    };

    let links = match top.get("links") {
        None => None,
        Some(Value::String(s)) if s == "all" => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let at = format!("links[{i}]");
                let s = item
                    .as_str()
                    .with_context(|| format!("{at}: expected \"A -> B\" or \"A <-> B\""))?;
                let (a, b, both) = if let Some((a, b)) = s.split_once("<->") {
                    (a.trim(), b.trim(), true)
                } else if let Some((a, b)) = s.split_once("->") {
                    (a.trim(), b.trim(), false)
                } else {
                    bail!("{at}: {s:?}: expected \"A -> B\" (A links to B) or \"A <-> B\"");
                };
                cluster(&at, a)?;
                cluster(&at, b)?;
                if a == b {
                    bail!("{at}: a cluster cannot link to itself");
                }
                out.push((a.to_owned(), b.to_owned()));
                if both {
                    out.push((b.to_owned(), a.to_owned()));
                }
            }
            Some(out)
        }
        Some(other) => bail!("links: expected `all` or a list, got {other}"),
    };

    let dur = |key: &str| -> anyhow::Result<Option<Duration>> {
        top.get(key)
            .map(|v| {
                let s: String = typed(v, key)?;
                duration(&s).map_err(|e| anyhow::anyhow!("{key}: {e}"))
            })
            .transpose()
    };
    let lease_ttl = dur("leaseTtl")?.unwrap_or(Duration::from_secs(3));
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&lease_ttl)
        || lease_ttl.subsec_nanos() != 0
    {
        bail!("leaseTtl: whole seconds from 1s to 60s");
    }
    let leaf_ttl = dur("leafTtl")?;
    if let Some(t) = leaf_ttl
        && t < Duration::from_secs(10)
    {
        bail!("leafTtl: at least 10s (certificates renew at 70% of it)");
    }
    let timeout = dur("timeout")?.unwrap_or(Duration::from_secs(300));

    let mut policies = Vec::new();
    if let Some(v) = top.get("failoverPolicies") {
        let items = v.as_array().context("failoverPolicies: expected a list")?;
        for (i, item) in items.iter().enumerate() {
            let at = format!("failoverPolicies[{i}]");
            policies.push(policy(item, &at, &cluster)?);
        }
    }

    let steps_v = top
        .get("steps")
        .and_then(Value::as_array)
        .context("`steps` is missing or not a list")?;
    let mut steps = Vec::new();
    for (i, v) in steps_v.iter().enumerate() {
        steps.push(step(v, i + 1)?);
    }
    let s = Scenario {
        name,
        description,
        file: file.to_owned(),
        clusters,
        links,
        lease_ttl,
        leaf_ttl,
        policies,
        steps,
        timeout,
    };
    check_steps(&s)?;
    Ok(s)
}

fn check_clusters(clusters: &[ClusterDef]) -> anyhow::Result<()> {
    if !(2..=8).contains(&clusters.len()) {
        bail!("clusters: give 2 to 8 clusters");
    }
    for (i, c) in clusters.iter().enumerate() {
        let at = format!("clusters[{i}] ({})", c.name);
        meshfed_trust::cluster_name(&c.name).map_err(|e| anyhow::anyhow!("{at}: name: {e}"))?;
        if clusters[..i].iter().any(|o| o.name == c.name) {
            bail!("{at}: {} is named twice", c.name);
        }
        if let Some(r) = &c.region {
            meshfed_trust::cluster_name(r).map_err(|e| anyhow::anyhow!("{at}: region: {e}"))?;
        }
        if !(1..=4).contains(&c.zones) {
            bail!("{at}: zones: 1 to 4");
        }
        for e in &c.exported {
            if !SERVICES.contains(&e.as_str()) {
                bail!("{at}: exported: no service {e:?} (services: api, echo)");
            }
        }
        if c.callers.len() > 8 {
            bail!("{at}: callers: at most 8");
        }
        for (k, sa) in c.callers.iter().enumerate() {
            meshfed_trust::cluster_name(sa)
                .map_err(|e| anyhow::anyhow!("{at}: callers: {sa:?}: {e}"))?;
            if RESERVED_PODS.contains(&sa.as_str()) || c.callers[..k].contains(sa) {
                bail!("{at}: callers: {sa:?} is taken");
            }
        }
    }
    Ok(())
}

/// The sample services.
pub const SERVICES: &[&str] = &["api", "echo"];
const RESERVED_PODS: &[&str] = &["client", "api", "echo", "identity", "controller", "gateway"];

fn policy(
    item: &Value,
    at: &str,
    cluster: &dyn Fn(&str, &str) -> anyhow::Result<()>,
) -> anyhow::Result<(String, Value)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Def {
        cluster: String,
        #[serde(default)]
        name: Option<String>,
        spec: Value,
    }
    let d: Def = typed(item, at)?;
    cluster(at, &d.cluster)?;
    let spec: meshfed_api::crd::FailoverPolicySpec = typed(&d.spec, &format!("{at}.spec"))?;
    if let Err(errors) = meshfed_mirror::validate_failover_policy(&spec) {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{at}.spec: {}", list.join("; "));
    }
    if !SERVICES.contains(&spec.service.as_str()) {
        bail!(
            "{at}.spec.service: no service {:?} (services: api, echo)",
            spec.service
        );
    }
    let name = d.name.unwrap_or_else(|| spec.service.clone());
    meshfed_trust::cluster_name(&name).map_err(|e| anyhow::anyhow!("{at}.name: {e}"))?;
    let manifest = serde_json::json!({
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "FailoverPolicy",
        "metadata": {"name": name, "namespace": crate::dev::SHOP},
        "spec": spec,
    });
    Ok((d.cluster, manifest))
}

fn step(v: &Value, number: usize) -> anyhow::Result<Step> {
    let at = format!("steps[{}] (step {number})", number - 1);
    let Value::Object(map) = v else {
        bail!("{at}: expected a mapping such as `- sleep: 2s`");
    };
    let actions: Vec<&String> = map
        .keys()
        .filter(|k| !STEP_KEYS.contains(&k.as_str()))
        .collect();
    let [key] = actions.as_slice() else {
        bail!(
            "{at}: give exactly one action ({}), got {}",
            ACTIONS.join(", "),
            if actions.is_empty() {
                "none".to_owned()
            } else {
                actions
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    };
    let body = &map[*key];
    let inner = format!("{at}: {key}");
    let action = match key.as_str() {
        "traffic" => Action::Traffic(typed(body, &inner)?),
        "stop-traffic" => Action::StopTraffic(typed(body, &inner)?),
        "sleep" => {
            let s: String = typed(body, &inner)?;
            Action::Sleep(duration(&s).map_err(|e| anyhow::anyhow!("{inner}: {e}"))?)
        }
        "wait" => Action::Wait(one_of(body, &inner)?),
        "kill" => Action::Kill(typed(body, &inner)?),
        "pause" => Action::Pause(typed(body, &inner)?),
        "resume" => Action::Resume(typed(body, &inner)?),
        "start" => Action::Start(typed(body, &inner)?),
        "restart" => Action::Restart(typed(body, &inner)?),
        "partition" => Action::Partition(typed(body, &inner)?),
        "heal" => Action::Heal(typed(body, &inner)?),
        "degrade" => Action::Degrade(typed(body, &inner)?),
        "undegrade" => Action::Undegrade(typed(body, &inner)?),
        "rotate" => Action::Rotate(typed(body, &inner)?),
        "export" => Action::Export(typed(body, &inner)?),
        "unexport" => Action::Unexport(typed(body, &inner)?),
        "link" => Action::Link(typed(body, &inner)?),
        "unlink" => Action::Unlink(typed(body, &inner)?),
        "assert" => Action::Assert(one_of(body, &inner)?),
        "probe" => Action::Probe(typed(body, &inner)?),
        other => bail!(
            "{at}: unknown action `{other}`; expected one of: {}",
            ACTIONS.join(", ")
        ),
    };
    let get_dur = |k: &str| -> anyhow::Result<Option<Duration>> {
        map.get(k)
            .map(|v| {
                let s: String = typed(v, &format!("{at}: {k}"))?;
                duration(&s).map_err(|e| anyhow::anyhow!("{at}: {k}: {e}"))
            })
            .transpose()
    };
    let name: Option<String> = map
        .get("name")
        .map(|v| typed(v, &format!("{at}: name")))
        .transpose()?;
    let since: Option<String> = map
        .get("since")
        .map(|v| typed(v, &format!("{at}: since")))
        .transpose()?;
    let within = get_dur("within")?;
    let timeout = get_dur("timeout")?;
    if !matches!(action, Action::Wait(_))
        && (within.is_some() || since.is_some() || timeout.is_some())
    {
        bail!("{at}: within, since and timeout belong to `wait` steps");
    }
    Ok(Step {
        number,
        name,
        action,
        within,
        since,
        timeout,
    })
}

/// A mapping with exactly one key naming the variant (`served-by: {...}`).
fn one_of<T: DeserializeOwned>(v: &Value, at: &str) -> anyhow::Result<T> {
    match v {
        Value::Object(m) if m.len() == 1 => typed(v, at),
        _ => bail!("{at}: expected a mapping with exactly one kind, e.g. `served-by: {{...}}`"),
    }
}

/// Cross-references: every name a step uses exists, and exists by then.
fn check_steps(s: &Scenario) -> anyhow::Result<()> {
    let spec = super::local::plan_spec(s, Path::new("/nonexistent"), None);
    let topology = crate::dev::plan(&spec);
    let cluster = |at: &str, c: &str| -> anyhow::Result<&crate::dev::ClusterTopology> {
        topology.cluster(c).map_err(|_| {
            let names: Vec<&str> = s.clusters.iter().map(|c| c.name.as_str()).collect();
            anyhow::anyhow!("{at}: no cluster {c:?} (clusters: {})", names.join(", "))
        })
    };
    let process = |at: &str, c: &str, p: &str| -> anyhow::Result<()> {
        let ct = cluster(at, c)?;
        if ct.process(p).is_err() {
            let names: Vec<&str> = ct.processes.iter().map(|p| p.name.as_str()).collect();
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
            },
            Action::Kill(t)
            | Action::Pause(t)
            | Action::Resume(t)
            | Action::Start(t)
            | Action::Restart(t) => match (&t.process, &t.pod) {
                (Some(p), None) => process(&at, &t.cluster, p)?,
                (None, Some(pod)) => {
                    process(&at, &t.cluster, pod)?;
                    process(&at, &t.cluster, &format!("{pod}-sidecar"))?;
                }
                _ => bail!("{at}: give either process or pod"),
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
                    min,
                    max,
                    since,
                } => {
                    seen(t)?;
                    cluster(&at, c)?;
                    earlier(since, &names)?;
                    if min.is_none() && max.is_none() {
                        bail!("{at}: served-by: give min, max or both");
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
                    ..
                } => {
                    process(&at, c, p)?;
                    earlier(since, &names)?;
                    if !OPS.contains(&op.as_str()) {
                        bail!("{at}: op: one of {}", OPS.join(" "));
                    }
                }
                Assertion::MirrorsUnchanged { cluster: c, since } => {
                    cluster(&at, c)?;
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
                            let pr = ct.process(proc_name)?;
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

/// Comparison operators of `metric` assertions.
pub const OPS: &[&str] = &[">", ">=", "==", "<=", "<"];
