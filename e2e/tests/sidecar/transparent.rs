//! Transparent interception in a network namespace (needs root, `ip`,
//! `iptables`, `curl`; CI has them): `meshfed-sidecar init-iptables`
//! installs the nat rules, and an unmodified curl calling a cluster IP is
//! carried by the sidecar through west's gateway to a remote endpoint,
//! which sees curl's workload identity.

use std::sync::mpsc;
use std::time::Duration;

use meshfed_sidecar::{Locality, SidecarConfig};

use crate::netns::{Netns, can_run};
use crate::support::*;

const CLUSTER_IP: &str = "10.96.0.10";

#[test]
fn curl_reaches_a_remote_service_by_its_cluster_ip() {
    if !can_run(
        "transparent::curl_reaches_a_remote_service_by_its_cluster_ip",
        &["ip", "iptables", "curl"],
    ) {
        return;
    }
    let ns = Netns::create("tp");
    // A pod-like interface with an address, for cluster IPs to be routed to
    // (they belong to no host); both ends stay inside.
    ns.exec(&[
        "ip", "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
    ]);
    ns.exec(&["ip", "link", "set", "svc0", "up"]);
    ns.exec(&["ip", "link", "set", "svc1", "up"]);
    ns.exec(&["ip", "addr", "add", "10.244.0.2/24", "dev", "svc0"]);
    ns.exec(&["ip", "route", "add", "10.96.0.0/12", "dev", "svc0"]);
    let listed = ns.init_iptables(
        &["--proxy-port", "15001", "--proxy-mark", "7"],
        meshfed_sidecar::CHAIN,
    );
    assert!(listed.contains("REDIRECT --to-ports 15001"), "{listed}");

    // The whole federation runs on a thread inside the namespace.
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let federation = ns.run(move || async move {
        let mesh = Mesh::new();
        let east = Cluster::start(&mesh, "east").await;
        let west = Cluster::start(&mesh, "west").await;
        let gateway = gateway(&west).await;
        let w1 = Endpoint::start(&west, "west-w1", "127.0.0.1:0".parse().expect("addr")).await;
        west.write("api.yaml", &api_manifest(true, &[(w1.addr, "w")]));
        // East knows api only by its cluster IP: no endpoints of its own.
        east.write("api.yaml", &api_manifest(false, &[]));
        east.link("west", gateway.addr);
        until_remote_group(&east, "west", "a").await;
        let config = SidecarConfig {
            locality: Locality {
                cluster: "east".into(),
                region: String::new(),
                zone: "a".into(),
            },
            transparent: Some("127.0.0.1:15001".parse().expect("addr")),
            mark: Some(7),
            ..SidecarConfig::default()
        };
        let _client = Running::start(config, creds(&east.ca, FRONTEND), &source(&east)).await;
        ready_tx.send(()).expect("ready");
        let _ = done_rx.await;
        drop((w1, gateway));
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("federation up in the namespace");
    let curl = ns.exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        &format!("http://{CLUSTER_IP}/"),
    ]);
    let body = String::from_utf8_lossy(&curl.stdout).into_owned();
    let _ = done_tx.send(());
    federation.join().expect("federation thread");
    println!("curl http://{CLUSTER_IP}/ -> {body}");
    assert_eq!(body, format!("west-w1 {}", id(FRONTEND)));
}
