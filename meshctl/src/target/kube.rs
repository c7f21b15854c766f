//! A cluster through its Kubernetes API.

use std::time::{Duration, SystemTime};

use crate::manifest_dir::Change;
use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use meshfed_api::labels;
use meshfed_resources::crd::{FailoverPolicy, Link, RateLimitPolicy};
use meshfed_resources::route::HttpRoute;
use serde_json::{Value, json};

use super::{Component, PolicyVerdict, export_holds};
use crate::cluster::{
    CLUSTER_CONFIG, CONTROLLER, CONTROLLER_LEASE, ClusterInfo, FIELD_MANAGER, GATEWAY, IDENTITY,
    INJECTOR, NAMESPACE, TRUST_CONFIG,
};
use crate::kube_error::{Call, Server, Verb, explain};

#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    /// The kubeconfig context and its API server's URL, which every failed
    /// call names.
    context: String,
    server: String,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("context", &self.context)
            .field("server", &self.server)
            .finish()
    }
}

impl KubeCluster {
    /// A cluster behind `client`: `context` and `server` (the API server's
    /// URL) say which one in messages.
    pub fn new(
        client: kube::Client,
        context: impl Into<String>,
        server: impl Into<String>,
    ) -> Self {
        let context = context.into();
        Self {
            client,
            context,
            server: server.into().trim_end_matches('/').to_owned(),
        }
    }

