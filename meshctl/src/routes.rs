//! `meshctl routes`: every HTTPRoute attached to a Service (GAMMA), rule by
//! rule: what it matches, its backends with their weights and the share
//! each weight gives, the share the callers' sidecars observed (from their
//! `meshfed_sidecar_route_requests_total`: the sidecars given, or on
//! Kubernetes every meshed pod's, read through the API server), and
//! whether the Service's controller accepted the route and resolved its
//! backends, with the reason when not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use meshfed_resources::route::{
    CONTROLLER_NAME, HttpRoute, HttpRouteParentRefs, HttpRouteRulesMatches, RouteCondition,
    condition, is_service_ref, mirror_fraction,
};
use meshfed_runtime::port;
use serde::Serialize;

use crate::dev::{Caller, Net};
use crate::output::{Report, table};
use crate::scenario::probe::{Sample, parse_metrics};
use crate::target::{Cluster, TargetArgs};

#[derive(Debug, Args)]
#[command(after_help = examples())]
pub struct RoutesArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Report,
    /// A calling sidecar whose metrics the observed share is summed over:
    /// its admin listener (HOST:PORT), or on Kubernetes its pod
    /// (NAMESPACE/POD, read through the API server's pod proxy, which
    /// needs `get` on `pods/proxy`). Repeatable.
    #[arg(long = "metrics")]
    pub metrics: Vec<MetricsSource>,
    /// On Kubernetes: the observed share over every running meshed pod
    /// (labelled meshfed.io/injected=true; at most 200), each read through
    /// the API server's pod proxy.
    #[arg(long)]
    pub observed: bool,
}

/// Most pods `--observed` reads, and how many at once.
const MAX_OBSERVED_PODS: u32 = 200;
const OBSERVED_AT_ONCE: usize = 8;

/// Where a calling sidecar's metrics are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsSource {
    /// Its admin listener.
    Addr(SocketAddr),
    /// Its pod, through the API server's pod proxy to the sidecar's admin port.
    Pod { namespace: String, name: String },
}

impl std::str::FromStr for MetricsSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse() {
            return Ok(Self::Addr(addr));
        }
        let pod = s.split_once('/').filter(|(ns, name)| {
            meshfed_api::sni::is_dns_label(ns)
                && !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(meshfed_api::sni::is_dns_label)
        });
        match pod {
            Some((namespace, name)) => Ok(Self::Pod {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            None => Err(format!(
                "{s:?} is neither HOST:PORT (a sidecar's admin listener) nor NAMESPACE/POD (a \
                 pod of a Kubernetes cluster)"
            )),
        }
    }
}

impl std::fmt::Display for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "the sidecar at {a}"),
            Self::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
        }
    }
}

/// The calling sidecars' metrics, and what could not be read.
#[derive(Debug, Default)]
pub struct Observed {
    pub samples: Vec<Sample>,
    /// Sidecars read.
    pub read: usize,
    /// `--observed` only: pods whose metrics could not be read, and why
    /// (the share is over the others).
    pub unread: Vec<String>,
    /// `--observed` only: more meshed pods than were read.
    pub more: bool,
}

