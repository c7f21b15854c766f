//! What one Meshfed cluster says about itself — the `meshfed-cluster` and
//! `meshfed-trust` ConfigMaps `meshctl install` writes — and the names and
//! ports install gives every component. `link`, `check` and `gateways` read
//! a cluster through these, whichever backend holds it.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_trust::{SpiffeId, TrustBundle, TrustDomain};

/// The controller replicas' leader Lease (`coordination.k8s.io/v1`, in
/// meshfed-system): its holder is the replica that writes. The controller's
/// own name for it, so install's RBAC and check read the one it takes.
pub use meshfed_controller::LEASE_NAME as CONTROLLER_LEASE;
pub use meshfed_injector::contract::{
    CONTROLLER, IDENTITY, INJECTOR, KEY_ROOTS, NAMESPACE, SIDECAR, TRUST_CONFIG,
};

/// ConfigMap: the cluster's name, trust domain, gateway and identities.
pub const CLUSTER_CONFIG: &str = "meshfed-cluster";
/// Secret: the cluster intermediate CA with its key, for the identity service.
pub const CA_SECRET: &str = "meshfed-ca";

/// The east-west gateway.
pub const GATEWAY: &str = "meshfed-gateway";

/// Controller replicas install runs: one leads (writes), the other takes
/// over within a lease; fewer ready and nothing takes over.
pub const CONTROLLER_REPLICAS: u16 = 2;

/// The annotation a Link carries with the fingerprints of the roots both
/// clusters trusted when it was made, so `check` can tell when they drift.
pub const LINK_ROOTS: &str = "meshfed.io/trust-roots";

/// The field manager meshctl writes with (server-side apply).
pub const FIELD_MANAGER: &str = "meshctl";

/// One cluster, as its `meshfed-cluster` and `meshfed-trust` ConfigMaps describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub cluster: String,
    pub trust_domain: TrustDomain,
    pub region: Option<String>,
    pub gateway_port: u16,
    /// Fixed gateway addresses (IPs or DNS names); empty when they come from
    /// the gateway Service (kube).
    pub gateway_addresses: Vec<String>,
    /// Admin listeners by component, where components run outside
    /// Kubernetes (local mode), for `check`.
    pub admin: BTreeMap<String, String>,
    /// The trust bundle (PEM); absent when the trust ConfigMap is not there yet.
    pub roots_pem: Option<String>,
    /// The cluster intermediate certificate (PEM).
    pub intermediate_pem: Option<String>,
}

const KEY_CLUSTER: &str = "cluster";
const KEY_TRUST_DOMAIN: &str = "trustDomain";
const KEY_REGION: &str = "region";
const KEY_GATEWAY_PORT: &str = "gatewayPort";
const KEY_GATEWAY_ID: &str = "gatewayIdentity";
const KEY_CONTROLLER_ID: &str = "controllerIdentity";
const KEY_GATEWAY_ADDRESSES: &str = "gatewayAddresses";
const KEY_ADMIN: &str = "adminAddresses";
pub const KEY_INTERMEDIATE: &str = "intermediate.crt";

impl ClusterInfo {
    /// The identity of a component running in `meshfed-system`.
    pub fn component_id(&self, service_account: &str) -> SpiffeId {
        self.trust_domain
            .workload(NAMESPACE, service_account)
            .expect("meshfed-system and the component names are valid SPIFFE path segments")
    }

    pub fn gateway_identity(&self) -> SpiffeId {
        self.component_id(GATEWAY)
    }

    pub fn controller_identity(&self) -> SpiffeId {
        self.component_id(CONTROLLER)
    }

    /// The cluster ConfigMap and, when the trust material is known, the trust ConfigMap.
    pub fn config_maps(&self) -> (ConfigMap, Option<ConfigMap>) {
        let mut data = BTreeMap::from([
            (KEY_CLUSTER.to_owned(), self.cluster.clone()),
            (KEY_TRUST_DOMAIN.to_owned(), self.trust_domain.to_string()),
            (KEY_GATEWAY_PORT.to_owned(), self.gateway_port.to_string()),
            (
                KEY_GATEWAY_ID.to_owned(),
                self.gateway_identity().to_string(),
            ),
            (
                KEY_CONTROLLER_ID.to_owned(),
                self.controller_identity().to_string(),
            ),
        ]);
        if let Some(region) = &self.region {
            data.insert(KEY_REGION.to_owned(), region.clone());
        }
        if !self.gateway_addresses.is_empty() {
            data.insert(
                KEY_GATEWAY_ADDRESSES.to_owned(),
                self.gateway_addresses.join(","),
            );
        }
        if !self.admin.is_empty() {
            let admin: Vec<String> = self.admin.iter().map(|(k, v)| format!("{k}={v}")).collect();
            data.insert(KEY_ADMIN.to_owned(), admin.join(","));
        }
        let cluster = config_map(CLUSTER_CONFIG, data);
        let trust = self.roots_pem.as_ref().map(|roots| {
            let mut data = BTreeMap::from([(KEY_ROOTS.to_owned(), roots.clone())]);
            if let Some(i) = &self.intermediate_pem {
                data.insert(KEY_INTERMEDIATE.to_owned(), i.clone());
            }
            config_map(TRUST_CONFIG, data)
        });
        (cluster, trust)
    }

