//! `meshctl install`: everything one cluster needs, as Kubernetes objects —
//! printed (YAML or JSON), applied with server-side apply, or, for a file
//! store cluster, the cluster's ConfigMaps written into its directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapKeySelector, Container, EnvVar, EnvVarSource, Namespace, PodAffinityTerm,
    PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Secret, SecretVolumeSource,
    Service, ServiceAccount, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume,
    VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshfed_ca::ClusterCa;
use meshfed_runtime::port;
use meshfed_trust::{TrustDomain, paths};
use serde_json::Value;

use crate::cluster::*;
use crate::output::Format;
use crate::target::{ContextArgs, apply_objects, wait_rolled_out};
pub use meshfed_injector::contract::{
    RUN_AS, TOKEN_AUDIENCE, container, env, env_from_pod, identity_client, quantities,
};

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

/// Every object of the install, in apply order (kinds others depend on
/// first), then by name.
pub fn manifests(
    a: &InstallArgs,
    info: &ClusterInfo,
    ca: Option<&CaFiles>,
) -> anyhow::Result<Vec<Value>> {
    let images = &a.images;
    let mut objects = vec![object(&Namespace {
        metadata: meta(NAMESPACE, None),
        ..Namespace::default()
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
        objects.push(object(&ca_secret(files)));
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

fn ca_secret(files: &CaFiles) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: meta(CA_SECRET, Some(NAMESPACE)),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                paths::INTERMEDIATE_CERT.to_owned(),
                bytes(&files.intermediate_crt),
            ),
            (
                paths::INTERMEDIATE_KEY.to_owned(),
                bytes(&files.intermediate_key),
            ),
            (paths::ROOT_CERT.to_owned(), bytes(&files.root_crt)),
        ])),
        ..Secret::default()
    }
}

fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, Some(NAMESPACE)),
        ..ServiceAccount::default()
    }
}

/// A ClusterRole with `rules` and its binding to the component's ServiceAccount.
fn cluster_role(name: &str, rules: Vec<PolicyRule>) -> [Value; 2] {
    let metadata = meta(name, None);
    [
        object(&ClusterRole {
            metadata: metadata.clone(),
            rules: Some(rules),
            ..ClusterRole::default()
        }),
        object(&ClusterRoleBinding {
            metadata,
            role_ref: role_ref("ClusterRole", name),
            subjects: Some(vec![component_account(name)]),
        }),
    ]
}

/// A Role in meshfed-system with `rules` and its binding to the component's
/// ServiceAccount: for what the component may do in its own namespace only.
fn namespaced_role(name: &str, rules: Vec<PolicyRule>) -> [Value; 2] {
    let metadata = meta(name, Some(NAMESPACE));
    [
        object(&Role {
            metadata: metadata.clone(),
            rules: Some(rules),
        }),
        object(&RoleBinding {
            metadata,
            role_ref: role_ref("Role", name),
            subjects: Some(vec![component_account(name)]),
        }),
    ]
}

/// A binding's reference to the role `kind`/`name`.
fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
    }
}

/// Component `name`'s ServiceAccount, as a binding's subject.
fn component_account(name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(NAMESPACE.into()),
        ..Subject::default()
    }
}

/// A rule granting `verbs` on `resources` of `group` (`""`: the core group).
fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |l: &[&str]| Some(l.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: strings(&[group]),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// [`rule`], for the objects named `names` only.
fn named_rule(group: &str, resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        resource_names: Some(names.iter().map(|s| (*s).to_owned()).collect()),
        ..rule(group, resources, verbs)
    }
}

/// An installed object's metadata: its name, namespace and labels.
fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(part_of(name)),
        ..ObjectMeta::default()
    }
}

/// A typed object as the install prints and applies it.
fn object<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).expect("k8s-openapi objects serialize")
}

/// Selects the pods of component `name`.
fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            name.to_owned(),
        )])),
        ..LabelSelector::default()
    }
}

