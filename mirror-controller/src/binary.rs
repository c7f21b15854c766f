//! The `meshfed-controller` binary's whole life: flags, tracing, serving until
//! SIGTERM. Kept in the library so `meshctl dev` can run it as one of its
//! processes with the same flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use meshfed_trust::{CredentialArgs, Readiness, SpiffeId};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{Controller, ControllerConfig, FileStore, FileStoreConfig, KubeStore, Store};

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
    #[arg(long, env = "MESHFED_CLUSTER", value_parser = meshfed_trust::cluster_name)]
    cluster: String,
    /// This cluster's region (remote clusters of the same region are preferred).
    #[arg(long, env = "MESHFED_REGION")]
    region: Option<String>,
    /// Where the cluster is read from and mirrors are written to.
    #[arg(long, env = "MESHFED_STORE", value_enum, default_value = "file")]
    store: StoreKind,
    /// Manifest directory, for --store file.
    #[arg(long, env = "MESHFED_STORE_DIR")]
    dir: Option<PathBuf>,
    /// How often the manifest directory is checked, for --store file.
    #[arg(long, env = "MESHFED_STORE_POLL", default_value = "100ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Federation listener (peers reach it through the gateway's federation SNI).
    #[arg(
        long,
        env = "MESHFED_FEDERATION_LISTEN",
        default_value = "0.0.0.0:7450"
    )]
    federation_listen: SocketAddr,
    /// Discovery listener for sidecars and gateways.
    #[arg(long, env = "MESHFED_DISCOVERY_LISTEN", default_value = "0.0.0.0:7451")]
    discovery_listen: SocketAddr,
    /// Admin listener (/live, /ready, /metrics).
    #[arg(long, env = "MESHFED_ADMIN_LISTEN", default_value = "0.0.0.0:9902")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    credentials: CredentialArgs,
    /// Peer controller identity allowed on the federation stream besides the
    /// controller's own and every Link's controllerIdentity (repeatable).
    #[arg(
        long = "allow-peer",
        env = "MESHFED_ALLOW_PEERS",
        value_delimiter = ','
    )]
    allow_peers: Vec<String>,
}

/// Runs the binary: parses `args` (the program name first) and serves
/// until SIGTERM.
pub fn binary_main<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    meshfed_trust::component_main::<Args, _, _, _, _>(args, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let extra_peers = args
        .allow_peers
        .iter()
        .map(|p| SpiffeId::parse(p).with_context(|| format!("--allow-peer {p}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let creds = args.credentials.load().await?;

    let bind = |addr: SocketAddr, flag: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {flag} {addr}"))
    };
    let federation = bind(args.federation_listen, "--federation-listen").await?;
    let discovery = bind(args.discovery_listen, "--discovery-listen").await?;
    let admin = bind(args.admin_listen, "--admin-listen").await?;

    let store: Arc<dyn Store> = match args.store {
        StoreKind::File => {
            let Some(dir) = &args.dir else {
                bail!("--store file needs --dir DIR (or MESHFED_STORE_DIR)");
            };
            let mut cfg = FileStoreConfig::new(dir);
            cfg.poll = args.poll;
            Arc::new(
                FileStore::open(cfg)
                    .await
                    .context("opening the file store (--dir)")?,
            )
        }
        StoreKind::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (use --store file outside a cluster)")?;
            Arc::new(
                KubeStore::start(client)
                    .await
                    .context("starting the kube store")?,
            )
        }
    };

    let mut config = ControllerConfig::new(args.cluster.clone());
    config.region = args.region.clone();
    config.extra_peers = extra_peers;
    let mut registry = Registry::default();
    let controller = Arc::new(Controller::start(config, store, creds, &mut registry));
    let ready = Readiness::default();
    tokio::spawn(meshfed_trust::serve_admin(
        admin,
        Arc::new(registry),
        ready.clone(),
    ));
    ready.set(true);
    tracing::info!(
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
    meshfed_trust::shutdown_signal().await;
    ready.set(false);
    tracing::info!("stopping");
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
