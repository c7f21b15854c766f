//! `meshctl install`: everything one cluster needs, as Kubernetes objects —
//! printed (YAML or JSON), applied with server-side apply, or, for a file
//! store cluster, the cluster's ConfigMaps written into its directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use meshfed_identity::ClusterCa;
use meshfed_runtime::port;
use meshfed_trust::{TrustDomain, paths};
use serde_json::{Value, json};

use crate::cluster::*;
use crate::output::Format;
use crate::target::{ContextArgs, apply_objects, wait_rolled_out};
pub use meshfed_injector::contract::{RUN_AS, TOKEN_AUDIENCE, container, env, identity_client};

/// How other clusters reach this cluster's gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GatewayServiceType {
    /// A cloud load balancer in front of the gateway.
    #[value(name = "LoadBalancer", alias = "load-balancer")]
    LoadBalancer,
    /// A port on every node.
    #[value(name = "NodePort", alias = "node-port")]
    NodePort,
}

#[derive(Debug, Args)]
#[command(after_help = examples())]
pub struct InstallArgs {
    /// This cluster's name (a DNS label), as linked clusters will call it.
    #[arg(long, value_parser = meshfed_runtime::cluster_name)]
    pub cluster: String,
    /// Cluster CA directory from `meshctl trust issue-cluster` (intermediate.crt,
    /// intermediate.key, root.crt): installed as the Secret meshfed-ca and the
    /// ConfigMap meshfed-trust.
    #[arg(long, required_unless_present = "trust_domain")]
    pub ca: Option<PathBuf>,
    /// Without --ca: the trust domain; the CA Secret and trust ConfigMap are
    /// left out, to be created apart (e.g. from a secret manager).
    #[arg(long, conflicts_with = "ca")]
    pub trust_domain: Option<String>,
    /// This cluster's region (linked clusters of the same region are preferred).
    #[arg(long)]
    pub region: Option<String>,
    /// How other clusters reach the gateway.
    #[arg(long, value_enum, default_value = "LoadBalancer")]
    pub gateway_service_type: GatewayServiceType,
    /// Gateway replicas (a PodDisruptionBudget keeps one up).
    #[arg(long, default_value_t = 2)]
    pub gateway_replicas: u16,
    /// The gateway's port.
    #[arg(long, default_value_t = port::GATEWAY)]
    pub gateway_port: u16,
    /// Fixed gateway address (IP or DNS name) for linked clusters to dial;
    /// without it `meshctl link` reads the gateway Service. Repeatable.
    #[arg(long = "gateway-address")]
    pub gateway_addresses: Vec<String>,
    /// Lifetime of the workload certificates the identity service issues
    /// (e.g. 24h, 10m); holders renew at 70 % of it. Default: the service's (24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub leaf_ttl: Option<std::time::Duration>,
    /// Also install the Gateway API's HTTPRoute CRD, for routing (clusters
    /// often have it already: from the Gateway API's standard install, or
    /// an ingress controller's). It is generated from the gateway-api
    /// crate's standard-channel types, without the Gateway API's CEL rules
    /// and defaults (the controller applies them itself).
    #[arg(long)]
    pub gateway_api_crds: bool,
    #[command(flatten)]
    pub images: Images,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
    /// Apply the objects to the cluster (server-side apply) instead of printing them.
    #[arg(long, conflicts_with = "state")]
    pub apply: bool,
    /// With --apply: wait this long for the CRDs to be established and the
    /// Deployments to roll out (as `kubectl rollout status`); 0s: do not wait.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
    #[command(flatten)]
    pub context: ContextArgs,
    /// A file store cluster: write its meshfed-cluster and meshfed-trust
    /// ConfigMaps into this manifest directory (the components run outside
    /// Kubernetes and are started apart).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// With --state: a component's admin listener, COMPONENT=HOST:PORT, for
    /// `meshctl check`. Repeatable.
    #[arg(long = "admin", value_parser = admin_entry)]
    pub admin: Vec<(String, String)>,
}

