//! A federation of clusters in one process, for tests and benches: a mesh
//! root, cluster CAs under it, and clusters that are each a file store with
//! a real controller serving discovery and federation on loopback, plus the
//! manifests tests write into them. Panics on failure, as test set-up does.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshfed_ca::{ClusterCa, KeyAlgorithm, RootCa};
use meshfed_controller::{Controller, ControllerConfig, FileStore, FileStoreConfig, Store};
use meshfed_resources::objects;
use meshfed_trust::{CredentialsWatch, SpiffeId, TrustDomain};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const TD: &str = "mesh.test";
pub const CONTROLLER: &str = "/ns/meshfed-system/sa/meshfed-controller";
pub const GATEWAY: &str = "/ns/meshfed-system/sa/meshfed-gateway";
pub const API: &str = "/ns/shop/sa/api";
pub const FRONTEND: &str = "/ns/web/sa/frontend";

pub fn id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TD}{path}")).expect("valid id")
}

/// The mesh root; cluster CAs under it.
pub struct Mesh {
    pub root: RootCa,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh").finish_non_exhaustive()
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Self::new()
    }
}

impl Mesh {
    pub fn new() -> Self {
        meshfed_trust::install_crypto_provider();
        let td = TrustDomain::new(TD).expect("td");
        let root = RootCa::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(86400))
            .expect("root");
        Self { root }
    }

    pub fn cluster_ca(&self, name: &str) -> ClusterCa {
        self.root
            .issue_cluster(name, Duration::from_secs(86400), Vec::new())
            .expect("cluster ca")
    }
}

/// Credentials for `path`, issued by `ca`.
pub fn creds(ca: &ClusterCa, path: &str) -> CredentialsWatch {
    let w = ca
        .issue_workload(&id(path), Duration::from_secs(3600))
        .expect("issue");
    w.into_credentials().expect("credentials").into_watch().1
}

/// A credentials directory for `path` issued by `ca`, laid out as `meshctl
/// trust issue-workload` writes it (what a component's `--credentials-dir`
/// reads), for a component run as a child process.
pub fn write_credentials(ca: &ClusterCa, path: &str, dir: &Path) {
    ca.issue_workload(&id(path), Duration::from_secs(24 * 3600))
        .expect("issue")
        .save(dir, true)
        .expect("write credentials");
}

pub fn yaml<T: serde::Serialize>(obj: &T) -> String {
    serde_saphyr::to_string(obj).expect("yaml")
}

/// Writes a file atomically, as an editor or kubectl would.
pub fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `api.shop:80`, served by `endpoints` (inbound address, zone), each in
/// its own slice naming its Pod, which runs as `API`'s service account.
pub fn api_manifest(exported: bool, endpoints: &[(SocketAddr, &str)]) -> String {
    let endpoints: Vec<_> = endpoints.iter().map(|&(a, z)| (a, z, true)).collect();
    service_manifest("api", ("http", 80), exported, &endpoints)
}

/// Service `name` in namespace `shop` with one port, served by `endpoints`
/// (address, zone, ready), each in its own EndpointSlice that names its
/// Pod (`name-i`, running as service account `name`), as the
/// endpoint-slice controller writes them.
pub fn service_manifest(
    name: &str,
    (port_name, port): (&str, u16),
    exported: bool,
    endpoints: &[(SocketAddr, &str, bool)],
) -> String {
    let mut svc = objects::service("shop", name, &[(port_name, port)], exported);
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = Some("10.96.0.10".into());
    }
    let mut docs = vec![yaml(&svc)];
    for (i, (addr, zone, ready)) in endpoints.iter().enumerate() {
        let pod_name = format!("{name}-{i}");
        let mut slice = objects::slice("shop", name, &pod_name, &[(port_name, addr.port())]);
        let pod = objects::pod("shop", &pod_name, name, &addr.ip().to_string(), "n1");
        objects::add_pod_endpoint(&mut slice, &pod, Some(zone), *ready);
        docs.push(yaml(&slice));
        docs.push(yaml(&pod));
    }
    docs.join("---\n")
}

/// Serves `controller`'s federation and discovery on `federation` and
/// `discovery` (port 0: any free one) until the returned tasks are aborted;
/// returns the addresses bound.
pub async fn serve_controller(
    controller: &Arc<Controller>,
    federation: SocketAddr,
    discovery: SocketAddr,
) -> (SocketAddr, SocketAddr, Vec<JoinHandle<()>>) {
    let fed = TcpListener::bind(federation)
        .await
        .expect("bind federation");
    let disc = TcpListener::bind(discovery).await.expect("bind discovery");
    let (federation, discovery) = (
        fed.local_addr().expect("addr"),
        disc.local_addr().expect("addr"),
    );
    let (c1, c2) = (controller.clone(), controller.clone());
    let tasks = vec![
        tokio::spawn(async move {
            let _ = c1.serve_federation(fed, std::future::pending()).await;
        }),
        tokio::spawn(async move {
            let _ = c2.serve_discovery(disc, std::future::pending()).await;
        }),
    ];
    (federation, discovery, tasks)
}

/// One cluster: manifests, file store, controller, its listeners.
pub struct Cluster {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub ca: ClusterCa,
    pub discovery: SocketAddr,
    pub federation: SocketAddr,
    _controller: Arc<Controller>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("dir", &self.dir.path())
            .field("discovery", &self.discovery)
            .field("federation", &self.federation)
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    pub async fn start(mesh: &Mesh, name: &str) -> Self {
        Self::start_with(mesh, name, |_| {}).await
    }

