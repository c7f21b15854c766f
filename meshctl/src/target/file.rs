//! A file store cluster: its manifest directory, edited one document at a
//! time, and its components' admin listeners.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_api::labels;
use meshfed_controller::ObjKey;

use crate::manifest_dir::{Change, ManifestDir};
use meshfed_resources::crd::Link;
use meshfed_resources::route::{self, HttpRoute};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::export_holds;
use super::{Component, PolicyVerdict};
use crate::cluster::{CLUSTER_CONFIG, CONTROLLER_LEASE, ClusterInfo, NAMESPACE, TRUST_CONFIG};

const LINK_API: &str = "meshfed.io/v1alpha1";
const LEASE_API: &str = "coordination.k8s.io/v1";

#[derive(Debug)]
pub struct FileCluster {
    dir: ManifestDir,
}

impl FileCluster {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let dir = ManifestDir::open(dir)
            .with_context(|| format!("--state {}: not a manifest directory", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn describe(&self) -> String {
        format!("state {}", self.dir.dir().display())
    }

    fn get<T: DeserializeOwned>(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> anyhow::Result<Option<T>> {
        let found = self
            .dir
            .get(api_version, kind, &ObjKey::new(ns, name))
            .with_context(|| self.describe())?;
        found
            .map(|f| {
                serde_json::from_value(f.value)
                    .with_context(|| format!("{}: {kind} {ns}/{name}", f.path.display()))
            })
            .transpose()
    }

    pub async fn info(&self) -> anyhow::Result<ClusterInfo> {
        let cluster: ConfigMap = self
            .get("v1", "ConfigMap", NAMESPACE, CLUSTER_CONFIG)?
            .with_context(|| {
                format!(
                    "{}: no ConfigMap {NAMESPACE}/{CLUSTER_CONFIG}; describe the cluster with \
                     meshctl install --cluster NAME --ca DIR --state {} --gateway-address ADDR",
                    self.describe(),
                    self.dir.dir().display()
                )
            })?;
        let trust: Option<ConfigMap> = self.get("v1", "ConfigMap", NAMESPACE, TRUST_CONFIG)?;
        ClusterInfo::from_config_maps(&cluster, trust.as_ref(), &self.describe())
    }

    pub async fn link(&self, name: &str) -> anyhow::Result<Option<Link>> {
        self.get(LINK_API, "Link", NAMESPACE, name)
    }

    pub async fn put_link(&self, link: &Link) -> anyhow::Result<Change> {
        let name = link
            .metadata
            .name
            .as_deref()
            .context("the Link has a name")?;
        let value = serde_json::to_value(link)?;
        self.dir
            .put(&value, &PathBuf::from("links").join(format!("{name}.yaml")))
            .with_context(|| format!("{}: writing Link {name}", self.describe()))
    }

    pub async fn delete_link(&self, name: &str) -> anyhow::Result<bool> {
        self.dir
            .delete(LINK_API, "Link", &ObjKey::new(NAMESPACE, name))
            .with_context(|| format!("{}: deleting Link {name}", self.describe()))
    }

    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let mut out = Vec::new();
        for found in self
            .dir
            .list(LINK_API, "Link")
            .with_context(|| self.describe())?
        {
            let mut link: Link = serde_json::from_value(found.value)
                .with_context(|| format!("{}: a Link", found.path.display()))?;
            let key = ObjKey::new(
                link.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                link.metadata.name.clone().unwrap_or_default(),
            );
            // The controller writes statuses beside the manifests, never into them.
            if let Some(written) = self
                .dir
                .status("links", &key)
                .with_context(|| self.describe())?
                && let Some(status) = written.get("status")
            {
                link.status = serde_json::from_value(status.clone()).ok();
            }
            out.push(link);
        }
        Ok(out)
    }

    pub async fn put_route(&self, route: &HttpRoute) -> anyhow::Result<Change> {
        let (ns, name) = route_key(route)?;
        let mut value = serde_json::to_value(route)?;
        // A status is its controllers' to write (beside the manifests).
        if let Some(obj) = value.as_object_mut() {
            obj.remove("status");
        }
        self.dir
            .put(
                &value,
                &PathBuf::from(&ns).join(format!("route-{name}.yaml")),
            )
            .with_context(|| format!("{}: writing HTTPRoute {ns}/{name}", self.describe()))
    }

    pub async fn routes(&self) -> anyhow::Result<Vec<HttpRoute>> {
        let mut out = Vec::new();
        // v1beta1 is served from the same schema, as on Kubernetes.
        for version in ["v1", "v1beta1"] {
            let api = format!("{}/{version}", route::GROUP);
            for found in self
                .dir
                .list(&api, route::KIND)
                .with_context(|| self.describe())?
            {
                let mut r: HttpRoute = serde_json::from_value(found.value)
                    .with_context(|| format!("{}: an HTTPRoute", found.path.display()))?;
                let (ns, name) = route_key(&r)?;
                if let Some(written) = self
                    .dir
                    .status(route::PLURAL, &ObjKey::new(&ns, &name))
                    .with_context(|| self.describe())?
                    && let Some(status) = written.get("status")
                {
                    r.status = serde_json::from_value(status.clone()).ok();
                }
                out.push(r);
            }
        }
        Ok(out)
    }

    pub async fn policies(&self) -> anyhow::Result<Vec<PolicyVerdict>> {
        let mut out = Vec::new();
        for (kind, plural) in [
            ("FailoverPolicy", "failoverpolicies"),
            ("RateLimitPolicy", "ratelimitpolicies"),
        ] {
            let api = format!("{}/v1alpha1", meshfed_resources::crd::GROUP);
            for found in self.dir.list(&api, kind).with_context(|| self.describe())? {
                let meta: ObjectMeta =
                    serde_json::from_value(found.value["metadata"].clone()).unwrap_or_default();
                let key = ObjKey::new(
                    meta.namespace.as_deref().unwrap_or("default"),
                    meta.name.as_deref().unwrap_or_default(),
                );
                let status = self
                    .dir
                    .status(plural, &key)
                    .with_context(|| self.describe())?
                    .and_then(|written| serde_json::from_value(written["status"].clone()).ok());
                out.push(PolicyVerdict::of(kind, &meta, status.as_ref()));
            }
        }
        Ok(out)
    }

    pub async fn set_exported(&self, ns: &str, name: &str, on: bool) -> anyhow::Result<Change> {
        let key = ObjKey::new(ns, name);
        let Some(found) = self
            .dir
            .get("v1", "Service", &key)
            .with_context(|| self.describe())?
        else {
            bail!("{}: no Service {ns}/{name}", self.describe());
        };
        let svc: Service = serde_json::from_value(found.value.clone())
            .with_context(|| format!("{}: Service {ns}/{name}", found.path.display()))?;
        let current = svc.metadata.labels.as_ref();
        if let Some(origin) = current.and_then(|l| l.get(labels::ORIGIN_CLUSTER)) {
            bail!(
                "{}: {ns}/{name} is a mirror of a service in cluster {origin}; export the original there",
                self.describe()
            );
        }
        if export_holds(current, on) {
            return Ok(Change::Unchanged);
        }
        // Only the label changes; the rest of the document is written back as it was read.
        let mut value = found.value;
        let meta = value
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .context("a Service has metadata")?;
        let labels = meta
            .entry("labels")
            .or_insert_with(|| serde_json::json!({}));
        if labels.is_null() {
            *labels = serde_json::json!({});
        }
        let labels = labels.as_object_mut().context("metadata.labels is a map")?;
        if on {
            labels.insert(labels::EXPORTED.to_owned(), "true".into());
        } else {
            labels.remove(labels::EXPORTED);
        }
        let file = found
            .path
            .strip_prefix(self.dir.dir())
            .unwrap_or(&found.path);
        self.dir
            .put(&value, file)
            .with_context(|| format!("{}: writing Service {ns}/{name}", self.describe()))
    }

    pub async fn service(&self, ns: &str, name: &str) -> anyhow::Result<Option<Service>> {
        self.get("v1", "Service", ns, name)
    }

    pub async fn mirrors(&self) -> anyhow::Result<Vec<Service>> {
        let mut out = Vec::new();
        for found in self
            .dir
            .list("v1", "Service")
            .with_context(|| self.describe())?
        {
            let svc: Service = serde_json::from_value(found.value)
                .with_context(|| format!("{}: a Service", found.path.display()))?;
            if svc
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::ORIGIN_CLUSTER))
            {
                out.push(svc);
            }
        }
        Ok(out)
    }

