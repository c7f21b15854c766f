//! `meshctl trust` end to end: the files it writes, what it refuses, and
//! what the stock OpenSSL CLI thinks of the result.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Runs meshctl with whitespace-separated `args` in `cwd`.
fn meshctl(args: &str, cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args.split_whitespace())
        .current_dir(cwd)
        .output()
        .expect("run meshctl")
}

fn ok(args: &str, cwd: &Path) -> String {
    let out = meshctl(args, cwd);
    assert!(
        out.status.success(),
        "meshctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &str, cwd: &Path) -> String {
    let out = meshctl(args, cwd);
    assert!(!out.status.success(), "meshctl {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn openssl_verify(cwd: &Path, root: &str, intermediate: &str, leaf: &str) -> bool {
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", root, "-untrusted", intermediate, leaf])
        .current_dir(cwd)
        .output()
        .expect("the openssl CLI must be installed for this test (apt-get install openssl)");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[test]
fn init_issue_cluster_issue_workload_verify_with_openssl() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    ok("trust init --trust-domain mesh.example --out root", d);
    ok(
        "trust issue-cluster --root root --cluster east --out east",
        d,
    );
    ok(
        "trust issue-workload --ca east --spiffe-id spiffe://mesh.example/ns/shop/sa/api --out api",
        d,
    );

    assert_eq!(mode(&d.join("root/root.key")), 0o600);
    assert_eq!(mode(&d.join("east/intermediate.key")), 0o600);
    assert_eq!(mode(&d.join("api/leaf.key")), 0o600);
    assert!(openssl_verify(
        d,
        "root/root.crt",
        "east/intermediate.crt",
        "api/leaf.crt"
    ));
    // The intermediate alone is not enough without the right root.
    ok("trust init --trust-domain mesh.example --out other-root", d);
    assert!(!openssl_verify(
        d,
        "other-root/root.crt",
        "east/intermediate.crt",
        "api/leaf.crt"
    ));

    let json = ok("trust inspect api/leaf.crt -o json", d);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(v[0]["spiffe_id"], "spiffe://mesh.example/ns/shop/sa/api");
    assert_eq!(v[0]["is_ca"], false);
    assert_eq!(v[0]["fingerprint_sha256"].as_str().expect("fp").len(), 95);
    let text = ok("trust inspect east/intermediate.crt", d);
    assert!(
        text.contains("ca           yes") && text.contains("meshfed east intermediate CA"),
        "{text}"
    );
}

#[test]
fn refuses_to_overwrite_without_force_and_changes_nothing() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    ok("trust init --trust-domain mesh.example --out root", d);
    let before = std::fs::read(d.join("root/root.key")).expect("key");
    let err = fails("trust init --trust-domain mesh.example --out root", d);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(d.join("root/root.key")).expect("key"),
        before,
        "nothing changed"
    );
    ok(
        "trust init --trust-domain mesh.example --out root --force",
        d,
    );
    assert_ne!(std::fs::read(d.join("root/root.key")).expect("key"), before);
    assert_eq!(mode(&d.join("root/root.key")), 0o600);

    ok(
        "trust issue-cluster --root root --cluster east --out east",
        d,
    );
    // One existing file makes the whole command refuse, before writing anything.
    std::fs::remove_file(d.join("east/intermediate.crt")).expect("rm");
    let err = fails(
        "trust issue-cluster --root root --cluster east --out east",
        d,
    );
    assert!(err.contains("already exists"), "{err}");
    assert!(!d.join("east/intermediate.crt").exists());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    let err = fails("trust init --trust-domain Mesh.Example --out root", d);
    assert!(
        err.contains("--trust-domain") && err.contains("bad trust domain"),
        "{err}"
    );
    ok("trust init --trust-domain mesh.example --out root", d);
    let err = fails(
        "trust issue-cluster --root root --cluster East_1 --out e",
        d,
    );
    assert!(err.contains("bad cluster name"), "{err}");
    let err = fails(
        "trust issue-cluster --root nowhere --cluster east --out e",
        d,
    );
    assert!(
        err.contains("--root") && err.contains("nowhere/root.crt"),
        "{err}"
    );
    ok(
        "trust issue-cluster --root root --cluster east --out east",
        d,
    );
    let err = fails(
        "trust issue-workload --ca east --spiffe-id spiffe://other.example/ns/a/sa/b --out w",
        d,
    );
    assert!(err.contains("not in this CA's trust domain"), "{err}");
    let err = fails(
        "trust issue-workload --ca east --spiffe-id spiffe://mesh.example/a/b --out w",
        d,
    );
    assert!(
        err.contains("/ns/<namespace>/sa/<service-account>"),
        "{err}"
    );
    // A root directory is not a cluster CA.
    let err = fails(
        "trust issue-workload --ca root --spiffe-id spiffe://mesh.example/ns/a/sa/b --out w",
        d,
    );
    assert!(err.contains("intermediate.crt"), "{err}");
    assert!(!d.join("w").exists(), "nothing written on failure");
}

#[test]
fn root_rotation_bundle_trusts_old_and_new() {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path();
    ok("trust init --trust-domain mesh.example --out old", d);
    ok("trust init --trust-domain mesh.example --out new", d);
    let out = ok(
        "trust issue-cluster --root new --cluster west --out west --extra-root old/root.crt",
        d,
    );
    assert!(out.contains("trusts 2 root(s)"), "{out}");
    let bundle = ok("trust inspect west/root.crt -o json", d);
    let v: serde_json::Value = serde_json::from_str(&bundle).expect("json");
    assert_eq!(v.as_array().expect("array").len(), 2);
    ok(
        "trust issue-workload --ca west --spiffe-id spiffe://mesh.example/ns/shop/sa/api --out api",
        d,
    );
    assert!(openssl_verify(
        d,
        "new/root.crt",
        "west/intermediate.crt",
        "api/leaf.crt"
    ));

    // The bundle as SPIFFE JSON works wherever a bundle file is read.
    let json = ok("trust inspect west/root.crt -o spiffe-bundle", d);
    std::fs::write(d.join("bundle.json"), json).expect("write");
    let out = ok(
        "trust issue-cluster --root new --cluster south --out south --extra-root bundle.json",
        d,
    );
    assert!(out.contains("trusts 2 root(s)"), "{out}");
}
