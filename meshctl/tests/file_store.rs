//! `meshctl` against two file store clusters with real controllers and real
//! gateways (in-process, on loopback): `install --state`, `link`, `export`,
//! `unexport`, `unlink` change exactly what they should; `gateways` and
//! `check` report the healthy pair, then a dead gateway; a link across
//! different trust roots is refused and changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meshfed_ca::{ClusterCa, KeyAlgorithm, RootCa};
use meshfed_controller::{Controller, ControllerConfig, FileStore, FileStoreConfig, Store};
use meshfed_resources::crd::Link;
use meshfed_resources::objects;
use meshfed_runtime::Readiness;
use meshfed_trust::{CredentialsWatch, TrustDomain};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TD: &str = "mesh.test";
/// Past `check`'s 30-day expiry warning.
const DAYS_90: Duration = Duration::from_secs(90 * 86400);

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn meshctl(args: &[&str]) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(&args)
            .output()
    })
    .await
    .expect("join")
    .expect("run meshctl");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn ok(args: &[&str]) -> String {
    let r = meshctl(args).await;
    assert!(r.ok, "meshctl {args:?} failed: {}", r.stderr);
    r.stdout
}

fn creds(ca: &ClusterCa, sa: &str) -> CredentialsWatch {
    let id = ca
        .trust_domain()
        .workload("meshfed-system", sa)
        .expect("valid id");
    let w = ca
        .issue_workload(&id, Duration::from_secs(3600))
        .expect("issue");
    w.into_credentials().expect("credentials").into_watch().1
}

/// One cluster: a manifest directory, its controller and gateway, each with
/// an admin listener, and its CA on disk for `meshctl install`.
struct Cluster {
    dir: tempfile::TempDir,
    ca_dir: tempfile::TempDir,
    controller_tasks: Vec<JoinHandle<()>>,
    gateway_tasks: Vec<JoinHandle<()>>,
    gateway_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self.controller_tasks.iter().chain(&self.gateway_tasks) {
            t.abort();
        }
    }
}

async fn admin(tasks: &mut Vec<JoinHandle<()>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let ready = Readiness::default();
    ready.set(true);
    tasks.push(tokio::spawn(meshfed_runtime::serve_admin(
        listener,
        Arc::new(Registry::default()),
        ready,
    )));
    addr
}

impl Cluster {
    async fn start(root: &RootCa, name: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let ca = root
            .issue_cluster(name, DAYS_90, Vec::new())
            .expect("cluster ca");
        ca.save(ca_dir.path(), true).expect("save ca");

        let mut cfg = FileStoreConfig::new(dir.path());
        cfg.poll = Duration::from_millis(20);
        let store: Arc<dyn Store> = Arc::new(FileStore::open(cfg).await.expect("store"));
        let mut config = ControllerConfig::new(name);
        config.status_period = Duration::from_millis(100);
        let controller = Arc::new(Controller::start(
            config,
            store,
            creds(&ca, "meshfed-controller"),
            &mut Registry::default(),
        ));
        let fed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let disc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (federation, discovery) = (
            fed.local_addr().expect("addr"),
            disc.local_addr().expect("addr"),
        );
        let (c1, c2) = (controller.clone(), controller);
        let mut controller_tasks = vec![
            tokio::spawn(async move {
                let _ = c1.serve_federation(fed, std::future::pending()).await;
            }),
            tokio::spawn(async move {
                let _ = c2.serve_discovery(disc, std::future::pending()).await;
            }),
        ];
        let controller_admin = admin(&mut controller_tasks).await;

        let gw_creds = creds(&ca, "meshfed-gateway");
        let mut registry = Registry::default();
        let metrics = Arc::new(meshfed_gateway::Metrics::new(&mut registry));
        let source = meshfed_gateway::RoutesSource {
            discovery: discovery.to_string(),
            controller_id: ca
                .trust_domain()
                .workload("meshfed-system", "meshfed-controller")
                .expect("id"),
            gateway: format!("{name}-gateway"),
        };
        let (routes, following) =
            meshfed_gateway::follow_routes(source, gw_creds.clone(), metrics.clone());
        let config = meshfed_gateway::GatewayConfig {
            federation_upstream: Some(federation.to_string()),
            drain_timeout: Duration::ZERO,
            ..meshfed_gateway::GatewayConfig::default()
        };
        let gateway =
            meshfed_gateway::Gateway::new(config, routes, gw_creds, Readiness::default(), metrics);
        let listener = meshfed_gateway::bind_shared("127.0.0.1:0".parse().expect("addr"))
            .expect("bind gateway");
        let gateway_port = listener.local_addr().expect("addr").port();
        // Stopping the gateway is a crash: with no drain time, every
        // connection through it ends at once, as when its process is killed.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut gateway_tasks = vec![
            following,
            tokio::spawn(async move {
                let _ = gateway
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await;
            }),
        ];
        let gateway_admin = admin(&mut gateway_tasks).await;