fn examples() -> String {
    format!(
        "Examples:
  meshctl install --cluster east --ca ./east-ca | kubectl apply -f -
  meshctl install --cluster east --ca ./east-ca --apply --context east
  meshctl install --cluster east --ca ./east-ca --gateway-api-crds   # with the HTTPRoute CRD
  meshctl install --cluster sample --trust-domain mesh.example   # no CA material (GitOps)
  meshctl install --cluster east --ca ./east-ca --state ./east \\
      --gateway-address 127.0.0.1 --admin controller=127.0.0.1:{}   # a file store cluster",
        port::CONTROLLER_ADMIN
    )
}

fn admin_entry_expected() -> String {
    format!(
        "expected COMPONENT=HOST:PORT, e.g. controller=127.0.0.1:{}",
        port::CONTROLLER_ADMIN
    )
}

fn admin_entry(s: &str) -> Result<(String, String), String> {
    let (c, a) = s.split_once('=').ok_or_else(admin_entry_expected)?;
    if c.is_empty() || a.parse::<std::net::SocketAddr>().is_err() {
        return Err(admin_entry_expected());
    }
    Ok((c.to_owned(), a.to_owned()))
}

/// What `meshctl install` prints for these flags (no --state).
pub fn install_objects(a: &InstallArgs) -> anyhow::Result<Vec<Value>> {
    let (info, ca) = cluster_info(a)?;
    manifests(a, &info, ca.as_ref())
}

pub async fn run(a: InstallArgs) -> anyhow::Result<()> {
    if let Some(dir) = &a.state {
        let (written, info) = describe_file_cluster(&a, dir)?;
        println!(
            "cluster {} described in {} (link it with meshctl link --from-state {} --to-state DIR)",
            info.cluster,
            written.display(),
            dir.display()
        );
        return Ok(());
    }
    let (info, ca) = cluster_info(&a)?;
    if ca.is_none() {
        eprintln!(
            "note: without --ca the Secret {NAMESPACE}/{CA_SECRET} and the ConfigMap \
             {NAMESPACE}/{TRUST_CONFIG} are left out; create them with\n  \
             kubectl -n {NAMESPACE} create secret generic {CA_SECRET} --from-file=CA/intermediate.crt \
             --from-file=CA/intermediate.key --from-file=CA/root.crt\n  \
             kubectl -n {NAMESPACE} create configmap {TRUST_CONFIG} --from-file=CA/root.crt \
             --from-file=CA/intermediate.crt"
        );
    }
    let objects = manifests(&a, &info, ca.as_ref())?;
    if a.apply {
        let cluster = a.context.open().await?;
        let n = apply_objects(&cluster, &objects).await?;
        println!(
            "applied {n} objects to {} (cluster {})",
            cluster.describe(),
            info.cluster
        );
        if !a.wait.is_zero() {
            let every = std::time::Duration::from_secs(2);
            wait_rolled_out(&cluster, &objects, a.wait, every, |what| {
                println!("  ready: {what}");
            })
            .await
            .context("waiting for the install to roll out (meshctl check says more)")?;
            println!("cluster {} is installed and ready", info.cluster);
        }
        return Ok(());
    }
    print!("{}", a.output.objects(&objects)?);
    Ok(())
}

/// Writes a file store cluster's ConfigMaps into `dir` (what `install
/// --state DIR` does); returns the file written and what it says.
pub(crate) fn describe_file_cluster(
    a: &InstallArgs,
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, ClusterInfo)> {
    let (info, _) = cluster_info(a)?;
    Ok((write_state(dir, &info)?, info))
}

/// The cluster's CA files, read once.
#[derive(Debug)]
pub struct CaFiles {
    intermediate_crt: String,
    intermediate_key: String,
    root_crt: String,
}

