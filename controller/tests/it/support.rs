//! Fixtures: clusters (file store + controller + served ports),
//! the real gateway, and gRPC clients over mTLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshfed_api::discovery::discovery_client::DiscoveryClient;
use meshfed_api::discovery::{EndpointSet, Locality, WatchRequest};
use meshfed_ca::ClusterCa;
use meshfed_controller::{
    ClusterState, Controller, ControllerConfig, FileStore, FileStoreConfig, ObjKey, Store,
};
pub use meshfed_testkit::cluster::{
    CONTROLLER, GATEWAY, Gateway, GatewayOf, Mesh, TD, id, serve_controller, write_credentials,
    write_file, yaml,
};
use meshfed_trust::{
    Credentials, CredentialsWatch, ExpectedIds, SpiffeId, TrustBundle, TrustDomain, client_config,
};
use prometheus_client::registry::Registry;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Credentials for `path` from `ca`, trusting `bundle` (the CA's own when None).
pub fn creds(ca: &ClusterCa, path: &str, bundle: Option<TrustBundle>) -> CredentialsWatch {
    let w = ca
        .issue_workload(&id(path), Duration::from_secs(3600))
        .expect("issue");
    let c = Credentials::new(
        w.chain,
        PrivatePkcs8KeyDer::from(w.key_pkcs8).into(),
        bundle.unwrap_or(w.bundle),
    )
    .expect("credentials");
    c.into_watch().1
}

/// One cluster: a manifest directory, its file store, its controller, and
/// its federation and discovery ports.
/// How long the controllers of these tests doubt a snapshot that drops
/// most of a peer's exports (30 s in production).
pub const DOUBT_HOLD: Duration = Duration::from_secs(2);

pub struct Cluster {
    pub name: String,
    region: Option<String>,
    pub dir: tempfile::TempDir,
    pub store: Arc<FileStore>,
    pub ca: ClusterCa,
    controller: Option<Arc<Controller>>,
    pub federation: SocketAddr,
    pub discovery: SocketAddr,
    pub registry: Arc<Registry>,
    servers: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

impl Cluster {
    pub async fn start(mesh: &Mesh, name: &str, region: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = mesh.cluster_ca(name);
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let parts = launch(dir.path(), &ca, name, region, any, any).await;
        Self {
            name: name.into(),
            region: region.map(Into::into),
            dir,
            ca,
            store: parts.store,
            controller: Some(parts.controller),
            federation: parts.federation,
            discovery: parts.discovery,
            registry: parts.registry,
            servers: parts.servers,
        }
    }

    /// Stops the controller, its store and its servers, as a crash would.
    pub fn stop_controller(&mut self) {
        for s in self.servers.drain(..) {
            s.abort();
        }
        self.controller = None;
    }

    /// Starts a fresh store and controller on the same directory and ports.
    pub async fn restart_controller(&mut self, _mesh: &Mesh) {
        self.stop_controller();
        let parts = launch(
            self.dir.path(),
            &self.ca,
            &self.name,
            self.region.as_deref(),
            self.federation,
            self.discovery,
        )
        .await;
        self.store = parts.store;
        self.controller = Some(parts.controller);
        self.registry = parts.registry;
        self.servers = parts.servers;
    }

    /// How many services the controller exports now.
    pub fn controller_exports(&self) -> usize {
        self.controller
            .as_ref()
            .map_or(0, |c| c.exports().borrow().len())
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes a manifest file (atomically, like an editor or kubectl would).
    pub fn write(&self, file: &str, text: &str) {
        write_file(&self.path(file), text);
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.path(file)).expect("remove manifest");
    }

    pub fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.store.state()
    }

    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }
}

struct Parts {
    store: Arc<FileStore>,
    controller: Arc<Controller>,
    federation: SocketAddr,
    discovery: SocketAddr,
    registry: Arc<Registry>,
    servers: Vec<JoinHandle<()>>,
}

