//! `meshctl link` / `unlink`: lets one cluster import another's exports.
//! The Link is made from what the exporting cluster says about itself —
//! gateway, identities, trust roots — and refused when the two clusters
//! could not authenticate each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::manifest_dir::Change;
use anyhow::{Context, bail};
use clap::Args;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use meshfed_api::labels;
use meshfed_resources::crd::{GatewaySpec, Link, LinkSpec, ProbeSpec};

use crate::cluster::{LINK_ROOTS, NAMESPACE, shared_roots};
use crate::output::Format;
use crate::target::{Cluster, TargetArgs, open};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl link --from-context west --to-context east     # east imports west's exports
  meshctl link --from-state ./west --to-state ./east      # file store clusters
  meshctl link --from-context west --to-context east --dry-run -o yaml")]
pub struct LinkArgs {
    /// Kubeconfig context of the exporting cluster.
    #[arg(
        long,
        conflicts_with = "from_state",
        required_unless_present = "from_state"
    )]
    pub from_context: Option<String>,
    /// Manifest directory of the exporting cluster (file store).
    #[arg(long)]
    pub from_state: Option<PathBuf>,
    /// Kubeconfig context of the importing cluster.
    #[arg(
        long,
        conflicts_with = "to_state",
        required_unless_present = "to_state"
    )]
    pub to_context: Option<String>,
    /// Manifest directory of the importing cluster (file store).
    #[arg(long)]
    pub to_state: Option<PathBuf>,
    /// Gateway address(es) to dial instead of the ones the exporting cluster
    /// publishes (e.g. a DNS name in front of its load balancer). Repeatable.
    #[arg(long = "gateway-address")]
    pub gateway_addresses: Vec<String>,
    /// Import only exports with these labels, KEY=VALUE. Repeatable.
    #[arg(long = "selector", value_parser = key_value)]
    pub selector: Vec<(String, String)>,
    /// Seconds the exporting controller may stay silent before its services are withdrawn.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub lease_ttl: u32,
    /// Seconds the exporting cluster's services are kept while its controller is
    /// silent but its gateway answers probes (a restart or rollout of that
    /// controller); 0 withdraws them when the lease runs out.
    #[arg(long, default_value_t = meshfed_resources::crd::DEFAULT_CONTROL_PLANE_GRACE_SECONDS,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(meshfed_resources::crd::MAX_CONTROL_PLANE_GRACE_SECONDS)))]
    pub control_plane_grace: u32,
    /// Print the Link instead of writing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of --dry-run.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: Format,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

pub async fn run(a: LinkArgs) -> anyhow::Result<()> {
    let from = open(a.from_context.as_deref(), a.from_state.as_ref()).await?;
    let to = open(a.to_context.as_deref(), a.to_state.as_ref()).await?;
    let link = make_link(&a, &from, &to).await?;
    if a.dry_run {
        print!("{}", a.output.objects(&[serde_json::to_value(&link)?])?);
        return Ok(());
    }
    let name = link.metadata.name.clone().unwrap_or_default();
    let change = to.put_link(&link).await?;
    let verb = match change {
        Change::Created => "created",
        Change::Updated => "updated",
        Change::Unchanged => "unchanged",
    };
    println!(
        "link {NAMESPACE}/{name} {verb} in {}: it imports cluster {name}'s exports through {}:{}",
        to.describe(),
        link.spec.gateway.addresses.join(","),
        link.spec.gateway.port
    );
    Ok(())
}

/// The Link that lets `to` import `from`'s exports, or why there can be none.
pub async fn make_link(a: &LinkArgs, from: &Cluster, to: &Cluster) -> anyhow::Result<Link> {
    let exporting = from.info().await?;
    let importing = to.info().await?;
    if exporting.cluster == importing.cluster {
        bail!(
            "{} and {} are both cluster {}: a cluster does not link to itself (or two installs share a name)",
            from.describe(),
            to.describe(),
            exporting.cluster
        );
    }
    let shared = shared_roots(
        (&exporting, &exporting.bundle(&from.describe())?),
        (&importing, &importing.bundle(&to.describe())?),
    )?;
    let (addresses, port) = if a.gateway_addresses.is_empty() {
        from.gateway(&exporting).await?
    } else {
        (a.gateway_addresses.clone(), exporting.gateway_port)
    };
    let selector = (!a.selector.is_empty()).then(|| LabelSelector {
        match_labels: Some(a.selector.iter().cloned().collect()),
        ..LabelSelector::default()
    });
    let spec = LinkSpec {
        cluster: exporting.cluster.clone(),
        region: exporting.region.clone(),
        gateway: GatewaySpec {
            addresses,
            port,
            identity: exporting.gateway_identity().to_string(),
            controller_identity: exporting.controller_identity().to_string(),
            resolve_period_seconds: 30,
        },
        probe: ProbeSpec::default(),
        lease_ttl_seconds: a.lease_ttl,
        control_plane_grace_seconds: a.control_plane_grace,
        selector,
    };
    if let Err(errors) = meshfed_controller::validate_link(&spec) {
        let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("the Link would be invalid: {}", why.join("; "));
    }
    let mut link = Link::new(&exporting.cluster, spec);
    link.metadata = ObjectMeta {
        name: Some(exporting.cluster.clone()),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(crate::cluster::part_of("meshfed-link")),
        annotations: Some(BTreeMap::from([(LINK_ROOTS.to_owned(), shared.join(","))])),
        ..ObjectMeta::default()
    };
    Ok(link)
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl unlink --cluster west --context east     # east stops importing west
  meshctl unlink --cluster west --state ./east --wait 10s")]
pub struct UnlinkArgs {
    /// The linked (exporting) cluster to stop importing.
    #[arg(long, value_parser = meshfed_runtime::cluster_name)]
    pub cluster: String,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Wait this long for the controller to remove the cluster's mirrors.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
}

pub async fn unlink(a: UnlinkArgs) -> anyhow::Result<()> {
    let cluster = a.target.open().await?;
    if !cluster.delete_link(&a.cluster).await? {
        bail!(
            "{}: no Link {NAMESPACE}/{} (meshctl gateways lists the links)",
            cluster.describe(),
            a.cluster
        );
    }
    println!(
        "link {NAMESPACE}/{} deleted from {}; its controller now removes the mirrors of {}",
        a.cluster,
        cluster.describe(),
        a.cluster
    );
    let Some(wait) = a.wait else { return Ok(()) };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = mirrors_of(&cluster, &a.cluster).await?;
        if left == 0 {
            println!("mirrors of {} removed", a.cluster);
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "{left} mirror(s) of {} still there after {}: is the controller running? (meshctl check)",
                a.cluster,
                humantime::format_duration(wait)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn mirrors_of(cluster: &Cluster, link: &str) -> anyhow::Result<usize> {
    let mirrors = cluster.mirrors().await.context("listing mirrors")?;
    Ok(mirrors
        .iter()
        .filter(|m| {
            m.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::LINK))
                .is_some_and(|l| l == link)
        })
        .count())
}