        let cluster = Self {
            dir,
            ca_dir,
            controller_tasks,
            gateway_tasks,
            gateway_stop: Some(stop),
        };
        ok(&[
            "install",
            "--cluster",
            name,
            "--ca",
            cluster.ca(),
            "--state",
            cluster.state(),
            "--gateway-address",
            "127.0.0.1",
            "--gateway-port",
            &gateway_port.to_string(),
            "--admin",
            &format!("controller={controller_admin}"),
            "--admin",
            &format!("gateway={gateway_admin}"),
        ])
        .await;
        cluster
    }

    fn state(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 path")
    }

    fn ca(&self) -> &str {
        self.ca_dir.path().to_str().expect("utf-8 path")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Kills the gateway: its listener closes and every connection through
    /// it (the federation stream among them) ends, as with a killed process.
    async fn kill_gateway(&mut self) {
        if let Some(stop) = self.gateway_stop.take() {
            let _ = stop.send(());
        }
        let mut tasks: Vec<_> = self.gateway_tasks.drain(..).collect();
        // The serving task ends once every connection is closed.
        let served = tasks.remove(1);
        let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
        for t in tasks {
            t.abort();
        }
    }
}

fn root(td: &str) -> RootCa {
    RootCa::generate(
        &TrustDomain::new(td).expect("td"),
        KeyAlgorithm::EcdsaP256,
        DAYS_90 * 4,
    )
    .expect("root")
}

/// Polls `f` every 50 ms for up to `secs`; panics naming `what` on timeout.
async fn until<F, Fut>(what: &str, secs: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn gateways(cluster: &Cluster) -> Vec<Value> {
    let out = ok(&["gateways", "--state", cluster.state(), "-o", "json"]).await;
    serde_json::from_str(&out).expect("gateways JSON")
}

async fn check(clusters: &[&Cluster]) -> (bool, Vec<Value>) {
    let mut args = vec!["check", "-o", "json"];
    for c in clusters {
        args.extend(["--state", c.state()]);
    }
    let r = meshctl(&args).await;
    let outcomes: Vec<Value> = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("check JSON: {e}: {}{}", r.stdout, r.stderr));
    if !r.ok {
        assert!(r.stderr.contains("checks failed"), "{}", r.stderr);
    }
    (r.ok, outcomes)
}

fn outcome<'a>(outcomes: &'a [Value], cluster: &str, check: &str) -> &'a Value {
    outcomes
        .iter()
        .find(|o| {
            o["cluster"]
                .as_str()
                .is_some_and(|c| c.starts_with(cluster))
                && o["check"] == check
        })
        .unwrap_or_else(|| panic!("no check {check:?} for {cluster}: {outcomes:#?}"))
}

const SHOP: &str = "\
# The shop's API, served in west.
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
spec:
  ports:
  - name: http
    port: 80