    /// Starts a cluster; `manifests` may write files into its store before
    /// the controller first reads it.
    pub async fn start_with(mesh: &Mesh, name: &str, manifests: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        manifests(dir.path());
        let ca = mesh.cluster_ca(name);
        let mut cfg = FileStoreConfig::new(dir.path());
        cfg.poll = Duration::from_millis(20);
        let store: Arc<dyn Store> = Arc::new(FileStore::open(cfg).await.expect("store"));
        let mut config = ControllerConfig::new(name);
        config.status_period = Duration::from_millis(200);
        let mut registry = Registry::default();
        let controller = Arc::new(Controller::start(
            config,
            store,
            creds(&ca, CONTROLLER),
            &mut registry,
        ));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let (federation, discovery, tasks) = serve_controller(&controller, any, any).await;
        Self {
            name: name.into(),
            dir,
            ca,
            discovery,
            federation,
            _controller: controller,
            tasks,
        }
    }

    pub fn write(&self, file: &str, text: &str) {
        write_file(&self.dir.path().join(file), text);
    }

    /// Links this cluster to `peer`, whose gateway listens on `gateway`.
    pub fn link(&self, peer: &str, gateway: SocketAddr) {
        let mut link = objects::link(
            "meshfed-system",
            peer,
            &[&gateway.ip().to_string()],
            gateway.port(),
            &id(GATEWAY).to_string(),
            &id(CONTROLLER).to_string(),
        );
        link.spec.lease_ttl_seconds = 2;
        link.spec.probe.period_seconds = 1;
        self.write(&format!("link-{peer}.yaml"), &yaml(&link));
    }

    /// A FailoverPolicy for api with a failback hold of `hold_seconds`.
    pub fn policy(&self, hold_seconds: u32) {
        let mut p = objects::policy("shop", "api-failover", "api");
        p.spec.failback.hold_seconds = hold_seconds;
        self.write("policy.yaml", &yaml(&p));
    }
}

/// The value of the metric lines starting with `prefix`, summed.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `cluster`'s discovery lists a group for `remote` with a
/// healthy endpoint, for a caller in `zone`.
pub async fn until_remote_group(cluster: &Cluster, remote: &str, zone: &str) {
    use meshfed_api::discovery::discovery_client::DiscoveryClient;
    use meshfed_api::discovery::{Locality as Wire, WatchRequest};
    let tls = meshfed_trust::client_config(
        creds(&cluster.ca, FRONTEND),
        meshfed_trust::ExpectedIds::one(id(CONTROLLER)),
    );
    let name = rustls_pki_types::ServerName::try_from("discovery.meshfed.local").expect("name");
    let channel = meshfed_runtime::mtls_channel(
        cluster.discovery.to_string(),
        name,
        tls,
        Duration::from_secs(3),
    );
    let mut stream = DiscoveryClient::new(channel)
        .watch(WatchRequest {
            name: "api".into(),
            namespace: "shop".into(),
            port: 80,
            caller: Some(Wire {
                cluster: cluster.name.clone(),
                region: String::new(),
                zone: zone.into(),
            }),
        })
        .await
        .expect("watch")
        .into_inner();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let set = tokio::time::timeout(left, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{} never listed {remote}", cluster.name))
            .expect("stream")
            .expect("open");
        let found = set.groups.iter().any(|g| {
            g.remote && g.healthy > 0 && g.locality.as_ref().is_some_and(|l| l.cluster == remote)
        });
        if found {
            return;
        }
    }
}

/// Where a cluster's gateway finds its controller, and who it is.
#[derive(Debug, Clone, Copy)]
pub struct GatewayOf<'a> {
    /// The cluster's name.
    pub cluster: &'a str,
    /// Its CA, which issues the gateway's certificate.
    pub ca: &'a ClusterCa,
    /// The controller's discovery listener.
    pub discovery: SocketAddr,
    /// The controller's federation listener.
    pub federation: SocketAddr,
}

impl<'a> From<&'a Cluster> for GatewayOf<'a> {
    fn from(c: &'a Cluster) -> Self {
        Self {
            cluster: &c.name,
            ca: &c.ca,
            discovery: c.discovery,
            federation: c.federation,
        }
    }
}

/// A cluster's real east-west gateway (meshfed-gateway) in-process: routes
/// from the cluster's controller, federation passed through to it, probes
/// answered with the gateway identity. Stopping it is a crash: every
/// connection through it ends at once (no drain).
pub struct Gateway {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<JoinHandle<meshfed_gateway::Drained>>,
    following: JoinHandle<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts the gateway of `of` on `bind`, trusting a silent controller
    /// for `liveness`.
    pub async fn start(of: GatewayOf<'_>, bind: SocketAddr, liveness: Duration) -> Self {
        let gw_creds = creds(of.ca, GATEWAY);
        let mut registry = Registry::default();
        let metrics = Arc::new(meshfed_gateway::Metrics::new(&mut registry));
        let source = meshfed_gateway::RoutesSource {
            discovery: of.discovery.to_string(),
            controller_id: id(CONTROLLER),
            gateway: format!("{}-gateway", of.cluster),
        };
        let (routes, following) =
            meshfed_gateway::follow_routes(source, gw_creds.clone(), metrics.clone());
        let config = meshfed_gateway::GatewayConfig {
            federation_upstream: Some(of.federation.to_string()),
            drain_timeout: Duration::ZERO,
            liveness,
            ..meshfed_gateway::GatewayConfig::default()
        };
        let gateway = meshfed_gateway::Gateway::new(
            config,
            routes,
            gw_creds,
            meshfed_runtime::Readiness::default(),
            metrics,
        );
        let listener = meshfed_gateway::bind_shared(bind).expect("bind gateway");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            gateway
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
        });
        Self {
            addr,
            stop: Some(tx),
            served: Some(served),
            following,
        }
    }

    /// Stops accepting and closes every connection through the gateway.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
        self.following.abort();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = &self.served {
            s.abort();
        }
        self.following.abort();
    }
}
