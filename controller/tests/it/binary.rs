//! The `meshfed-controller` binary: starts from flags with offline
//! credentials and a file store, reports ready and its metrics, stops on
//! SIGTERM; bad flags get a message naming the flag.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshfed_resources::objects;

use crate::support::*;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn controller_binary_runs_from_flags_and_stops_on_sigterm() {
    let mesh = Mesh::new();
    let ca = mesh.cluster_ca("east");
    let creds_dir = tempfile::tempdir().expect("tempdir");
    let d = creds_dir.path();
    write_credentials(&ca, CONTROLLER, d);
    let store = tempfile::tempdir().expect("tempdir");
    let svc = objects::service("shop", "api", &[("http", 80)], true);
    write_file(&store.path().join("api.yaml"), &yaml(&svc));

    let admin = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshfed-controller"))
        .args(["--cluster", "east", "--store", "file"])
        .arg("--dir")
        .arg(store.path())
        .arg("--credentials-dir")
        .arg(d)
        .args(["--federation-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--discovery-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .env(meshfed_runtime::env::LOG, "warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn controller");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if http_get(admin, "/ready").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("controller exited early ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "controller never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = http_get(admin, "/metrics").expect("metrics");
    assert!(
        metrics.contains("meshfed_controller_exports 1"),
        "{metrics}"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

#[test]
fn bad_flags_name_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshfed-controller"))
        .args(["--cluster", "East_1", "--credentials-dir", "/nonexistent"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cluster") && err.contains("DNS label"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_meshfed-controller"))
        .args(["--cluster", "east", "--credentials-dir", "/nonexistent"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--credentials-dir"), "{err}");
}
