//! Rules of the workspace's layout that hold for every crate: the install
//! contract is spelled only in `runtime/`, no file names a module's file
//! with a `path` attribute, and the data plane links no Kubernetes client.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, but build output (a `target/` beside a
/// `Cargo.toml`) and hidden folders.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if p.is_dir() {
            let build_output = name == "target" && dir.join("Cargo.toml").is_file();
            if !build_output && !name.to_string_lossy().starts_with('.') {
                sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    sources(&workspace(), &mut out);
    out.sort();
    out
}

/// The ports of `runtime::port`, as they would be spelled.
fn component_ports() -> Vec<String> {
    use meshfed_runtime::port::*;
    [
        IDENTITY,
        FEDERATION,
        DISCOVERY,
        GATEWAY,
        SIDECAR_OUTBOUND,
        SIDECAR_INBOUND,
        INJECTOR,
        IDENTITY_ADMIN,
        CONTROLLER_ADMIN,
        GATEWAY_ADMIN,
        SIDECAR_ADMIN,
        INJECTOR_ADMIN,
    ]
    .iter()
    .map(u16::to_string)
    .collect()
}

/// The standalone digit runs of a line (`4143` in `"0.0.0.0:4143"`, not in
/// `14143`).
fn numbers(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
}

/// The `MESHFED_…` names that open string literals of a line.
fn env_literals(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("\"MESHFED_") {
        let tail = &rest[i + 1..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(&tail[..end]);
        rest = &tail[end..];
    }
    out
}

/// What `MESHFED_` strings name that is not a component's variable: the
/// sidecar's iptables chains, `meshctl scenario`'s kind knobs, and the
/// switches of tests (regenerating what they check) and of the sidecar's
/// bench.
const NOT_COMPONENT_VARIABLES: &[&str] = &[
    "MESHFED_OUTPUT",
    "MESHFED_KIND_SCRIPTS",
    "MESHFED_IMAGE_REGISTRY",
    "MESHFED_IMAGE_TAG",
    "MESHFED_UPDATE_CRDS",
    "MESHFED_UPDATE_MANIFESTS",
    "MESHFED_BENCH_BINS",
    "MESHFED_BENCH_HOLD",
    "MESHFED_BENCH_SIDECAR_WRAP",
];

/// The code lines of a file (comments left out: examples in docs may
/// spell a port), numbered from 1.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

#[test]
fn component_ports_and_variables_are_spelled_only_in_runtime() {
    let ports = component_ports();
    let root = workspace();
    let mut found = Vec::new();
    let mut scanned = 0;
    for path in all_sources() {
        let rel = path
            .strip_prefix(&root)
            .expect("in workspace")
            .to_path_buf();
        if rel.starts_with("runtime") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        for (n, line) in code_lines(&text) {
            scanned += 1;
            for number in numbers(line) {
                if ports.iter().any(|p| p == number) {
                    found.push(format!(
                        "{}:{n}: port {number}: {}",
                        rel.display(),
                        line.trim()
                    ));
                }
            }
            for var in env_literals(line) {
                let chain = line.contains("CHAIN");
                if !chain && !NOT_COMPONENT_VARIABLES.contains(&var) {
                    found.push(format!("{}:{n}: {var}: {}", rel.display(), line.trim()));
                }
            }
        }
    }
    assert!(scanned > 30_000, "only {scanned} lines of code found");
    assert!(
        found.is_empty(),
        "component ports and environment variables belong in runtime/src/contract.rs \
         (meshfed_runtime::port, meshfed_runtime::env); spelled elsewhere:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_file_reaches_into_another_with_path_attributes() {
    // Spelled in two halves, so this file does not match itself.
    let attribute = ["#[", "path"].concat();
    let root = workspace();
    let mut found = Vec::new();
    for path in all_sources() {
        let text = std::fs::read_to_string(&path).expect("read source");
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with(&attribute) {
                let rel = path.strip_prefix(&root).expect("in workspace");
                found.push(format!("{}:{}: {}", rel.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "modules are found by their place, not by a path attribute:\n{}",
        found.join("\n")
    );
}

/// The data plane (gateway, sidecar) links no Kubernetes client: what it
/// needs of the contracts is in `meshfed-api` and `meshfed-trust`, which
/// depend on neither `kube` nor `k8s-openapi`. For the two proxies and the
/// CA their tests use that holds of every edge, dev-dependencies too (the
/// tests that run them with a real controller are `meshfed-e2e`'s); the
/// libraries they link are checked for what they link (their own tests
/// use the testkit, which runs a real controller).
#[test]
fn the_data_plane_links_no_kubernetes_client() {
    let every_edge: &[&str] = &[];
    let linked: &[&str] = &["-e", "normal,build"];
    for (package, edges) in [
        ("meshfed-sidecar", every_edge),
        ("meshfed-gateway", every_edge),
        ("meshfed-ca", every_edge),
        ("meshfed-runtime", linked),
        ("meshfed-trust", linked),
    ] {
        let out = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["tree", "--locked", "--offline", "-p", package])
            .args(edges)
            .args(["--prefix", "none", "--format", "{p}"])
            .output()
            .expect("run cargo tree");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.lines().count() > 20,
            "{package}: too short a tree:\n{text}"
        );
        let kube: Vec<&str> = text
            .lines()
            .filter(|l| {
                let name = l.split_whitespace().next().unwrap_or("");
                name.starts_with("kube") || name.starts_with("k8s-openapi")
            })
            .collect();
        assert!(
            kube.is_empty(),
            "`{}` reaches a Kubernetes client: {kube:?}",
            [&["cargo", "tree", "-p", package], edges]
                .concat()
                .join(" ")
        );
    }
}