fn cluster_info(a: &InstallArgs) -> anyhow::Result<(ClusterInfo, Option<CaFiles>)> {
    let (trust_domain, ca) = match (&a.ca, &a.trust_domain) {
        (Some(dir), _) => {
            let ca = ClusterCa::load(dir)
                .with_context(|| format!("--ca {}: not a cluster CA directory", dir.display()))?;
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .with_context(|| format!("--ca: reading {}", dir.join(f).display()))
            };
            let files = CaFiles {
                intermediate_crt: read(paths::INTERMEDIATE_CERT)?,
                intermediate_key: read(paths::INTERMEDIATE_KEY)?,
                root_crt: read(paths::ROOT_CERT)?,
            };
            (ca.trust_domain().clone(), Some(files))
        }
        (None, Some(td)) => (TrustDomain::new(td).context("--trust-domain")?, None),
        (None, None) => bail!("give --ca DIR (or --trust-domain D to leave the CA out)"),
    };
    if a.state.is_none() && !a.admin.is_empty() {
        bail!("--admin only describes file store clusters: use it with --state DIR");
    }
    if a.state.is_some() && a.gateway_addresses.is_empty() {
        bail!("--state: a file store cluster has no gateway Service; give --gateway-address");
    }
    if a.gateway_replicas == 0 {
        bail!("--gateway-replicas must be at least 1");
    }
    let info = ClusterInfo {
        cluster: a.cluster.clone(),
        trust_domain,
        region: a.region.clone(),
        gateway_port: a.gateway_port,
        gateway_addresses: a.gateway_addresses.clone(),
        admin: a.admin.iter().cloned().collect(),
        roots_pem: ca.as_ref().map(|c| c.root_crt.clone()),
        intermediate_pem: ca.as_ref().map(|c| c.intermediate_crt.clone()),
    };
    Ok((info, ca))
}

/// Writes `DIR/meshfed-cluster.yaml` (both ConfigMaps); returns its path.
fn write_state(dir: &std::path::Path, info: &ClusterInfo) -> anyhow::Result<PathBuf> {
    if !dir.is_dir() {
        bail!("--state {}: not a directory", dir.display());
    }
    let (cluster, trust) = info.config_maps();
    let mut docs = vec![serde_json::to_value(with_kind(cluster, "v1", "ConfigMap"))?];
    if let Some(t) = trust {
        docs.push(serde_json::to_value(with_kind(t, "v1", "ConfigMap"))?);
    }
    let path = dir.join(format!("{CLUSTER_CONFIG}.yaml"));
    let tmp = dir.join(format!(".{CLUSTER_CONFIG}.yaml.tmp"));
    std::fs::write(&tmp, Format::Yaml.objects(&docs)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn with_kind<T: serde::Serialize>(obj: T, api_version: &str, kind: &str) -> Value {
    let mut v = serde_json::to_value(obj).expect("k8s objects serialize");
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
    }
    v
}

/// The labels every installed object carries.
pub fn part_of(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "meshfed".to_owned()),
    ])
}

/// Every object of the install, in apply order (kinds others depend on
/// first), then by name.
pub fn manifests(
    a: &InstallArgs,
    info: &ClusterInfo,
    ca: Option<&CaFiles>,
) -> anyhow::Result<Vec<Value>> {
    let images = &a.images;
    let mut objects = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": NAMESPACE, "labels": part_of(NAMESPACE) },
    })];
    for crd in meshfed_resources::crd::all() {
        objects.push(with_kind(
            crd,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
        ));
    }
    if a.gateway_api_crds {
        objects.push(meshfed_resources::route::crd());
    }
    let (cluster_cm, trust_cm) = info.config_maps();
    objects.push(with_kind(cluster_cm, "v1", "ConfigMap"));
    if let (Some(t), Some(files)) = (trust_cm, ca) {
        objects.push(with_kind(t, "v1", "ConfigMap"));
        objects.push(ca_secret(files));
    }
    objects.extend(identity(images, a.leaf_ttl));
    objects.extend(controller(info, images));
    objects.extend(gateway(a, info, images));
    objects.extend(injector(info, images));
    objects.sort_by_cached_key(|o| {
        let kind = o["kind"].as_str().unwrap_or_default();
        let rank = KIND_ORDER
            .iter()
            .position(|k| *k == kind)
            .expect("install only makes kinds it knows");
        (
            rank,
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    });
    Ok(objects)
}

/// Apply order: what others refer to comes first.
pub const KIND_ORDER: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    // Registered once the injector can answer it.
    "MutatingWebhookConfiguration",
];

