//! The mesh under test: a PKI (one root, an `east` cluster CA for the
//! backend, gateway and controller, a `west` one for the caller, as in a
//! cross-cluster call), and an in-process controller whose file store
//! exports `shop/api` port 443 with the backend as its one ready endpoint.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshfed_ca::{ClusterCa, KeyAlgorithm, RootCa};
use meshfed_controller::{Controller, ControllerConfig, FileStore, FileStoreConfig, Store};
use meshfed_resources::objects;
use meshfed_trust::{CredentialsWatch, ExpectedIds, SpiffeId, TrustDomain, client_config, paths};
use prometheus_client::registry::Registry;
use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

pub const TD: &str = "mesh.test";
pub const BACKEND: &str = "/ns/shop/sa/api";
pub const CLIENT: &str = "/ns/shop/sa/web";
pub const GATEWAY: &str = "/ns/meshfed-system/sa/meshfed-gateway";
const CONTROLLER: &str = "/ns/meshfed-system/sa/meshfed-controller";
const VALIDITY: Duration = Duration::from_secs(24 * 3600);

pub fn id(path: &str) -> anyhow::Result<SpiffeId> {
    let td = TrustDomain::new(TD).context("trust domain")?;
    SpiffeId::new(td, path).with_context(|| format!("spiffe id {path}"))
}

/// The mesh's CAs.
#[derive(Debug)]
pub struct Pki {
    pub east: ClusterCa,
    pub west: ClusterCa,
}

impl Pki {
    pub fn new() -> anyhow::Result<Self> {
        meshfed_trust::install_crypto_provider();
        let td = TrustDomain::new(TD).context("trust domain")?;
        let root = RootCa::generate(&td, KeyAlgorithm::EcdsaP256, VALIDITY).context("root CA")?;
        Ok(Self {
            east: root
                .issue_cluster("east", VALIDITY, Vec::new())
                .context("east CA")?,
            west: root
                .issue_cluster("west", VALIDITY, Vec::new())
                .context("west CA")?,
        })
    }

    /// In-memory credentials for `path` issued by `ca`.
    pub fn watch(ca: &ClusterCa, path: &str) -> anyhow::Result<CredentialsWatch> {
        let w = ca.issue_workload(&id(path)?, VALIDITY).context("issue")?;
        let creds = w.into_credentials().context("credentials")?;
        Ok(creds.into_watch().1)
    }

    /// A credentials directory for `path`, laid out like `meshctl trust
    /// issue-workload` writes it (what `--credentials-dir` reads).
    pub fn write_dir(ca: &ClusterCa, path: &str, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let w = ca.issue_workload(&id(path)?, VALIDITY).context("issue")?;
        meshfed_trust::write_key(&dir.join(paths::LEAF_KEY), &w.key_pkcs8, true)?;
        meshfed_trust::write_certs(&dir.join(paths::LEAF_CERT), &w.chain[..1], true)?;
        meshfed_trust::write_certs(&dir.join(paths::INTERMEDIATE_CERT), &w.chain[1..], true)?;
        meshfed_trust::write_certs(&dir.join(paths::ROOT_CERT), w.bundle.roots(), true)?;
        Ok(())
    }

    /// The caller's TLS: mTLS as `west`'s `shop/web`, expecting the backend's
    /// identity whatever is in between. Resumption is off so every
    /// connection pays a full handshake.
    pub fn client(&self) -> anyhow::Result<TlsConnector> {
        let creds = Self::watch(&self.west, CLIENT)?;
        let mut config = client_config(creds, ExpectedIds::one(id(BACKEND)?));
        config.resumption = Resumption::disabled();
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

/// The SNI a caller sends for `shop/api:443`.
pub fn server_name() -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(meshfed_api::sni::service("api", "shop", 443)).context("server name")
}

/// The local controller, serving discovery until dropped.
#[derive(Debug)]
pub struct Discovery {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    _controller: Arc<Controller>,
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery {
    /// Exports `shop/api` port 443 (`tls`), backed by `backend`, from a
    /// manifest directory `dir`, and serves discovery on loopback.
    pub async fn start(pki: &Pki, dir: &Path, backend: SocketAddr) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).context("manifest dir")?;
        let svc = objects::service("shop", "api", &[("tls", 443)], true);
        let (pods, slice) = objects::pods_and_slice(
            "shop",
            "api",
            "api",
            &[("tls", backend.port())],
            &[(&backend.ip().to_string(), None, true)],
        );
        let text = format!(
            "{}---\n{}---\n{}",
            serde_saphyr::to_string(&svc).context("service yaml")?,
            serde_saphyr::to_string(&slice).context("slice yaml")?,
            serde_saphyr::to_string(&pods[0]).context("pod yaml")?
        );
        std::fs::write(dir.join("api.yaml"), text).context("write manifest")?;
        let store = FileStore::open(FileStoreConfig::new(dir))
            .await
            .context("file store")?;
        let store: Arc<dyn Store> = Arc::new(store);
        let creds = Pki::watch(&pki.east, CONTROLLER)?;
        let mut registry = Registry::default();
        let controller = Arc::new(Controller::start(
            ControllerConfig::new("east"),
            store,
            creds,
            &mut registry,
        ));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind discovery")?;
        let addr = listener.local_addr().context("discovery addr")?;
        let c = controller.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = c.serve_discovery(listener, std::future::pending()).await {
                eprintln!("discovery server failed: {e}");
            }
        });
        Ok(Self {
            addr,
            task,
            _controller: controller,
        })
    }
}