/// Reads the metrics of `sources`, and with `observed` of every meshed pod
/// of a Kubernetes cluster. A source named explicitly that cannot be read
/// is an error; a pod `observed` found that cannot is reported in `unread`.
pub async fn read_metrics(
    cluster: &Cluster,
    sources: &[MetricsSource],
    observed: bool,
) -> anyhow::Result<Observed> {
    let mut out = Observed::default();
    for source in sources {
        let text = metrics_text(cluster, source)
            .await
            .map_err(|e| anyhow::anyhow!("reading the metrics of {source}: {e:#}"))?;
        out.samples.extend(parse_metrics(&text));
        out.read += 1;
    }
    if !observed {
        return Ok(out);
    }
    let Cluster::Kube(kube) = cluster else {
        anyhow::bail!(
            "--observed reads the sidecars of a Kubernetes cluster (--context); for {} give \
             each calling sidecar's admin listener with --metrics HOST:PORT (meshctl dev's \
             topology.json lists them)",
            cluster.describe()
        );
    };
    let (pods, more) = kube.meshed_pods(MAX_OBSERVED_PODS).await?;
    out.more = more;
    let reads = futures::stream::iter(pods)
        .map(|(namespace, name)| async move {
            let source = MetricsSource::Pod { namespace, name };
            let text = metrics_text(cluster, &source).await;
            (source, text)
        })
        .buffer_unordered(OBSERVED_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    for (source, text) in reads {
        match text {
            Ok(text) => {
                out.samples.extend(parse_metrics(&text));
                out.read += 1;
            }
            Err(e) => out.unread.push(format!("{source}: {e:#}")),
        }
    }
    out.unread.sort();
    Ok(out)
}

async fn metrics_text(cluster: &Cluster, source: &MetricsSource) -> anyhow::Result<String> {
    match (source, cluster) {
        (MetricsSource::Addr(addr), _) => {
            let caller = Caller::from(&Net::Host, Duration::from_secs(3));
            caller
                .get_text(*addr, "/metrics")
                .await
                .map_err(anyhow::Error::msg)
        }
        (MetricsSource::Pod { namespace, name }, Cluster::Kube(kube)) => {
            let port = port::SIDECAR_ADMIN;
            kube.pod_text(namespace, name, port, "/metrics").await
        }
        (MetricsSource::Pod { .. }, Cluster::File(_)) => anyhow::bail!(
            "a pod's metrics are read through a Kubernetes API server (--context); for {} \
             give the sidecar's admin listener, HOST:PORT",
            cluster.describe()
        ),
    }
}

/// One rule of one route on one Service.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleRow {
    /// `namespace/name`, with `:port` when the route is limited to one.
    pub service: String,
    pub route: String,
    pub rule: usize,
    /// What the rule matches, in short (`path /api`, `header x-canary=1`).
    pub matches: Vec<String>,
    pub backends: Vec<BackendRow>,
    /// Where matched requests are copied (`RequestMirror`): the backend and
    /// the percent of requests.
    pub mirrors: Vec<(String, f64)>,
    /// `Accepted` of the Service's entry: `None` until the controller wrote one.
    pub accepted: Option<Verdict>,
    pub resolved_refs: Option<Verdict>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendRow {
    /// `name.namespace:port`, as the sidecars' metrics name it.
    pub backend: String,
    pub weight: u32,
    /// The share the weights give, in percent.
    pub share: f64,
    /// The share the sidecars sent, in percent, and the requests it is of.
    pub observed: Option<f64>,
    pub requests: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub status: String,
    pub reason: String,
    pub message: String,
}

pub async fn run(a: RoutesArgs) -> anyhow::Result<()> {
    let cluster = a.target.open().await?;
    let routes = cluster.routes().await?;
    let observed = read_metrics(&cluster, &a.metrics, a.observed).await?;
    for why in &observed.unread {
        eprintln!("warning: not counted in the observed share: {why}");
    }
    if observed.more {
        eprintln!(
            "warning: the observed share is over the first {MAX_OBSERVED_PODS} meshed pods \
             only; name the callers with --metrics NAMESPACE/POD for an exact one"
        );
    }
    let rows = rows(&routes, &observed.samples);
    match a.output {
        Report::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Report::Text => print!("{}", render(&rows, !a.metrics.is_empty() || a.observed)),
    }
    Ok(())
}

/// The rows of every route with a Service parent, by Service then route.
pub fn rows(routes: &[HttpRoute], metrics: &[Sample]) -> Vec<RuleRow> {
    let mut out = Vec::new();
    for r in routes {
        let ns = r.metadata.namespace.as_deref().unwrap_or("default");
        let name = r.metadata.name.as_deref().unwrap_or_default();
        for parent in r
            .spec
            .parent_refs
            .iter()
            .flatten()
            .filter(|p| is_service(p))
        {
            let pns = parent.namespace.as_deref().unwrap_or(ns);
            let service = match parent.port {
                Some(port) => format!("{pns}/{}:{port}", parent.name),
                None => format!("{pns}/{}", parent.name),
            };
            let entry = r.status.iter().flat_map(|s| s.parents.iter()).find(|p| {
                p.controller_name == CONTROLLER_NAME
                    && p.parent_ref.name == parent.name
                    && p.parent_ref.port == parent.port
                    && p.parent_ref.namespace == parent.namespace
            });
            let verdict = |t: &str| {
                entry
                    .and_then(|e| e.conditions.iter().find(|c| c.type_ == t))
                    .map(of)
            };
            for (i, rule) in r.spec.rules.iter().flatten().enumerate() {
                let backends = rule.backend_refs.iter().flatten();
                let total: u64 = backends
                    .clone()
                    .map(|b| u64::try_from(b.weight.unwrap_or(1)).unwrap_or(0))
                    .sum();
                let route = format!("{ns}/{name}");
                let mut backends: Vec<BackendRow> = backends
                    .map(|b| {
                        let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
                        let bns = b.namespace.as_deref().unwrap_or(ns);
                        let port = b.port.unwrap_or_default();
                        let backend = format!("{}.{bns}:{port}", b.name);
                        let requests = sent(metrics, &route, i, &backend);
                        BackendRow {
                            share: if total == 0 {
                                0.0
                            } else {
                                100.0 * f64::from(weight) / total as f64
                            },
                            backend,
                            weight,
                            observed: None,
                            requests,
                        }
                    })
                    .collect();
                let sum: u64 = backends.iter().filter_map(|b| b.requests).sum();
                for b in &mut backends {
                    b.observed = b
                        .requests
                        .filter(|_| sum > 0)
                        .map(|n| 100.0 * n as f64 / sum as f64);
                }
                let mirrors = rule
                    .filters
                    .iter()
                    .flatten()
                    .filter_map(|f| f.request_mirror.as_ref())
                    .map(|m| {
                        let b = &m.backend_ref;
                        let bns = b.namespace.as_deref().unwrap_or(ns);
                        let (n, d) = mirror_fraction(m);
                        let percent = 100.0 * f64::from(n) / f64::from(d);
                        let port = b.port.unwrap_or_default();
                        (format!("{}.{bns}:{port}", b.name), percent)
                    })
                    .collect();
                out.push(RuleRow {
                    service: service.clone(),
                    route,
                    rule: i,
                    matches: matches(rule.matches.as_deref()),
                    backends,
                    mirrors,
                    accepted: verdict(condition::ACCEPTED),
                    resolved_refs: verdict(condition::RESOLVED_REFS),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.service, &a.route, a.rule).cmp(&(&b.service, &b.route, b.rule)));
    out
}

fn is_service(p: &HttpRouteParentRefs) -> bool {
    is_service_ref(p.group.as_deref(), p.kind.as_deref(), "Gateway")
}

fn of(c: &RouteCondition) -> Verdict {
    Verdict {
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    }
}

/// Requests the sidecars sent to `backend` by rule `rule` of `route`;
/// `None` when no sidecar's metrics were read or none has the series.
fn sent(metrics: &[Sample], route: &str, rule: usize, backend: &str) -> Option<u64> {
    let rule = rule.to_string();
    let mut found = None;
    for s in metrics.iter().filter(|s| {
        s.name == "meshfed_sidecar_route_requests_total"
            && s.labels.get("route").map(String::as_str) == Some(route)
            && s.labels.get("rule") == Some(&rule)
            && s.labels.get("backend").map(String::as_str) == Some(backend)
    }) {
        *found.get_or_insert(0) += s.value as u64;
    }
    found
}

fn matches(m: Option<&[HttpRouteRulesMatches]>) -> Vec<String> {
    let Some(m) = m.filter(|m| !m.is_empty()) else {
        return vec!["any".into()];
    };
    m.iter()
        .map(|m| {
            let mut parts = Vec::new();
            if let Some(p) = &m.path {
                let kind = p
                    .r#type
                    .as_ref()
                    .map_or("PathPrefix".to_owned(), |t| format!("{t:?}"));
                parts.push(format!("{kind} {}", p.value.as_deref().unwrap_or("/")));
            }
            if let Some(method) = &m.method {
                parts.push(format!("{method:?}").to_uppercase());
            }
            for h in m.headers.iter().flatten() {
                parts.push(format!("header {}={}", h.name, h.value));
            }
            for q in m.query_params.iter().flatten() {
                parts.push(format!("query {}={}", q.name, q.value));
            }
            if parts.is_empty() {
                "any".into()
            } else {
                parts.join(", ")
            }
        })
        .collect()
}

/// One line per backend; the route's verdict on its rules' first line.
pub fn render(rows: &[RuleRow], observed: bool) -> String {
    if rows.is_empty() {
        return "no HTTPRoute is attached to a Service\n".into();
    }
    let mut header = vec![
        "SERVICE", "ROUTE", "RULE", "MATCHES", "BACKEND", "WEIGHT", "SHARE",
    ];
    if observed {
        header.push("OBSERVED");
    }
    header.push("STATUS");
    let mut lines = Vec::new();
    for r in rows {
        let status = status(r);
        for (j, b) in r.backends.iter().enumerate() {
            let first = j == 0;
            let mut line = vec![
                if first {
                    r.service.clone()
                } else {
                    String::new()
                },
                if first {
                    r.route.clone()
                } else {
                    String::new()
                },
                if first {
                    format!("#{}", r.rule)
                } else {
                    String::new()
                },
                if first {
                    r.matches.join(" | ")
                } else {
                    String::new()
                },
                b.backend.clone(),
                b.weight.to_string(),
                format!("{:.1}%", b.share),
            ];
            if observed {
                line.push(b.observed.map_or_else(
                    || "-".into(),
                    |o| format!("{o:.1}% of {}", b.requests.unwrap_or_default()),
                ));
            }
            line.push(if first { status.clone() } else { String::new() });
            lines.push(line);
        }
        for (backend, percent) in &r.mirrors {
            let mut line = vec![
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("{backend} (mirror)"),
                "-".into(),
                format!("{percent:.1}% copied"),
            ];
            if observed {
                line.push(String::new());
            }
            line.push(String::new());
            lines.push(line);
        }
        if r.backends.is_empty() {
            let mut line = vec![
                r.service.clone(),
                r.route.clone(),
                format!("#{}", r.rule),
                r.matches.join(" | "),
                "(none: answered 500)".into(),
                String::new(),
                String::new(),
            ];
            if observed {
                line.push(String::new());
            }
            line.push(status);
            lines.push(line);
        }
    }
    table(&header, &lines)
}

/// `Accepted`, or the first condition that is not, with why.
fn status(r: &RuleRow) -> String {
    let bad = [&r.accepted, &r.resolved_refs]
        .into_iter()
        .flatten()
        .find(|v| v.status != "True");
    match (&r.accepted, bad) {
        (None, _) => "not yet seen by the controller".into(),
        (_, Some(v)) => format!("{}: {}", v.reason, v.message),
        (Some(_), None) => "Accepted".into(),
    }
}

/// Routes a Service's controller refused, with why: for `meshctl check`.
pub fn rejected(routes: &[HttpRoute]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in rows(routes, &[]) {
        let bad = [&r.accepted, &r.resolved_refs]
            .into_iter()
            .flatten()
            .find(|v| v.status != "True");
        if let Some(v) = bad {
            out.entry(format!("{} on {}", r.route, r.service))
                .or_insert_with(|| format!("{}: {}", v.reason, v.message));
        }
    }
    out
}

fn examples() -> String {
    let admin = port::SIDECAR_ADMIN;
    format!(
        "Examples:
  meshctl routes --context east
  meshctl routes --context east --observed
  meshctl routes --context east --metrics shop/frontend-7d4b9-x2kqz
  meshctl routes --state ./east -o json
  meshctl routes --state ./east --metrics 127.0.0.1:{admin} --metrics 127.0.0.2:{admin}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 8080}, {name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}, headers: [{name: x-canary, value: "1"}]}]
    backendRefs: [{name: api-v2, port: 8080}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api-west, port: 8080}, percent: 25}}]
  - backendRefs: [{name: api, port: 8080, weight: 90}, {name: api-west, port: 8080, weight: 10}]
