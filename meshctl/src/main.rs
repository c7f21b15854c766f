//! meshctl: the Meshfed command line.

mod trust;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Meshfed: multi-cluster service mesh federation.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the federation's trust: root, cluster intermediates, workload certificates.
    #[command(subcommand)]
    Trust(trust::TrustCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Trust(cmd) => trust::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
