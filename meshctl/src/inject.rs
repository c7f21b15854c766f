//! `meshctl inject`: rewrites workload manifests so every pod runs behind a
//! Meshfed sidecar — an init container that installs the outbound
//! interception rules, and the sidecar as a native sidecar container (it
//! starts, and is ready, before the app).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use meshfed_trust::{ClusterCa, paths};
use serde_json::{Value, json};

use crate::cluster::*;
use crate::install::{Images, container, identity_client};
use crate::output::Format;

/// Pod template annotation: `LISTEN=APP ...`, the sidecar's inbound ports.
pub const INBOUND: &str = "meshfed.io/inbound";
/// Pod template annotation: `PORT=ID[,ID...] ...`, who may call an inbound port.
pub const ALLOW: &str = "meshfed.io/allow";
/// Pod template annotation: `NAME.NAMESPACE:PORT=LISTEN ...`, explicit
/// upstreams: the app (or a port-forward) dials LISTEN on the pod's loopback
/// to reach the service, besides the transparent interception.
pub const UPSTREAMS: &str = "meshfed.io/upstreams";
/// Pod template annotation: `"false"` leaves the workload alone.
pub const INJECT: &str = "meshfed.io/inject";

/// Label on every pod the sidecar was added to.
pub const INJECTED: &str = "meshfed.io/injected";

/// The uid the sidecar runs as; its own connections are not intercepted.
const SIDECAR_UID: i64 = 2102;
const OUTBOUND_PORT: u16 = 4140;
const SIDECAR_ADMIN_PORT: u16 = 9904;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl inject -f app.yaml --cluster east --ca ./east-ca | kubectl apply -f -
  kubectl get deploy api -n shop -o yaml | meshctl inject -f - --cluster east --ca ./east-ca

Inbound: callers' sidecars dial the port the Service targets, so point the Service's targetPort
at the sidecar's inbound port and annotate the pod template with meshfed.io/inbound: \"4143=8080\"
(sidecar port 4143, app port 8080). meshfed.io/allow: \"4143=spiffe://D/ns/web/sa/frontend\"
limits who may call; meshfed.io/upstreams: \"api.shop:8080=15001\" adds an explicit upstream on
127.0.0.1:15001; meshfed.io/inject: \"false\" skips a workload.")]
pub struct InjectArgs {
    /// Manifest file (several documents allowed); `-` reads standard input.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// The cluster the workloads run in (a DNS label).
    #[arg(long, value_parser = meshfed_trust::cluster_name)]
    pub cluster: String,
    /// The cluster's CA directory: its trust domain and root.crt (copied into
    /// a ConfigMap meshfed-trust in every namespace touched; no key is read).
    #[arg(long)]
    pub ca: PathBuf,
    /// The cluster's region.
    #[arg(long)]
    pub region: Option<String>,
    /// Namespace of documents that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub images: Images,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
}

pub fn run(a: InjectArgs) -> anyhow::Result<()> {
    let text = if a.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?
    };
    print!("{}", a.output.objects(&inject_text(&text, &a)?)?);
    Ok(())
}

/// The objects `meshctl inject` prints for `text`.
pub fn inject_text(text: &str, a: &InjectArgs) -> anyhow::Result<Vec<Value>> {
    let ca = ClusterCa::load(&a.ca)
        .with_context(|| format!("--ca {}: not a cluster CA directory", a.ca.display()))?;
    let roots = std::fs::read_to_string(a.ca.join(paths::ROOT_CERT))
        .with_context(|| format!("reading {}", a.ca.join(paths::ROOT_CERT).display()))?;
    let info = ClusterInfo {
        cluster: a.cluster.clone(),
        trust_domain: ca.trust_domain().clone(),
        region: a.region.clone(),
        gateway_port: GATEWAY_PORT,
        gateway_addresses: Vec::new(),
        admin: Default::default(),
        roots_pem: Some(roots),
        intermediate_pem: None,
    };
    inject(text, a, &info)
}

/// The documents of `text` with sidecars added, then a trust ConfigMap per
/// namespace that gained a sidecar.
pub fn inject(text: &str, a: &InjectArgs, info: &ClusterInfo) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).context("the manifests are not YAML")?;
    let mut out = Vec::new();
    let mut namespaces = BTreeSet::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let ns = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&a.namespace)
            .to_owned();
        let template = match kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                doc.pointer_mut("/spec/template")
            }
            "CronJob" => doc.pointer_mut("/spec/jobTemplate/spec/template"),
            "Pod" => Some(&mut doc),
            _ => None,
        };
        if let Some(template) = template {
            let name = format!("document {} ({kind})", i + 1);
            if add_sidecar(template, &ns, a, info).with_context(|| name)? {
                namespaces.insert(ns);
            }
        }
        out.push(doc);
    }
    let (_, trust) = info.config_maps();
    let trust = trust.expect("inject always has the roots");
    for ns in namespaces {
        let mut cm = serde_json::to_value(&trust)?;
        cm["apiVersion"] = "v1".into();
        cm["kind"] = "ConfigMap".into();
        cm["metadata"]["namespace"] = ns.into();
        out.push(cm);
    }
    Ok(out)
}

