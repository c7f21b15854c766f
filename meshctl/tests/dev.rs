//! `meshctl dev up`, `status`, `down` with the real binary: every process
//! recorded in topology.json runs; curl through the client sidecar reaches
//! `api.shop` and the answer names the serving cluster and the client's
//! SPIFFE ID; the TCP echo answers through the mesh; a second `up` on the
//! same directory and an `up` onto a taken address are refused; `down`
//! leaves no process and no listening socket behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod cli;
mod proc;
use cli::{meshctl, text};
use proc::alive;

/// Listening TCP sockets whose address is in 127.B.0.0/16.
fn listening_in(b: u8) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, port) = f[1].split_once(':')?;
            let ip = Ipv4Addr::from(u32::from_be(u32::from_str_radix(ip, 16).ok()?));
            (f[3] == "0A" && ip.octets()[..2] == [127, b])
                .then(|| format!("{ip}:{}", u16::from_str_radix(port, 16).unwrap_or(0)))
        })
        .collect()
}

fn pids(topology: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for c in topology["clusters"].as_array().expect("clusters") {
        for p in c["processes"].as_array().expect("processes") {
            out.push((
                format!("{}/{}", c["name"].as_str().unwrap_or("?"), p["name"]),
                p["pid"].as_u64().expect("a pid for every process"),
            ));
        }
    }
    out
}

fn load(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("topology.json")).expect("topology.json");
    serde_json::from_str(&text).expect("topology.json is JSON")
}

