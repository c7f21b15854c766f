//! Where a command reads and writes one cluster: the Kubernetes API of a
//! kubeconfig context, or a file store's manifest directory. Both answer the
//! same questions, so every command is written once.

mod file;
mod kube;

use std::path::PathBuf;
use std::time::Duration;

use crate::manifest_dir::Change;
use anyhow::Context;
use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use meshfed_resources::crd::Link;
use meshfed_resources::route::HttpRoute;

pub use self::file::FileCluster;
pub(crate) use self::file::ready_over;
pub use self::kube::{KubeCluster, Rollout, apply_objects, deployment_rollout, wait_rolled_out};
use crate::cluster::ClusterInfo;

/// `--context`: a kubeconfig context (the current one when absent).
#[derive(Debug, Clone, Default, Args)]
pub struct ContextArgs {
    /// Kubeconfig context of the cluster (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
}

impl ContextArgs {
    pub async fn open(&self) -> anyhow::Result<KubeCluster> {
        kube_cluster(self.context.as_deref()).await
    }
}

/// `--context C` or `--state DIR`: one cluster.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// Kubeconfig context of the cluster (default: the current context).
    #[arg(long, conflicts_with = "state")]
    pub context: Option<String>,
    /// A file store cluster: its manifest directory.
    #[arg(long)]
    pub state: Option<PathBuf>,
}

impl TargetArgs {
    pub async fn open(&self) -> anyhow::Result<Cluster> {
        open(self.context.as_deref(), self.state.as_ref()).await
    }
}

/// Opens a cluster from a context or a state directory (kube's current
/// context when both are absent).
pub async fn open(context: Option<&str>, state: Option<&PathBuf>) -> anyhow::Result<Cluster> {
    match state {
        Some(dir) => Ok(Cluster::File(FileCluster::open(dir)?)),
        None => Ok(Cluster::Kube(kube_cluster(context).await?)),
    }
}

async fn kube_cluster(context: Option<&str>) -> anyhow::Result<KubeCluster> {
    let kubeconfig = ::kube::config::Kubeconfig::read().context(
        "reading the kubeconfig (is KUBECONFIG set? for a file store cluster use --state DIR)",
    )?;
    KubeCluster::from_kubeconfig(kubeconfig, context).await
}

/// One cluster, whichever backend holds it.
#[derive(Debug)]
pub enum Cluster {
    Kube(KubeCluster),
    File(FileCluster),
}

/// A Meshfed policy (FailoverPolicy, RateLimitPolicy) and whether its
/// controller accepted it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyVerdict {
    /// `FailoverPolicy` or `RateLimitPolicy`.
    pub kind: &'static str,
    /// `namespace/name`.
    pub key: String,
    /// Its `Accepted` condition: `None` until the controller wrote one.
    pub accepted: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

impl PolicyVerdict {
    /// The verdict of a policy of `kind` with `meta` and `status`.
    pub fn of(
        kind: &'static str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        status: Option<&meshfed_resources::crd::FailoverPolicyStatus>,
    ) -> Self {
        let ns = meta.namespace.as_deref().unwrap_or("default");
        let name = meta.name.as_deref().unwrap_or_default();
        Self {
            kind,
            key: format!("{ns}/{name}"),
            accepted: status.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == meshfed_resources::crd::CONDITION_ACCEPTED)
                    .cloned()
            }),
        }
    }
}

/// A component and whether it is ready (`Err` says why not).
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub ready: Result<String, String>,
    /// Ready and desired replicas, where the backend counts them (kube).
    pub replicas: Option<(i32, i32)>,
}

macro_rules! each {
    ($self:ident, $c:ident => $e:expr) => {
        match $self {
            Cluster::Kube($c) => $e,
            Cluster::File($c) => $e,
        }
    };
}

impl Cluster {
    /// `context east` / `state ./east`, for messages.
    pub fn describe(&self) -> String {
        each!(self, c => c.describe())
    }

