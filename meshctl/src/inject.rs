//! `meshctl inject`: rewrites workload manifests so every pod runs behind a
//! Meshfed sidecar — an init container that installs the interception
//! rules (outbound, and inbound unless the pod names explicit inbound
//! ports), and the sidecar as a native sidecar container (it starts, and is
//! ready, before the app).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use meshfed_ca::ClusterCa;
use meshfed_injector::{SidecarTemplate, add_sidecar, parse_policy};
use meshfed_runtime::port;
use meshfed_trust::paths;

use meshfed_injector::pod::INBOUND_POLICY;
pub use meshfed_injector::pod::INJECTED;
use serde_json::Value;

use crate::cluster::*;
use crate::install::Images;
use crate::output::Format;

fn examples() -> String {
    let inbound = port::SIDECAR_INBOUND;
    format!(
        "Examples:
  meshctl inject -f app.yaml --cluster east --ca ./east-ca | kubectl apply -f -
  kubectl get deploy api -n shop -o yaml | meshctl inject -f - --cluster east --ca ./east-ca

Inbound is transparent: the pod's inbound TCP is redirected to the sidecar, so Services keep their
targetPort and the app its port. meshfed.io/allow: \"8080=spiffe://D/ns/web/sa/frontend\" limits
who may call app port 8080; meshfed.io/inbound-policy: \"strict\" (on the pod template, or on a
Namespace in the same input) refuses callers outside the mesh (default permissive: served with no
caller ID); meshfed.io/inbound-port-policy: \"9090=strict\" sets one port's;
meshfed.io/skip-inbound-ports: \"22 9000\" leaves ports alone. Hosts without iptables: annotate
meshfed.io/inbound: \"{inbound}=8080\" (explicit sidecar port {inbound}, app port 8080; point the Service's
targetPort at {inbound}). meshfed.io/upstreams: \"api.shop:8080=15001\" adds an explicit upstream on
127.0.0.1:15001; meshfed.io/inject: \"false\" skips a workload."
    )
}

#[derive(Debug, Args)]
#[command(after_help = examples())]
pub struct InjectArgs {
    /// Manifest file (several documents allowed); `-` reads standard input.
    #[arg(short = 'f', long)]
    pub file: PathBuf,
    /// The cluster the workloads run in (a DNS label).
    #[arg(long, value_parser = meshfed_runtime::cluster_name)]
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
        gateway_port: port::GATEWAY,
        gateway_addresses: Vec::new(),
        admin: Default::default(),
        roots_pem: Some(roots),
        intermediate_pem: None,
    };
    inject(text, a, &info)
}