    /// The cluster of `context` in `kubeconfig` (its current context when `None`).
    pub async fn from_kubeconfig(
        kubeconfig: Kubeconfig,
        context: Option<&str>,
    ) -> anyhow::Result<Self> {
        let what = context.map_or("the current kubeconfig context".to_owned(), |c| {
            format!("kubeconfig context {c:?}")
        });
        let name = match context {
            Some(c) => c.to_owned(),
            None => kubeconfig
                .current_context
                .clone()
                .with_context(|| format!("{what}: the kubeconfig sets none; pass --context"))?,
        };
        let options = KubeConfigOptions {
            context: Some(name.clone()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| {
                format!(
                    "loading {what} (is KUBECONFIG set? for a file store cluster use --state DIR)"
                )
            })?;
        let server = config.cluster_url.to_string();
        let client =
            kube::Client::try_from(config).with_context(|| format!("a client for {what}"))?;
        Ok(Self::new(client, name, server))
    }

    /// `context east`, for messages.
    pub fn describe(&self) -> String {
        format!("context {}", self.context)
    }

    /// Turns the error of `call` into the sentence a person reads.
    fn failed(&self, call: Call) -> impl FnOnce(kube::Error) -> anyhow::Error + '_ {
        move |e| {
            let server = Server {
                context: &self.context,
                url: &self.server,
            };
            explain(&e, &call, server)
        }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub async fn info(&self) -> anyhow::Result<ClusterInfo> {
        let maps: Api<ConfigMap> = self.api();
        let cluster = maps
            .get_opt(CLUSTER_CONFIG)
            .await
            .map_err(self.failed(config_map(CLUSTER_CONFIG)))?
            .with_context(|| {
                format!(
                    "{}: Meshfed is not installed (no ConfigMap {NAMESPACE}/{CLUSTER_CONFIG}); \
                     run meshctl install --cluster NAME --ca DIR --apply",
                    self.describe()
                )
            })?;
        let trust = maps
            .get_opt(TRUST_CONFIG)
            .await
            .map_err(self.failed(config_map(TRUST_CONFIG)))?;
        ClusterInfo::from_config_maps(&cluster, trust.as_ref(), &self.describe())
    }

    /// The gateway Service's external addresses (LoadBalancer ingress, or
    /// the nodes' addresses for a NodePort).
    pub async fn gateway(&self) -> anyhow::Result<(Vec<String>, u16)> {
        let svc = self
            .api::<Service>()
            .get_opt(GATEWAY)
            .await
            .map_err(
                self.failed(
                    Call::on::<Service>(Verb::Get)
                        .namespace(NAMESPACE)
                        .named(GATEWAY),
                ),
            )?
            .with_context(|| {
                format!(
                    "{}: no gateway Service {NAMESPACE}/{GATEWAY}; run meshctl install",
                    self.describe()
                )
            })?;
        let spec = svc.spec.unwrap_or_default();
        let port = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.name.as_deref() == Some("gateway"))
            .with_context(|| {
                format!(
                    "{}: the gateway Service has no port named gateway",
                    self.describe()
                )
            })?;
        match spec.type_.as_deref() {
            Some("LoadBalancer") => {
                let ingress = svc
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|lb| lb.ingress)
                    .unwrap_or_default();
                let addrs: Vec<String> = ingress
                    .into_iter()
                    .filter_map(|i| i.ip.or(i.hostname))
                    .collect();
                if addrs.is_empty() {
                    bail!(
                        "{}: the gateway Service's load balancer has no address yet; wait for it \
                         (kubectl -n {NAMESPACE} get svc {GATEWAY}) or pass --gateway-address",
                        self.describe()
                    );
                }
                let port = u16::try_from(port.port).context("gateway Service port")?;
                Ok((addrs, port))
            }
            Some("NodePort") => {
                let node_port = port.node_port.with_context(|| {
                    format!(
                        "{}: the gateway NodePort is not allocated yet",
                        self.describe()
                    )
                })?;
                let nodes = Api::<Node>::all(self.client.clone())
                    .list(&ListParams::default())
                    .await
                    .map_err(self.failed(Call::on::<Node>(Verb::List)))
                    .context("the gateway NodePort's addresses")?;
                let mut addrs = Vec::new();
                for node in nodes {
                    let list = node.status.and_then(|s| s.addresses).unwrap_or_default();
                    // A node's external address when it has one: peers are in other networks.
                    let pick = list
                        .iter()
                        .find(|a| a.type_ == "ExternalIP")
                        .or_else(|| list.iter().find(|a| a.type_ == "InternalIP"));
                    if let Some(a) = pick {
                        addrs.push(a.address.clone());
                    }
                }
                if addrs.is_empty() {
                    bail!(
                        "{}: no node has an address for the gateway NodePort; pass --gateway-address",
                        self.describe()
                    );
                }
                addrs.sort();
                let port = u16::try_from(node_port).context("gateway NodePort")?;
                Ok((addrs, port))
            }
            other => bail!(
                "{}: the gateway Service is of type {} which other clusters cannot reach; \
                 re-install with --gateway-service-type LoadBalancer or NodePort, or pass --gateway-address",
                self.describe(),
                other.unwrap_or("ClusterIP")
            ),
        }
    }

    pub async fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        self.api::<Link>()
            .get_opt(name)
            .await
            .map_err(self.failed(link_call(Verb::Get, name)))
    }

    pub async fn put_link(&self, link: &Link) -> anyhow::Result<Change> {
        let name = link
            .metadata
            .name
            .as_deref()
            .context("the Link has a name")?;
        let existing = self.link(name).await?;
        let change = match &existing {
            None => Change::Created,
            Some(old) if old.spec == link.spec && annotations_hold(old, link) => {
                return Ok(Change::Unchanged);
            }
            Some(_) => Change::Updated,
        };
        self.api::<Link>()
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(link),
            )
            .await
            .map_err(self.failed(link_call(Verb::Apply, name)))?;
        Ok(change)
    }

    pub async fn delete_link(&self, name: &str) -> anyhow::Result<bool> {
        match self
            .api::<Link>()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
            Err(e) => Err(self.failed(link_call(Verb::Delete, name))(e)),
        }
    }

    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let list = Api::<Link>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(self.failed(Call::on::<Link>(Verb::List)))?;
        Ok(list.items)
    }

    pub async fn put_route(&self, route: &HttpRoute) -> anyhow::Result<Change> {
        let name = route
            .metadata
            .name
            .as_deref()
            .context("the HTTPRoute has a name")?;
        let ns = route.metadata.namespace.as_deref().unwrap_or("default");
        let api = Api::<HttpRoute>::namespaced(self.client.clone(), ns);
        let call = || Call::on::<HttpRoute>(Verb::Get).namespace(ns).named(name);
        let existing = api.get_opt(name).await.map_err(self.failed(call()))?;
        let change = match &existing {
            None => Change::Created,
            Some(old) if old.spec == route.spec => return Ok(Change::Unchanged),
            Some(_) => Change::Updated,
        };
        let mut applied = route.clone();
        applied.status = None;
        let apply = Call::on::<HttpRoute>(Verb::Apply).namespace(ns).named(name);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&applied),
        )
        .await
        .map_err(self.failed(apply))?;
        Ok(change)
    }

    pub async fn routes(&self) -> anyhow::Result<Vec<HttpRoute>> {
        let list = Api::<HttpRoute>::all(self.client.clone())
            .list(&ListParams::default())
            .await;
        match list {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(s)) if s.is_not_found() => bail!(
                "the Gateway API's HTTPRoute CRD is not installed in {}: no route applies; \
                 install it with `meshctl install --gateway-api-crds` (or the Gateway API's \
                 standard install)",
                self.describe()
            ),
            Err(e) => Err(self.failed(Call::on::<HttpRoute>(Verb::List))(e)),
        }
    }

    pub async fn policies(&self) -> anyhow::Result<Vec<PolicyVerdict>> {
        let all = ListParams::default();
        let failover = Api::<FailoverPolicy>::all(self.client.clone())
            .list(&all)
            .await
            .map_err(self.failed(Call::on::<FailoverPolicy>(Verb::List)))?;
        let limits = Api::<RateLimitPolicy>::all(self.client.clone())
            .list(&all)
            .await
            .map_err(self.failed(Call::on::<RateLimitPolicy>(Verb::List)))?;
        let failover = failover
            .iter()
            .map(|p| PolicyVerdict::of("FailoverPolicy", &p.metadata, p.status.as_ref()));
        let limits = limits
            .iter()
            .map(|p| PolicyVerdict::of("RateLimitPolicy", &p.metadata, p.status.as_ref()));
        Ok(failover.chain(limits).collect())
    }

    /// What port `port` of Pod `ns/pod` serves at `path`, read through the
    /// API server's pod proxy (RBAC: `get` on `pods/proxy`).
    pub async fn pod_text(
        &self,
        ns: &str,
        pod: &str,
        port: u16,
        path: &str,
    ) -> anyhow::Result<String> {
        let uri = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy{path}");
        let req = http::Request::get(uri)
            .body(Vec::new())
            .context("a pod proxy request")?;
        let call = Call::on::<Pod>(Verb::Get)
            .namespace(ns)
            .named(pod)
            .subresource("proxy");
        self.client
            .request_text(req)
            .await
            .map_err(self.failed(call))
    }

    /// Running Pods that carry Meshfed's sidecar (labelled
    /// `meshfed.io/injected=true`), as `(namespace, name)`, in every
    /// namespace: at most `limit`, and whether there are more.
    pub async fn meshed_pods(&self, limit: u32) -> anyhow::Result<(Vec<(String, String)>, bool)> {
        let params = ListParams::default()
            .labels(&format!("{}=true", meshfed_injector::pod::INJECTED))
            .fields("status.phase=Running")
            .limit(limit);
        let list = Api::<Pod>::all(self.client.clone())
            .list_metadata(&params)
            .await
            .map_err(self.failed(Call::on::<Pod>(Verb::List)))?;
        let more = list
            .metadata
            .continue_
            .as_deref()
            .is_some_and(|c| !c.is_empty());
        let pods = list
            .items
            .into_iter()
            .filter_map(|p| Some((p.metadata.namespace?, p.metadata.name?)))
            .collect();
        Ok((pods, more))
    }

    pub async fn set_exported(&self, ns: &str, name: &str, on: bool) -> anyhow::Result<Change> {
        let Some(svc) = self.service(ns, name).await? else {
            bail!("{}: no Service {ns}/{name}", self.describe());
        };
        let current = svc.metadata.labels.as_ref();
        if current.is_some_and(|l| l.contains_key(labels::ORIGIN_CLUSTER)) {
            bail!(
                "{}: {ns}/{name} is a mirror of a service in cluster {}; export the original there",
                self.describe(),
                current
                    .and_then(|l| l.get(labels::ORIGIN_CLUSTER))
                    .map_or("?", String::as_str)
            );
        }
        if export_holds(current, on) {
            return Ok(Change::Unchanged);
        }
        // A merge patch of the one label: nothing else of the Service is touched or owned.
        let value = if on { json!("true") } else { Value::Null };
        let patch = json!({ "metadata": { "labels": { labels::EXPORTED: value } } });
        Api::<Service>::namespaced(self.client.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(self.failed(Call::on::<Service>(Verb::Patch).namespace(ns).named(name)))?;
        Ok(Change::Updated)
    }

    pub async fn service(&self, ns: &str, name: &str) -> anyhow::Result<Option<Service>> {
        Api::<Service>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(self.failed(Call::on::<Service>(Verb::Get).namespace(ns).named(name)))
    }

    pub async fn mirrors(&self) -> anyhow::Result<Vec<Service>> {
        let list = Api::<Service>::all(self.client.clone())
            .list(&ListParams::default().labels(labels::ORIGIN_CLUSTER))
            .await
            .map_err(self.failed(Call::on::<Service>(Verb::List)))?;
        Ok(list.items)
    }

    pub async fn components(&self, _info: &ClusterInfo) -> anyhow::Result<Vec<Component>> {
        let api: Api<Deployment> = self.api();
        let mut out = Vec::new();
        for name in [IDENTITY, CONTROLLER, GATEWAY, INJECTOR] {
            let d = api
                .get_opt(name)
                .await
                .map_err(self.failed(deployment(NAMESPACE, name)))?;
            let (ready, replicas) = match d {
                None => (Err("not installed".to_owned()), None),
                Some(d) => {
                    let want = d.spec.replicas.unwrap_or(1);
                    let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                    let counted = if ready >= want && ready > 0 {
                        Ok(format!("{ready}/{want} ready"))
                    } else {
                        Err(format!("{ready}/{want} ready"))
                    };
                    (counted, Some((ready, want)))
                }
            };
            out.push(Component {
                name: name.to_owned(),
                ready,
                replicas,
            });
        }
        Ok(out)
    }

    pub async fn controller_lease(&self) -> anyhow::Result<Option<Lease>> {
        self.api::<Lease>().get_opt(CONTROLLER_LEASE).await.map_err(
            self.failed(
                Call::on::<Lease>(Verb::Get)
                    .namespace(NAMESPACE)
                    .named(CONTROLLER_LEASE),
            ),
        )
    }

    pub async fn crds(&self) -> anyhow::Result<Vec<(String, Option<CustomResourceDefinition>)>> {
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        let mut out = Vec::new();
        for want in meshfed_resources::crd::all() {
            let name = want.metadata.name.clone().unwrap_or_default();
            let have = api.get_opt(&name).await.map_err(self.failed(crd(&name)))?;
            out.push((name, have));
        }
        Ok(out)
    }

    /// The API server's `Date` against this machine's clock.
    pub async fn clock_skew(&self) -> anyhow::Result<(Duration, bool)> {
        let req = http::Request::get("/version")
            .body(Vec::new())
            .expect("a static request");
        let sent = SystemTime::now();
        let resp = self
            .client
            .send(req.map(kube::client::Body::from))
            .await
            .map_err(self.failed(Call::path(Verb::Get, "/version")))?;
        let date = resp
            .headers()
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .with_context(|| format!("{}: the API server sent no Date header", self.describe()))?;
        let theirs = httpdate::parse_http_date(date)
            .with_context(|| format!("{}: API server Date {date:?}", self.describe()))?;
        // Date has one-second resolution; compare with the middle of the exchange.
        let ours = sent + sent.elapsed().unwrap_or_default() / 2;
        Ok(match theirs.duration_since(ours) {
            Ok(ahead) => (ahead, true),
            Err(e) => (e.duration(), false),
        })
    }
}