    /// Reads the ConfigMaps back; `source` names where they came from in errors.
    pub fn from_config_maps(
        cluster: &ConfigMap,
        trust: Option<&ConfigMap>,
        source: &str,
    ) -> anyhow::Result<Self> {
        let empty = BTreeMap::new();
        let data = cluster.data.as_ref().unwrap_or(&empty);
        let get = |key: &str| data.get(key).filter(|v| !v.trim().is_empty());
        let need = |key: &str| {
            get(key).with_context(|| {
                format!("{source}: ConfigMap {NAMESPACE}/{CLUSTER_CONFIG} has no {key:?}; re-run meshctl install")
            })
        };
        let name = need(KEY_CLUSTER)?;
        meshfed_runtime::cluster_name(name)
            .map_err(|e| anyhow::anyhow!("{source}: cluster name {name:?} {e}"))?;
        let trust_domain = TrustDomain::new(need(KEY_TRUST_DOMAIN)?)
            .with_context(|| format!("{source}: {KEY_TRUST_DOMAIN}"))?;
        let port = need(KEY_GATEWAY_PORT)?;
        let gateway_port = port
            .parse()
            .with_context(|| format!("{source}: {KEY_GATEWAY_PORT} {port:?} is not a port"))?;
        let list = |key: &str| -> Vec<String> {
            get(key)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut admin = BTreeMap::new();
        for entry in list(KEY_ADMIN) {
            let Some((component, addr)) = entry.split_once('=') else {
                bail!("{source}: {KEY_ADMIN} entry {entry:?} is not COMPONENT=HOST:PORT");
            };
            admin.insert(component.to_owned(), addr.to_owned());
        }
        let trust_data = trust.and_then(|t| t.data.as_ref());
        let info = Self {
            cluster: name.clone(),
            trust_domain,
            region: get(KEY_REGION).cloned(),
            gateway_port,
            gateway_addresses: list(KEY_GATEWAY_ADDRESSES),
            admin,
            roots_pem: trust_data.and_then(|d| d.get(KEY_ROOTS)).cloned(),
            intermediate_pem: trust_data.and_then(|d| d.get(KEY_INTERMEDIATE)).cloned(),
        };
        // The identities are derived, never configured apart: a mismatch means
        // the ConfigMap was edited by hand or belongs to another install.
        for (key, want) in [
            (KEY_GATEWAY_ID, info.gateway_identity()),
            (KEY_CONTROLLER_ID, info.controller_identity()),
        ] {
            if let Some(have) = get(key)
                && *have != want.to_string()
            {
                bail!(
                    "{source}: {key} is {have} but the install names it {want}; re-run meshctl install"
                );
            }
        }
        Ok(info)
    }

    /// The trust bundle, or an error saying the trust ConfigMap is missing.
    pub fn bundle(&self, source: &str) -> anyhow::Result<TrustBundle> {
        let Some(pem) = &self.roots_pem else {
            bail!(
                "{source}: ConfigMap {NAMESPACE}/{TRUST_CONFIG} (the trust bundle) is missing; \
                 create it with meshctl install --ca DIR"
            );
        };
        TrustBundle::from_pem(self.trust_domain.clone(), pem.as_bytes())
            .with_context(|| format!("{source}: {TRUST_CONFIG} {KEY_ROOTS}"))
    }
}

fn config_map(name: &str, data: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            labels: Some(part_of(name)),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// Fingerprints both bundles share, or an error that says why linking them
/// cannot work and how to fix it.
pub fn shared_roots(
    exporting: (&ClusterInfo, &TrustBundle),
    importing: (&ClusterInfo, &TrustBundle),
) -> anyhow::Result<Vec<String>> {
    let ((a, a_roots), (b, b_roots)) = (exporting, importing);
    if a.trust_domain != b.trust_domain {
        bail!(
            "{} is in trust domain {} but {} is in {}: linked clusters must share one trust domain \
             (issue both intermediates from the same root with meshctl trust issue-cluster)",
            a.cluster,
            a.trust_domain,
            b.cluster,
            b.trust_domain
        );
    }
    let theirs = b_roots.fingerprints();
    let shared: Vec<String> = a_roots
        .fingerprints()
        .into_iter()
        .filter(|f| theirs.contains(f))
        .collect();
    if shared.is_empty() {
        bail!(
            "refusing to link: {} and {} share no trust root, so their workloads could not \
             authenticate each other\n  {} trusts {}\n  {} trusts {}\n\
             hint: issue both clusters' intermediates from the same root \
             (meshctl trust issue-cluster --root ROOT), or during a root rotation add the other \
             root with --extra-root",
            a.cluster,
            b.cluster,
            a.cluster,
            short_fingerprints(&a_roots.fingerprints()),
            b.cluster,
            short_fingerprints(&theirs),
        );
    }
    Ok(shared)
}

/// `ab:cd:ef:01…` for each root: enough to tell roots apart in a message.
pub fn short_fingerprints(fps: &[String]) -> String {
    let short: Vec<String> = fps
        .iter()
        .map(|f| format!("{}…", f.get(..11).unwrap_or(f)))
        .collect();
    format!("root(s) {}", short.join(", "))
}

/// The labels every installed object carries.
pub fn part_of(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "meshfed".to_owned()),
    ])
}
