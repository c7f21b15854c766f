//! The `meshfed-gateway` binary's whole life: flags, tracing, serving until
//! SIGTERM. Kept in the library so `meshctl dev` can run it as one of its
//! processes with the same flags.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use meshfed_runtime::{CredentialArgs, Readiness};
use meshfed_trust::SpiffeId;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{Gateway, GatewayConfig, Limits, Metrics, RoutesSource, follow_routes};

/// Meshfed east-west gateway: SNI passthrough to exported services, and nothing else.
///
/// Example (local mode, offline credentials):
///   meshfed-gateway --cluster east --listen 127.0.0.1:7460 \
///     --discovery 127.0.0.1:7451 --federation-upstream 127.0.0.1:7450 \
///     --credentials-dir ./east-gateway --admin-listen 127.0.0.1:9903
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// This cluster's name (a DNS label).
    #[arg(long, env = meshfed_runtime::env::CLUSTER, value_parser = meshfed_runtime::cluster_name)]
    cluster: String,
    /// This gateway instance's name, for the controller's logs (default: the host name).
    #[arg(long, env = "HOSTNAME", default_value = "meshfed-gateway")]
    name: String,
    /// Where other clusters connect. Shared with other gateway processes on the
    /// same address (SO_REUSEPORT), so a replacement can start before this one drains.
    #[arg(long, env = meshfed_runtime::env::LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::GATEWAY))]
    listen: SocketAddr,
    /// Admin listener (/live, /ready, /metrics).
    #[arg(long, env = meshfed_runtime::env::ADMIN_LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::GATEWAY_ADMIN))]
    admin_listen: SocketAddr,
    /// The local controller's discovery listener (`host:port`): the routes come from it.
    #[arg(long, env = meshfed_runtime::env::DISCOVERY)]
    discovery: String,
    /// The SPIFFE ID the controller presents (default:
    /// spiffe://<this gateway's trust domain>/ns/meshfed-system/sa/meshfed-controller).
    #[arg(long, env = meshfed_runtime::env::CONTROLLER_ID)]
    controller_id: Option<String>,
    /// The local controller's federation listener (`host:port`); peers' federation
    /// streams are passed through to it. Without it the federation name is refused.
    #[arg(long, env = meshfed_runtime::env::FEDERATION_UPSTREAM)]
    federation_upstream: Option<String>,
    /// Most connections open at once; beyond it new ones are closed at once.
    #[arg(long, env = meshfed_runtime::env::MAX_CONNECTIONS, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Most connections open at once from one source IP.
    #[arg(long, env = meshfed_runtime::env::MAX_CONNECTIONS_PER_SOURCE, default_value_t = Limits::default().max_per_source)]
    max_connections_per_source: usize,
    /// How long a client may take to send its ClientHello.
    #[arg(long, env = meshfed_runtime::env::HANDSHAKE_TIMEOUT, default_value = "5s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// How long one upstream connect may take before another endpoint is tried.
    #[arg(long, env = meshfed_runtime::env::CONNECT_TIMEOUT, default_value = "1s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// Connections with no byte either way for this long are closed.
    #[arg(long, env = meshfed_runtime::env::IDLE_TIMEOUT, default_value = "1h", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A peer silent this long gets TCP keepalive probes, as far apart; two unanswered close the connection and the one spliced to it.
    #[arg(long, env = meshfed_runtime::env::LIVENESS, default_value = "5s", value_parser = humantime::parse_duration)]
    liveness: Duration,
    /// On SIGTERM, how long open connections may run on before they are closed.
    #[arg(long, env = meshfed_runtime::env::DRAIN_TIMEOUT, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    #[command(flatten)]
    credentials: CredentialArgs,
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
    for (flag, value) in [
        ("--max-connections", args.max_connections),
        (
            "--max-connections-per-source",
            args.max_connections_per_source,
        ),
    ] {
        if value == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    for (flag, value) in [
        ("--handshake-timeout", args.handshake_timeout),
        ("--connect-timeout", args.connect_timeout),
        ("--idle-timeout", args.idle_timeout),
        ("--liveness", args.liveness),
    ] {
        if value.is_zero() {
            bail!("{flag} must be longer than zero");
        }
    }
    raise_fd_limit();
    let creds = args.credentials.load().await?;
    let controller_id = match &args.controller_id {
        Some(id) => SpiffeId::parse(id).with_context(|| format!("--controller-id {id}"))?,
        None => {
            let td = creds.borrow().id().trust_domain().clone();
            let id = format!("spiffe://{td}/ns/meshfed-system/sa/meshfed-controller");
            SpiffeId::parse(&id).context("default controller identity")?
        }
    };

    let listener = crate::bind_shared(args.listen)
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let source = RoutesSource {
        discovery: args.discovery.clone(),
        controller_id,
        gateway: format!("{}/{}", args.cluster, args.name),
    };
    let (routes, _following) = follow_routes(source, creds.clone(), metrics.clone());
    let config = GatewayConfig {
        limits: Limits {
            max_connections: args.max_connections,
            max_per_source: args.max_connections_per_source,
        },
        handshake_timeout: args.handshake_timeout,
        connect_timeout: args.connect_timeout,
        idle_timeout: args.idle_timeout,
        liveness: args.liveness,
        drain_timeout: args.drain_timeout,
        federation_upstream: args.federation_upstream.clone(),
    };
    let ready = Readiness::default();
    let gateway = Gateway::new(config, routes, creds, ready.clone(), metrics);
    tokio::spawn(meshfed_runtime::serve_admin(
        admin,
        Arc::new(registry),
        ready,
    ));
    tracing::info!(
        cluster = %args.cluster,
        listen = %args.listen,
        discovery = %args.discovery,
        admin = %args.admin_listen,
        "gateway up"
    );
    let drained = gateway
        .serve(listener, meshfed_runtime::shutdown_signal())
        .await;
    if drained.forced > 0 {
        tracing::warn!(
            forced = drained.forced,
            "closed connections still open at the drain deadline"
        );
    }
    Ok(())
}

/// Each passed-through connection holds two descriptors: ask for as many as
/// the hard limit allows.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}
