//! The `meshfed-sidecar` binary's whole life: flags, tracing, serving until
//! SIGTERM. Kept in the library so `meshctl dev` can run it as one of its
//! processes with the same flags.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use meshfed_runtime::{CredentialArgs, Readiness};
use meshfed_trust::SpiffeId;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    AllowRule, Breakers, DiscoverySource, Inbound, Locality, Plaintext, PlaintextPorts, PortPolicy,
    Rules, Sidecar, SidecarConfig, Timeouts, TransparentInbound, Upstream,
};

/// Meshfed sidecar: mTLS, locality-aware balancing and failover for one workload.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Run(Box<RunArgs>),
    InitIptables(IptablesArgs),
}

/// Runs the proxy.
///
/// Example (local mode: the app calls api.shop:80 on 127.0.0.1:9001 and
/// serves on 8080, reached by mesh callers on 4143):
///   meshfed-sidecar run --cluster east --zone a \
///     --discovery 127.0.0.1:7451 --credentials-dir ./frontend \
///     --upstream api.shop:80=9001 --inbound 4143=8080 \
///     --allow 4143=spiffe://mesh.local/ns/web/sa/gateway-test
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct RunArgs {
    /// This cluster's name.
    #[arg(long, env = meshfed_runtime::env::CLUSTER, value_parser = meshfed_runtime::cluster_name)]
    cluster: String,
    /// This workload's region, if known.
    #[arg(long, env = meshfed_runtime::env::REGION, default_value = "")]
    region: String,
    /// This workload's zone (topology.kubernetes.io/zone), if known.
    #[arg(long, env = meshfed_runtime::env::ZONE, default_value = "")]
    zone: String,
    /// The local controller's discovery listener (`host:port`).
    #[arg(long, env = meshfed_runtime::env::DISCOVERY)]
    discovery: String,
    /// The SPIFFE ID the controller presents (default:
    /// spiffe://<this workload's trust domain>/ns/meshfed-system/sa/meshfed-controller).
    #[arg(long, env = meshfed_runtime::env::CONTROLLER_ID)]
    controller_id: Option<String>,
    /// An explicit upstream, NAME.NAMESPACE:PORT=LISTEN (LISTEN: a port on 127.0.0.1, or IP:PORT). Repeatable.
    #[arg(long = "upstream", env = meshfed_runtime::env::UPSTREAMS, value_delimiter = ' ')]
    upstreams: Vec<Upstream>,
    /// The listener iptables redirects outbound TCP to (transparent mode).
    #[arg(long, env = meshfed_runtime::env::TRANSPARENT_LISTEN)]
    transparent_listen: Option<SocketAddr>,
    /// An inbound port, LISTEN=APP (bare LISTEN port: 0.0.0.0; bare APP port: 127.0.0.1). Repeatable.
    #[arg(long = "inbound", env = meshfed_runtime::env::INBOUND, value_delimiter = ' ')]
    inbound: Vec<Inbound>,
    /// The listener iptables redirects inbound TCP to (init-iptables --inbound-proxy-port): each connection goes on to the app at the port the caller dialled.
    #[arg(long, env = meshfed_runtime::env::INBOUND_TRANSPARENT)]
    inbound_transparent: Option<SocketAddr>,
    /// What callers outside the mesh (no TLS) get on a port behind --inbound-transparent: permissive (passed to the app, no caller ID) or strict (closed).
    #[arg(long, env = meshfed_runtime::env::INBOUND_POLICY, default_value_t = Plaintext::Permissive)]
    inbound_policy: Plaintext,
    /// A port's own plaintext policy, PORT=strict|permissive: an app port behind --inbound-transparent, or an --inbound listen port (strict unless named). Repeatable.
    #[arg(
        long = "inbound-port-policy",
        env = meshfed_runtime::env::INBOUND_PORT_POLICY,
        value_delimiter = ' '
    )]
    inbound_port_policies: Vec<PortPolicy>,
    /// Only these identities may call an inbound port: PORT=ID[,ID...] (an --inbound listen port, or an app port behind --inbound-transparent). Without it, any mesh identity may. Repeatable.
    #[arg(long = "allow", env = meshfed_runtime::env::ALLOW, value_delimiter = ' ')]
    allow: Vec<AllowRule>,
    /// The pod's IP address (the downward API's `status.podIP`): the
    /// controller sends the rate limits of the Services listing it.
    #[arg(long, env = meshfed_runtime::env::POD_IP)]
    pod_ip: Option<std::net::IpAddr>,
    /// Admin listener (/live, /ready, /metrics).
    #[arg(long, env = meshfed_runtime::env::ADMIN_LISTEN, default_value_t = meshfed_runtime::loopback(meshfed_runtime::port::SIDECAR_ADMIN))]
    admin_listen: SocketAddr,
    /// SO_MARK for the sidecar's own connections (what init-iptables --proxy-mark lets pass).
    #[arg(long, env = meshfed_runtime::env::MARK)]
    mark: Option<u32>,
    /// Data-plane threads; each carries its connections from accept to answer.
    #[arg(long, env = meshfed_runtime::env::WORKERS, default_value_t = crate::config::DEFAULT_WORKERS)]
    workers: usize,
    /// One connect (TCP + TLS) to an endpoint.
    #[arg(long, env = meshfed_runtime::env::CONNECT_TIMEOUT, default_value = "1s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,
    /// One HTTP request, retries included, until its response headers.
    #[arg(long, env = meshfed_runtime::env::REQUEST_TIMEOUT, default_value = "15s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// An endpoint connection silent this long gets an HTTP/2 ping; unanswered as long again, it is closed and its requests fail over. Every mesh connection also gets TCP keepalive probes after this much silence.
    #[arg(long, env = meshfed_runtime::env::LIVENESS, default_value = "2s", value_parser = humantime::parse_duration)]
    liveness: Duration,
    /// How long an app connection may stay silent before it is proxied as opaque TCP.
    #[arg(long, env = meshfed_runtime::env::DETECT_TIMEOUT, default_value = "1s", value_parser = humantime::parse_duration)]
    detect_timeout: Duration,
    /// Most HTTP requests in flight per endpoint group of a service.
    #[arg(long, env = meshfed_runtime::env::MAX_REQUESTS, default_value_t = Breakers::default().max_requests)]
    max_requests: usize,
    /// Most requests waiting for a connection per endpoint group.
    #[arg(long, env = meshfed_runtime::env::MAX_PENDING, default_value_t = Breakers::default().max_pending)]
    max_pending: usize,
    /// Most opaque TCP connections per endpoint group.
    #[arg(long, env = meshfed_runtime::env::MAX_CONNECTIONS, default_value_t = Breakers::default().max_connections)]
    max_connections: usize,
    /// Most HTTP requests of a service waiting for an endpoint able to serve; past it they fail at once.
    #[arg(long, env = meshfed_runtime::env::MAX_WAITING, default_value_t = Breakers::default().max_waiting)]
    max_waiting: usize,
    /// On SIGTERM: how long open calls may take to finish.
    #[arg(long, env = meshfed_runtime::env::DRAIN_TIMEOUT, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    #[command(flatten)]
    credentials: CredentialArgs,
}

