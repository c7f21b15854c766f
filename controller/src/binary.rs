//! The `meshfed-controller` binary's whole life: flags, tracing, serving until
//! SIGTERM. Kept in the library so `meshctl dev` can run it as one of its
//! processes with the same flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use meshfed_runtime::{CredentialArgs, Readiness};
use meshfed_trust::SpiffeId;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::leader::LEASE_NAME;
use crate::{
    Controller, ControllerConfig, FileStore, FileStoreConfig, KubeStore, Leadership, Store,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StoreKind {
    /// A directory of YAML manifests (--dir), watched for changes.
    File,
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kube,
}

/// Meshfed mirror controller: exports, federation, mirrors, health and discovery.
///
/// Example (local mode, offline credentials):
///   meshfed-controller --cluster east --store file --dir ./east \
///     --credentials-dir ./east-controller --federation-listen 127.0.0.1:7450 \
///     --discovery-listen 127.0.0.1:7451 --admin-listen 127.0.0.1:9902
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// This cluster's name (a DNS label).
    #[arg(long, env = meshfed_runtime::env::CLUSTER, value_parser = meshfed_runtime::cluster_name)]
    cluster: String,
    /// This cluster's region (remote clusters of the same region are preferred).
    #[arg(long, env = meshfed_runtime::env::REGION)]
    region: Option<String>,
    /// Where the cluster is read from and mirrors are written to.
    #[arg(long, env = meshfed_runtime::env::STORE, value_enum, default_value = "file")]
    store: StoreKind,
    /// Manifest directory, for --store file.
    #[arg(long, env = meshfed_runtime::env::STORE_DIR)]
    dir: Option<PathBuf>,
    /// How often the manifest directory is read whole when its changes
    /// cannot be watched, for --store file.
    #[arg(long, env = meshfed_runtime::env::STORE_POLL, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// How often the watched manifest directory is read whole anyway, for
    /// --store file.
    #[arg(long, env = meshfed_runtime::env::STORE_RESCAN, default_value = "30s", value_parser = humantime::parse_duration)]
    rescan: Duration,
    /// Federation listener (peers reach it through the gateway's federation SNI).
    #[arg(
        long,
        env = meshfed_runtime::env::FEDERATION_LISTEN,
        default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::FEDERATION)
    )]
    federation_listen: SocketAddr,
    /// Discovery listener for sidecars and gateways.
    #[arg(long, env = meshfed_runtime::env::DISCOVERY_LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::DISCOVERY))]
    discovery_listen: SocketAddr,
    /// Admin listener (/live, /ready, /metrics).
    #[arg(long, env = meshfed_runtime::env::ADMIN_LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::CONTROLLER_ADMIN))]
    admin_listen: SocketAddr,
    #[command(flatten)]
    credentials: CredentialArgs,
    /// Peer controller identity allowed on the federation stream besides the
    /// controller's own and every Link's controllerIdentity (repeatable).
    #[arg(
        long = "allow-peer",
        env = meshfed_runtime::env::ALLOW_PEERS,
        value_delimiter = ','
    )]
    allow_peers: Vec<String>,
    /// This replica's name: the holder identity of the leader lease (on
    /// Kubernetes, the pod's name).
    #[arg(long, env = meshfed_runtime::env::POD_NAME)]
    replica: Option<String>,
    /// Namespace of the leader Lease `meshfed-controller`, for --store kube
    /// (on Kubernetes, the pod's own).
    #[arg(long, env = meshfed_runtime::env::POD_NAMESPACE, default_value = "meshfed-system")]
    lease_namespace: String,
    /// Let other replicas on this host bind the same federation and
    /// discovery addresses (SO_REUSEPORT): local mode's stand-in for a
    /// Service in front of the replicas.
    #[arg(long, env = meshfed_runtime::env::REUSE_PORT)]
    reuse_port: bool,
}

