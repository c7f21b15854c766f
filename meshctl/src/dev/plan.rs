//! What a local federation consists of, before anything runs: every
//! process's addresses, identity and flags ([`plan`]), and the files they
//! need on disk — the trust root and cluster CAs, bootstrap tokens, each
//! cluster's manifest directory with the sample services and a Link to
//! every other cluster ([`write_materials`]).
//!
//! Addresses: cluster N (from 1) owns the loopback /24 `127.B.N.0`. Like
//! pods, each process has its own address and listens on its usual ports:
//! `.1` identity, `.3` gateway, `.10+z` the `api` replica of zone z, `.20`
//! `echo`, `.30` the client, `.40+k` extra callers. The controller runs as
//! replicas, as its Deployment does: `.2` stands for its Service — every
//! replica binds the federation and discovery ports there with SO_REUSEPORT
//! (`--reuse-port`), so the kernel spreads new connections over the live
//! ones — and replica k (`controller-k`) has its admin port on `.4+k`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use meshfed_ca::{KeyAlgorithm, RootCa};
use meshfed_resources::objects;
use meshfed_runtime::port;
use meshfed_trust::TrustDomain;
use serde_json::Value;

use super::topology::{ClientTopology, ClusterTopology, Kind, Process, State, Subnet, Topology};
use crate::cluster::*;
use crate::output::Format;

/// The sample services' namespace.
pub const SHOP: &str = "shop";
/// `api`'s service port (and the client sidecar's listener for it).
pub const API_PORT: u16 = 8080;
/// `echo`'s service port (and the client sidecar's listener for it).
pub const ECHO_PORT: u16 = 9000;
/// The client workload's `/stats`.
pub const CLIENT_STATS_PORT: u16 = 8000;

const IDENTITY_HOST: u8 = 1;
/// The controller's Service address: every replica's federation and discovery listeners.
const CONTROLLER_HOST: u8 = 2;
/// Replica k's own address (its admin port): `.4`, `.5`.
const CONTROLLER_REPLICA_HOST: u8 = 4;
/// The controller's process name, and what its replicas are replicas of.
pub const CONTROLLER_PROCESS: &str = "controller";
/// How many controller replicas each cluster runs (as `meshctl install` deploys).
pub const CONTROLLER_REPLICAS: u8 = 2;
const GATEWAY_HOST: u8 = 3;
const API_HOST: u8 = 10;
const ECHO_HOST: u8 = 20;
const CLIENT_HOST: u8 = 30;
/// Extra client pods: `.40`, `.41`...
const CALLER_HOST: u8 = 40;
/// Other versions of `api`: `.60`, `.61`...
const VERSION_HOST: u8 = 60;

/// The dev CAs outlive any dev session and `meshctl check`'s 30-day expiry warning.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 86400);

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    pub dir: PathBuf,
    pub clusters: Vec<ClusterSpec>,
    pub subnet: Subnet,
    pub trust_domain: TrustDomain,
    pub lease_ttl: u32,
    /// Lifetime of workload certificates (the identity services'
    /// `--leaf-ttl`); `None` leaves their default.
    pub leaf_ttl: Option<Duration>,
    /// `(cluster, peer)`: `cluster` holds a Link to `peer` and imports its
    /// exports. `None`: every cluster links to every other.
    pub links: Option<Vec<(String, String)>>,
    /// FailoverPolicy manifests, by the cluster they are written to.
    pub policies: Vec<(String, Value)>,
    /// The network namespaces to run in (`None`: this machine's loopback).
    pub network: Option<super::netns::Network>,
}

/// One cluster of the plan.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub name: String,
    pub region: String,
    /// `api` runs one replica per zone.
    pub zones: u8,
    /// Which sample services (`api`, `echo`) carry the export label.
    pub exported: Vec<String>,
    /// Other versions of `api` (`v2`): each a pod `api-VERSION` in the
    /// first zone behind a Service of its own, `api-VERSION`, not exported.
    pub versions: Vec<String>,
    /// Service accounts of extra client pods: each is a sidecar with the
    /// same upstream listeners as the sample client's, under its own
    /// identity (`spiffe://TD/ns/shop/sa/NAME`), which the sample services
    /// do not allow.
    pub callers: Vec<String>,
}

