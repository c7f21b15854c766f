//! Reading a scenario file: YAML into the spec's types, each part checked
//! where it is read, so an error says which step or cluster is wrong.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Action, ClusterDef, RouteApply, SERVICES, Scenario, Step, duration};

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
    "rollout",
    "partition",
    "heal",
    "degrade",
    "undegrade",
    "rotate",
    "export",
    "unexport",
    "link",
    "unlink",
    "route",
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
    meshfed_runtime::cluster_name(&name)
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
    super::refs::check_steps(&s)?;
    Ok(s)
}

fn check_clusters(clusters: &[ClusterDef]) -> anyhow::Result<()> {
    if !(2..=8).contains(&clusters.len()) {
        bail!("clusters: give 2 to 8 clusters");
    }
    for (i, c) in clusters.iter().enumerate() {
        let at = format!("clusters[{i}] ({})", c.name);
        meshfed_runtime::cluster_name(&c.name).map_err(|e| anyhow::anyhow!("{at}: name: {e}"))?;
        if clusters[..i].iter().any(|o| o.name == c.name) {
            bail!("{at}: {} is named twice", c.name);
        }
        if let Some(r) = &c.region {
            meshfed_runtime::cluster_name(r).map_err(|e| anyhow::anyhow!("{at}: region: {e}"))?;
        }
        if !(1..=4).contains(&c.zones) {
            bail!("{at}: zones: 1 to 4");
        }
        for e in &c.exported {
            if !SERVICES.contains(&e.as_str()) {
                bail!("{at}: exported: no service {e:?} (services: api, echo)");
            }
        }
        if c.versions.len() > 4 {
            bail!("{at}: versions: at most 4");
        }
        for (k, v) in c.versions.iter().enumerate() {
            let digits = v.strip_prefix('v').unwrap_or_default();
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                bail!("{at}: versions: {v:?} is not v followed by a number (v2)");
            }
            if c.versions[..k].contains(v) {
                bail!("{at}: versions: {v:?} is named twice");
            }
        }
        if c.callers.len() > 8 {
            bail!("{at}: callers: at most 8");
        }
        for (k, sa) in c.callers.iter().enumerate() {
            meshfed_runtime::cluster_name(sa)
                .map_err(|e| anyhow::anyhow!("{at}: callers: {sa:?}: {e}"))?;
            if RESERVED_PODS.contains(&sa.as_str()) || c.callers[..k].contains(sa) {
                bail!("{at}: callers: {sa:?} is taken");
            }
        }
    }
    Ok(())
}

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
    let spec: meshfed_resources::crd::FailoverPolicySpec = typed(&d.spec, &format!("{at}.spec"))?;
    if let Err(errors) = meshfed_controller::validate_failover_policy(&spec) {
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
    meshfed_runtime::cluster_name(&name).map_err(|e| anyhow::anyhow!("{at}.name: {e}"))?;
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
        "rollout" => Action::Rollout(typed(body, &inner)?),
        "partition" => Action::Partition(typed(body, &inner)?),
        "heal" => Action::Heal(typed(body, &inner)?),
        "degrade" => Action::Degrade(typed(body, &inner)?),
        "undegrade" => Action::Undegrade(typed(body, &inner)?),
        "rotate" => Action::Rotate(typed(body, &inner)?),
        "export" => Action::Export(typed(body, &inner)?),
        "unexport" => Action::Unexport(typed(body, &inner)?),
        "link" => Action::Link(typed(body, &inner)?),
        "unlink" => Action::Unlink(typed(body, &inner)?),
        "route" => Action::Route(Box::new(route(body, &inner)?)),
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
    let (within, within_kind) = match map.get("within") {
        // Per provider: `{local: 2s, kind: 13s}`.
        Some(Value::Object(by)) => {
            let one = |k: &str| -> anyhow::Result<Duration> {
                let v = by.get(k).with_context(|| {
                    format!("{at}: within: give local and kind, e.g. {{local: 2s, kind: 13s}}")
                })?;
                let s: String = typed(v, &format!("{at}: within.{k}"))?;
                duration(&s).map_err(|e| anyhow::anyhow!("{at}: within.{k}: {e}"))
            };
            if let Some(k) = by.keys().find(|k| !["local", "kind"].contains(&k.as_str())) {
                bail!("{at}: within: unknown provider `{k}`; expected local and kind");
            }
            (Some(one("local")?), Some(one("kind")?))
        }
        _ => {
            let w = get_dur("within")?;
            (w, w)
        }
    };
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
        within_kind,
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

/// `route: {cluster: C, manifest: {HTTPRoute}}`: the manifest must be an
/// HTTPRoute the Gateway API's types read; its namespace defaults to the
/// sample services'.
fn route(body: &Value, at: &str) -> anyhow::Result<RouteApply> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        cluster: String,
        manifest: Value,
    }
    let b: Body = typed(body, at)?;
    let api = b.manifest["apiVersion"].as_str().unwrap_or_default();
    let kind = b.manifest["kind"].as_str().unwrap_or_default();
    let group = format!("{}/", meshfed_resources::route::GROUP);
    if kind != meshfed_resources::route::KIND || !api.starts_with(&group) {
        bail!("{at}: manifest: expected an HTTPRoute of {group}v1, got {kind} of {api:?}");
    }
    let mut route: meshfed_resources::route::HttpRoute =
        typed(&b.manifest, &format!("{at}: manifest"))?;
    if route.metadata.name.is_none() {
        bail!("{at}: manifest: metadata.name is missing");
    }
    route
        .metadata
        .namespace
        .get_or_insert_with(|| crate::dev::SHOP.to_owned());
    Ok(RouteApply {
        cluster: b.cluster,
        route,
    })
}