fn service(name: &str, type_: &str, ports: &[(&str, u16)]) -> Service {
    Service {
        metadata: meta(name, Some(NAMESPACE)),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: selector(name).match_labels,
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some((*n).into()),
                        port: i32::from(*p),
                        target_port: Some(IntOrString::String((*n).into())),
                        protocol: Some("TCP".into()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn env_from_cluster_config(name: &str, key: &str, optional: bool) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: CLUSTER_CONFIG.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

const CA_DIR: &str = "/etc/meshfed/ca";

fn deployment(name: &str, replicas: u16, container: Container, volumes: Vec<Volume>) -> Deployment {
    let admin_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("admin"))
        .map(|p| p.container_port.to_string())
        .unwrap_or_default();
    let mut pod = PodSpec {
        service_account_name: Some(name.into()),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    if replicas > 1 {
        // Replicas on different nodes, so one node going away keeps one up;
        // preferred, so a one-node cluster (kind) still runs them all.
        pod.affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    WeightedPodAffinityTerm {
                        weight: 100,
                        pod_affinity_term: PodAffinityTerm {
                            topology_key: "kubernetes.io/hostname".into(),
                            label_selector: Some(selector(name)),
                            ..PodAffinityTerm::default()
                        },
                    },
                ]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        });
        // And in different zones where there are zones, so a zone outage
        // keeps one up; ScheduleAnyway, so a cluster of one zone (or of
        // unlabelled nodes) still runs them all.
        pod.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "topology.kubernetes.io/zone".into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector(name)),
            ..TopologySpreadConstraint::default()
        }]);
    }
    Deployment {
        metadata: meta(name, Some(NAMESPACE)),
        spec: DeploymentSpec {
            replicas: Some(i32::from(replicas)),
            selector: selector(name),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(part_of(name)),
                    annotations: Some(BTreeMap::from([
                        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                        ("prometheus.io/port".to_owned(), admin_port),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The pod spec of a Deployment [`deployment`] made.
fn pod_spec(d: &mut Deployment) -> &mut PodSpec {
    d.spec
        .template
        .spec
        .as_mut()
        .expect("deployment() makes a pod spec")
}

/// Adds `env` to `c`'s environment (after what every container has).
fn with_env(c: &mut Container, env: impl IntoIterator<Item = EnvVar>) {
    c.env.get_or_insert_with(Vec::new).extend(env);
}

fn identity(images: &Images, leaf_ttl: Option<std::time::Duration>) -> Vec<Value> {
    use meshfed_runtime::env as var;
    let mut c = container(
        IDENTITY,
        images.of(IDENTITY),
        &[("grpc", port::IDENTITY), ("admin", port::IDENTITY_ADMIN)],
    );
    with_env(
        &mut c,
        [
            env(var::CA_DIR, CA_DIR),
            env(var::IDENTITY_AUTH, "kubernetes"),
            env(var::TOKEN_AUDIENCES, TOKEN_AUDIENCE),
            env(var::NAMESPACE, NAMESPACE),
            env(var::SERVICE_ACCOUNT, IDENTITY),
        ],
    );
    if let Some(ttl) = leaf_ttl {
        with_env(
            &mut c,
            [env(
                var::LEAF_TTL,
                humantime::format_duration(ttl).to_string(),
            )],
        );
    }
    c.volume_mounts = Some(vec![VolumeMount {
        name: "ca".into(),
        mount_path: CA_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }]);
    // The key is readable by the component's group only.
    let volumes = vec![Volume {
        name: "ca".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(CA_SECRET.into()),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut d = deployment(IDENTITY, 2, c, volumes);
    pod_spec(&mut d).security_context = Some(PodSecurityContext {
        fs_group: Some(RUN_AS),
        ..PodSecurityContext::default()
    });
    let mut out = vec![
        object(&service_account(IDENTITY)),
        object(&service(
            IDENTITY,
            "ClusterIP",
            &[("grpc", port::IDENTITY), ("admin", port::IDENTITY_ADMIN)],
        )),
        object(&d),
    ];
    // The identity service proves ServiceAccount tokens, and nothing else.
    out.extend(cluster_role(
        IDENTITY,
        vec![rule(
            "authentication.k8s.io",
            &["tokenreviews"],
            &["create"],
        )],
    ));
    out
}

fn controller(info: &ClusterInfo, images: &Images) -> Vec<Value> {
    use meshfed_runtime::env as var;
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
    with_env(
        &mut c,
        [
            env_from_cluster_config(var::CLUSTER, "cluster", false),
            env_from_cluster_config(var::REGION, "region", true),
            env(var::STORE, "kube"),
            // The admin port its probes ask, named here so the two cannot drift.
            env(
                var::ADMIN_LISTEN,
                meshfed_runtime::all_interfaces(port::CONTROLLER_ADMIN).to_string(),
            ),
            // Each replica competes for the leader Lease as its pod, in its namespace.
            env_from_pod(var::POD_NAME, "metadata.name"),
            env_from_pod(var::POD_NAMESPACE, "metadata.namespace"),
        ],
    );
    with_env(&mut c, id_env);
    c.volume_mounts = Some(mounts);
    // Two replicas, one leading (only it writes): a rollout, a drained node
    // or a killed pod costs at most a lease of writes, and discovery and
    // federation are answered throughout by the other replica.
    let mut d = deployment(CONTROLLER, CONTROLLER_REPLICAS, c, volumes);
    // A new replica comes up (and is ready: synced) before an old one
    // goes, so a rollout never leaves fewer than two serving.
    d.spec.strategy = Some(DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(0)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    });
    // Stopping: the Lease is handed over (at most 2 s), then open streams
    // get 5 s to drain; the rest is slack before the kill.
    pod_spec(&mut d).termination_grace_period_seconds = Some(15);
    let mut out = vec![
        object(&service_account(CONTROLLER)),
        object(&service(CONTROLLER, "ClusterIP", &ports)),
        object(&d),
        object(&one_at_a_time(CONTROLLER)),
    ];
    let (meshfed, route) = (
        meshfed_resources::crd::GROUP,
        meshfed_resources::route::GROUP,
    );
    let read = ["get", "list", "watch"];
    let own = ["get", "list", "watch", "create", "patch", "delete"];
    // Reads the cluster and the CRDs; writes only mirrors and statuses.
    out.extend(cluster_role(
        CONTROLLER,
        vec![
            rule("", &["services"], &own),
            rule("discovery.k8s.io", &["endpointslices"], &own),
            rule("", &["nodes"], &read),
            // An endpoint's identity is its Pod's service account.
            rule("", &["pods"], &read),
            rule(
                meshfed,
                &["links", "failoverpolicies", "ratelimitpolicies"],
                &read,
            ),
            rule(
                meshfed,
                &[
                    "links/status",
                    "failoverpolicies/status",
                    "ratelimitpolicies/status",
                ],
                &["get", "patch"],
            ),
            // Routes attached to Services (GAMMA), and their status entries.
            rule(route, &[meshfed_resources::route::PLURAL], &read),
            rule(route, &["httproutes/status"], &["get", "patch"]),
        ],
    ));
    // The leader Lease, and no other: kube-lease-manager GETs it, CREATEs it
    // when missing and PATCHes it (apply to take it, strategic merge to renew
    // and release); it never lists, watches, updates or deletes. Kubernetes
    // cannot limit create by name (the name is not known when it authorizes).
    out.extend(namespaced_role(
        CONTROLLER,
        vec![
            rule("coordination.k8s.io", &["leases"], &["create"]),
            named_rule(
                "coordination.k8s.io",
                &["leases"],
                &[CONTROLLER_LEASE],
                &["get", "patch"],
            ),
        ],
    ));
    out
}

fn gateway(a: &InstallArgs, info: &ClusterInfo, images: &Images) -> Vec<Value> {
    use meshfed_runtime::env as var;
    let ports = [
        ("gateway", info.gateway_port),
        ("admin", port::GATEWAY_ADMIN),
    ];
    let mut c = container(GATEWAY, images.of(GATEWAY), &ports);
    let (id_env, volumes, mounts) = identity_client(
        &info.component_id(IDENTITY).to_string(),
        &info.gateway_identity().to_string(),
    );
    let controller = format!("{CONTROLLER}.{NAMESPACE}.svc");
    with_env(
        &mut c,
        [
            env_from_cluster_config(var::CLUSTER, "cluster", false),
            env(
                var::LISTEN,
                meshfed_runtime::all_interfaces(info.gateway_port).to_string(),
            ),
            env(var::DISCOVERY, format!("{controller}:{}", port::DISCOVERY)),
            env(
                var::FEDERATION_UPSTREAM,
                format!("{controller}:{}", port::FEDERATION),
            ),
        ],
    );
    with_env(&mut c, id_env);
    c.volume_mounts = Some(mounts);
    if let Some(r) = c.resources.as_mut() {
        r.limits = Some(quantities(&[("memory", "512Mi")]));
    }
    let mut d = deployment(GATEWAY, a.gateway_replicas, c, volumes);
    let pod = pod_spec(&mut d);
    // Open connections get the gateway's 30 s drain before the kill.
    pod.termination_grace_period_seconds = Some(45);
    // The gateway never talks to the API server: no token for it.
    pod.automount_service_account_token = Some(false);
    let type_ = match a.gateway_service_type {
        GatewayServiceType::LoadBalancer => "LoadBalancer",
        GatewayServiceType::NodePort => "NodePort",
    };
    let mut svc = service(GATEWAY, type_, &[("gateway", info.gateway_port)]);
    svc.metadata.annotations = Some(BTreeMap::from([(
        "meshfed.io/gateway-identity".to_owned(),
        info.gateway_identity().to_string(),
    )]));
    vec![
        object(&service_account(GATEWAY)),
        object(&svc),
        object(&d),
        object(&one_always_up(GATEWAY)),
    ]
}

/// A PodDisruptionBudget keeping one replica of `name` up through drains.
fn one_always_up(name: &str) -> PodDisruptionBudget {
    disruption_budget(
        name,
        PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            ..PodDisruptionBudgetSpec::default()
        },
    )
}

/// A PodDisruptionBudget letting drains take one replica of `name` at a
/// time. For the controller rather than [`one_always_up`]: at two replicas
/// both keep one up, but one replica leading is the whole service, so the
/// budget is about "never both at once", which `maxUnavailable` says
/// whatever the replica count; and scaled down to one, `minAvailable: 1`
/// would block every node drain for good, where this lets it through at the
/// cost of a pause in writes (nothing on the data path waits for them).
fn one_at_a_time(name: &str) -> PodDisruptionBudget {
    disruption_budget(
        name,
        PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            ..PodDisruptionBudgetSpec::default()
        },
    )
}

/// A PodDisruptionBudget for the pods of `name` with `rule`.
fn disruption_budget(name: &str, rule: PodDisruptionBudgetSpec) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(name, Some(NAMESPACE)),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(name)),
            ..rule
        }),
        ..PodDisruptionBudget::default()
    }
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
    use meshfed_runtime::env as var;
    let ports = [("webhook", port::INJECTOR), ("admin", port::INJECTOR_ADMIN)];
    let mut c = container(INJECTOR, images.of(INJECTOR), &ports);
    let (id_env, volumes, mounts) = identity_client(
        &info.component_id(IDENTITY).to_string(),
        &info.component_id(INJECTOR).to_string(),
    );
    with_env(
        &mut c,
        [
            env_from_cluster_config(var::CLUSTER, "cluster", false),
            env_from_cluster_config(var::REGION, "region", true),
            env(var::SIDECAR_IMAGE, images.of(SIDECAR)),
            env(
                var::LISTEN,
                meshfed_runtime::all_interfaces(port::INJECTOR).to_string(),
            ),
            env(
                var::ADMIN_LISTEN,
                meshfed_runtime::all_interfaces(port::INJECTOR_ADMIN).to_string(),
            ),
        ],
    );
    with_env(&mut c, id_env);
    c.volume_mounts = Some(mounts);
    // Two replicas: with failurePolicy Fail, pods of meshed namespaces are
    // created only while one answers.
    let d = deployment(INJECTOR, 2, c, volumes);
    let mut svc = service(INJECTOR, "ClusterIP", &[("webhook", port::INJECTOR)]);
    if let Some(p) = svc
        .spec
        .as_mut()
        .and_then(|s| s.ports.as_mut())
        .and_then(|p| p.first_mut())
    {
        p.port = i32::from(port::INJECTOR_SERVICE);
    }
    let mut out = vec![
        object(&service_account(INJECTOR)),
        object(&svc),
        object(&d),
        object(&one_always_up(INJECTOR)),
    ];
    // Reads labelled namespaces (their inbound policy); writes each one's trust ConfigMap.
    out.extend(cluster_role(
        INJECTOR,
        vec![
            rule("", &["namespaces"], &["get", "list", "watch"]),
            rule("", &["configmaps"], &["create"]),
            named_rule("", &["configmaps"], &[TRUST_CONFIG], &["get", "patch"]),
        ],
    ));
    if let Some(roots) = &info.roots_pem {
        out.push(object(&webhook_configuration(roots)));
    }
    out
}