/// Where the component images come from (`--image-registry`, `--image-tag`).
#[derive(Debug, Clone, Args)]
pub struct Images {
    /// Image registry the Meshfed images are pulled from.
    #[arg(long = "image-registry", default_value = "ghcr.io/meshfed")]
    pub registry: String,
    /// Tag of every Meshfed image.
    #[arg(long = "image-tag", default_value = env!("CARGO_PKG_VERSION"))]
    pub tag: String,
}

impl Images {
    /// `registry/component:tag`.
    pub fn of(&self, component: &str) -> String {
        format!(
            "{}/{component}:{}",
            self.registry.trim_end_matches('/'),
            self.tag
        )
    }
}

fn ca_secret(files: &CaFiles) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": CA_SECRET, "namespace": NAMESPACE, "labels": part_of(CA_SECRET) },
        "type": "Opaque",
        "data": {
            paths::INTERMEDIATE_CERT: b64(&files.intermediate_crt),
            paths::INTERMEDIATE_KEY: b64(&files.intermediate_key),
            paths::ROOT_CERT: b64(&files.root_crt),
        },
    })
}

fn service_account(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": { "name": name, "namespace": NAMESPACE, "labels": part_of(name) },
    })
}

/// A ClusterRole with `rules` and its binding to the component's ServiceAccount.
fn cluster_role(name: &str, rules: Value) -> [Value; 2] {
    role_and_binding("ClusterRole", name, None, rules)
}

/// A Role in meshfed-system with `rules` and its binding to the component's
/// ServiceAccount: for what the component may do in its own namespace only.
fn namespaced_role(name: &str, rules: Value) -> [Value; 2] {
    role_and_binding("Role", name, Some(NAMESPACE), rules)
}

fn role_and_binding(kind: &str, name: &str, namespace: Option<&str>, rules: Value) -> [Value; 2] {
    let mut metadata = json!({ "name": name, "labels": part_of(name) });
    if let Some(ns) = namespace {
        metadata["namespace"] = ns.into();
    }
    [
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": metadata,
            "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": format!("{kind}Binding"),
            "metadata": metadata,
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": NAMESPACE }],
        }),
    ]
}

fn service(name: &str, type_: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({ "name": n, "port": p, "targetPort": n, "protocol": "TCP" }))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": NAMESPACE, "labels": part_of(name) },
        "spec": {
            "type": type_,
            "selector": { "app.kubernetes.io/name": name },
            "ports": ports,
        },
    })
}

fn env_from_cluster_config(name: &str, key: &str, optional: bool) -> Value {
    let mut selector = json!({ "name": CLUSTER_CONFIG, "key": key });
    if optional {
        selector["optional"] = true.into();
    }
    json!({ "name": name, "valueFrom": { "configMapKeyRef": selector } })
}

/// An env var from the pod's own fields (the downward API), e.g. `metadata.name`.
fn env_from_pod(name: &str, field_path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": field_path } } })
}

const CA_DIR: &str = "/etc/meshfed/ca";

fn deployment(name: &str, replicas: u16, container: Value, volumes: Vec<Value>) -> Value {
    let admin_port = container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "admin"))
        .map(|p| p["containerPort"].to_string())
        .unwrap_or_default();
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": NAMESPACE, "labels": part_of(name) },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app.kubernetes.io/name": name } },
            "template": {
                "metadata": {
                    "labels": part_of(name),
                    "annotations": { "prometheus.io/scrape": "true", "prometheus.io/port": admin_port },
                },
                "spec": {
                    "serviceAccountName": name,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    });
    if replicas > 1 {
        let selector = json!({ "matchLabels": { "app.kubernetes.io/name": name } });
        // Replicas on different nodes, so one node going away keeps one up;
        // preferred, so a one-node cluster (kind) still runs them all.
        d["spec"]["template"]["spec"]["affinity"] = json!({ "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{ "weight": 100, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": selector,
            }}],
        }});
        // And in different zones where there are zones, so a zone outage
        // keeps one up; ScheduleAnyway, so a cluster of one zone (or of
        // unlabelled nodes) still runs them all.
        d["spec"]["template"]["spec"]["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": selector,
        }]);
    }
    d
}