/// Runs the binary: parses `args` (the program name first) and serves
/// until SIGTERM.
pub fn binary_main<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    meshfed_runtime::component_main::<Args, _, _, _, _>(args, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let extra_peers = args
        .allow_peers
        .iter()
        .map(|p| SpiffeId::parse(p).with_context(|| format!("--allow-peer {p}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let creds = args.credentials.load().await?;

    let replica = match &args.replica {
        Some(r) => r.clone(),
        None => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    };
    let bind = |addr: SocketAddr, flag: &'static str, shared: bool| async move {
        listen(addr, shared).with_context(|| format!("binding {flag} {addr}"))
    };
    let federation = bind(
        args.federation_listen,
        "--federation-listen",
        args.reuse_port,
    )
    .await?;
    let discovery = bind(args.discovery_listen, "--discovery-listen", args.reuse_port).await?;
    let admin = bind(args.admin_listen, "--admin-listen", false).await?;

    let (store, leadership): (Arc<dyn Store>, Leadership) = match args.store {
        StoreKind::File => {
            let Some(dir) = &args.dir else {
                bail!("--store file needs --dir DIR (or MESHFED_STORE_DIR)");
            };
            let mut cfg = FileStoreConfig::new(dir);
            cfg.poll = args.poll;
            cfg.rescan = args.rescan;
            let store = FileStore::open(cfg)
                .await
                .context("opening the file store (--dir)")?;
            let leadership = Leadership::file(dir, &replica)
                .with_context(|| format!("taking part in leader election in {}", dir.display()))?;
            (Arc::new(store), leadership)
        }
        StoreKind::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (use --store file outside a cluster)")?;
            let leadership = Leadership::kube(client.clone(), &args.lease_namespace, &replica)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot use the leader Lease {}/{LEASE_NAME}: {e}; the controller's \
                         Role must allow get, create and patch on leases there",
                        args.lease_namespace
                    )
                })?;
            let store = KubeStore::start(client)
                .await
                .context("starting the kube store")?;
            (Arc::new(store), leadership)
        }
    };

    let mut config = ControllerConfig::new(args.cluster.clone());
    config.region = args.region.clone();
    config.extra_peers = extra_peers;
    config.leading = Some(leadership.watch());
    let mut registry = Registry::default();
    let controller = Arc::new(Controller::start(config, store, creds, &mut registry));
    let ready = Readiness::default();
    tokio::spawn(meshfed_runtime::serve_admin(
        admin,
        Arc::new(registry),
        ready.clone(),
    ));
    {
        // Ready once synced: a replica that would answer discovery without
        // every peer's clusters must not take traffic in a rollout.
        let (c, ready) = (controller.clone(), ready.clone());
        tokio::spawn(async move {
            c.synced().await;
            ready.set(true);
            tracing::info!("synced: ready");
        });
    }
    tracing::info!(
        replica = %replica,
        cluster = %args.cluster,
        federation = %args.federation_listen,
        discovery = %args.discovery_listen,
        admin = %args.admin_listen,
        "controller up"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let fed = {
        let c = controller.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move { c.serve_federation(federation, stopped(rx)).await })
    };
    let disc = {
        let c = controller.clone();
        tokio::spawn(async move { c.serve_discovery(discovery, stopped(stop_rx)).await })
    };
    meshfed_runtime::shutdown_signal().await;
    ready.set(false);
    tracing::info!("stopping");
    // Hand the lease over first, so a follower writes while this one drains.
    leadership.release().await;
    let _ = stop_tx.send(true);
    for (what, task) in [("federation", fed), ("discovery", disc)] {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Err(e))) => {
                tracing::warn!(server = what, error = %e, "server ended with an error")
            }
            Ok(_) => {}
            Err(_) => tracing::warn!(server = what, "did not drain within 5 s"),
        }
    }
    Ok(())
}

/// A listener on `addr`; with `shared`, other sockets with SO_REUSEPORT may
/// bind it too and the kernel spreads new connections among them.
fn listen(addr: SocketAddr, shared: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}
