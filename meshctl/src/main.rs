//! meshctl: the Meshfed command line.

use clap::Parser;

fn main() -> std::process::ExitCode {
    meshctl::run(meshctl::Cli::parse())
}