fn identity(images: &Images, leaf_ttl: Option<std::time::Duration>) -> Vec<Value> {
    let mut c = container(
        IDENTITY,
        images.of(IDENTITY),
        &[("grpc", port::IDENTITY), ("admin", port::IDENTITY_ADMIN)],
    );
    let envs = c["env"].as_array_mut().expect("container has env");
    envs.extend([
        env(meshfed_runtime::env::CA_DIR, CA_DIR),
        env(meshfed_runtime::env::IDENTITY_AUTH, "kubernetes"),
        env(meshfed_runtime::env::TOKEN_AUDIENCES, TOKEN_AUDIENCE),
        env(meshfed_runtime::env::NAMESPACE, NAMESPACE),
        env(meshfed_runtime::env::SERVICE_ACCOUNT, IDENTITY),
    ]);
    if let Some(ttl) = leaf_ttl {
        envs.push(env(
            meshfed_runtime::env::LEAF_TTL,
            humantime::format_duration(ttl).to_string(),
        ));
    }
    c["volumeMounts"] = json!([{ "name": "ca", "mountPath": CA_DIR, "readOnly": true }]);
    // The key is readable by the component's group only.
    let volumes =
        vec![json!({ "name": "ca", "secret": { "secretName": CA_SECRET, "defaultMode": 0o440 } })];
    let mut out = vec![
        service_account(IDENTITY),
        service(
            IDENTITY,
            "ClusterIP",
            &[("grpc", port::IDENTITY), ("admin", port::IDENTITY_ADMIN)],
        ),
        {
            let mut d = deployment(IDENTITY, 2, c, volumes);
            d["spec"]["template"]["spec"]["securityContext"] = json!({ "fsGroup": RUN_AS });
            d
        },
    ];
    // The identity service proves ServiceAccount tokens, and nothing else.
    out.extend(cluster_role(
        IDENTITY,
        json!([{ "apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"] }]),
    ));
    out
}

fn controller(info: &ClusterInfo, images: &Images) -> Vec<Value> {
    let ports = [
        ("federation", port::FEDERATION),
        ("discovery", port::DISCOVERY),
        ("admin", port::CONTROLLER_ADMIN),
    ];
    let mut c = container(CONTROLLER, images.of(CONTROLLER), &ports);
    let (id_env, volumes, mounts) = identity_client(
        &info.component_id(IDENTITY).to_string(),
        &info.controller_identity().to_string(),
    );
    let envs = c["env"].as_array_mut().expect("container has env");
    envs.extend([
        env_from_cluster_config(meshfed_runtime::env::CLUSTER, "cluster", false),
        env_from_cluster_config(meshfed_runtime::env::REGION, "region", true),
        env(meshfed_runtime::env::STORE, "kube"),
        // The admin port its probes ask, named here so the two cannot drift.
        env(
            meshfed_runtime::env::ADMIN_LISTEN,
            format!("0.0.0.0:{}", port::CONTROLLER_ADMIN),
        ),
        // Each replica competes for the leader Lease as its pod, in its namespace.
        env_from_pod(meshfed_runtime::env::POD_NAME, "metadata.name"),
        env_from_pod(meshfed_runtime::env::POD_NAMESPACE, "metadata.namespace"),
    ]);
    envs.extend(id_env);
    c["volumeMounts"] = mounts.into();
    // Two replicas, one leading (only it writes): a rollout, a drained node
    // or a killed pod costs at most a lease of writes, and discovery and
    // federation are answered throughout by the other replica.
    let mut d = deployment(CONTROLLER, CONTROLLER_REPLICAS, c, volumes);
    // A new replica comes up (and is ready: synced) before an old one
    // goes, so a rollout never leaves fewer than two serving.
    d["spec"]["strategy"] = json!({
        "type": "RollingUpdate",
        "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 },
    });
    // Stopping: the Lease is handed over (at most 2 s), then open streams
    // get 5 s to drain; the rest is slack before the kill.
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 15.into();
    let mut out = vec![
        service_account(CONTROLLER),
        service(CONTROLLER, "ClusterIP", &ports),
        d,
        one_at_a_time(CONTROLLER),
    ];
    // Reads the cluster and the CRDs; writes only mirrors and statuses.
    out.extend(cluster_role(
        CONTROLLER,
        json!([
            { "apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create", "patch", "delete"] },
            { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch", "create", "patch", "delete"] },
            { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"] },
            // An endpoint's identity is its Pod's service account.
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": [meshfed_resources::crd::GROUP], "resources": ["links", "failoverpolicies", "ratelimitpolicies"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": [meshfed_resources::crd::GROUP], "resources": ["links/status", "failoverpolicies/status", "ratelimitpolicies/status"], "verbs": ["get", "patch"] },
            // Routes attached to Services (GAMMA), and their status entries.
            { "apiGroups": [meshfed_resources::route::GROUP], "resources": [meshfed_resources::route::PLURAL], "verbs": ["get", "list", "watch"] },
            { "apiGroups": [meshfed_resources::route::GROUP], "resources": ["httproutes/status"], "verbs": ["get", "patch"] },
        ]),
    ));
    // The leader Lease, and no other: kube-lease-manager GETs it, CREATEs it
    // when missing and PATCHes it (apply to take it, strategic merge to renew
    // and release); it never lists, watches, updates or deletes. Kubernetes
    // cannot limit create by name (the name is not known when it authorizes).
    out.extend(namespaced_role(
        CONTROLLER,
        json!([
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [CONTROLLER_LEASE], "verbs": ["get", "patch"] },
        ]),
    ));
    out
}