impl ClusterSpec {
    /// The sample cluster: `api` exported in every zone, `echo` not.
    pub fn sample(name: &str, region: &str, zones: u8) -> Self {
        Self {
            name: name.to_owned(),
            region: region.to_owned(),
            zones,
            exported: vec!["api".into()],
            versions: Vec::new(),
            callers: Vec::new(),
        }
    }
}

impl Spec {
    /// Whether `cluster` holds a Link to `peer`.
    pub fn links_to(&self, cluster: &str, peer: &str) -> bool {
        cluster != peer
            && self.links.as_ref().is_none_or(|l| {
                l.iter()
                    .any(|(c, p)| c.as_str() == cluster && p.as_str() == peer)
            })
    }
}

/// Zone `z` (from 0) of `region`: `us-east` → `us-east-a`, `us-east-b`...
pub fn zone_name(region: &str, z: u8) -> String {
    format!("{region}-{}", char::from(b'a' + z))
}

struct Ids<'a>(&'a TrustDomain);

impl Ids<'_> {
    fn of(&self, ns: &str, sa: &str) -> String {
        format!("spiffe://{}/ns/{ns}/sa/{sa}", self.0)
    }
}

/// Every process of the federation, with pids still unknown.
pub fn plan(spec: &Spec) -> Topology {
    let ids = Ids(&spec.trust_domain);
    let clusters = spec
        .clusters
        .iter()
        .enumerate()
        .map(|(i, c)| plan_cluster(spec, &ids, i, c))
        .collect();
    Topology {
        version: 1,
        dir: spec.dir.clone(),
        trust_domain: spec.trust_domain.to_string(),
        subnet: spec.subnet.to_string(),
        state: State::Starting,
        clusters,
        network: spec.network.clone(),
    }
}

