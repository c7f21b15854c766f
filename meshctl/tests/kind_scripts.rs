//! The kind provider's scripts (`scenarios/kind/*.sh`) without Docker or
//! kind: shellcheck-clean, valid bash, and the refusals and argument checks
//! that must happen before any of those tools is called. Each script runs
//! with a PATH holding only `bash` and `dirname`, so a machine with Docker
//! installed sees the same thing as one without.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The scripts the kind provider runs (the runner calls them by these names).
const SCRIPTS: [&str; 3] = ["up.sh", "down.sh", "fault.sh"];

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/kind")
}

/// Every `*.sh` of scenarios/kind, by file name.
fn shell_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(scripts_dir())
        .expect("scenarios/kind exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sh"))
        .collect();
    names.sort();
    names
}

/// The first `tool` on this machine's PATH.
fn which(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH is set");
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is on no directory of PATH"))
}

/// A temp dir, and in it `bin/` with only `bash` and `dirname`: what the
/// scripts use before they check for docker, kind and kubectl.
fn bare() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    for tool in ["bash", "dirname"] {
        std::os::unix::fs::symlink(which(tool), bin.join(tool)).expect("symlink");
    }
    (t, bin)
}

/// A small plan in `work/plan`: east (1 zone) and west (2 zones), linked
/// both ways.
fn plan(work: &Path) {
    let plan = work.join("plan");
    std::fs::create_dir_all(&plan).expect("plan dir");
    for (file, text) in [
        ("clusters", "east 1 us-east\nwest 2 eu-west\n"),
        ("links", "east west\nwest east\n"),
        ("exported", "west api\n"),
        ("callers", "east intruder\n"),
        (
            "settings",
            "LEASE_TTL=3\nLEAF_TTL=\nTRUST_DOMAIN=mesh.local\n",
        ),
    ] {
        std::fs::write(plan.join(file), text).expect("plan file");
    }
}

/// `bash SCRIPT ARGS` with nothing but `bin` on PATH (and meshctl itself).
fn run(bin: &Path, script: &str, args: &[&Path], extra: &[&str]) -> Output {
    Command::new(bin.join("bash"))
        .arg(scripts_dir().join(script))
        .args(args)
        .args(extra)
        .env_clear()
        .env("PATH", bin)
        .env("MESHCTL", env!("CARGO_BIN_EXE_meshctl"))
        .output()
        .expect("run bash")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn scripts_are_shellcheck_clean_and_parse() {
    let files = shell_files();
    for name in SCRIPTS.iter().chain(&["lib.sh"]) {
        assert!(
            files.iter().any(|f| f == name),
            "scenarios/kind/{name} is missing"
        );
    }
    for f in &files {
        let out = Command::new("bash")
            .args(["-n", f])
            .current_dir(scripts_dir())
            .output()
            .expect("run bash -n");
        assert!(out.status.success(), "bash -n {f}: {}", stderr(&out));
    }
    let out = match Command::new("shellcheck")
        .arg("-x")
        .args(&files)
        .current_dir(scripts_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "\n\
                 ************************************************************************\n\
                 * SKIPPED: shellcheck is not installed, scenarios/kind/*.sh were not linted.\n\
                 * apt-get install shellcheck (CI installs it).\n\
                 ************************************************************************\n"
            );
            return;
        }
        Err(e) => panic!("running shellcheck: {e}"),
    };
    assert!(
        out.status.success(),
        "shellcheck -x {}:\n{}{}",
        files.join(" "),
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

#[test]
fn up_refuses_without_docker_and_kind_naming_each() {
    let (t, bin) = bare();
    let work = t.path().join("work");
    plan(&work);
    let out = run(&bin, "up.sh", &[&work], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for tool in ["docker", "kind", "kubectl"] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("missing: {tool} is not installed"))),
            "up.sh does not name {tool} as missing:\n{err}"
        );
    }
    // meshctl runs; nothing ran that is not there; nothing was written.
    assert!(!err.contains("meshctl ("), "{err}");
    assert!(!err.contains("command not found"), "{err}");
    assert!(!work.join("trust").exists(), "up.sh wrote trust material");
}

#[test]
fn up_rejects_a_bad_plan_before_anything_else() {
    let (t, bin) = bare();
    let work = t.path().join("work");
    plan(&work);
    std::fs::write(work.join("plan/clusters"), "east 5 us-east\n").expect("clusters");
    let out = run(&bin, "up.sh", &[&work], &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cluster east: ZONES '5'"), "{err}");
    assert!(!err.contains("docker"), "{err}");
}

#[test]
fn fault_checks_its_arguments_before_docker() {
    let (t, bin) = bare();
    let work = t.path().join("work");
    plan(&work);

    let out = run(&bin, "fault.sh", &[&work], &["bogus-verb"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("unknown verb 'bogus-verb'"), "{err}");
    assert!(err.contains("usage: fault.sh WORK VERB"), "{err}");

    let out = run(&bin, "fault.sh", &[&work], &["partition", "nosuch"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cluster 'nosuch' is not in the plan"), "{err}");
    assert!(
        !err.contains("docker"),
        "fault.sh looked for docker first:\n{err}"
    );

    for (args, why) in [
        (&["degrade", "east", "10"][..], "takes 3 argument(s)"),
        (&["degrade", "east", "10", "101"], "LOSS_PERCENT '101'"),
        (&["degrade", "east", "1.5", "1"], "LATENCY_MS '1.5'"),
        (&["pause", "east", "shop"], "takes 3 argument(s)"),
    ] {
        let out = run(&bin, "fault.sh", &[&work], args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }

    // A well-formed call gets as far as the tool check, and no further.
    let out = run(&bin, "fault.sh", &[&work], &["heal", "west"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing: docker is not installed"), "{err}");
}

#[test]
fn down_without_a_plan_has_nothing_to_do() {
    let (t, bin) = bare();
    let work = t.path().join("work");
    let out = run(&bin, "down.sh", &[&work], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("no plan"), "{err}");
    assert!(err.contains("nothing to delete"), "{err}");

    std::fs::create_dir_all(work.join("plan")).expect("plan dir");
    std::fs::write(work.join("plan/clusters"), "\n").expect("clusters");
    let out = run(&bin, "down.sh", &[&work], &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("nothing to delete"), "{err}");
}
