//! `meshctl demo --json --keep` with the real binary: every step behaves, no
//! call fails, every time is measured, the summary's numbers add up; the
//! federation it keeps (restarted processes included) is fully recorded in
//! topology.json, so `dev down` stops all of it.

use std::process::Command;

use serde_json::Value;

mod proc;
use proc::alive;

#[test]
fn demo_behaves_and_what_it_keeps_is_stopped_by_dev_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let d = dir.to_str().expect("utf-8");
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "demo",
            "--json",
            "--keep",
            "--dir",
            d,
            "--subnet",
            "127.93.0.0/16",
        ])
        .output()
        .expect("run meshctl demo");
    let down = || {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(["dev", "down", "--dir", d])
            .output()
            .expect("run meshctl dev down")
    };
    let narration = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary: Result<Value, _> = serde_json::from_slice(&out.stdout);
    if !out.status.success() || summary.is_err() {
        down();
        panic!(
            "demo failed ({:?}):\n{narration}\nstdout:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let s = summary.expect("checked");

    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["failures"], 0, "{s:#}");
    assert_eq!(s["kept"], true);
    let steps = s["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 6, "{s:#}");
    let mut sum = 0;
    for step in steps {
        assert_eq!(step["ok"], true, "{step:#}");
        assert_eq!(step["failures"], 0, "{step:#}");
        assert!(step["requests"].as_u64().expect("requests") > 0, "{step:#}");
        sum += step["requests"].as_u64().expect("requests");
    }
    assert_eq!(
        Some(sum),
        s["requests"].as_u64(),
        "steps add up to the total"
    );
    // Each step's traffic went where the story says.
    let top = |i: usize| -> String {
        let by = steps[i]["servedBy"].as_object().expect("servedBy");
        by.iter()
            .max_by(|a, b| {
                a.1["share"]
                    .as_f64()
                    .partial_cmp(&b.1["share"].as_f64())
                    .expect("shares are numbers")
            })
            .map(|(k, _)| k.clone())
            .expect("someone served")
    };
    assert_eq!(steps[0]["servedBy"]["east"]["share"], 1.0);
    assert_eq!(top(1), "central");
    assert_eq!(top(2), "west");
    assert_eq!(steps[5]["servedBy"]["east"]["share"], 1.0);
    let t = &s["timingsMs"];
    for name in [
        "startup",
        "failover",
        "gatewayFailover",
        "withdrawal",
        "failback",
        "propagation",
        "rejoin",
    ] {
        assert!(t[name].is_u64(), "timing {name} missing: {t}");
    }
    // The lease TTL is 3 s; withdrawal may not outlast it by more than a probe's slack.
    assert!(t["withdrawal"].as_u64() <= Some(4000), "{t}");
    assert!(t["propagation"].as_u64() < Some(1000), "{t}");
    for step in [
        "Start three clusters",
        "Stop east's api",
        "Kill central's gateway",
    ] {
        assert!(narration.contains(step), "narration lacks {step:?}");
    }

    // Kept: every recorded process runs, the restarted ones included.
    let topology: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("topology.json")).expect("topology.json"),
    )
    .expect("JSON");
    let pids: Vec<u64> = topology["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .flat_map(|c| c["processes"].as_array().expect("processes").iter())
        .map(|p| p["pid"].as_u64().expect("pid"))
        .collect();
    // 3 clusters of 12: identity, 2 controller replicas, gateway, and the
    // api-a, api-b, echo and client pods (app and sidecar each).
    assert_eq!(pids.len(), 36);
    let dead: Vec<&u64> = pids.iter().filter(|p| !alive(**p)).collect();
    let stopped = down();
    assert!(dead.is_empty(), "kept federation lost {dead:?}");
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let left: Vec<&u64> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "still running after dev down: {left:?}");
}