/// Installs the nat rules that send this network namespace's outbound TCP
/// (and, with --inbound-proxy-port, its inbound TCP) to the sidecar (run as
/// root / NET_ADMIN before the app starts).
///
/// Example (outbound to 4140; inbound to 4143, but for port 22):
///   meshfed-sidecar init-iptables --proxy-port 4140 --proxy-uid 2102 \
///     --inbound-proxy-port 4143 --inbound-skip-port 22
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct IptablesArgs {
    /// The sidecar's --transparent-listen port.
    #[arg(long, default_value_t = meshfed_runtime::port::SIDECAR_OUTBOUND)]
    proxy_port: u16,
    /// The uid the sidecar runs as (its connections pass).
    #[arg(long)]
    proxy_uid: Option<u32>,
    /// The sidecar's --mark (its connections pass).
    #[arg(long)]
    proxy_mark: Option<u32>,
    /// Destination CIDRs never intercepted. Repeatable.
    #[arg(long = "exclude-cidr")]
    exclude_cidrs: Vec<String>,
    /// Destination ports never intercepted. Repeatable.
    #[arg(long = "exclude-port")]
    exclude_ports: Vec<u16>,
    /// The sidecar's --inbound-transparent port: inbound TCP is redirected
    /// there (nat PREROUTING). Without it, inbound is left alone.
    #[arg(long)]
    inbound_proxy_port: Option<u16>,
    /// The sidecar's --admin-listen port, never intercepted inbound.
    #[arg(long, default_value_t = meshfed_runtime::port::SIDECAR_ADMIN)]
    admin_port: u16,
    /// Inbound destination ports never intercepted (besides the sidecar's own). Repeatable.
    #[arg(long = "inbound-skip-port", requires = "inbound_proxy_port")]
    skip_inbound_ports: Vec<u16>,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead.
    #[arg(long, conflicts_with = "dry_run")]
    remove: bool,
}