fn config_map(name: &str) -> Call {
    Call::on::<ConfigMap>(Verb::Get)
        .namespace(NAMESPACE)
        .named(name)
}

fn link_call(verb: Verb, name: &str) -> Call {
    Call::on::<Link>(verb).namespace(NAMESPACE).named(name)
}

fn deployment(ns: &str, name: &str) -> Call {
    Call::on::<Deployment>(Verb::Get).namespace(ns).named(name)
}

fn crd(name: &str) -> Call {
    Call::on::<CustomResourceDefinition>(Verb::Get).named(name)
}

fn annotations_hold(old: &Link, new: &Link) -> bool {
    let empty = Default::default();
    let have = old.metadata.annotations.as_ref().unwrap_or(&empty);
    new.metadata
        .annotations
        .as_ref()
        .unwrap_or(&empty)
        .iter()
        .all(|(k, v)| have.get(k) == Some(v))
}

/// Server-side applies `objects` in order (as `meshctl install --apply`).
pub async fn apply_objects(cluster: &KubeCluster, objects: &[Value]) -> anyhow::Result<usize> {
    let client = &cluster.client;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for obj in objects {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"]
            .as_str()
            .context("object without a name")?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (plural, namespaced) =
            plural(kind).with_context(|| format!("meshctl cannot apply a {kind}"))?;
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        let call = Call::on_resource(Verb::Apply, &ar).named(name);
        let (api, call): (Api<DynamicObject>, _) = if namespaced {
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or(NAMESPACE);
            (
                Api::namespaced_with(client.clone(), ns, &ar),
                call.namespace(ns),
            )
        } else {
            (Api::all_with(client.clone(), &ar), call)
        };
        api.patch(name, &params, &Patch::Apply(obj))
            .await
            .map_err(cluster.failed(call))?;
    }
    Ok(objects.len())
}