fn plan_cluster(spec: &Spec, ids: &Ids, i: usize, cs: &ClusterSpec) -> ClusterTopology {
    let (name, region) = (cs.name.as_str(), cs.region.as_str());
    let net = spec
        .network
        .as_ref()
        .and_then(|n| n.cluster(name).ok().cloned());
    let root = spec.dir.join(name);
    let ca_dir = root.join("ca");
    let tokens = root.join("tokens");
    let logs = root.join("logs");
    let state_dir = root.join("store");
    let at = |host: u8, port: u16| SocketAddr::from((spec.subnet.ip(i, host), port));
    let arg = |a: &dyn std::fmt::Display| a.to_string();
    let path = |p: &Path| p.display().to_string();

    let identity_addr = at(IDENTITY_HOST, port::IDENTITY);
    let controller_ip = spec.subnet.ip(i, CONTROLLER_HOST);
    let discovery = SocketAddr::from((controller_ip, port::DISCOVERY));
    let federation = SocketAddr::from((controller_ip, port::FEDERATION));
    // In a network namespace the gateway alone listens on the WAN.
    let gateway = match &net {
        Some(n) => SocketAddr::from((n.wan_ip, port::GATEWAY)),
        None => at(GATEWAY_HOST, port::GATEWAY),
    };
    // How a process proves who it is: the CSR flow against this cluster's identity service.
    let credentials = |ns: &str, sa: &str| -> Vec<String> {
        vec![
            "--identity-addr".into(),
            arg(&identity_addr),
            "--identity-server-id".into(),
            ids.of(NAMESPACE, IDENTITY),
            "--id".into(),
            ids.of(ns, sa),
            "--token-file".into(),
            path(&tokens.join(format!("{ns}.{sa}"))),
            "--bundle".into(),
            path(&ca_dir.join(meshfed_trust::paths::ROOT_CERT)),
        ]
    };
    let proc = |name: &str, kind: Kind, args: Vec<String>| Process {
        name: name.into(),
        kind,
        zone: None,
        listen: BTreeMap::new(),
        admin: None,
        identity: None,
        replica_of: None,
        service: None,
        log: logs.join(format!("{name}.log")),
        args,
        pid: None,
        start_time: None,
    };
    let mut processes = Vec::new();

    let mut args: Vec<String> = vec![
        "--ca-dir".into(),
        path(&ca_dir),
        "--auth".into(),
        "bootstrap".into(),
        "--bootstrap-tokens".into(),
        path(&tokens.join("bootstrap")),
        "--listen".into(),
        arg(&identity_addr),
        "--admin-listen".into(),
        arg(&at(IDENTITY_HOST, port::IDENTITY_ADMIN)),
    ];
    if let Some(ttl) = spec.leaf_ttl {
        args.push("--leaf-ttl".into());
        args.push(humantime::format_duration(ttl).to_string());
    }
    let mut p = proc("identity", Kind::Identity, args);
    p.listen.insert("grpc".into(), identity_addr);
    p.admin = Some(at(IDENTITY_HOST, port::IDENTITY_ADMIN));
    p.identity = Some(ids.of(NAMESPACE, IDENTITY));
    processes.push(p);

    for k in 0..CONTROLLER_REPLICAS {
        let replica = format!("{CONTROLLER_PROCESS}-{k}");
        let admin = at(CONTROLLER_REPLICA_HOST + k, port::CONTROLLER_ADMIN);
        let mut args = vec![
            "--cluster".into(),
            name.into(),
            "--region".into(),
            region.into(),
            "--store".into(),
            "file".into(),
            "--dir".into(),
            path(&state_dir),
            "--federation-listen".into(),
            arg(&federation),
            "--discovery-listen".into(),
            arg(&discovery),
            // Every replica on the Service's address.
            "--reuse-port".into(),
            "--replica".into(),
            replica.clone(),
            "--admin-listen".into(),
            arg(&admin),
        ];
        args.extend(credentials(NAMESPACE, CONTROLLER));
        let mut p = proc(&replica, Kind::Controller, args);
        p.listen.insert("federation".into(), federation);
        p.listen.insert("discovery".into(), discovery);
        p.admin = Some(admin);
        p.identity = Some(ids.of(NAMESPACE, CONTROLLER));
        p.replica_of = Some(CONTROLLER_PROCESS.into());
        processes.push(p);
    }

    let mut args = vec![
        "--cluster".into(),
        name.into(),
        "--name".into(),
        format!("{name}-gateway"),
        "--listen".into(),
        arg(&gateway),
        "--admin-listen".into(),
        arg(&at(GATEWAY_HOST, port::GATEWAY_ADMIN)),
        "--discovery".into(),
        arg(&discovery),
        "--federation-upstream".into(),
        arg(&federation),
        "--drain-timeout".into(),
        "1s".into(),
    ];
    args.extend(credentials(NAMESPACE, GATEWAY));
    let mut p = proc("gateway", Kind::Gateway, args);
    p.listen.insert("gateway".into(), gateway);
    p.admin = Some(at(GATEWAY_HOST, port::GATEWAY_ADMIN));
    p.identity = Some(ids.of(NAMESPACE, GATEWAY));
    processes.push(p);

    let client_id = ids.of(SHOP, "client");
    // A sidecar in front of (or, for the client, beside) a workload at `ip`.
    let sidecar = |workload: &str, sa: &str, ip: Ipv4Addr, zone: &str, extra: Vec<String>| {
        let mut args = vec![
            "run".into(),
            "--cluster".into(),
            name.into(),
            "--region".into(),
            region.into(),
            "--zone".into(),
            zone.into(),
            "--discovery".into(),
            arg(&discovery),
            "--admin-listen".into(),
            arg(&SocketAddr::from((ip, port::SIDECAR_ADMIN))),
            "--drain-timeout".into(),
            "1s".into(),
        ];
        args.extend(extra);
        args.extend(credentials(SHOP, sa));
        let mut p = proc(&format!("{workload}-sidecar"), Kind::Sidecar, args);
        p.zone = Some(zone.into());
        p.admin = Some(SocketAddr::from((ip, port::SIDECAR_ADMIN)));
        p.identity = Some(ids.of(SHOP, sa));
        p
    };
    let inbound = |ip: Ipv4Addr, app_port: u16| -> (SocketAddr, Vec<String>) {
        let listen = SocketAddr::from((ip, port::SIDECAR_INBOUND));
        let app = SocketAddr::from((ip, app_port));
        (
            listen,
            vec![
                "--inbound".into(),
                format!("{listen}={app}"),
                // The address the pod's EndpointSlices list (its rate limits).
                "--pod-ip".into(),
                ip.to_string(),
                // Only the sample client may call the sample services.
                "--allow".into(),
                format!("{}={client_id}", port::SIDECAR_INBOUND),
            ],
        )
    };

    let zones: Vec<String> = (0..cs.zones).map(|z| zone_name(region, z)).collect();
    // api: one pod per zone; each other version one pod in the first zone,
    // behind a Service of its own. All run as api's service account.
    let mut api_pods = Vec::new();
    for (z, zone) in zones.iter().enumerate() {
        let z = u8::try_from(z).expect("few zones");
        let pod = format!("api-{}", char::from(b'a' + z));
        api_pods.push((pod, API_HOST + z, zone.clone(), "api".to_owned()));
    }
    for (k, version) in cs.versions.iter().enumerate() {
        let pod = format!("api-{version}");
        let host = VERSION_HOST + u8::try_from(k).expect("few versions (checked)");
        api_pods.push((pod.clone(), host, zones[0].clone(), pod));
    }
    for (pod, host, zone, service) in api_pods {
        let ip = spec.subnet.ip(i, host);
        let app = SocketAddr::from((ip, API_PORT));
        let mut p = proc(
            &pod,
            Kind::Api,
            vec![
                "--listen".into(),
                arg(&app),
                "--cluster".into(),
                name.into(),
                "--zone".into(),
                zone.clone(),
                "--pod".into(),
                format!("{pod}.{name}"),
                "--service".into(),
                service.clone(),
            ],
        );
        p.zone = Some(zone.clone());
        p.service = Some(service);
        p.listen.insert("http".into(), app);
        processes.push(p);
        let (listen, extra) = inbound(ip, API_PORT);
        let mut s = sidecar(&pod, "api", ip, &zone, extra);
        s.listen.insert("inbound".into(), listen);
        processes.push(s);
    }

    let ip = spec.subnet.ip(i, ECHO_HOST);
    let app = SocketAddr::from((ip, ECHO_PORT));
    let mut p = proc("echo", Kind::Echo, vec!["--listen".into(), arg(&app)]);
    p.zone = Some(zones[0].clone());
    p.service = Some("echo".into());
    p.listen.insert("tcp".into(), app);
    processes.push(p);
    let (listen, extra) = inbound(ip, ECHO_PORT);
    let mut s = sidecar("echo", "echo", ip, &zones[0], extra);
    s.listen.insert("inbound".into(), listen);
    processes.push(s);

    let ip = spec.subnet.ip(i, CLIENT_HOST);
    let upstreams = BTreeMap::from([
        (format!("api.{SHOP}"), SocketAddr::from((ip, API_PORT))),
        (format!("echo.{SHOP}"), SocketAddr::from((ip, ECHO_PORT))),
    ]);
    let mut extra = Vec::new();
    for (svc, listen) in &upstreams {
        let port = if svc.starts_with("api.") {
            API_PORT
        } else {
            ECHO_PORT
        };
        extra.push("--upstream".into());
        extra.push(format!("{svc}:{port}={listen}"));
    }
    let mut s = sidecar("client", "client", ip, &zones[0], extra);
    for (svc, listen) in &upstreams {
        s.listen.insert(format!("upstream {svc}"), *listen);
    }
    processes.push(s);
    let stats = SocketAddr::from((ip, CLIENT_STATS_PORT));
    let mut p = proc(
        "client",
        Kind::Client,
        vec![
            "--target".into(),
            arg(&upstreams[&format!("api.{SHOP}")]),
            "--listen".into(),
            arg(&stats),
        ],
    );
    p.zone = Some(zones[0].clone());
    p.admin = Some(stats);
    p.identity = Some(client_id.clone());
    processes.push(p);

    for (k, sa) in cs.callers.iter().enumerate() {
        let host = CALLER_HOST + u8::try_from(k).expect("few callers (checked)");
        let ip = spec.subnet.ip(i, host);
        let mut extra = Vec::new();
        let mut listen = BTreeMap::new();
        for (svc, port) in [
            (format!("api.{SHOP}"), API_PORT),
            (format!("echo.{SHOP}"), ECHO_PORT),
        ] {
            let at = SocketAddr::from((ip, port));
            extra.push("--upstream".into());
            extra.push(format!("{svc}:{port}={at}"));
            listen.insert(format!("upstream {svc}"), at);
        }
        let mut s = sidecar(sa, sa, ip, &zones[0], extra);
        s.listen = listen;
        processes.push(s);
    }

    ClusterTopology {
        name: name.into(),
        region: region.into(),
        zones,
        netns: net.map(|n| n.netns),
        state_dir,
        ca_dir,
        gateway,
        client: ClientTopology {
            identity: client_id,
            upstreams,
        },
        processes,
    }
}