fn gateway(a: &InstallArgs, info: &ClusterInfo, images: &Images) -> Vec<Value> {
    let ports = [
        ("gateway", info.gateway_port),
        ("admin", port::GATEWAY_ADMIN),
    ];
    let mut c = container(GATEWAY, images.of(GATEWAY), &ports);
    let (id_env, volumes, mounts) = identity_client(
        &info.component_id(IDENTITY).to_string(),
        &info.gateway_identity().to_string(),
    );
    let envs = c["env"].as_array_mut().expect("container has env");
    let controller = format!("{CONTROLLER}.{NAMESPACE}.svc");
    envs.extend([
        env_from_cluster_config(meshfed_runtime::env::CLUSTER, "cluster", false),
        env(
            meshfed_runtime::env::LISTEN,
            format!("0.0.0.0:{}", info.gateway_port),
        ),
        env(
            meshfed_runtime::env::DISCOVERY,
            format!("{controller}:{}", port::DISCOVERY),
        ),
        env(
            meshfed_runtime::env::FEDERATION_UPSTREAM,
            format!("{controller}:{}", port::FEDERATION),
        ),
    ]);
    envs.extend(id_env);
    c["volumeMounts"] = mounts.into();
    c["resources"]["limits"]["memory"] = "512Mi".into();
    let mut d = deployment(GATEWAY, a.gateway_replicas, c, volumes);
    // Open connections get the gateway's 30 s drain before the kill.
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 45.into();
    // The gateway never talks to the API server: no token for it.
    d["spec"]["template"]["spec"]["automountServiceAccountToken"] = false.into();
    let type_ = match a.gateway_service_type {
        GatewayServiceType::LoadBalancer => "LoadBalancer",
        GatewayServiceType::NodePort => "NodePort",
    };
    let mut svc = service(GATEWAY, type_, &[("gateway", info.gateway_port)]);
    svc["metadata"]["annotations"] =
        json!({ "meshfed.io/gateway-identity": info.gateway_identity().to_string() });
    vec![service_account(GATEWAY), svc, d, one_always_up(GATEWAY)]
}

/// A PodDisruptionBudget keeping one replica of `name` up through drains.
fn one_always_up(name: &str) -> Value {
    disruption_budget(name, "minAvailable")
}

/// A PodDisruptionBudget letting drains take one replica of `name` at a
/// time. For the controller rather than [`one_always_up`]: at two replicas
/// both keep one up, but one replica leading is the whole service, so the
/// budget is about "never both at once", which `maxUnavailable` says
/// whatever the replica count; and scaled down to one, `minAvailable: 1`
/// would block every node drain for good, where this lets it through at the
/// cost of a pause in writes (nothing on the data path waits for them).
fn one_at_a_time(name: &str) -> Value {
    disruption_budget(name, "maxUnavailable")
}