/// What every sidecar of the cluster `info` describes is given.
pub fn sidecar_template(images: &Images, info: &ClusterInfo) -> SidecarTemplate {
    SidecarTemplate {
        cluster: info.cluster.clone(),
        region: info.region.clone(),
        trust_domain: info.trust_domain.clone(),
        image: images.of(SIDECAR),
        identity_server_id: info.component_id(IDENTITY).to_string(),
    }
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
    let sidecar = sidecar_template(&a.images, info);
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
            if add_sidecar(template, &ns, ns_policy, &sidecar)
                .map_err(anyhow::Error::from)
                .with_context(|| name)?
            {
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

#[cfg(test)]
mod tests {
    use clap::Parser;
    use meshfed_trust::TrustDomain;

    use super::*;
    use meshfed_injector::pod::{INBOUND, INBOUND_PORT_POLICY, SKIP_INBOUND_PORTS};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        inject: InjectArgs,
    }

    fn cli() -> Cli {
        Cli::parse_from([
            "t",
            "-f",
            "-",
            "--cluster",
            "east",
            "--ca",
            "ca",
            "-n",
            "shop",
        ])
    }

    fn info() -> ClusterInfo {
        ClusterInfo {
            cluster: "east".into(),
            trust_domain: TrustDomain::new("mesh.example").expect("td"),
            region: None,
            gateway_port: port::GATEWAY,
            gateway_addresses: Vec::new(),
            admin: Default::default(),
            roots_pem: Some("ROOTS".into()),
            intermediate_pem: None,
        }
    }

    fn run(text: &str) -> anyhow::Result<Vec<Value>> {
        inject(text, &cli().inject, &info())
    }

    /// The pod the webhook makes of `pod`: its review answered by the
    /// injector, the JSONPatch applied as the API server applies it.
    fn webhook(pod: &Value, namespace: &str) -> Value {
        use base64::Engine as _;
        let injector = meshfed_injector::PodInjector {
            template: sidecar_template(&cli().inject.images, &info()),
            namespaces: Default::default(),
        };
        let review = serde_json::json!({
            "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "b1f4c2a0-0000-4000-8000-000000000001",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": namespace, "operation": "CREATE",
                "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
                "object": pod, "oldObject": null, "dryRun": false,
            },
        });
        let body = serde_json::to_vec(&review).expect("json");
        let answer = meshfed_injector::review(&body, &injector);
        let answer: Value = serde_json::from_slice(&answer.body).expect("json");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().expect("a patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSONPatch");
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch).expect("the patch applies");
        patched
    }

    #[test]
    fn the_webhook_writes_exactly_the_pod_meshctl_inject_writes() {
        for annotations in [
            &[][..],
            &[
                (meshfed_injector::pod::INBOUND_POLICY, "strict"),
                (SKIP_INBOUND_PORTS, "22"),
            ][..],
            &[
                (INBOUND, "15006=8080"),
                (
                    meshfed_injector::pod::ALLOW,
                    "15006=spiffe://mesh.example/ns/web/sa/front",
                ),
            ][..],
        ] {
            let text = pod("api", annotations);
            let mut original: Value = serde_saphyr::from_str(&text).expect("yaml");
            original["spec"]["serviceAccountName"] = "api".into();
            let text = serde_saphyr::to_string(&original).expect("yaml");
            let by_meshctl = run(&text).expect("injects");
            let by_meshctl = by_meshctl
                .iter()
                .find(|d| d["kind"] == "Pod")
                .expect("the pod");
            let by_webhook = webhook(&original, "shop");
            assert_eq!(&by_webhook, by_meshctl, "{annotations:?}");
            assert_ne!(by_webhook, original, "a sidecar was added");
            // Injected once: the webhook leaves an injected pod alone.
            let again = meshfed_injector::review(
                &serde_json::to_vec(&serde_json::json!({
                    "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
                    "request": {
                        "uid": "u", "kind": { "group": "", "version": "v1", "kind": "Pod" },
                        "resource": { "group": "", "version": "v1", "resource": "pods" },
                        "namespace": "shop", "operation": "CREATE", "userInfo": {},
                        "object": by_webhook, "oldObject": null,
                    },
                }))
                .expect("json"),
                &meshfed_injector::PodInjector {
                    template: sidecar_template(&cli().inject.images, &info()),
                    namespaces: Default::default(),
                },
            );
            assert_eq!(again.outcome, meshfed_injector::Outcome::Skipped);
        }
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
            format!(
                "init-iptables --proxy-port {} --proxy-uid 2102 \
                 --inbound-proxy-port {} --admin-port {}",
                port::SIDECAR_OUTBOUND,
                port::SIDECAR_INBOUND,
                port::SIDECAR_ADMIN
            )
        );
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(
            get(meshfed_runtime::env::INBOUND_TRANSPARENT),
            Some(
                meshfed_runtime::all_interfaces(port::SIDECAR_INBOUND)
                    .to_string()
                    .as_str()
            )
        );
        assert_eq!(
            get(meshfed_runtime::env::INBOUND_POLICY),
            Some("permissive")
        );
        assert_eq!(get(meshfed_runtime::env::INBOUND), None);
        assert_eq!(get(meshfed_runtime::env::INBOUND_PORT_POLICY), None);
        let ports = &out[0]["spec"]["initContainers"][1]["ports"];
        assert!(
            ports
                .as_array()
                .expect("ports")
                .iter()
                .any(|p| p["name"] == "mesh-in" && p["containerPort"] == port::SIDECAR_INBOUND),
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
            env[meshfed_runtime::env::INBOUND_POLICY],
            "strict",
            "from the Namespace"
        );
        let (args, env) = injected(&out, "own");
        assert_eq!(
            env[meshfed_runtime::env::INBOUND_POLICY],
            "permissive",
            "the pod's own"
        );
        assert_eq!(
            env[meshfed_runtime::env::INBOUND_PORT_POLICY],
            "9090=strict 8080=permissive"
        );
        assert!(
            args.join(" ").ends_with(&format!(
                "--inbound-proxy-port {} --admin-port {} \
                 --inbound-skip-port 22 --inbound-skip-port 9000",
                port::SIDECAR_INBOUND,
                port::SIDECAR_ADMIN
            )),
            "{args:?}"
        );
    }

    #[test]
    fn explicit_inbound_ports_keep_the_explicit_mode() {
        let out = run(&pod(
            "api",
            &[
                (INBOUND, "15006=8080"),
                (INBOUND_PORT_POLICY, "15006=permissive"),
            ],
        ))
        .expect("injects");
        let (args, env) = injected(&out, "api");
        assert_eq!(
            args.join(" "),
            format!(
                "init-iptables --proxy-port {} --proxy-uid 2102",
                port::SIDECAR_OUTBOUND
            )
        );
        assert_eq!(env[meshfed_runtime::env::INBOUND], "15006=8080");
        assert_eq!(
            env[meshfed_runtime::env::INBOUND_PORT_POLICY],
            "15006=permissive"
        );
        assert!(!env.contains_key(meshfed_runtime::env::INBOUND_TRANSPARENT));
        assert!(!env.contains_key(meshfed_runtime::env::INBOUND_POLICY));
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
                pod(
                    "api",
                    &[(INBOUND, "15006=8080"), (SKIP_INBOUND_PORTS, "22")],
                ),
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
