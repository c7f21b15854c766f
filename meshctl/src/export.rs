//! `meshctl export` / `unexport`: set or clear a Service's export label.

use crate::manifest_dir::Change;
use anyhow::bail;
use clap::Args;

use crate::target::TargetArgs;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl export svc/api -n shop --context west
  meshctl unexport svc/api -n shop --state ./west")]
pub struct ExportArgs {
    /// The Service: svc/NAME, service/NAME or NAME.
    pub service: String,
    /// Its namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `svc/api` → `api`, refusing other kinds.
fn service_name(arg: &str) -> anyhow::Result<&str> {
    let name = match arg.split_once('/') {
        Some(("svc" | "service" | "services", name)) => name,
        Some((kind, _)) => bail!("{arg}: only Services are exported, not {kind}"),
        None => arg,
    };
    if !meshfed_api::sni::is_dns_label(name) {
        bail!("{arg}: {name:?} is not a Service name (a DNS label)");
    }
    Ok(name)
}

pub async fn run(a: ExportArgs, on: bool) -> anyhow::Result<()> {
    let name = service_name(&a.service)?;
    if !meshfed_api::sni::is_dns_label(&a.namespace) {
        bail!("-n {}: not a namespace name (a DNS label)", a.namespace);
    }
    let cluster = a.target.open().await?;
    let change = cluster.set_exported(&a.namespace, name, on).await?;
    let what = if on { "exported" } else { "no longer exported" };
    match change {
        Change::Unchanged => println!(
            "service {}/{name} in {} was already {what}",
            a.namespace,
            cluster.describe()
        ),
        Change::Created | Change::Updated => println!(
            "service {}/{name} in {} is {what}; linked clusters {} its mirror within a second",
            a.namespace,
            cluster.describe(),
            if on { "get" } else { "drop" }
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert_eq!(service_name("svc/api").ok(), Some("api"));
        assert_eq!(service_name("service/api").ok(), Some("api"));
        assert_eq!(service_name("api").ok(), Some("api"));
        assert!(service_name("deploy/api").is_err());
        assert!(service_name("svc/API").is_err());
    }
}
