//! The release binaries the benches run as child processes, so that what
//! they measure (latency, CPU, RSS) is the shipped program's alone.
//!
//! `cargo bench` builds only the bench's own package, and a nested `cargo
//! build` would wait forever on the lock `cargo bench` holds: the binaries
//! are built first, and a binary missing or older than its sources is an
//! error that says how to build it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};

/// `meshfed-sidecar`, as [`find`] finds it.
pub fn sidecar() -> anyhow::Result<PathBuf> {
    find("meshfed-sidecar", "sidecar/src")
}

/// `meshfed-gateway`, as [`find`] finds it.
pub fn gateway() -> anyhow::Result<PathBuf> {
    find("meshfed-gateway", "gateway/src")
}

/// Binary `name`, whose crate's sources are `own`: from
/// `MESHFED_BENCH_BINS=<dir>` (a profile-guided build, `deploy/pgo-build`)
/// when set, an absolute path (`cargo bench` runs a bench in `e2e/`, so a
/// relative one would not mean what it says); otherwise from this bench's
/// own target directory and profile (`cargo build --release`).
fn find(name: &str, own: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MESHFED_BENCH_BINS").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_relative() {
            bail!(
                "MESHFED_BENCH_BINS={} is relative: give an absolute path, \
                 such as $PWD/target/pgo/bin (cargo bench runs the bench in e2e/)",
                dir.display()
            );
        }
        return built(&dir.join(name), own, "deploy/pgo-build");
    }
    let exe = std::env::current_exe().context("finding the bench executable")?;
    // target/release/deps/proxy-HASH → target/release/meshfed-sidecar
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench executable is outside a target directory")?;
    let build = format!("cargo build --release -p {name}");
    built(&profile.join(name), own, &build)
}

/// `bin`, if it is there and not older than its crate's sources `own` or
/// those of the crates it shares (what cargo would rebuild it for); else an
/// error saying to run `build`.
fn built(bin: &Path, own: &str, build: &str) -> anyhow::Result<PathBuf> {
    let made = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} not found: run `{build}` first", bin.display()))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sources = [
        own,
        "api/src",
        "api/proto",
        "api/build.rs",
        "trust/src",
        "runtime/src",
    ];
    let newest = sources
        .iter()
        .filter_map(|s| newest_mtime(&root.join(s)))
        .max();
    if newest.is_some_and(|t| t > made) {
        bail!(
            "{} is older than its sources: run `{build}` first",
            bin.display()
        );
    }
    Ok(bin.to_path_buf())
}

/// The latest modification time of `path` or anything below it.
fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| newest_mtime(&e.path()))
        .chain(own)
        .max()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::built;

    const BUILD: &str = "cargo build --release -p meshfed-sidecar";

    fn binary(dir: &tempfile::TempDir, modified: SystemTime) -> std::path::PathBuf {
        let bin = dir.path().join("meshfed-sidecar");
        let file = std::fs::File::create(&bin).expect("create");
        file.set_modified(modified).expect("set mtime");
        bin
    }

    #[test]
    fn a_binary_built_after_its_sources_is_taken() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = binary(&dir, SystemTime::now() + Duration::from_secs(3600));
        assert_eq!(built(&bin, "sidecar/src", BUILD).expect("fresh"), bin);
    }

    #[test]
    fn a_binary_older_than_its_sources_says_how_to_rebuild() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = binary(&dir, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        let err = built(&bin, "sidecar/src", BUILD)
            .expect_err("stale")
            .to_string();
        assert!(err.contains("older than its sources"), "{err}");
        assert!(err.contains(BUILD), "{err}");
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = built(&dir.path().join("meshfed-sidecar"), "sidecar/src", BUILD)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("not found"), "{err}");
        assert!(err.contains(BUILD), "{err}");
    }
}
