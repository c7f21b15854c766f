//! Rotation and renewal on kind: a rotated CA goes into the cluster's CA
//! Secret and trust ConfigMaps; the holders that renew are the injected pods
//! of shop and the controller and gateway pods.

use anyhow::Context;
use serde_json::Value;

use super::Kind;
use super::shell::{base64_encode, kubectl};
use crate::cluster::{CA_SECRET, CONTROLLER, GATEWAY, NAMESPACE, TRUST_CONFIG};
use crate::dev::SHOP;

impl Kind {
    /// Puts the CA directory's files into the cluster's CA Secret and every
    /// trust ConfigMap (meshfed-system's and the workload namespace's), key
    /// by key: each key whose file the directory holds is replaced.
    pub(in crate::scenario) async fn ca_written(&mut self, cluster: &str) -> anyhow::Result<()> {
        let dir = self.ca_dir(cluster)?;
        for (namespace, kind, name) in [
            (NAMESPACE, "secret", CA_SECRET),
            (NAMESPACE, "configmap", TRUST_CONFIG),
            (SHOP, "configmap", TRUST_CONFIG),
        ] {
            let current = self
                .kc(
                    cluster,
                    &format!("get {kind} {name} -n {namespace} -o json"),
                )
                .await?;
            let mut obj: Value = serde_json::from_str(&current).context("kubectl's JSON")?;
            let keys: Vec<String> = obj["data"]
                .as_object()
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default();
            for key in keys {
                let Ok(text) = std::fs::read_to_string(dir.join(&key)) else {
                    continue;
                };
                obj["data"][&key] = if kind == "secret" {
                    base64_encode(text.as_bytes()).into()
                } else {
                    text.into()
                };
            }
            kubectl(
                cluster,
                &["replace", "-f", "-"],
                Some(serde_json::to_vec(&obj)?),
            )
            .await
            .with_context(|| format!("updating {kind} {namespace}/{name} in {cluster}"))?;
        }
        Ok(())
    }

    pub(in crate::scenario) async fn holders(&self, cluster: &str) -> anyhow::Result<usize> {
        let mut n = self
            .pods(cluster, SHOP, &format!("{}=true", crate::inject::INJECTED))
            .await?
            .len();
        for component in [CONTROLLER, GATEWAY] {
            n += self
                .pods(
                    cluster,
                    NAMESPACE,
                    &format!("app.kubernetes.io/name={component}"),
                )
                .await?
                .len();
        }
        Ok(n)
    }
}
