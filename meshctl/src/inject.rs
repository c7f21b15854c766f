//! `meshctl inject`: rewrites workload manifests so every pod runs behind a
//! Meshfed sidecar — an init container that installs the interception
//! rules (outbound, and inbound unless the pod names explicit inbound
//! ports), and the sidecar as a native sidecar container (it starts, and is
//! ready, before the app).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use meshfed_sidecar::Plaintext;
use meshfed_trust::{ClusterCa, paths};
use serde_json::{Value, json};

use crate::cluster::*;
use crate::install::{Images, container, identity_client};
use crate::output::Format;

/// Pod template annotation: `LISTEN=APP ...`, explicit inbound ports
/// instead of transparent inbound (the Service targets LISTEN).
pub const INBOUND: &str = "meshfed.io/inbound";
/// Pod template annotation: `PORT=ID[,ID...] ...`, who may call an inbound
/// port (an app port; with explicit inbound, a LISTEN port).
pub const ALLOW: &str = "meshfed.io/allow";
/// Pod template (or Namespace) annotation: `permissive` or `strict`, what
/// callers outside the mesh get on the app's ports (transparent inbound).
pub const INBOUND_POLICY: &str = "meshfed.io/inbound-policy";
/// Pod template annotation: `PORT=strict|permissive ...`, a port's own policy.
pub const INBOUND_PORT_POLICY: &str = "meshfed.io/inbound-port-policy";
/// Pod template annotation: `PORT ...` (or comma-separated), inbound ports
/// never intercepted (transparent inbound).
pub const SKIP_INBOUND_PORTS: &str = "meshfed.io/skip-inbound-ports";
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
/// The sidecar's inbound transparent listener.
const INBOUND_PORT: u16 = 4143;
const SIDECAR_ADMIN_PORT: u16 = 9904;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl inject -f app.yaml --cluster east --ca ./east-ca | kubectl apply -f -
  kubectl get deploy api -n shop -o yaml | meshctl inject -f - --cluster east --ca ./east-ca