/// Writes what the processes need: the root (kept in `DIR/trust`), each
/// cluster's CA, bootstrap tokens, and its manifest directory with the
/// cluster description, the sample services and a Link to every other
/// cluster.
pub async fn write_materials(spec: &Spec, topology: &Topology) -> anyhow::Result<()> {
    let root = RootCa::generate(&spec.trust_domain, KeyAlgorithm::EcdsaP256, CA_VALIDITY)
        .context("creating the root CA")?;
    let trust = spec.dir.join("trust");
    create_dir(&trust)?;
    root.save(&trust, false)
        .with_context(|| format!("saving the root CA in {}", trust.display()))?;
    for c in &topology.clusters {
        for sub in [&c.ca_dir, &c.state_dir] {
            create_dir(sub)?;
        }
        let first_log = &c.processes[0].log;
        create_dir(first_log.parent().context("logs have a directory")?)?;
        root.issue_cluster(&c.name, CA_VALIDITY, Vec::new())
            .with_context(|| format!("issuing cluster {}'s CA", c.name))?
            .save(&c.ca_dir, false)
            .with_context(|| format!("saving {}", c.ca_dir.display()))?;
        write_tokens(&spec.dir.join(&c.name).join("tokens"), c)?;
        describe(c)?;
        let cs = spec
            .clusters
            .iter()
            .find(|s| s.name == c.name)
            .context("every planned cluster is in the spec")?;
        write_services(cs, c)?;
    }
    for to in &topology.clusters {
        for from in topology.clusters.iter() {
            if spec.links_to(&to.name, &from.name) {
                link(spec, from, to).await?;
            }
        }
    }
    for (cluster, policy) in &spec.policies {
        let c = topology.cluster(cluster)?;
        let name = policy["metadata"]["name"].as_str().unwrap_or("policy");
        let path = c.state_dir.join(SHOP).join(format!("failover-{name}.yaml"));
        std::fs::write(&path, Format::Yaml.objects(std::slice::from_ref(policy))?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// One random token per identity, in the identity service's file and in a
/// file of its own for the process that presents it.
fn write_tokens(dir: &Path, c: &ClusterTopology) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    create_dir(dir)?;
    let secret_file = |path: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))
    };
    let mut all = secret_file(&dir.join("bootstrap"))?;
    let mut seen = std::collections::BTreeSet::new();
    for id in c.processes.iter().filter_map(|p| p.identity.as_deref()) {
        let Some((ns, sa)) = id
            .split_once("/ns/")
            .and_then(|(_, r)| r.split_once("/sa/"))
        else {
            continue;
        };
        if !seen.insert((ns.to_owned(), sa.to_owned())) {
            continue;
        }
        let token: String = rand::random::<[u8; 24]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        writeln!(all, "{ns}/{sa} {token}")?;
        secret_file(&dir.join(format!("{ns}.{sa}")))?.write_all(token.as_bytes())?;
    }
    Ok(())
}