fn webhook_configuration(roots_pem: &str) -> MutatingWebhookConfiguration {
    let strings = |l: &[&str]| Some(l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let expression = |key: &str, operator: &str, values: &[&str]| LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: strings(values),
    };
    MutatingWebhookConfiguration {
        metadata: meta(INJECTOR, None),
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.meshfed.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                service: Some(ServiceReference {
                    name: INJECTOR.into(),
                    namespace: NAMESPACE.into(),
                    path: Some(meshfed_injector::PATH.into()),
                    port: Some(i32::from(port::INJECTOR_SERVICE)),
                }),
                // The cluster's roots: the injector's certificate chains to them.
                ca_bundle: Some(ByteString(roots_pem.as_bytes().to_vec())),
                ..WebhookClientConfig::default()
            },
            rules: Some(vec![RuleWithOperations {
                operations: strings(&["CREATE"]),
                api_groups: strings(&[""]),
                api_versions: strings(&["v1"]),
                resources: strings(&["pods"]),
                scope: Some("Namespaced".into()),
            }]),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    expression(
                        meshfed_injector::INJECT_LABEL,
                        "In",
                        &[meshfed_injector::INJECT_ENABLED],
                    ),
                    expression("kubernetes.io/metadata.name", "NotIn", &NEVER_INJECTED),
                ]),
                ..LabelSelector::default()
            }),
            // A pod of a meshed namespace created without its sidecar would be
            // outside the mesh unnoticed (refused by strict peers, or bypassing
            // policy): better not created until the injector answers.
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(5),
            match_policy: Some("Equivalent".into()),
            // Re-run after later webhooks; an injected pod is left as it is.
            reinvocation_policy: Some("IfNeeded".into()),
            ..MutatingWebhook::default()
        }]),
    }
}