/// A PodDisruptionBudget for the pods of `name` whose `rule` (`minAvailable`
/// or `maxUnavailable`) is 1.
fn disruption_budget(name: &str, rule: &str) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": { "name": name, "namespace": NAMESPACE, "labels": part_of(name) },
        "spec": {
            rule: 1,
            "selector": { "matchLabels": { "app.kubernetes.io/name": name } },
        },
    })
}

/// Namespaces the webhook never sees: Kubernetes' own, and Meshfed's (its
/// components, the injector among them, must start whatever the webhook's
/// state).
const NEVER_INJECTED: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", NAMESPACE];

/// The sidecar injector and the MutatingWebhookConfiguration that sends it
/// the pods of namespaces labelled `meshfed.io/inject: enabled`. Without the
/// cluster's roots (`--trust-domain` instead of `--ca`) the configuration
/// is left out: the API server could not check the injector's certificate.
fn injector(info: &ClusterInfo, images: &Images) -> Vec<Value> {
    let ports = [("webhook", port::INJECTOR), ("admin", port::INJECTOR_ADMIN)];
    let mut c = container(INJECTOR, images.of(INJECTOR), &ports);
    let (id_env, volumes, mounts) = identity_client(
        &info.component_id(IDENTITY).to_string(),
        &info.component_id(INJECTOR).to_string(),
    );
    let envs = c["env"].as_array_mut().expect("container has env");
    envs.extend([
        env_from_cluster_config(meshfed_runtime::env::CLUSTER, "cluster", false),
        env_from_cluster_config(meshfed_runtime::env::REGION, "region", true),
        env(meshfed_runtime::env::SIDECAR_IMAGE, images.of(SIDECAR)),
        env(
            meshfed_runtime::env::LISTEN,
            format!("0.0.0.0:{}", port::INJECTOR),
        ),
        env(
            meshfed_runtime::env::ADMIN_LISTEN,
            format!("0.0.0.0:{}", port::INJECTOR_ADMIN),
        ),
    ]);
    envs.extend(id_env);
    c["volumeMounts"] = mounts.into();
    // Two replicas: with failurePolicy Fail, pods of meshed namespaces are
    // created only while one answers.
    let d = deployment(INJECTOR, 2, c, volumes);
    let mut svc = service(INJECTOR, "ClusterIP", &[("webhook", port::INJECTOR)]);
    svc["spec"]["ports"][0]["port"] = 443.into();
    let mut out = vec![service_account(INJECTOR), svc, d, one_always_up(INJECTOR)];
    // Reads labelled namespaces (their inbound policy); writes each one's trust ConfigMap.
    out.extend(cluster_role(
        INJECTOR,
        json!([
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"] },
            { "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [TRUST_CONFIG], "verbs": ["get", "patch"] },
        ]),
    ));
    if let Some(roots) = &info.roots_pem {
        out.push(webhook_configuration(roots));
    }
    out
}

fn webhook_configuration(roots_pem: &str) -> Value {
    use base64::Engine;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(roots_pem);
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": INJECTOR, "labels": part_of(INJECTOR) },
        "webhooks": [{
            "name": "inject.meshfed.io",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": { "name": INJECTOR, "namespace": NAMESPACE, "path": meshfed_injector::PATH, "port": 443 },
                // The cluster's roots: the injector's certificate chains to them.
                "caBundle": ca_bundle,
            },
            "rules": [{
                "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["pods"], "scope": "Namespaced",
            }],
            "namespaceSelector": { "matchExpressions": [
                { "key": meshfed_injector::INJECT_LABEL, "operator": "In", "values": [meshfed_injector::INJECT_ENABLED] },
                { "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": NEVER_INJECTED },
            ]},
            // A pod of a meshed namespace created without its sidecar would be
            // outside the mesh unnoticed (refused by strict peers, or bypassing
            // policy): better not created until the injector answers.
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
            // Re-run after later webhooks; an injected pod is left as it is.
            "reinvocationPolicy": "IfNeeded",
        }],
    })
}