Inbound is transparent: the pod's inbound TCP is redirected to the sidecar, so Services keep their
targetPort and the app its port. meshfed.io/allow: \"8080=spiffe://D/ns/web/sa/frontend\" limits
who may call app port 8080; meshfed.io/inbound-policy: \"strict\" (on the pod template, or on a
Namespace in the same input) refuses callers outside the mesh (default permissive: served with no
caller ID); meshfed.io/inbound-port-policy: \"9090=strict\" sets one port's;
meshfed.io/skip-inbound-ports: \"22 9000\" leaves ports alone. Hosts without iptables: annotate
meshfed.io/inbound: \"4143=8080\" (explicit sidecar port 4143, app port 8080; point the Service's
targetPort at 4143). meshfed.io/upstreams: \"api.shop:8080=15001\" adds an explicit upstream on
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
    // Namespaces in the same input give their pods a default policy (the
    // API server's are not read).
    let mut policies = BTreeMap::new();
    for doc in docs.iter().filter(|d| d["kind"] == "Namespace") {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        if let Some(p) = doc["metadata"]["annotations"][INBOUND_POLICY].as_str() {
            let policy =
                parse_policy(p).with_context(|| format!("Namespace {name}: {INBOUND_POLICY}"))?;
            policies.insert(name.to_owned(), policy);
        }
    }
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
            let ns_policy = policies.get(&ns).copied();
            if add_sidecar(template, &ns, ns_policy, a, info).with_context(|| name)? {
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
    ns_policy: Option<Plaintext>,
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

    // Explicit inbound ports, or else transparent inbound.
    let transparent = inbound.is_empty();
    let skip_ports = match note(SKIP_INBOUND_PORTS) {
        Some(_) if !transparent => {
            bail!("{SKIP_INBOUND_PORTS} is for transparent inbound; the pod names {INBOUND}")
        }
        Some(list) => list
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<u16>()
                    .with_context(|| format!("{SKIP_INBOUND_PORTS}: {p:?} is not a port"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let policy = match note(INBOUND_POLICY) {
        Some(p) => Some(parse_policy(&p).context(INBOUND_POLICY)?),
        None => ns_policy,
    };
    let port_policies = note(INBOUND_PORT_POLICY);
    for entry in port_policies.iter().flat_map(|p| p.split_whitespace()) {
        entry
            .parse::<meshfed_sidecar::PortPolicy>()
            .with_context(|| format!("{INBOUND_PORT_POLICY}: {entry:?}"))?;
    }

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
    if transparent {
        ports.push(("mesh-in", INBOUND_PORT));
    }
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
    if transparent {
        env.extend([
            json!({ "name": "MESHFED_INBOUND_TRANSPARENT", "value": format!("0.0.0.0:{INBOUND_PORT}") }),
            json!({ "name": "MESHFED_INBOUND_POLICY", "value": policy.unwrap_or_default().as_str() }),
        ]);
    } else {
        env.push(json!({ "name": "MESHFED_INBOUND", "value": inbound }));
    }
    if let Some(p) = port_policies {
        env.push(json!({ "name": "MESHFED_INBOUND_PORT_POLICY", "value": p }));
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

    let mut init_args: Vec<String> = [
        "init-iptables",
        "--proxy-port",
        &OUTBOUND_PORT.to_string(),
        "--proxy-uid",
        &SIDECAR_UID.to_string(),
    ]
    .map(str::to_owned)
    .into();
    if transparent {
        init_args.extend(
            [
                "--inbound-proxy-port",
                &INBOUND_PORT.to_string(),
                "--admin-port",
                &SIDECAR_ADMIN_PORT.to_string(),
            ]
            .map(str::to_owned),
        );
        for p in skip_ports {
            init_args.extend(["--inbound-skip-port".to_owned(), p.to_string()]);
        }
    }
    let init = json!({
        "name": "meshfed-init",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": init_args,
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

fn parse_policy(p: &str) -> anyhow::Result<Plaintext> {
    p.parse::<Plaintext>().map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use meshfed_trust::TrustDomain;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    fn run(text: &str) -> anyhow::Result<Vec<Value>> {
        let cli = Cli::parse_from([
            "t",
            "-f",
            "-",
            "--cluster",
            "east",
            "--ca",
            "ca",
            "-n",
            "shop",
        ]);
        let info = ClusterInfo {
            cluster: "east".into(),
            trust_domain: TrustDomain::new("mesh.example").expect("td"),
            region: None,
            gateway_port: GATEWAY_PORT,
            gateway_addresses: Vec::new(),
            admin: Default::default(),
            roots_pem: Some("ROOTS".into()),
            intermediate_pem: None,
        };
        inject(text, &cli.inject, &info)
    }

    /// A Pod named `name` with these annotations.
    fn pod(name: &str, annotations: &[(&str, &str)]) -> String {
        let notes: String = annotations
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  annotations:\n{notes}")
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{notes}spec:\n  \
             containers: [{{ name: app, image: app:1, ports: [{{ containerPort: 8080 }}] }}]\n"
        )
    }

    /// The init container's args and the sidecar's env (name → value) of
    /// the pod named `name`.
    fn injected(out: &[Value], name: &str) -> (Vec<String>, BTreeMap<String, String>) {
        let pod = out
            .iter()
            .find(|d| d["metadata"]["name"] == name)
            .expect("the pod");
        let inits = &pod["spec"]["initContainers"];
        let args = inits[0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a string").to_owned())
            .collect();
        let env = inits[1]["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        (args, env)
    }

    #[test]
    fn inbound_is_transparent_by_default_and_permissive() {
        let out = run(&pod("api", &[])).expect("injects");
        let (args, env) = injected(&out, "api");
        assert_eq!(
            args.join(" "),
            "init-iptables --proxy-port 4140 --proxy-uid 2102 \
             --inbound-proxy-port 4143 --admin-port 9904"
        );
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("MESHFED_INBOUND_TRANSPARENT"), Some("0.0.0.0:4143"));
        assert_eq!(get("MESHFED_INBOUND_POLICY"), Some("permissive"));
        assert_eq!(get("MESHFED_INBOUND"), None);
        assert_eq!(get("MESHFED_INBOUND_PORT_POLICY"), None);
        let ports = &out[0]["spec"]["initContainers"][1]["ports"];
        assert!(
            ports
                .as_array()
                .expect("ports")
                .iter()
                .any(|p| p["name"] == "mesh-in" && p["containerPort"] == 4143),
            "{ports}"
        );
        // The same input, the same output; injected output is left alone.
        assert_eq!(run(&pod("api", &[])).expect("injects"), out);
        let again = run(&serde_saphyr::to_string(&out[0]).expect("yaml")).expect("injects");
        assert_eq!(again[0], out[0]);
    }

    #[test]
    fn annotations_set_policies_and_skipped_ports_and_the_namespace_gives_a_default() {
        let strict_ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  \
                         annotations: { meshfed.io/inbound-policy: strict }\n";
        let text = [
            strict_ns.to_owned(),
            pod("plain", &[]),
            pod(
                "own",
                &[
                    (INBOUND_POLICY, "permissive"),
                    (INBOUND_PORT_POLICY, "9090=strict 8080=permissive"),
                    (SKIP_INBOUND_PORTS, "22, 9000"),
                ],
            ),
        ]
        .join("---\n");
        let out = run(&text).expect("injects");
        let (_, env) = injected(&out, "plain");
        assert_eq!(
            env["MESHFED_INBOUND_POLICY"], "strict",
            "from the Namespace"
        );
        let (args, env) = injected(&out, "own");
        assert_eq!(env["MESHFED_INBOUND_POLICY"], "permissive", "the pod's own");
        assert_eq!(
            env["MESHFED_INBOUND_PORT_POLICY"],
            "9090=strict 8080=permissive"
        );
        assert!(
            args.join(" ").ends_with(
                "--inbound-proxy-port 4143 --admin-port 9904 \
                 --inbound-skip-port 22 --inbound-skip-port 9000"
            ),
            "{args:?}"
        );
    }

    #[test]
    fn explicit_inbound_ports_keep_the_explicit_mode() {
        let out = run(&pod(
            "api",
            &[
                (INBOUND, "4143=8080"),
                (INBOUND_PORT_POLICY, "4143=permissive"),
            ],
        ))
        .expect("injects");
        let (args, env) = injected(&out, "api");
        assert_eq!(
            args.join(" "),
            "init-iptables --proxy-port 4140 --proxy-uid 2102"
        );
        assert_eq!(env["MESHFED_INBOUND"], "4143=8080");
        assert_eq!(env["MESHFED_INBOUND_PORT_POLICY"], "4143=permissive");
        assert!(!env.contains_key("MESHFED_INBOUND_TRANSPARENT"));
        assert!(!env.contains_key("MESHFED_INBOUND_POLICY"));
    }

    #[test]
    fn bad_annotations_are_refused_naming_the_annotation() {
        let cases = [
            (pod("api", &[(INBOUND_POLICY, "open")]), INBOUND_POLICY),
            (
                pod("api", &[(INBOUND_PORT_POLICY, "9090=open")]),
                INBOUND_PORT_POLICY,
            ),
            (
                pod("api", &[(SKIP_INBOUND_PORTS, "22 ssh")]),
                SKIP_INBOUND_PORTS,
            ),
            (
                pod("api", &[(INBOUND, "4143=8080"), (SKIP_INBOUND_PORTS, "22")]),
                SKIP_INBOUND_PORTS,
            ),
            (
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  \
                 annotations: { meshfed.io/inbound-policy: closed }\n"
                    .to_owned(),
                "Namespace shop: meshfed.io/inbound-policy",
            ),
        ];
        for (text, names) in cases {
            let err = format!("{:#}", run(&text).expect_err(&text));
            assert!(err.contains(names), "{err}");
        }
    }
}
