//! The `meshfed-identity` binary's whole life: flags, tracing, serving until
//! SIGTERM. Kept in the library so `meshctl dev` can run it as one of its
//! processes with the same flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use meshfed_runtime::Readiness;

use meshfed_ca::ClusterCa;

use crate::{
    Authenticator, BootstrapTokens, IdentityService, IdentityServiceConfig, TokenReviewer,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AuthMode {
    /// Kubernetes ServiceAccount tokens, checked with the TokenReview API.
    Kubernetes,
    /// Per-identity bootstrap tokens from --bootstrap-tokens (local mode).
    Bootstrap,
}

/// Meshfed identity service: workloads send a CSR and a credential and get
/// a short-lived X.509-SVID signed by the cluster intermediate.
///
/// Example (local mode):
///   meshfed-identity --ca-dir ./east-ca --auth bootstrap --bootstrap-tokens ./tokens \
///     --listen 127.0.0.1:7443 --admin-listen 127.0.0.1:9901
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Cluster CA directory (intermediate.crt, intermediate.key, root.crt).
    #[arg(long, env = meshfed_runtime::env::CA_DIR)]
    ca_dir: PathBuf,
    /// Address of the gRPC (TLS) listener.
    #[arg(long, env = meshfed_runtime::env::IDENTITY_LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::IDENTITY))]
    listen: SocketAddr,
    /// Address of the admin listener (/live, /ready, /metrics).
    #[arg(long, env = meshfed_runtime::env::ADMIN_LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::IDENTITY_ADMIN))]
    admin_listen: SocketAddr,
    /// How credentials are proven.
    #[arg(
        long,
        env = meshfed_runtime::env::IDENTITY_AUTH,
        value_enum,
        default_value = "kubernetes"
    )]
    auth: AuthMode,
    /// Bootstrap token file (`<namespace>/<service-account> <token>` per line), for --auth bootstrap.
    #[arg(long, env = meshfed_runtime::env::BOOTSTRAP_TOKENS)]
    bootstrap_tokens: Option<PathBuf>,
    /// Audience ServiceAccount tokens must be meant for, for --auth kubernetes (repeatable).
    #[arg(
        long = "token-audience",
        env = meshfed_runtime::env::TOKEN_AUDIENCES,
        value_delimiter = ','
    )]
    token_audiences: Vec<String>,
    /// Lifetime of issued workload certificates, e.g. 24h, 90m.
    #[arg(long, env = meshfed_runtime::env::LEAF_TTL, default_value = "24h", value_parser = humantime::parse_duration)]
    leaf_ttl: Duration,
    /// Namespace of the service's own identity.
    #[arg(long, env = meshfed_runtime::env::NAMESPACE, default_value = "meshfed-system")]
    namespace: String,
    /// Service account of the service's own identity.
    #[arg(
        long,
        env = meshfed_runtime::env::SERVICE_ACCOUNT,
        default_value = "meshfed-identity"
    )]
    service_account: String,
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
    let ca = Arc::new(ClusterCa::load(&args.ca_dir).context("loading the cluster CA (--ca-dir)")?);
    let own_id = ca
        .trust_domain()
        .workload(&args.namespace, &args.service_account)
        .context("own identity (--namespace, --service-account)")?;
    let auth = match args.auth {
        AuthMode::Bootstrap => {
            let Some(path) = &args.bootstrap_tokens else {
                bail!(
                    "--auth bootstrap needs --bootstrap-tokens FILE (or MESHFED_BOOTSTRAP_TOKENS)"
                );
            };
            let tokens = BootstrapTokens::load(path)?;
            if tokens.is_empty() {
                bail!("{}: names no identity", path.display());
            }
            Authenticator::Bootstrap(tokens)
        }
        AuthMode::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API for TokenReview (use --auth bootstrap outside a cluster)")?;
            Authenticator::TokenReview(Box::new(TokenReviewer::new(
                client,
                args.token_audiences.clone(),
            )))
        }
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;

    let mut registry = Registry::default();
    let service = IdentityService::new(
        ca.clone(),
        auth,
        args.leaf_ttl,
        registry.sub_registry_with_prefix("meshfed_identity"),
    );
    let (creds, _renew) = crate::self_credentials(ca, own_id.clone(), args.leaf_ttl)?;
    let ready = Readiness::default();
    tokio::spawn(meshfed_runtime::serve_admin(
        admin,
        Arc::new(registry),
        ready.clone(),
    ));
    ready.set(true);
    tracing::info!(listen = %args.listen, admin = %args.admin_listen, spiffe_id = %own_id, "identity service up");
    crate::serve(
        listener,
        service,
        creds,
        &IdentityServiceConfig::default(),
        meshfed_runtime::shutdown_signal(),
    )
    .await?;
    tracing::info!("identity service stopped");
    Ok(())
}