/// How an installed object stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Ready,
    /// Not yet, and why.
    Waiting(String),
    /// Will not get there without a change, and why.
    Failed(String),
}

/// Waits until what `objects` installed is in use: every
/// CustomResourceDefinition established, every Deployment rolled out (as
/// `kubectl rollout status` judges it), in the order given, asking every
/// `every`. Gives up at a failed rollout, or after `timeout` naming what is
/// not ready and why. `progress` hears each object once it is ready.
pub async fn wait_rolled_out(
    cluster: &KubeCluster,
    objects: &[Value],
    timeout: Duration,
    every: Duration,
    progress: impl Fn(&str),
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let client = &cluster.client;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for obj in objects {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or(NAMESPACE);
        let what = match kind {
            "CustomResourceDefinition" => format!("CustomResourceDefinition {name}"),
            "Deployment" => format!("Deployment {ns}/{name}"),
            _ => continue,
        };
        loop {
            let state = if kind == "Deployment" {
                Api::<Deployment>::namespaced(client.clone(), ns)
                    .get_opt(name)
                    .await
                    .map_err(cluster.failed(deployment(ns, name)))?
                    .map_or_else(
                        || Rollout::Waiting("not found".into()),
                        |d| deployment_rollout(&d),
                    )
            } else {
                crds.get_opt(name)
                    .await
                    .map_err(cluster.failed(crd(name)))?
                    .map_or_else(|| Rollout::Waiting("not found".into()), |c| crd_rollout(&c))
            };
            match state {
                Rollout::Ready => {
                    progress(&what);
                    break;
                }
                Rollout::Failed(why) => bail!("{what}: {why}"),
                Rollout::Waiting(why) if tokio::time::Instant::now() + every > deadline => {
                    bail!(
                        "{what} is not ready after {}: {why}",
                        humantime::format_duration(timeout)
                    )
                }
                Rollout::Waiting(_) => tokio::time::sleep(every).await,
            }
        }
    }
    Ok(())
}