    /// The cluster's `meshfed-cluster` and `meshfed-trust` ConfigMaps.
    pub async fn info(&self) -> anyhow::Result<ClusterInfo> {
        each!(self, c => c.info().await)
    }

    /// Where other clusters reach the gateway: addresses and port.
    pub async fn gateway(&self, info: &ClusterInfo) -> anyhow::Result<(Vec<String>, u16)> {
        if !info.gateway_addresses.is_empty() {
            return Ok((info.gateway_addresses.clone(), info.gateway_port));
        }
        match self {
            Cluster::Kube(c) => c.gateway().await,
            Cluster::File(c) => anyhow::bail!(
                "{}: the cluster names no gateway address (gatewayAddresses in {}); \
                 re-run meshctl install --state with --gateway-address",
                c.describe(),
                crate::cluster::CLUSTER_CONFIG
            ),
        }
    }

    pub async fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        each!(self, c => c.link(name).await)
    }

    /// Creates or updates a Link (in meshfed-system); unchanged when it already says the same.
    pub async fn put_link(&self, link: &Link) -> anyhow::Result<Change> {
        each!(self, c => c.put_link(link).await)
    }

    pub async fn delete_link(&self, name: &str) -> anyhow::Result<bool> {
        each!(self, c => c.delete_link(name).await)
    }

    /// Every Link, with the status its controller wrote.
    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        each!(self, c => c.links().await)
    }

    /// Sets (`true`) or clears the export label of a Service.
    pub async fn set_exported(&self, ns: &str, name: &str, on: bool) -> anyhow::Result<Change> {
        each!(self, c => c.set_exported(ns, name, on).await)
    }

    /// Creates or replaces an HTTPRoute, as `kubectl apply` would.
    pub async fn put_route(&self, route: &HttpRoute) -> anyhow::Result<Change> {
        each!(self, c => c.put_route(route).await)
    }

    /// Every HTTPRoute, with the status its parents' controllers wrote.
    pub async fn routes(&self) -> anyhow::Result<Vec<HttpRoute>> {
        each!(self, c => c.routes().await)
    }

    /// Every FailoverPolicy and RateLimitPolicy, with the controller's verdict.
    pub async fn policies(&self) -> anyhow::Result<Vec<PolicyVerdict>> {
        each!(self, c => c.policies().await)
    }

    pub async fn service(&self, ns: &str, name: &str) -> anyhow::Result<Option<Service>> {
        each!(self, c => c.service(ns, name).await)
    }

    /// Every mirror Service the controller wrote.
    pub async fn mirrors(&self) -> anyhow::Result<Vec<Service>> {
        each!(self, c => c.mirrors().await)
    }

    /// The Meshfed components and whether each is ready.
    pub async fn components(&self, info: &ClusterInfo) -> anyhow::Result<Vec<Component>> {
        each!(self, c => c.components(info).await)
    }

    /// The controller replicas' leader Lease (`None`: there is none).
    pub async fn controller_lease(&self) -> anyhow::Result<Option<Lease>> {
        each!(self, c => c.controller_lease().await)
    }

    /// The installed CRDs by name (`None`: this backend has no CRDs to install).
    pub async fn crds(
        &self,
    ) -> anyhow::Result<Option<Vec<(String, Option<CustomResourceDefinition>)>>> {
        match self {
            Cluster::Kube(c) => c.crds().await.map(Some),
            Cluster::File(_) => Ok(None),
        }
    }

    /// The cluster's clock minus this machine's, where the cluster has its own.
    pub async fn clock_skew(&self) -> anyhow::Result<Option<(Duration, bool)>> {
        match self {
            Cluster::Kube(c) => c.clock_skew().await.map(Some),
            Cluster::File(_) => Ok(None),
        }
    }
}

/// Whether the export label already says `on` (cleared means absent, not "false").
fn export_holds(labels: Option<&std::collections::BTreeMap<String, String>>, on: bool) -> bool {
    let have = labels.and_then(|l| l.get(meshfed_api::labels::EXPORTED));
    if on {
        have.is_some_and(|v| v == "true")
    } else {
        have.is_none()
    }
}