/// `meshctl install --state`: the cluster's ConfigMaps, with every admin
/// listener so `meshctl check` can ask each process.
fn describe(c: &ClusterTopology) -> anyhow::Result<()> {
    let mut argv = vec![
        "--cluster".to_owned(),
        c.name.clone(),
        "--ca".into(),
        c.ca_dir.display().to_string(),
        "--region".into(),
        c.region.clone(),
        "--gateway-address".into(),
        c.gateway.ip().to_string(),
        "--gateway-port".into(),
        c.gateway.port().to_string(),
        "--state".into(),
        c.state_dir.display().to_string(),
    ];
    for p in &c.processes {
        if let (Some(admin), true) = (p.admin, p.kind != Kind::Client) {
            argv.push("--admin".into());
            argv.push(format!("{}={admin}", p.name));
        }
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args = crate::parse_args::<crate::install::InstallArgs>(&argv)?;
    crate::install::describe_file_cluster(&args, &c.state_dir)?;
    Ok(())
}

/// `shop/api.yaml` and `shop/echo.yaml`: each Service (api exported), its
/// Pods and the EndpointSlice the endpoint-slice controller would write for
/// them (each endpoint's `targetRef` naming its Pod, zone and node set), and
/// `nodes.yaml` with a Node per zone. Who a Pod runs as is its sidecar's
/// service account: the controller reads identities from the Pods, as on
/// Kubernetes, never from an annotation.
fn write_services(cs: &ClusterSpec, c: &ClusterTopology) -> anyhow::Result<()> {
    let dir = c.state_dir.join(SHOP);
    create_dir(&dir)?;
    let node_of = |zone: &str| format!("{}-{zone}", c.name);
    let mut nodes = Vec::new();
    for zone in c.processes.iter().filter_map(|p| p.zone.as_deref()) {
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_of(zone),
                "labels": { (meshfed_api::labels::ZONE): zone, "kubernetes.io/hostname": node_of(zone) },
            },
        });
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    let path = c.state_dir.join("nodes.yaml");
    std::fs::write(&path, Format::Yaml.objects(&nodes)?)
        .with_context(|| format!("writing {}", path.display()))?;

    let versions = cs.versions.iter().map(|v| format!("api-{v}"));
    let services = [
        ("api".to_owned(), "http", API_PORT),
        ("echo".into(), "tcp", ECHO_PORT),
    ]
    .into_iter()
    .chain(versions.map(|v| (v, "http", API_PORT)));
    for (service, port_name, port) in services {
        let service = service.as_str();
        let exported = cs.exported.iter().any(|e| e == service);
        let svc = objects::service(SHOP, service, &[(port_name, port)], exported);
        let mut slice = objects::slice(
            SHOP,
            service,
            &format!("{service}-1"),
            &[(port_name, port::SIDECAR_INBOUND)],
        );
        let mut docs: Vec<Value> = vec![serde_json::to_value(svc)?];
        for p in c
            .processes
            .iter()
            .filter(|p| p.service.as_deref() == Some(service))
        {
            let ip = p.listen.values().next().expect("a workload listens").ip();
            let sidecar = format!("{}-sidecar", p.name);
            let account = c
                .processes
                .iter()
                .find(|s| s.name == sidecar)
                .and_then(|s| s.identity.as_deref())
                .and_then(|id| id.rsplit_once("/sa/"))
                .map(|(_, sa)| sa)
                .with_context(|| format!("{} has no sidecar with an identity", p.name))?;
            let zone = p.zone.as_deref().unwrap_or_default();
            let pod = objects::pod(SHOP, &p.name, account, &ip.to_string(), &node_of(zone));
            objects::add_pod_endpoint(&mut slice, &pod, p.zone.as_deref(), true);
            docs.push(serde_json::to_value(pod)?);
        }
        docs.insert(1, serde_json::to_value(slice)?);
        let path = dir.join(format!("{service}.yaml"));
        std::fs::write(&path, Format::Yaml.objects(&docs)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `meshctl link --from-state FROM --to-state TO`: `to` links to `from`.
pub async fn link(spec: &Spec, from: &ClusterTopology, to: &ClusterTopology) -> anyhow::Result<()> {
    let (f, t, ttl) = (
        from.state_dir.display().to_string(),
        to.state_dir.display().to_string(),
        spec.lease_ttl.to_string(),
    );
    let args = crate::parse_args::<crate::link::LinkArgs>(&[
        "--from-state",
        &f,
        "--to-state",
        &t,
        "--lease-ttl",
        &ttl,
    ])?;
    let (from_c, to_c) = (
        crate::target::open(None, args.from_state.as_ref()).await?,
        crate::target::open(None, args.to_state.as_ref()).await?,
    );
    let link = crate::link::make_link(&args, &from_c, &to_c).await?;
    to_c.put_link(&link).await?;
    Ok(())
}
