//! Transparent inbound in network namespaces (needs root, `ip`,
//! `iptables`, `curl`; CI has them). A pod namespace with the rules of
//! `meshfed-sidecar init-iptables --inbound-proxy-port`, its app on its own
//! ports (8080 permissive, 8081 strict); a caller namespace, joined to it
//! by a veth pair, runs the clusters: mesh calls to podIP:8080 from a
//! sidecar of the pod's cluster, from another cluster through its gateway,
//! and from the pod's own sidecar (the pod is an endpoint of the service it
//! calls) arrive over mTLS with the caller's ID; curl without a sidecar is
//! served on 8080 with no ID (the one it wrote dropped) and refused on
//! 8081; both counted.

use std::net::SocketAddr;
use std::time::Duration;

use meshfed_sidecar::{Locality, Plaintext, SidecarConfig, TransparentInbound, Upstream};

use crate::netns::{Netns, can_run};
use crate::support::*;

const POD_IP: &str = "10.244.1.2";
const CALLER_IP: &str = "10.244.1.1";
const EAST_FRONTEND: &str = "/ns/web/sa/east-frontend";

/// What the caller namespace saw.
struct Calls {
    same_cluster: String,
    through_gateway: String,
}

#[test]
fn mesh_and_plaintext_callers_reach_the_app_on_its_own_port() {
    if !can_run(
        "transparent_inbound::mesh_and_plaintext_callers_reach_the_app_on_its_own_port",
        &["ip", "iptables", "curl"],
    ) {
        return;
    }
    let pod = Netns::create("inpod");
    let callers = Netns::create("incall");
    callers.veth(&pod, CALLER_IP, POD_IP);
    let listed = pod.init_iptables(
        &[
            "--proxy-port",
            "15001",
            "--proxy-mark",
            "7",
            "--inbound-proxy-port",
            "15006",
            "--inbound-skip-port",
            "9000",
            // The pod's sidecar reaches discovery there (unmarked).
            "--exclude-cidr",
            &format!("{CALLER_IP}/32"),
        ],
        meshfed_sidecar::INBOUND_CHAIN,
    );
    assert!(listed.contains("--dport 9000 -j RETURN"), "{listed}");
    assert!(listed.contains("REDIRECT --to-ports 15006"), "{listed}");

    let app: SocketAddr = format!("{POD_IP}:8080").parse().expect("addr");
    let (creds_tx, creds_rx) = tokio::sync::oneshot::channel();
    let (pod_ready_tx, pod_ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (pod_done_tx, pod_done_rx) = tokio::sync::oneshot::channel::<()>();
    let (metrics_tx, metrics_rx) = std::sync::mpsc::channel::<(String, String)>();
    // The pod: its app on its own ports, its sidecar inbound on 15006 and
    // calling api (itself) on an upstream port.
    let pod_thread = pod.run(move || async move {
        let (creds, source): (_, meshfed_sidecar::DiscoverySource) =
            creds_rx.await.expect("credentials");
        let _permissive = App::start_on("pod-api", app).await;
        let _strict = App::start_on("pod-strict", SocketAddr::new(app.ip(), 8081)).await;
        let mut config = SidecarConfig {
            locality: Locality {
                cluster: "west".into(),
                region: String::new(),
                zone: "a".into(),
            },
            upstreams: vec![Upstream {
                target: api_target(),
                listen: "127.0.0.1:0".parse().expect("addr"),
            }],
            transparent_inbound: Some(TransparentInbound {
                listen: "0.0.0.0:15006".parse().expect("addr"),
                allow: Default::default(),
                plaintext: Plaintext::Permissive,
            }),
            // The sidecar's own connections (to the app, too) pass the
            // pod's outbound rules by this mark.
            mark: Some(7),
            ..SidecarConfig::default()
        };
        config
            .apply_port_policies(vec!["8081=strict".parse().expect("policy")])
            .expect("policy");
        let sidecar = Running::start(config, creds, &source).await;
        let _ = pod_ready_tx.send(());
        let client = http_client();
        let up = sidecar.upstream.expect("upstream");
        until_served_by(&client, up, "pod-api", 1).await;
        let itself = get(&client, up).await.map_or_else(|e| e, |(_, body)| body);
        let _ = pod_done_rx.await;
        let _ = metrics_tx.send((itself, sidecar.metrics()));
    });

    let (calls_tx, calls_rx) = std::sync::mpsc::channel::<Calls>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    // The clusters, the gateway and the mesh callers.
    let caller_thread = callers.run(move || async move {
        let mesh = Mesh::new();
        let east = Cluster::start(&mesh, "east").await;
        let west = Cluster::start(&mesh, "west").await;
        let gateway = gateway(&west).await;
        west.write("api.yaml", &api_manifest(true, &[(app, "a")]));
        east.write("api.yaml", &api_manifest(false, &[]));
        east.link("west", gateway.addr);
        // West's discovery, on an address the pod can reach.
        let at = SocketAddr::new(CALLER_IP.parse().expect("ip"), 0);
        let discovery = Relay::start_on(at, west.discovery).await;
        let source = meshfed_sidecar::DiscoverySource {
            addr: discovery.addr.to_string(),
            ..source(&west)
        };
        let _ = creds_tx.send((creds(&west.ca, API), source));
        pod_ready_rx.await.expect("pod sidecar up");
        until_remote_group(&east, "west", "a").await;
        let client = http_client();
        let mut calls = Vec::new();
        for (cluster, who) in [(&west, FRONTEND), (&east, EAST_FRONTEND)] {
            let sidecar = client_sidecar(cluster, "a", who).await;
            let up = sidecar.upstream.expect("upstream");
            until_served_by(&client, up, "pod-api", 1).await;
            calls.push(get(&client, up).await.map_or_else(|e| e, |(_, body)| body));
        }
        let through_gateway = calls.pop().expect("two calls");
        let same_cluster = calls.pop().expect("two calls");
        calls_tx
            .send(Calls {
                same_cluster,
                through_gateway,
            })
            .expect("calls");
        let _ = done_rx.await;
        drop((gateway, discovery));
    });

    let calls = calls_rx
        .recv_timeout(Duration::from_secs(90))
        .expect("mesh calls made in the caller namespace");
    println!("same cluster -> {}", calls.same_cluster);
    println!("through the gateway -> {}", calls.through_gateway);
    // Plaintext, from the caller namespace without a sidecar; the ID it
    // writes must not reach the app.
    let curl = |port: u16| {
        callers.try_exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-H",
            &format!("meshfed-client-id: {}", id("/ns/shop/sa/admin")),
            &format!("http://{POD_IP}:{port}/"),
        ])
    };
    let permissive = curl(8080);
    let strict = curl(8081);
    let _ = pod_done_tx.send(());
    let (itself, metrics) = metrics_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the pod's own call and its sidecar's metrics");
    let _ = done_tx.send(());
    pod_thread.join().expect("pod thread");
    caller_thread.join().expect("caller thread");

    assert_eq!(calls.same_cluster, format!("pod-api {}", id(FRONTEND)));
    assert_eq!(
        calls.through_gateway,
        format!("pod-api {}", id(EAST_FRONTEND))
    );
    println!("the pod calling itself -> {itself}");
    assert_eq!(itself, format!("pod-api {}", id(API)));
    let body = String::from_utf8_lossy(&permissive.stdout);
    println!("plaintext curl to :8080 -> {body}");
    assert_eq!(body, "pod-api none", "{permissive:?}");
    let said = String::from_utf8_lossy(&strict.stdout);
    println!(
        "plaintext curl to :8081 -> {:?}, {}",
        strict.status.code(),
        String::from_utf8_lossy(&strict.stderr).trim()
    );
    assert!(
        !strict.status.success() && !said.contains("pod-strict"),
        "strict served plaintext: {strict:?}"
    );
    for (line, want) in [
        (
            "meshfed_sidecar_inbound_plaintext_total{port=\"8080\",policy=\"permissive\",outcome=\"served\"}",
            1.0,
        ),
        (
            "meshfed_sidecar_inbound_plaintext_total{port=\"8081\",policy=\"strict\",outcome=\"refused\"}",
            1.0,
        ),
        (
            "meshfed_sidecar_inbound_refused_total{port=\"8081\",reason=\"plaintext\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(&metrics, line), want, "{line} in\n{metrics}");
    }
    // Mesh calls (three) and the permissive plaintext one, by the app's own port.
    let served = metric(
        &metrics,
        "meshfed_sidecar_requests_total{direction=\"inbound\",service=\"port/8080\"",
    );
    assert!(served >= 4.0, "{metrics}");
}