async fn launch(
    dir: &Path,
    ca: &ClusterCa,
    name: &str,
    region: Option<&str>,
    federation: SocketAddr,
    discovery: SocketAddr,
) -> Parts {
    let mut cfg = FileStoreConfig::new(dir);
    cfg.poll = Duration::from_millis(50);
    let store = Arc::new(FileStore::open(cfg).await.expect("file store"));
    let creds = creds(ca, CONTROLLER, None);
    let mut config = ControllerConfig::new(name);
    config.region = region.map(Into::into);
    config.status_period = Duration::from_millis(200);
    config.doubt_hold = DOUBT_HOLD;
    let mut registry = Registry::default();
    let dyn_store: Arc<dyn Store> = store.clone();
    let controller = Arc::new(Controller::start(config, dyn_store, creds, &mut registry));
    let (federation, discovery, servers) =
        serve_controller(&controller, federation, discovery).await;
    Parts {
        store,
        controller,
        federation,
        discovery,
        registry: Arc::new(registry),
        servers,
    }
}

/// Waits until `f` holds for the value in `rx`; returns the time since `since`.
pub async fn until<T>(
    since: Instant,
    rx: &mut watch::Receiver<T>,
    what: &str,
    f: impl Fn(&T) -> bool,
) -> Duration {
    let res = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if f(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.expect("sender alive");
        }
    })
    .await;
    assert!(res.is_ok(), "timed out waiting for: {what}");
    since.elapsed()
}

/// [`until`] for a cluster store's state.
pub async fn until_state(
    since: Instant,
    rx: &mut watch::Receiver<Arc<ClusterState>>,
    what: &str,
    f: impl Fn(&ClusterState) -> bool,
) -> Duration {
    until(since, rx, what, |s: &Arc<ClusterState>| f(s)).await
}

pub fn has_mirror(state: &ClusterState, ns: &str, name: &str) -> bool {
    state.services.contains_key(&ObjKey::new(ns, name))
        && state.slices.contains_key(&ObjKey::new(ns, name))
}

/// Whether the mirror `ns/name` is there with no ready endpoint: its
/// cluster withdrawn, the Service kept as one whose pods all died.
pub fn mirror_withdrawn(state: &ClusterState, ns: &str, name: &str) -> bool {
    let key = ObjKey::new(ns, name);
    state.services.contains_key(&key)
        && state.slices.get(&key).is_some_and(|s| {
            s.endpoints
                .iter()
                .flatten()
                .all(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(true))
        })
}

/// The cluster's real east-west gateway (from the testkit).
pub async fn gateway(cluster: &Cluster) -> Gateway {
    gateway_on("127.0.0.1:0".parse().expect("addr"), cluster).await
}

/// [`gateway`], listening on `bind`.
pub async fn gateway_on(bind: SocketAddr, cluster: &Cluster) -> Gateway {
    let of = GatewayOf {
        cluster: &cluster.name,
        ca: &cluster.ca,
        discovery: cluster.discovery,
        federation: cluster.federation,
    };
    let liveness = meshfed_gateway::GatewayConfig::default().liveness;
    Gateway::start(of, bind, liveness).await
}

/// A gRPC channel over mTLS to `addr`, sending `sni`, expecting `server`.
pub async fn channel(
    addr: SocketAddr,
    sni: &'static str,
    creds: CredentialsWatch,
    server: SpiffeId,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = client_config(creds, ExpectedIds::one(server));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let dial = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from(sni).map_err(std::io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://meshfed.test")
        .connect_with_connector(dial)
        .await
}

/// Subscribes to `api.shop:80` at the discovery server `addr` as `caller`;
/// the latest set is kept in the returned channel.
pub async fn watch_endpoints(
    addr: SocketAddr,
    creds: CredentialsWatch,
    caller: Locality,
) -> watch::Receiver<Option<EndpointSet>> {
    let ch = channel(addr, "discovery.meshfed.local", creds, id(CONTROLLER))
        .await
        .expect("discovery channel");
    let mut stream = DiscoveryClient::new(ch)
        .watch(WatchRequest {
            name: "api".into(),
            namespace: "shop".into(),
            port: 80,
            caller: Some(caller),
        })
        .await
        .expect("watch")
        .into_inner();
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        while let Ok(Some(set)) = stream.message().await {
            if tx.send(Some(set)).is_err() {
                return;
            }
        }
    });
    rx
}

/// A bundle holding the roots of every CA given.
pub fn bundle_of(cas: &[&CertificateDer<'static>]) -> TrustBundle {
    TrustBundle::new(
        TrustDomain::new(TD).expect("td"),
        cas.iter().map(|c| (*c).clone()),
    )
    .expect("bundle")
}