#[test]
fn dev_up_serves_through_sidecars_and_dev_down_leaves_nothing() {
    const B: u8 = 91;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fed");
    let d = dir.to_str().expect("utf-8");
    let subnet = format!("127.{B}.0.0/16");
    let base = ["--dir", d, "--subnet", &subnet];

    let up = meshctl(&[&["dev", "up", "--clusters", "east,west"][..], &base[..]].concat());
    let guard = Down(d.to_owned());
    assert!(up.status.success(), "dev up failed:\n{}", text(&up));
    let topology = load(&dir);
    assert_eq!(topology["state"], "ready");
    let procs = pids(&topology);
    // Per cluster: identity, 2 controller replicas, gateway, 2 api + sidecars, echo +
    // sidecar, client + sidecar.
    assert_eq!(procs.len(), 24, "{procs:?}");
    for (name, pid) in &procs {
        assert!(alive(*pid), "{name} (pid {pid}) is not running");
    }
    for c in topology["clusters"].as_array().expect("clusters") {
        for p in c["processes"].as_array().expect("processes") {
            for addr in p["listen"].as_object().expect("listen").values() {
                let ip: SocketAddr = addr.as_str().expect("addr").parse().expect("addr");
                assert_eq!(ip.ip().to_string().split('.').nth(1), Some("91"), "{addr}");
            }
        }
    }

    // The controller's replicas: one Service address for federation and
    // discovery (SO_REUSEPORT), an admin address each, named as replicas.
    for c in topology["clusters"].as_array().expect("clusters") {
        let replicas: Vec<&Value> = c["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter(|p| p["kind"] == "controller")
            .collect();
        let names: Vec<&str> = replicas.iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, ["controller-0", "controller-1"], "{}", c["name"]);
        assert!(replicas.iter().all(|p| p["replicaOf"] == "controller"));
        assert_eq!(replicas[0]["listen"], replicas[1]["listen"]);
        assert_ne!(replicas[0]["admin"], replicas[1]["admin"]);
        for (p, name) in replicas.iter().zip(&names) {
            let args: Vec<&str> = p["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert!(args.contains(&"--reuse-port"), "{args:?}");
            assert!(
                args.windows(2).any(|w| w == ["--replica", *name]),
                "{args:?}"
            );
        }
    }

    // curl, as an app in east's client pod would.
    let east = &topology["clusters"][0];
    assert_eq!(east["name"], "east");
    let api = east["client"]["upstreams"]["api.shop"]
        .as_str()
        .expect("api upstream");
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", &format!("http://{api}/")])
        .output()
        .expect("curl is installed (.ci/run installs it)");
    assert!(curl.status.success(), "curl failed:\n{}", text(&curl));
    let answer: Value = serde_json::from_slice(&curl.stdout).expect("api answers JSON");
    assert_eq!(answer["cluster"], "east", "{answer}");
    assert_eq!(
        answer["zone"], "east-a",
        "same zone as the client: {answer}"
    );
    assert_eq!(
        answer["caller"], "spiffe://mesh.local/ns/shop/sa/client",
        "{answer}"
    );

    // The TCP echo, through the client sidecar and the echo sidecar.
    let echo: SocketAddr = east["client"]["upstreams"]["echo.shop"]
        .as_str()
        .expect("echo upstream")
        .parse()
        .expect("addr");
    let mut conn = TcpStream::connect_timeout(&echo, Duration::from_secs(5)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(b"ping through the mesh\n").expect("write");
    let mut back = [0u8; 22];
    conn.read_exact(&mut back).expect("echoed");
    assert_eq!(&back, b"ping through the mesh\n");
    drop(conn);

    let status = meshctl(&[&["dev", "status", "-o", "json"][..], &["--dir", d][..]].concat());
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert!(
        status.status.success() && s["healthy"] == true,
        "dev status says unhealthy right after dev up said ready: {}\n{}",
        unhealthy(&s),
        text(&status)
    );
    // Each cluster's Lease names one of its replicas, which status marks.
    for c in s["clusters"].as_array().expect("clusters") {
        let leader = c["leader"].as_str().expect("a leader");
        let marked: Vec<&Value> = c["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .filter(|p| p["leader"] == true)
            .collect();
        assert_eq!(marked.len(), 1, "{c}");
        assert_eq!(marked[0]["name"], leader, "{c}");
    }
    let shown = meshctl(&["dev", "status", "--dir", d]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("ready, leader"), "{shown}");
    assert!(shown.contains("controller leader: controller-"), "{shown}");

    // A second federation on the same directory is refused and changes nothing.
    let again = meshctl(&[&["dev", "up"][..], &base[..]].concat());
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        text(&again)
    );
    for (name, pid) in &procs {
        assert!(alive(*pid), "{name} died after the refused up");
    }

    let down = meshctl(&["dev", "down", "--dir", d]);
    std::mem::forget(guard);
    assert!(down.status.success(), "dev down:\n{}", text(&down));
    let still: Vec<&String> = procs
        .iter()
        .filter(|(_, p)| alive(*p))
        .map(|(n, _)| n)
        .collect();
    assert!(still.is_empty(), "still running after down: {still:?}");
    assert_eq!(listening_in(B), Vec::<String>::new());
    assert_eq!(load(&dir)["state"], "stopped");
    let status = meshctl(&["dev", "status", "--dir", d]);
    assert!(
        !status.status.success(),
        "a stopped federation is not healthy"
    );
}

#[test]
fn dev_up_refuses_a_taken_address_and_starts_nothing() {
    const B: u8 = 92;
    // East's gateway address, taken before up runs.
    let _taken =
        std::net::TcpListener::bind((Ipv4Addr::new(127, B, 1, 3), meshfed_runtime::port::GATEWAY))
            .expect("bind");
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("fed");
    let out = meshctl(&[
        "dev",
        "up",
        "--dir",
        d.to_str().expect("utf-8"),
        "--subnet",
        &format!("127.{B}.0.0/16"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.{B}.1.3:{}", meshfed_runtime::port::GATEWAY))
            && err.contains("--subnet"),
        "{err}"
    );
    assert!(!d.join("topology.json").exists());
    assert_eq!(
        listening_in(B),
        vec![format!("127.{B}.1.3:{}", meshfed_runtime::port::GATEWAY)]
    );
}

/// Stops the federation if the test fails half way.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = meshctl(&["dev", "down", "--dir", &self.0]);
    }
}

/// What a `dev status` JSON names as not ready, first (so it survives a
/// truncated log).
fn unhealthy(s: &Value) -> String {
    let mut why = Vec::new();
    for c in s["clusters"].as_array().into_iter().flatten() {
        for p in c["processes"].as_array().into_iter().flatten() {
            if !p["notReady"].is_null() {
                why.push(format!("{}/{}: {}", c["name"], p["name"], p["notReady"]));
            }
        }
        for l in c["links"].as_array().into_iter().flatten() {
            if l["alive"] != true {
                why.push(format!("{} link to {}: {l}", c["name"], l["cluster"]));
            }
        }
    }
    why.join("; ")
}
