//! The scenario file: what federation to build and a timeline of steps to
//! run against it. Parsed from YAML, then checked as a whole — every cluster,
//! process, traffic and step a step names must exist — so a mistake is
//! reported with where it is before anything starts. The format is
//! documented in `scenarios/README.md`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

mod parse;
mod refs;

pub use parse::load;
#[cfg(test)]
pub use parse::parse;

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
    /// Other versions of `api` (`v2`): a pod `api-VERSION` in the first
    /// zone behind a Service `api-VERSION` of its own.
    #[serde(default)]
    pub versions: Vec<String>,
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
    /// The budget on the kind provider, where it differs (`within: {local:
    /// 2s, kind: 13s}`: Kubernetes Leases run on longer clocks).
    pub within_kind: Option<Duration>,
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
    /// Restart every replica of a process one at a time, each ready before
    /// the next (`kubectl rollout restart` with `maxUnavailable: 0`).
    Rollout(Target),
    Partition(ClusterRef),
    Heal(ClusterRef),
    Degrade(Degrade),
    Undegrade(ClusterRef),
    Rotate(Rotate),
    Export(ServiceRef),
    Unexport(ServiceRef),
    Link(LinkRef),
    Unlink(LinkRef),
    /// Creates or replaces an HTTPRoute (`kubectl apply`). Boxed: a route
    /// is far larger than any other step.
    Route(Box<RouteApply>),
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
    /// Request headers every call carries (HTTP).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
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
    /// One replica of a replicated process (default: every replica).
    #[serde(default)]
    pub replica: Option<Replica>,
}

/// Which replica of a replicated process (`controller`) a step acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replica {
    /// The replica the cluster's Lease names when the step runs.
    Leader,
    /// A running replica the Lease does not name.
    Follower,
    /// By index, from 0 (locally `controller-N`; on kind the Nth running
    /// pod by name).
    Index(usize),
}

impl<'de> Deserialize<'de> for Replica {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let index = match &v {
            Value::String(s) if s == "leader" => return Ok(Replica::Leader),
            Value::String(s) if s == "follower" => return Ok(Replica::Follower),
            Value::String(s) => s.parse().ok(),
            Value::Number(n) => n.as_u64().and_then(|i| usize::try_from(i).ok()),
            _ => None,
        };
        index.map(Replica::Index).ok_or_else(|| {
            serde::de::Error::custom(format!("{v} is not leader, follower or an index (0, 1...)"))
        })
    }
}

impl std::fmt::Display for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replica::Leader => f.write_str("the leader"),
            Replica::Follower => f.write_str("a follower"),
            Replica::Index(i) => write!(f, "replica {i}"),
        }
    }
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

/// An HTTPRoute to apply in a cluster.
#[derive(Debug, Clone)]
pub struct RouteApply {
    pub cluster: String,
    pub route: meshfed_resources::route::HttpRoute,
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
    /// A process answers its readiness check (a replicated one: every replica).
    Ready { cluster: String, process: String },
    /// The cluster's Lease names a running controller replica, and (with
    /// `not`) one other than the replica that led when step `not` began.
    Leader {
        cluster: String,
        #[serde(default)]
        not: Option<String>,
    },
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

impl MirrorState {
    /// Whether a mirror found so (`None`: absent; `Some(ready)`) is in this state.
    pub fn holds(self, found: Option<bool>) -> bool {
        match self {
            MirrorState::Ready => found == Some(true),
            MirrorState::Withdrawn => found != Some(true),
            MirrorState::Absent => found.is_none(),
        }
    }

    /// A mirror found so, in words.
    pub fn describe(found: Option<bool>) -> &'static str {
        match found {
            None => "absent",
            Some(true) => "ready",
            Some(false) => "present without ready endpoints",
        }
    }
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
    /// Share of successful calls `cluster` served, or `service` (HTTP:
    /// `api`, or a version of it, `api-v2`).
    ServedBy {
        traffic: String,
        #[serde(default)]
        cluster: Option<String>,
        #[serde(default)]
        service: Option<String>,
        #[serde(default, deserialize_with = "percent_opt")]
        min: Option<f64>,
        #[serde(default, deserialize_with = "percent_opt")]
        max: Option<f64>,
        #[serde(default)]
        since: Option<String>,
    },
    /// The `percentile` (default 50) of answered calls' latency is within
    /// bounds: over the whole traffic, or the calls sent after `since`.
    Latency {
        traffic: String,
        #[serde(default = "median")]
        percentile: f64,
        #[serde(default, with = "humantime_serde_opt")]
        min: Option<Duration>,
        #[serde(default, with = "humantime_serde_opt")]
        max: Option<Duration>,
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
        /// Compare per call of this traffic (sent since `since`, if given):
        /// the metric divided by the number of calls.
        #[serde(default, rename = "perCall")]
        per_call: Option<String>,
    },
    /// No mirror in `cluster` was written, deleted or added since step `since`.
    MirrorsUnchanged { cluster: String, since: String },
    /// `cluster`'s mirror of `service` from `origin` was never seen in
    /// `state` from the end of step `since` to this assertion (sampled all
    /// along, every 50 ms locally).
    MirrorNever {
        cluster: String,
        service: String,
        origin: String,
        state: MirrorState,
        since: String,
    },
}

fn median() -> f64 {
    50.0
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

/// The sample services.
pub const SERVICES: &[&str] = &["api", "echo"];

/// Comparison operators of `metric` assertions.
pub const OPS: &[&str] = &[">", ">=", "==", "<=", "<"];
