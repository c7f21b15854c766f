//! meshctl: the Meshfed command line. The binary only parses and calls
//! [`run`]; every command lives here so tests drive them in-process.

mod check;
mod cluster;
mod demo;
pub mod dev;
mod export;
mod gateways;
mod inject;
mod install;
mod kube_error;
mod link;
pub mod manifest_dir;
mod output;
mod routes;
mod scenario;
mod target;
mod trust;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

pub use check::{Outcome, Status, check};
pub use cluster::{ClusterInfo, LINK_ROOTS, NAMESPACE};
pub use gateways::{GatewayRow, gateways};
pub use inject::{InjectArgs, inject_text};
pub use install::{InstallArgs, KIND_ORDER, install_objects};
pub use link::{LinkArgs, make_link};
pub use routes::{BackendRow, MetricsSource, Observed, RuleRow, read_metrics, rows as route_rows};
pub use target::{
    Cluster, FileCluster, KubeCluster, Rollout, apply_objects, deployment_rollout, wait_rolled_out,
};

/// Parses one command's flags alone, as `meshctl <command>` would (tests,
/// embedding).
pub fn parse_args<T: clap::Args>(argv: &[&str]) -> Result<T, clap::Error> {
    #[derive(Debug, Parser)]
    struct Only<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    Only::<T>::try_parse_from(std::iter::once("meshctl").chain(argv.iter().copied()))
        .map(|o| o.inner)
}

/// Meshfed: multi-cluster service mesh federation.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the federation's trust: root, cluster intermediates, workload certificates.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
    /// Print (or apply) everything a cluster needs: CRDs, RBAC, CA, identity, controller, gateway.
    Install(install::InstallArgs),
    /// Let one cluster import another's exports (writes a Link into the importing cluster).
    Link(link::LinkArgs),
    /// Stop importing a cluster's exports (deletes its Link; the controller removes the mirrors).
    Unlink(link::UnlinkArgs),
    /// Export a Service to linked clusters (sets meshfed.io/exported=true).
    Export(export::ExportArgs),
    /// Stop exporting a Service (clears meshfed.io/exported).
    Unexport(export::ExportArgs),
    /// Check one or more clusters and their links; says what is wrong and how to fix it.
    Check(check::CheckArgs),
    /// Show every link's remote gateway: alive, latency, services, last error.
    Gateways(gateways::GatewaysArgs),
    /// Show the HTTPRoutes on Services: rules, backends, weights, observed share, status.
    Routes(routes::RoutesArgs),
    /// Add the Meshfed sidecar to workload manifests.
    Inject(inject::InjectArgs),
    /// See Meshfed work: three clusters on this machine, a failure, the failover, a summary.
    Demo(demo::DemoArgs),
    /// Run a whole federation on this machine as separate processes.
    #[command(subcommand)]
    Dev(dev::DevCommand),
    /// Run multi-cluster scenarios: faults, traffic and assertions on real networks.
    #[command(subcommand)]
    Scenario(scenario::ScenarioCommand),
    /// Print shell completions.
    #[command(after_help = "Examples:
  meshctl completion bash > /etc/bash_completion.d/meshctl
  meshctl completion zsh > \"${fpath[1]}/_meshctl\"
  meshctl completion fish > ~/.config/fish/completions/meshctl.fish")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Runs a parsed command line; errors are printed, not panicked.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Trust(cmd) => trust::run(cmd),
        Command::Inject(a) => inject::run(a),
        Command::Dev(dev::DevCommand::Exec(a)) => dev::exec(a),
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "meshctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        other => async_command(other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose words
/// the message already holds (many library errors repeat their source).
pub(crate) fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn async_command(command: Command) -> anyhow::Result<()> {
    meshfed_trust::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            Command::Install(a) => install::run(a).await,
            Command::Link(a) => link::run(a).await,
            Command::Unlink(a) => link::unlink(a).await,
            Command::Export(a) => export::run(a, true).await,
            Command::Unexport(a) => export::run(a, false).await,
            Command::Check(a) => check::run(a).await,
            Command::Gateways(a) => gateways::run(a).await,
            Command::Routes(a) => routes::run(a).await,
            Command::Dev(cmd) => dev::run(cmd).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Scenario(cmd) => scenario::run(cmd).await,
            Command::Trust(_) | Command::Inject(_) | Command::Completion { .. } => {
                unreachable!("run handles the synchronous commands")
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command a person can run shows an example in its --help.
    #[test]
    fn every_subcommand_help_has_an_example() {
        fn walk(cmd: &mut clap::Command, path: String, missing: &mut Vec<String>) {
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|s| s.get_name().to_owned())
                .collect();
            if names.is_empty() {
                let help = cmd.render_long_help().to_string();
                if !help.contains("Example") {
                    missing.push(path);
                }
                return;
            }
            for name in names {
                if name == "help" {
                    continue;
                }
                let sub = cmd.find_subcommand_mut(&name).expect("listed");
                walk(sub, format!("{path} {name}"), missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        walk(&mut cli, "meshctl".into(), &mut missing);
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
    }

    #[test]
    fn error_causes_are_not_repeated() {
        let io = std::io::Error::other("No such file");
        let e = anyhow::Error::new(io).context("failed to read config: No such file");
        let e = e.context("loading the context");
        assert_eq!(
            message(&e),
            "loading the context: failed to read config: No such file"
        );
    }

    #[test]
    fn completions_name_the_commands() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "meshctl",
            &mut out,
        );
        let script = String::from_utf8(out).expect("utf-8");
        for cmd in ["install", "link", "unlink", "export", "check", "gateways"] {
            assert!(script.contains(cmd), "bash completion lacks {cmd}");
        }
    }
}