/// Runs the binary: parses `args` (the program name first) and runs the
/// subcommand. Bad flags print clap's message and exit the process, as the
/// binary does.
pub fn binary_main<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Cmd::InitIptables(a) => init_iptables(a),
        Cmd::Run(a) => {
            // The control plane's; the data plane has threads of its own
            // (`--workers`).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(run(*a))
        }
    }
}

fn init_iptables(a: IptablesArgs) -> anyhow::Result<()> {
    if a.remove {
        Rules::remove()?;
        return Ok(());
    }
    let rules = Rules {
        proxy_port: a.proxy_port,
        proxy_uid: a.proxy_uid,
        proxy_mark: a.proxy_mark,
        exclude_cidrs: a.exclude_cidrs,
        exclude_ports: a.exclude_ports,
        inbound_port: a.inbound_proxy_port,
        admin_port: a.admin_port,
        skip_inbound_ports: a.skip_inbound_ports,
    };
    if a.dry_run {
        rules.check()?;
        for r in rules.chain_rules() {
            println!("iptables -t nat {}", r.join(" "));
        }
        println!("iptables -t nat -A OUTPUT -p tcp -j {}", crate::CHAIN);
        let inbound = rules.inbound_rules();
        for r in &inbound {
            println!("iptables -t nat {}", r.join(" "));
        }
        if !inbound.is_empty() {
            println!(
                "iptables -t nat -A PREROUTING -p tcp -j {}",
                crate::INBOUND_CHAIN
            );
        }
        return Ok(());
    }
    rules.apply()?;
    Ok(())
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    meshfed_runtime::init_tracing();
    meshfed_trust::install_crypto_provider();
    let mut config = SidecarConfig {
        locality: Locality {
            cluster: a.cluster,
            region: a.region,
            zone: a.zone,
        },
        upstreams: a.upstreams,
        transparent: a.transparent_listen,
        inbound: a.inbound,
        transparent_inbound: a.inbound_transparent.map(|listen| TransparentInbound {
            listen,
            allow: Default::default(),
            plaintext: a.inbound_policy,
        }),
        plaintext_ports: PlaintextPorts::default(),
        timeouts: Timeouts {
            connect: a.connect_timeout,
            request: a.request_timeout,
            detect: a.detect_timeout,
            liveness: a.liveness,
            ..Timeouts::default()
        },
        breakers: Breakers {
            max_requests: a.max_requests,
            max_pending: a.max_pending,
            max_connections: a.max_connections,
            max_waiting: a.max_waiting,
        },
        mark: a.mark,
        workers: a.workers,
        pod_ip: a.pod_ip,
    };
    config.apply_allow(a.allow)?;
    config.apply_port_policies(a.inbound_port_policies)?;
    config.validate()?;
    if config.upstreams.is_empty()
        && config.transparent.is_none()
        && config.inbound.is_empty()
        && config.transparent_inbound.is_none()
    {
        bail!(
            "nothing to do: give --upstream, --transparent-listen, --inbound or --inbound-transparent"
        );
    }
    let creds = a.credentials.load().await?;
    let controller_id = match a.controller_id {
        Some(id) => SpiffeId::parse(&id).context("--controller-id")?,
        None => SpiffeId::new(
            creds.borrow().id().trust_domain().clone(),
            "/ns/meshfed-system/sa/meshfed-controller",
        )
        .context("default controller id")?,
    };
    let source = DiscoverySource {
        addr: a.discovery,
        controller_id,
    };
    let mut registry = Registry::default();
    let ready = Readiness::default();
    let sidecar = Sidecar::new(config, creds, &source, ready.clone(), &mut registry);
    let admin = TcpListener::bind(a.admin_listen)
        .await
        .with_context(|| format!("--admin-listen {}", a.admin_listen))?;
    let bound = sidecar.bind().await?;
    tokio::spawn(meshfed_runtime::serve_admin(
        admin,
        Arc::new(registry),
        ready,
    ));
    tracing::info!(
        inbound = ?bound.inbound_addrs(),
        transparent = ?bound.transparent_addr(),
        transparent_inbound = ?bound.transparent_inbound_addr(),
        "sidecar serving"
    );
    bound
        .serve(meshfed_runtime::shutdown_signal(), a.drain_timeout)
        .await;
    Ok(())
}