/// A Deployment's rollout, judged as `kubectl rollout status` does.
pub fn deployment_rollout(d: &Deployment) -> Rollout {
    let want = d.spec.replicas.unwrap_or(1);
    let Some(st) = &d.status else {
        return Rollout::Waiting("no status yet".into());
    };
    if d.metadata.generation > st.observed_generation {
        return Rollout::Waiting("the new spec is not observed yet".into());
    }
    let stuck = st.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = stuck {
        return Rollout::Failed(format!(
            "the rollout exceeded its progress deadline: {}",
            c.message.as_deref().unwrap_or("no message")
        ));
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    if updated < want {
        Rollout::Waiting(format!("{updated} of {want} replicas updated"))
    } else if total > updated {
        Rollout::Waiting(format!(
            "{} old replicas pending termination",
            total - updated
        ))
    } else if available < updated {
        Rollout::Waiting(format!(
            "{available} of {updated} updated replicas available"
        ))
    } else {
        Rollout::Ready
    }
}

/// A CustomResourceDefinition is in use once `Established`.
fn crd_rollout(c: &CustomResourceDefinition) -> Rollout {
    let conditions = c.status.as_ref().and_then(|s| s.conditions.as_ref());
    let find = |t: &str| conditions.into_iter().flatten().find(|c| c.type_ == t);
    if let Some(n) = find("NamesAccepted").filter(|n| n.status == "False") {
        return Rollout::Failed(format!(
            "names not accepted: {}",
            n.message.as_deref().unwrap_or("no message")
        ));
    }
    match find("Established") {
        Some(e) if e.status == "True" => Rollout::Ready,
        _ => Rollout::Waiting("not established yet".into()),
    }
}

/// The resource name of each kind install makes, and whether it is namespaced.
fn plural(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "Namespace" => ("namespaces", false),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "Deployment" => ("deployments", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "MutatingWebhookConfiguration" => ("mutatingwebhookconfigurations", false),
        _ => return None,
    })
}