/// Adds the sidecar to a pod (template); `false` when it opts out or has one.
fn add_sidecar(
    pod: &mut Value,
    ns: &str,
    a: &InjectArgs,
    info: &ClusterInfo,
) -> anyhow::Result<bool> {
    let annotations = pod["metadata"]["annotations"].clone();
    let note = |k: &str| {
        annotations
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if note(INJECT).as_deref() == Some("false") {
        return Ok(false);
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        bail!("has no pod spec");
    };
    let has = |list: Option<&Value>| {
        list.and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|c| c["name"] == SIDECAR))
    };
    if has(spec.get("initContainers")) || has(spec.get("containers")) {
        return Ok(false);
    }
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let id = info
        .trust_domain
        .workload(ns, sa)
        .with_context(|| format!("identity of service account {ns}/{sa}"))?;
    let image = a.images.of(SIDECAR);
    let inbound = note(INBOUND).unwrap_or_default();
    let inbound_ports: Vec<u16> = inbound
        .split_whitespace()
        .map(|entry| {
            let listen = entry.split_once('=').map_or(entry, |(l, _)| l);
            let port = listen.rsplit(':').next().unwrap_or(listen);
            port.parse()
                .with_context(|| format!("{INBOUND}: {entry:?} is not LISTEN=APP"))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut ports = vec![("admin", SIDECAR_ADMIN_PORT)];
    let names: Vec<String> = (0..inbound_ports.len())
        .map(|i| format!("mesh-in-{i}"))
        .collect();
    ports.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(inbound_ports.iter().copied()),
    );
    let mut sidecar = container(SIDECAR, image.clone(), &ports);
    sidecar["args"] = json!(["run"]);
    sidecar["restartPolicy"] = "Always".into();
    sidecar["securityContext"]["runAsUser"] = SIDECAR_UID.into();
    sidecar["securityContext"]["runAsGroup"] = SIDECAR_UID.into();
    sidecar["resources"]["limits"]["memory"] = "64Mi".into();
    // The app starts only once the sidecar is ready to carry its calls.
    sidecar["startupProbe"] = json!({
        "httpGet": { "port": "admin", "path": "/ready" },
        "periodSeconds": 1, "failureThreshold": 30,
    });
    let (id_env, volumes, mounts) = identity_client(info, &id.to_string());
    let env = sidecar["env"].as_array_mut().expect("container has env");
    env.push(json!({ "name": "MESHFED_CLUSTER", "value": info.cluster }));
    if let Some(region) = &info.region {
        env.push(json!({ "name": "MESHFED_REGION", "value": region }));
    }
    env.extend([
        // Pods carry their node's zone label (Kubernetes 1.33+); empty otherwise.
        json!({ "name": "MESHFED_ZONE", "valueFrom": { "fieldRef": {
            "fieldPath": "metadata.labels['topology.kubernetes.io/zone']" } } }),
        json!({ "name": "MESHFED_DISCOVERY", "value": format!("{CONTROLLER}.{NAMESPACE}.svc:{DISCOVERY_PORT}") }),
        json!({ "name": "MESHFED_TRANSPARENT_LISTEN", "value": format!("127.0.0.1:{OUTBOUND_PORT}") }),
        json!({ "name": "MESHFED_ADMIN_LISTEN", "value": format!("0.0.0.0:{SIDECAR_ADMIN_PORT}") }),
    ]);
    if !inbound.is_empty() {
        env.push(json!({ "name": "MESHFED_INBOUND", "value": inbound }));
    }
    if let Some(allow) = note(ALLOW) {
        env.push(json!({ "name": "MESHFED_ALLOW", "value": allow }));
    }
    if let Some(upstreams) = note(UPSTREAMS) {
        for entry in upstreams.split_whitespace() {
            entry
                .parse::<meshfed_sidecar::Upstream>()
                .with_context(|| format!("{UPSTREAMS}: {entry:?}"))?;
        }
        env.push(json!({ "name": "MESHFED_UPSTREAMS", "value": upstreams }));
    }
    env.extend(id_env);
    sidecar["volumeMounts"] = mounts.into();

    let init = json!({
        "name": "meshfed-init",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["init-iptables", "--proxy-port", OUTBOUND_PORT.to_string(),
                 "--proxy-uid", SIDECAR_UID.to_string()],
        // Installing nat rules needs root and NET_ADMIN, only in this short-lived container.
        "securityContext": {
            "allowPrivilegeEscalation": false,
            // iptables takes its lock under /run.
            "readOnlyRootFilesystem": false,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "capabilities": { "drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "resources": { "requests": { "cpu": "10m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } },
    });
    let inits = spec.entry("initContainers").or_insert_with(|| json!([]));
    let inits = inits
        .as_array_mut()
        .context("initContainers is not a list")?;
    inits.insert(0, sidecar);
    inits.insert(0, init);
    let vols = spec.entry("volumes").or_insert_with(|| json!([]));
    let vols = vols.as_array_mut().context("volumes is not a list")?;
    vols.extend(volumes);
    let pod = pod.as_object_mut().context("a pod template is a map")?;
    let meta = pod.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    let labels = meta
        .as_object_mut()
        .context("metadata is a map")?
        .entry("labels")
        .or_insert_with(|| json!({}));
    if labels.is_null() {
        *labels = json!({});
    }
    if let Value::Object(l) = labels {
        l.insert(INJECTED.into(), "true".into());
    }
    Ok(true)
}
