//! `meshctl demo`: the Meshfed story on this machine, in one command. Three
//! clusters come up as separate processes (the `dev up` machinery); east's
//! client calls `api` the whole time while the demo breaks things — east's
//! own `api` stops, central's gateway dies, `api` comes back, west stops
//! exporting, central returns — and says what the mesh did. It ends with a
//! summary (calls, failures, who served what, measured times) and exits 0
//! only if every step behaved.

mod narrate;
mod report;
mod story;
mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use self::narrate::Narrator;
use self::report::{Summary, ms, shares};
use self::story::Story;
use self::traffic::Traffic;
use crate::dev::{self, FederationArgs, SHOP, Subnet, Topology};

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  meshctl demo
  meshctl demo --json > summary.json
  meshctl demo --keep      # then explore: meshctl dev status --dir $TMPDIR/meshfed-demo")]
pub struct DemoArgs {
    /// Print the summary as JSON on stdout (the narration goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Leave the federation running afterwards (stop it with meshctl dev down --dir DIR).
    #[arg(long)]
    pub keep: bool,
    /// The federation's directory [default: $TMPDIR/meshfed-demo].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The loopback /16 the addresses come from (apart from `dev up`'s, so both can run).
    #[arg(long, default_value = "127.78.0.0/16")]
    pub subnet: Subnet,
    #[command(flatten)]
    pub federation: FederationArgs,
}

/// Calls per client; each pauses this long between calls.
const CALLERS: usize = 4;
const PAUSE: Duration = Duration::from_millis(20);
/// Traffic has moved when this many calls in a row went to the same place.
const SETTLED: usize = 40;
/// How long traffic is watched staying where it moved.
const STEADY: Duration = Duration::from_millis(1500);
/// The budget an unexport has to reach the other clusters (DESIGN §10).
const PROPAGATION_BUDGET: Duration = Duration::from_secs(1);

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| dev::default_dir("meshfed-demo"));
    let n = Narrator::new(a.json);
    let clusters = [
        ("east", "us-east"),
        ("central", "us-east"),
        ("west", "us-west"),
    ]
    .map(|(c, r)| (c.to_owned(), r.to_owned()))
    .to_vec();
    let spec = a.federation.spec(dir.clone(), a.subnet, clusters)?;
    n.say("Meshfed demo: a federation of three clusters on this machine, no Kubernetes needed.");

    n.step(
        "Start three clusters",
        "east and central share region us-east, west is in us-west. Each cluster gets its own \
         trust intermediate under one root, an identity service, a controller, a gateway, and \
         sample workloads (api in two zones, echo, a client) behind sidecars — every one its \
         own process on its own loopback address. Every pair is linked and api is exported.",
    );
    let began = Instant::now();
    let mut t = dev::up(&spec, a.federation.timeout, &mut |line| n.detail(line)).await?;
    let mut timings = BTreeMap::from([("startup".to_owned(), ms(began.elapsed()))]);
    n.detail(&format!(
        "{} processes up in {:.1} s (topology: {})",
        t.processes().count(),
        began.elapsed().as_secs_f64(),
        Topology::path(&dir).display()
    ));

    let east = t.cluster("east")?.clone();
    let traffic = Traffic::start(east.upstream(&format!("api.{SHOP}"))?, CALLERS, PAUSE);
    let ticker = n.ticker(&traffic);
    let story = Story {
        n: &n,
        lease_ttl: Duration::from_secs(u64::from(a.federation.lease_ttl)),
        traffic: &traffic,
        timings: &mut timings,
    };
    // The processes run in their own process groups: Ctrl-C reaches only
    // this one, which then stops them.
    let steps = tokio::select! {
        r = story.tell(&mut t) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(ticker);
    let calls = traffic.stop().await;

    let steps = match steps {
        Ok(steps) => steps,
        Err(e) => {
            stop_unless_kept(&dir, false, &n).await;
            return Err(e);
        }
    };
    // The story's calls: those sent while a step was told.
    let calls: Vec<_> = calls
        .into_iter()
        .filter(|c| steps.iter().any(|s| s.contains(c)))
        .collect();
    let reports: Vec<_> = steps.iter().map(|s| s.report(&calls)).collect();
    let failures = calls.iter().filter(|c| c.result.is_err()).count();
    let summary = Summary {
        ok: reports.iter().all(|r| r.ok),
        requests: calls.len(),
        failures,
        served_by: shares(&calls),
        timings_ms: timings,
        steps: reports,
        dir: dir.display().to_string(),
        kept: a.keep,
    };
    n.say("");
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", report::render(&summary));
    }
    stop_unless_kept(&dir, a.keep, &n).await;
    if !summary.ok {
        let bad: Vec<&str> = summary
            .steps
            .iter()
            .filter(|s| !s.ok)
            .map(|s| s.name.as_str())
            .collect();
        bail!("the mesh did not behave in: {}", bad.join(", "));
    }
    Ok(())
}

async fn stop_unless_kept(dir: &Path, keep: bool, n: &Narrator) {
    let d = dir.display();
    if keep {
        n.say(&format!(
            "\nThe federation keeps running. Explore it:\n  meshctl dev status --dir {d}\n  \
             cat {d}/topology.json\n  meshctl dev down --dir {d}"
        ));
        return;
    }
    match dev::down(dir).await {
        Ok(s) => n.detail(&format!(
            "stopped {} processes (logs kept in {d}; --keep leaves the federation running)",
            s.processes
        )),
        Err(e) => eprintln!("warning: stopping the federation: {e:#}"),
    }
}
