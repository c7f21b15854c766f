//! The `meshfed-injector` binary's whole life: flags, its serving
//! certificate, the namespace watch, serving the webhook until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use meshfed_runtime::{CredentialArgs, Readiness};
use meshfed_trust::{CertInfo, SpiffeId, serving_names};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::contract::{IDENTITY, NAMESPACE};
use crate::{
    Metrics, NamespacePolicies, PodInjector, SidecarTemplate, WebhookConfig, follow_namespaces,
    serve,
};

/// Meshfed sidecar injector: the mutating admission webhook that adds the Meshfed sidecar to every
/// pod created in a namespace labelled meshfed.io/inject=enabled, exactly as `meshctl inject` does,
/// and keeps the meshfed-trust ConfigMap those pods mount in each such namespace.
///
/// Its serving certificate comes from the identity service and names its Service
/// (<service account>.<namespace>.svc), which the API server checks against the caBundle of the
/// MutatingWebhookConfiguration that `meshctl install` writes.
///
/// Example (in a cluster, as `meshctl install` runs it):
///   meshfed-injector --cluster east --sidecar-image ghcr.io/meshfed/meshfed-sidecar:0.1.0 \
///     --identity-addr meshfed-identity.meshfed-system.svc:7443 \
///     --identity-server-id spiffe://mesh.local/ns/meshfed-system/sa/meshfed-identity \
///     --id spiffe://mesh.local/ns/meshfed-system/sa/meshfed-injector \
///     --token-file /var/run/secrets/meshfed/token --bundle /etc/meshfed/trust/root.crt
#[derive(Debug, Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// This cluster's name (a DNS label), given to every sidecar.
    #[arg(long, env = meshfed_runtime::env::CLUSTER, value_parser = meshfed_runtime::cluster_name)]
    cluster: String,
    /// This cluster's region, given to every sidecar.
    #[arg(long, env = meshfed_runtime::env::REGION)]
    region: Option<String>,
    /// The sidecar image injected pods run.
    #[arg(long, env = meshfed_runtime::env::SIDECAR_IMAGE)]
    sidecar_image: String,
    /// Where the API server calls the webhook (its Service maps 443 here).
    #[arg(long, env = meshfed_runtime::env::LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::INJECTOR))]
    listen: SocketAddr,
    /// Admin listener (/live, /ready once the labelled namespaces are listed, /metrics).
    #[arg(long, env = meshfed_runtime::env::ADMIN_LISTEN, default_value_t = meshfed_runtime::all_interfaces(meshfed_runtime::port::INJECTOR_ADMIN))]
    admin_listen: SocketAddr,
    /// How long a TLS handshake may take.
    #[arg(long, env = meshfed_runtime::env::HANDSHAKE_TIMEOUT, default_value = "5s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// How long reading one AdmissionReview may take.
    #[arg(long, env = meshfed_runtime::env::READ_TIMEOUT, default_value = "5s", value_parser = humantime::parse_duration)]
    read_timeout: Duration,
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
        ("--handshake-timeout", args.handshake_timeout),
        ("--read-timeout", args.read_timeout),
    ] {
        if value.is_zero() {
            bail!("{flag} must be longer than zero");
        }
    }
    if args.sidecar_image.trim().is_empty() {
        bail!("--sidecar-image must name an image");
    }
    // The API server reaches the webhook as <service account>.<namespace>.svc.
    let names = match &args.credentials.id {
        Some(id) => {
            let id = SpiffeId::parse(id).with_context(|| format!("--id {id}"))?;
            let (ns, sa) = id
                .workload()
                .with_context(|| format!("--id {id}: not a workload identity"))?;
            serving_names(ns, sa).to_vec()
        }
        None => Vec::new(),
    };
    let creds = args.credentials.load_serving(&names).await?;
    let leaf = CertInfo::parse(&creds.borrow().chain()[0]).context("the serving certificate")?;
    if !leaf.dns_sans.iter().any(|n| n.ends_with(".svc")) {
        bail!(
            "the serving certificate of {} names no Service (DNS names: {:?}); the API server \
             could not reach the webhook with it",
            creds.borrow().id(),
            leaf.dns_sans
        );
    }
    let td = creds.borrow().id().trust_domain().clone();
    let identity_server_id = match &args.credentials.identity_server_id {
        Some(id) => id.clone(),
        None => td
            .workload(NAMESPACE, IDENTITY)
            .context("the identity service's identity")?
            .to_string(),
    };
    let template = SidecarTemplate {
        cluster: args.cluster.clone(),
        region: args.region.clone(),
        trust_domain: td,
        image: args.sidecar_image.clone(),
        identity_server_id,
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;

    let mut registry = Registry::default();
    let metrics = Metrics::new(registry.sub_registry_with_prefix("meshfed_injector"));
    let (policies, ready) = (NamespacePolicies::default(), Readiness::default());
    tokio::spawn(follow_namespaces(
        client,
        creds.clone(),
        policies.clone(),
        ready.clone(),
    ));
    tokio::spawn(meshfed_runtime::serve_admin(
        admin,
        Arc::new(registry),
        ready,
    ));
    tracing::info!(
        cluster = %args.cluster,
        listen = %args.listen,
        admin = %args.admin_listen,
        names = ?leaf.dns_sans,
        "injector up"
    );
    let inject = Arc::new(PodInjector {
        template,
        namespaces: policies,
    });
    let config = WebhookConfig {
        handshake_timeout: args.handshake_timeout,
        read_timeout: args.read_timeout,
    };
    serve(
        listener,
        creds,
        inject,
        metrics,
        config,
        meshfed_runtime::shutdown_signal(),
    )
    .await;
    Ok(())
}
