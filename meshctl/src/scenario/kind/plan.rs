//! The plan `scenarios/kind/up.sh` reads: a directory of plain line files
//! saying which clusters, zones, links, exports, callers, policies and
//! settings a scenario wants (the format is in scenarios/kind/README.md).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::super::spec::Scenario;
use super::SCRIPTS_ENV;

/// The scripts: `$MESHFED_KIND_SCRIPTS`, else `kind/` beside the scenario
/// file, else `scenarios/kind` under the working directory.
pub(super) fn scripts_for(s: &Scenario) -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os(SCRIPTS_ENV)
        .map(PathBuf::from)
        .into_iter()
        .chain(s.file.parent().map(|d| d.join("kind")))
        .chain([PathBuf::from("scenarios/kind")])
        .collect();
    let found = candidates
        .iter()
        .find(|d| d.join("up.sh").is_file())
        .with_context(|| {
            format!(
                "the kind scripts (up.sh, down.sh, fault.sh) are in none of {}; set {SCRIPTS_ENV} \
                 to the repository's scenarios/kind",
                candidates
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    std::path::absolute(found).context("the scripts' directory")
}

/// Writes the plan up.sh reads (its format is in scenarios/kind/README.md).
pub(in crate::scenario) fn write_plan(
    s: &Scenario,
    plan: &Path,
    scripts: &Path,
) -> anyhow::Result<()> {
    if plan.exists() {
        std::fs::remove_dir_all(plan).with_context(|| format!("removing {}", plan.display()))?;
    }
    std::fs::create_dir_all(plan).with_context(|| format!("creating {}", plan.display()))?;
    let mut clusters = String::new();
    let mut exported = String::new();
    let mut callers = String::new();
    let mut versions = String::new();
    for c in &s.clusters {
        let region = c.region.clone().unwrap_or_else(|| c.name.clone());
        writeln!(clusters, "{} {} {region}", c.name, c.zones)?;
        for e in &c.exported {
            writeln!(exported, "{} {e}", c.name)?;
        }
        for k in &c.callers {
            writeln!(callers, "{} {k}", c.name)?;
        }
        for v in &c.versions {
            writeln!(versions, "{} {v}", c.name)?;
        }
    }
    let pairs: Vec<(String, String)> = s.links.clone().unwrap_or_else(|| {
        let names: Vec<&String> = s.clusters.iter().map(|c| &c.name).collect();
        names
            .iter()
            .flat_map(|a| {
                names
                    .iter()
                    .filter(move |b| a != *b)
                    .map(move |b| ((*a).clone(), (*b).clone()))
            })
            .collect()
    });
    let links: String = pairs.iter().map(|(c, p)| format!("{c} {p}\n")).collect();
    let settings = format!(
        "LEASE_TTL={}\nLEAF_TTL={}\nTRUST_DOMAIN=mesh.local\n",
        s.lease_ttl.as_secs(),
        s.leaf_ttl
            .map(|d| d.as_secs().to_string())
            .unwrap_or_default()
    );
    for (file, text) in [
        ("clusters", clusters),
        ("exported", exported),
        ("callers", callers),
        ("versions", versions),
        ("links", links),
        ("settings", settings),
        ("scripts", scripts.display().to_string()),
    ] {
        std::fs::write(plan.join(file), text)
            .with_context(|| format!("writing {}", plan.join(file).display()))?;
    }
    for (i, (cluster, policy)) in s.policies.iter().enumerate() {
        let dir = plan.join("policies").join(cluster);
        std::fs::create_dir_all(&dir)?;
        // JSON is YAML too.
        std::fs::write(
            dir.join(format!("{i}.yaml")),
            serde_json::to_string_pretty(policy)?,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_says_what_the_scenario_says() {
        let text = "\
name: plan
clusters:
  - name: east
    zones: 2
    callers: [intruder]
    versions: [v2, v3]
  - name: west
    region: eu
    exported: [api, echo]
leafTtl: 12s
failoverPolicies:
  - cluster: east
    spec: {service: api}
steps:
  - sleep: 1s
";
        let s = crate::scenario::spec::parse(text, Path::new("plan.yaml")).expect("valid");
        let tmp = tempfile::tempdir().expect("tempdir");
        let plan = tmp.path().join("plan");
        write_plan(&s, &plan, Path::new("/opt/kind")).expect("plan");
        let read = |f: &str| std::fs::read_to_string(plan.join(f)).expect(f);
        assert_eq!(read("clusters"), "east 2 east\nwest 1 eu\n");
        assert_eq!(read("links"), "east west\nwest east\n");
        assert_eq!(read("exported"), "east api\nwest api\nwest echo\n");
        assert_eq!(read("callers"), "east intruder\n");
        assert_eq!(read("versions"), "east v2\neast v3\n");
        assert!(read("settings").contains("LEAF_TTL=12\n"));
        assert_eq!(read("scripts"), "/opt/kind");
        let policy = read("policies/east/0.yaml");
        assert!(policy.contains("\"FailoverPolicy\""), "{policy}");
    }
}