status:
  parents:
  - parentRef: {group: "", kind: Service, name: api, port: 8080}
    controllerName: meshfed.io/mesh-controller
    conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z"}
    - {type: ResolvedRefs, status: "False", reason: BackendNotFound, message: "backend Service shop/api-v2 not found", lastTransitionTime: "2026-01-01T00:00:00Z"}
"#;

    /// Two sidecars' counts of rule 1's backends.
    const METRICS: [&str; 2] = [
        "meshfed_sidecar_route_requests_total{service=\"api.shop:8080\",route=\"shop/api-split\",rule=\"1\",backend=\"api.shop:8080\"} 170\n\
         meshfed_sidecar_route_requests_total{service=\"api.shop:8080\",route=\"shop/api-split\",rule=\"1\",backend=\"api-west.shop:8080\"} 20\n",
        "meshfed_sidecar_route_requests_total{service=\"api.shop:8080\",route=\"shop/api-split\",rule=\"1\",backend=\"api.shop:8080\"} 10\n",
    ];

    #[test]
    fn each_rule_shows_its_weights_the_observed_split_and_the_verdict() {
        let route: HttpRoute = serde_saphyr::from_str(ROUTE).expect("route");
        let samples: Vec<Sample> = METRICS.iter().flat_map(|m| parse_metrics(m)).collect();
        let rows = rows(std::slice::from_ref(&route), &samples);
        assert_eq!(rows.len(), 2, "the Gateway parent is not a Service's");
        let split = &rows[1];
        assert_eq!(split.service, "shop/api:8080");
        let got: Vec<_> = split
            .backends
            .iter()
            .map(|b| {
                (
                    b.backend.as_str(),
                    b.weight,
                    b.share,
                    b.observed,
                    b.requests,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("api.shop:8080", 90, 90.0, Some(90.0), Some(180)),
                ("api-west.shop:8080", 10, 10.0, Some(10.0), Some(20)),
            ]
        );
        assert_eq!(rows[0].matches, ["PathPrefix /v2, header x-canary=1"]);
        assert_eq!(rows[0].mirrors, [("api-west.shop:8080".to_owned(), 25.0)]);
        let text = render(&rows, true);
        assert!(
            text.contains("BackendNotFound: backend Service shop/api-v2 not found"),
            "{text}"
        );
        assert!(text.contains("90.0% of 180"), "{text}");
        assert!(text.contains("api-west.shop:8080 (mirror)"), "{text}");
        let rejected = rejected(&[route]);
        assert_eq!(
            rejected
                .get("shop/api-split on shop/api:8080")
                .map(String::as_str),
            Some("BackendNotFound: backend Service shop/api-v2 not found")
        );
    }
}
