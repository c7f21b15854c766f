//! `meshctl scenario run|validate|clean`: multi-cluster scenarios. A YAML
//! file describes clusters, links, policies and a timeline of traffic,
//! faults, waits and assertions ([`spec`]); the runner ([`run`]) plays it
//! on a federation one of the providers brings up ([`env`]): each cluster
//! in its own network namespace on this machine ([`local`]), or kind
//! clusters ([`kind`]). Results come as a table, JSON and JUnit XML
//! ([`report`]). The format is documented in `scenarios/README.md`.

mod check;
mod describe;
mod env;
mod kind;
mod local;
pub(crate) mod probe;
mod replica;
mod report;
mod rotate;
mod run;
mod sample;
mod spec;
mod traffic;

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files and report what clients saw.
    Run(RunArgs),
    /// Check scenario files without running them.
    Validate(ValidateArgs),
    /// Remove what runs that were killed left behind (processes, namespaces,
    /// kind clusters).
    Clean(CleanArgs),
    /// Dial ADDR once as a pod without a mesh certificate and say whether it
    /// was answered (what the kind provider runs inside a cluster).
    #[command(hide = true)]
    Probe(ProbeArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  meshctl scenario probe 172.18.0.3:31460 --sni api.shop.8080.svc.meshfed.local")]
pub struct ProbeArgs {
    /// HOST:PORT to dial.
    pub addr: std::net::SocketAddr,
    /// Speak TLS with this SNI (no client certificate); plain HTTP without.
    #[arg(long)]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provider {
    /// Network namespaces on this machine (needs root and iproute2, iptables).
    Local,
    /// kind clusters (needs Docker and kind).
    Kind,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sudo meshctl scenario run scenarios/*.yaml
  sudo meshctl scenario run scenarios/failover.yaml --out ./results
  meshctl scenario run scenarios/failover.yaml --provider kind")]
pub struct RunArgs {
    /// Scenario files, run one after another.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Where the clusters run.
    #[arg(long, value_enum, default_value = "local")]
    pub provider: Provider,
    /// Where results.json and junit.xml are written.
    #[arg(long, default_value = "scenario-results")]
    pub out: PathBuf,
    #[command(flatten)]
    pub work: WorkArgs,
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// Where each scenario's federation lives while it runs (state, logs)
    /// [default: $TMPDIR/meshfed-scenarios].
    #[arg(long)]
    pub work: Option<PathBuf>,
}

impl WorkArgs {
    fn dir(&self) -> PathBuf {
        self.work
            .clone()
            .unwrap_or_else(|| crate::dev::default_dir("meshfed-scenarios"))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  meshctl scenario validate scenarios/*.yaml")]
pub struct ValidateArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Example:
  sudo meshctl scenario clean")]
pub struct CleanArgs {
    #[command(flatten)]
    pub work: WorkArgs,
}

pub async fn run(cmd: ScenarioCommand) -> anyhow::Result<()> {
    match cmd {
        ScenarioCommand::Validate(a) => {
            let mut bad = 0;
            for f in &a.files {
                match spec::load(f) {
                    Ok(s) => println!(
                        "{}: {} ({} steps) is valid",
                        f.display(),
                        s.name,
                        s.steps.len()
                    ),
                    Err(e) => {
                        bad += 1;
                        eprintln!("error: {}", crate::message(&e));
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} of {} files are not valid scenarios", a.files.len());
            }
            Ok(())
        }
        ScenarioCommand::Clean(a) => {
            let work = a.work.dir();
            let mut cleaned = 0;
            if work.is_dir() {
                for entry in std::fs::read_dir(&work)
                    .with_context(|| format!("reading {}", work.display()))?
                {
                    let dir = entry?.path();
                    if dir.is_dir()
                        && let Some(what) = run::clean(&dir).await?
                    {
                        println!("{}: removed {what}", dir.display());
                        cleaned += 1;
                    }
                }
            }
            if cleaned == 0 {
                println!("nothing left behind under {}", work.display());
            }
            Ok(())
        }
        ScenarioCommand::Run(a) => run_files(a).await,
        ScenarioCommand::Probe(a) => {
            let got = probe::connect(&crate::dev::Net::Host, a.addr, a.sni.as_deref()).await;
            match got {
                Ok(line) => {
                    println!("answered: {line}");
                    Ok(())
                }
                Err(why) => {
                    println!("refused: {why}");
                    std::process::exit(1)
                }
            }
        }
    }
}

async fn run_files(a: RunArgs) -> anyhow::Result<()> {
    // Every file is read and checked before anything starts.
    let mut scenarios = Vec::new();
    for f in &a.files {
        scenarios.push(spec::load(f)?);
    }
    for (i, s) in scenarios.iter().enumerate() {
        if scenarios[..i].iter().any(|o| o.name == s.name) {
            bail!(
                "two files name their scenario {:?}: names must differ",
                s.name
            );
        }
    }
    match a.provider {
        Provider::Kind => kind_preflight()?,
        Provider::Local => crate::dev::netns::preflight()?,
    }
    let work = a.work.dir();
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut results = Vec::new();
    for s in &scenarios {
        let dir = run::dir_for(&work, &s.name);
        eprintln!(
            "▶ {} — {}",
            s.name,
            s.description.lines().next().unwrap_or("")
        );
        let mut say = |line: &str| eprintln!("  {line}");
        let result = tokio::select! {
            r = run::run(a.provider, s, &dir, &mut say) => r,
            signal = interrupted() => {
                eprintln!("{signal}: stopping {} and removing what it started", s.name);
                let cleaned = run::clean(&dir).await;
                if let Err(e) = cleaned {
                    eprintln!("warning: {e:#}");
                }
                bail!("interrupted by {signal} during scenario {}", s.name);
            }
        };
        eprintln!(
            "  {} {} in {:.1} s{}",
            if result.status == report::Status::Passed {
                "✔"
            } else {
                "✘"
            },
            format!("{:?}", result.status).to_lowercase(),
            result.duration_ms / 1000.0,
            result
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        results.push(result);
    }
    let results = report::Results::of(results);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let json = a.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let junit = a.out.join("junit.xml");
    std::fs::write(&junit, report::junit(&results))
        .with_context(|| format!("writing {}", junit.display()))?;
    print!("{}", report::table(&results));
    println!("results: {} and {}", json.display(), junit.display());
    if !results.ok() {
        bail!(
            "{} of {} scenarios did not pass",
            results.failed + results.errors,
            results.scenarios.len()
        );
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

/// The kind provider needs Docker and kind on PATH.
fn kind_preflight() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["docker", "kind", "kubectl"]
        .into_iter()
        .filter(|tool| {
            std::process::Command::new(tool)
                .arg("version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "--provider kind needs Docker (a running engine), kind and kubectl; not usable here: {}. \
             Install them, or run the same files with --provider local (root)",
            missing.join(", ")
        );
    }
    Ok(())
}