    /// The Lease the leading controller replica records beside its file lock,
    /// shaped as on Kubernetes.
    pub async fn controller_lease(&self) -> anyhow::Result<Option<Lease>> {
        self.get(LEASE_API, "Lease", NAMESPACE, CONTROLLER_LEASE)
    }

    /// Asks each component's admin listener `/ready`.
    pub async fn components(&self, info: &ClusterInfo) -> anyhow::Result<Vec<Component>> {
        let mut out = Vec::new();
        for (name, addr) in &info.admin {
            out.push(Component {
                name: name.clone(),
                ready: ready(addr).await,
                replicas: None,
            });
        }
        Ok(out)
    }
}

/// `GET /ready` on an admin listener: `Ok` on 200, else why not.
pub async fn ready(addr: &str) -> Result<String, String> {
    let connect = async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(2), connect).await {
        Ok(Ok(conn)) => ready_over(conn, addr).await,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("{addr}: no answer within 2 s")),
    }
}

/// `GET /ready` over `conn`, a connection to the admin listener `addr`.
pub async fn ready_over(mut conn: tokio::net::TcpStream, addr: &str) -> Result<String, String> {
    let probe = async {
        conn.write_all(b"GET /ready HTTP/1.0\r\nHost: admin\r\n\r\n")
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut head = Vec::new();
        // The status line is all that is needed; bound what is read.
        (&mut conn)
            .take(256)
            .read_to_end(&mut head)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let line = String::from_utf8_lossy(&head);
        let status = line.lines().next().unwrap_or_default().to_owned();
        if status.split_whitespace().nth(1) == Some("200") {
            Ok(format!("{addr} ready"))
        } else {
            Err(format!("{addr} answered {status:?}"))
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(r) => r,
        Err(_) => Err(format!("{addr}: no answer within 2 s")),
    }
}

/// A route's namespace (`default` when it names none, as `kubectl apply`
/// places it) and name.
fn route_key(r: &HttpRoute) -> anyhow::Result<(String, String)> {
    let name = r
        .metadata
        .name
        .clone()
        .context("the HTTPRoute has a name")?;
    let ns = r
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    Ok((ns, name))
}