---
# Not a Service: left alone, byte for byte.
apiVersion: v1
kind: ConfigMap
metadata: { name: shop-settings, namespace: shop }
data: { currency: EUR }
";

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_export_check_and_a_dead_gateway_on_file_stores() {
    meshfed_trust::install_crypto_provider();
    let mesh = root(TD);
    let east = Cluster::start(&mesh, "east").await;
    let mut west = Cluster::start(&mesh, "west").await;
    std::fs::write(west.path("shop.yaml"), SHOP).expect("write shop.yaml");
    let (pods, slice) = objects::pods_and_slice(
        "shop",
        "api",
        "api",
        &[("http", 8080)],
        &[("127.0.0.1", Some("a"), true)],
    );
    std::fs::write(
        west.path("api-slice.yaml"),
        [
            serde_saphyr::to_string(&slice),
            serde_saphyr::to_string(&pods[0]),
        ]
        .map(|doc| doc.expect("yaml"))
        .join("---\n"),
    )
    .expect("write slice");

    // link: a dry run prints the Link and writes nothing.
    let dry = ok(&[
        "link",
        "--from-state",
        west.state(),
        "--to-state",
        east.state(),
        "--dry-run",
    ])
    .await;
    let printed: Link = serde_saphyr::from_str(dry.trim_start_matches("---\n")).expect("a Link");
    assert!(!east.path("links").exists(), "--dry-run wrote nothing");
    ok(&[
        "link",
        "--from-state",
        west.state(),
        "--to-state",
        east.state(),
    ])
    .await;
    ok(&[
        "link",
        "--from-state",
        east.state(),
        "--to-state",
        west.state(),
    ])
    .await;
    let written: Link =
        serde_saphyr::from_str(&read(&east.path("links/west.yaml"))).expect("the Link");
    assert_eq!(written, printed);
    assert_eq!(
        written.metadata.namespace.as_deref(),
        Some("meshfed-system")
    );
    assert_eq!(written.spec.cluster, "west");
    assert_eq!(written.spec.gateway.addresses, ["127.0.0.1"]);
    assert_eq!(
        written.spec.gateway.identity,
        "spiffe://mesh.test/ns/meshfed-system/sa/meshfed-gateway"
    );
    let roots = &written.metadata.annotations.as_ref().expect("annotations")[meshctl::LINK_ROOTS];
    assert_eq!(
        roots.split(',').count(),
        1,
        "the one shared root is recorded"
    );
    // Linking again changes nothing.
    let again = ok(&[
        "link",
        "--from-state",
        west.state(),
        "--to-state",
        east.state(),
    ])
    .await;
    assert!(again.contains("unchanged"), "{again}");

    // export: only the Service's document changes; the mirror appears in east.
    let before = read(&west.path("shop.yaml"));
    ok(&["export", "svc/api", "-n", "shop", "--state", west.state()]).await;
    let after = read(&west.path("shop.yaml"));
    let tail = before.split("---\n").nth(1).expect("second document");
    assert!(
        after.ends_with(tail),
        "the ConfigMap's document is untouched:\n{after}"
    );
    assert!(after.contains("meshfed.io/exported"), "{after}");
    let mirror = east.path("mirrors/shop/api-west.yaml");
    let took = until("the mirror of api in east", 15, || async {
        mirror.exists()
    })
    .await;
    println!("export → mirror in east: {took:?}");
    let again = ok(&["export", "svc/api", "-n", "shop", "--state", west.state()]).await;
    assert!(again.contains("already exported"), "{again}");

    // gateways and check: a healthy pair.
    until("west alive in east's gateways", 15, || async {
        let rows = gateways(&east).await;
        rows.len() == 1 && rows[0]["alive"] == true && rows[0]["services"] == 1
    })
    .await;
    let rows = gateways(&east).await;
    assert_eq!(rows[0]["cluster"], "west");
    assert!(rows[0]["latencyP50"].is_string(), "{rows:?}");
    let table = ok(&["gateways", "--state", east.state()]).await;
    assert!(table.starts_with("CLUSTER"), "{table}");
    assert!(table.contains("west") && table.contains("yes"), "{table}");
    until("both links reported alive", 15, || async {
        check(&[&east, &west]).await.0
    })
    .await;
    let (_, outcomes) = check(&[&east, &west]).await;
    for c in ["east", "west"] {
        for name in [
            "Meshfed installed",
            "components ready",
            "certificates valid",
            "mirrors backed by live exports",
        ] {
            assert_ne!(outcome(&outcomes, c, name)["status"], "fail");
        }
    }
    assert_eq!(
        outcome(&outcomes, "east", "link west: gateway alive")["status"],
        "pass"
    );
    assert_eq!(
        outcome(&outcomes, "east", "link west: trust roots shared")["status"],
        "pass"
    );
    assert_eq!(
        outcome(&outcomes, "east", "mirrors backed by live exports")["status"],
        "pass"
    );

    // unexport: the label goes, the mirror goes.
    ok(&["unexport", "svc/api", "-n", "shop", "--state", west.state()]).await;
    assert!(!read(&west.path("shop.yaml")).contains("meshfed.io/exported"));
    assert!(read(&west.path("shop.yaml")).ends_with(tail));
    until("the mirror removed after unexport", 15, || async {
        !mirror.exists()
    })
    .await;

    // unlink: the Link goes and the controller removes the mirrors.
    ok(&["export", "svc/api", "-n", "shop", "--state", west.state()]).await;
    until("the mirror back", 15, || async { mirror.exists() }).await;
    let out = ok(&[
        "unlink",
        "--cluster",
        "west",
        "--state",
        east.state(),
        "--wait",
        "15s",
    ])
    .await;
    assert!(out.contains("mirrors of west removed"), "{out}");
    assert!(!east.path("links/west.yaml").exists());
    assert!(!mirror.exists());
    let r = meshctl(&["unlink", "--cluster", "west", "--state", east.state()]).await;
    assert!(!r.ok && r.stderr.contains("no Link"), "{}", r.stderr);

    // A cluster under another root: refused, nothing written.
    let other = root(TD);
    let north_dir = tempfile::tempdir().expect("tempdir");
    let north_ca = tempfile::tempdir().expect("tempdir");
    other
        .issue_cluster("north", DAYS_90, Vec::new())
        .expect("ca")
        .save(north_ca.path(), true)
        .expect("save");
    let north = north_dir.path().to_str().expect("utf-8");
    ok(&[
        "install",
        "--cluster",
        "north",
        "--ca",
        north_ca.path().to_str().expect("utf-8"),
        "--state",
        north,
        "--gateway-address",
        "127.0.0.1",
    ])
    .await;
    let r = meshctl(&["link", "--from-state", north, "--to-state", east.state()]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("share no trust root"), "{}", r.stderr);
    assert!(r.stderr.contains("hint:"), "{}", r.stderr);
    assert!(!east.path("links/north.yaml").exists());

    // A dead gateway: gateways and check say so.
    ok(&[
        "link",
        "--from-state",
        west.state(),
        "--to-state",
        east.state(),
        "--lease-ttl",
        "2",
    ])
    .await;
    until("west alive again", 15, || async {
        let rows = gateways(&east).await;
        rows.first().is_some_and(|r| r["alive"] == true)
    })
    .await;
    west.kill_gateway().await;
    let took = until("west dead in east's gateways", 20, || async {
        let rows = gateways(&east).await;
        rows[0]["alive"] == false && rows[0]["gatewayAlive"] == false
    })
    .await;
    println!("gateway killed → reported dead: {took:?}");
    let table = ok(&["gateways", "--state", east.state()]).await;
    assert!(table.contains("no ("), "{table}");
    let (healthy, outcomes) = check(&[&east, &west]).await;
    assert!(!healthy, "check fails with a dead gateway");
    let gw = outcome(&outcomes, "east", "link west: gateway alive");
    assert_eq!(gw["status"], "fail");
    assert!(gw["hint"].is_string());
    assert_eq!(
        outcome(&outcomes, "east", "link west: federation stream up")["status"],
        "fail"
    );
    assert_eq!(
        outcome(&outcomes, "west", "components ready")["status"],
        "fail"
    );
    let text = meshctl(&["check", "--state", east.state()]).await;
    assert!(!text.ok);
    assert!(
        text.stdout.contains("✖ link west: gateway alive"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("✔ certificates valid"),
        "{}",
        text.stdout
    );
    drop(east);
}
