//! Two clusters linked through west's real gateway: exports become mirrors
//! and discovery groups in the other cluster, and go away when the export,
//! the Link or the peer does. Propagation times are printed for the record.

use std::time::Duration;

use meshfed_api::discovery::{EndpointSet, Locality};
use meshfed_api::federation::WatchExportsRequest;
use meshfed_api::federation::federation_client::FederationClient;
use meshfed_resources::objects;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::support::*;

const LINK_FILE: &str = "link-west.yaml";

fn api_manifest(exported: bool) -> String {
    let svc = objects::service("shop", "api", &[("http", 80)], exported);
    // As a cluster holds them: Pods running as `api`, and the slice the
    // endpoint-slice controller writes, naming each Pod in its targetRef.
    let (pods, slice) = objects::pods_and_slice(
        "shop",
        "api",
        "api",
        &[("http", 8080)],
        &[
            ("10.1.0.1", Some("west-a"), true),
            ("10.1.0.2", Some("west-b"), true),
            ("10.1.0.3", Some("west-b"), false),
        ],
    );
    let mut docs = vec![yaml(&svc), yaml(&slice)];
    docs.extend(pods.iter().map(yaml));
    docs.join("---\n")
}

fn link_manifest(gateway: std::net::SocketAddr) -> String {
    let mut link = objects::link(
        "meshfed-system",
        "west",
        &[&gateway.ip().to_string()],
        gateway.port(),
        &id(GATEWAY).to_string(),
        &id(CONTROLLER).to_string(),
    );
    link.spec.lease_ttl_seconds = 1;
    link.spec.probe.period_seconds = 1;
    link.spec.probe.timeout_seconds = 1;
    link.spec.probe.failure_threshold = 2;
    yaml(&link)
}

/// Subscribes to `api.shop:80` at `cluster`'s discovery as a caller in
/// zone east-a; the latest set is kept in the returned channel.
async fn subscribe(
    cluster: &Cluster,
    mesh_creds: meshfed_trust::CredentialsWatch,
) -> watch::Receiver<Option<EndpointSet>> {
    let caller = Locality {
        cluster: cluster.name.clone(),
        region: String::new(),
        zone: "east-a".into(),
    };
    watch_endpoints(cluster.discovery, mesh_creds, caller).await
}

/// [`until`] for the latest endpoint set of a subscription.
async fn until_set(
    since: Instant,
    rx: &mut watch::Receiver<Option<EndpointSet>>,
    what: &str,
    f: impl Fn(&EndpointSet) -> bool,
) -> Duration {
    until(since, rx, what, |s: &Option<EndpointSet>| {
        s.as_ref().is_some_and(&f)
    })
    .await
}

fn has_west_group(set: &EndpointSet) -> bool {
    set.groups.iter().any(|g| {
        g.remote
            && g.locality.as_ref().is_some_and(|l| l.cluster == "west")
            && g.endpoints
                .iter()
                .all(|e| e.sni == "api.shop.80.east.svc.meshfed.local")
    })
}

async fn until_metric(cluster: &Cluster, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.metrics().contains(needle) {
        assert!(Instant::now() < deadline, "metric never showed {needle}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_mirrors_and_discovery_follow_export_link_and_peer() {
    let mesh = Mesh::new();
    let west = Cluster::start(&mesh, "west", None).await;
    let east = Cluster::start(&mesh, "east", None).await;
    let mut gw = gateway(&west).await;
    west.write("api.yaml", &api_manifest(false));
    east.write(LINK_FILE, &link_manifest(gw.addr));
    let client = creds(&east.ca, "/ns/shop/sa/client", None);
    let t0 = Instant::now();
    let mut sub = subscribe(&east, client.clone()).await;
    let mut state = east.state();
    until_set(t0, &mut sub, "unknown service", |s| !s.exists).await;
    let stream_up = "meshfed_controller_federation_stream_up{link=\"meshfed-system/west\"} 1";
    until_metric(&east, stream_up).await;

    // Export: the mirror appears in east, discovery gets west's group.
    let t0 = Instant::now();
    west.write("api.yaml", &api_manifest(true));
    let t_mirror = until_state(t0, &mut state, "mirror api-west", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;
    let t_disc = until_set(t0, &mut sub, "west group", has_west_group).await;
    let set = sub.borrow().clone().expect("set");
    let g = &set.groups[0];
    assert_eq!(
        (g.healthy, g.total),
        (2, 3),
        "ready endpoints as west exported them"
    );
    assert_eq!(
        g.endpoints[0].address,
        gw.addr.to_string(),
        "dialled through west's gateway"
    );
    assert_eq!(
        g.endpoints[0].identities,
        vec!["spiffe://mesh.test/ns/shop/sa/api".to_owned()]
    );
    assert_eq!(g.load_permille, 1000);
    let mirror =
        state.borrow().services[&meshfed_controller::ObjKey::new("shop", "api-west")].clone();
    let labels = mirror.metadata.labels.clone().expect("labels");
    assert_eq!(labels["meshfed.io/origin-cluster"], "west");
    assert_eq!(labels["meshfed.io/link"], "west");
    assert!(
        east.path("mirrors/shop/api-west.yaml").exists(),
        "mirror written where people look"
    );
    println!(
        "export -> mirror in east: {}, -> discovery group: {}",
        ms(t_mirror),
        ms(t_disc)
    );

    // Unexport: both go.
    let t0 = Instant::now();
    west.write("api.yaml", &api_manifest(false));
    let t_mirror = until_state(t0, &mut state, "mirror removed", |s| {
        !has_mirror(s, "shop", "api-west")
    })
    .await;
    let t_disc = until_set(t0, &mut sub, "west group removed", |s| {
        !s.exists && s.groups.is_empty()
    })
    .await;
    println!(
        "unexport -> mirror removed: {}, -> discovery withdrawn: {}",
        ms(t_mirror),
        ms(t_disc)
    );

    // Delete the Link: both go.
    let t0 = Instant::now();
    west.write("api.yaml", &api_manifest(true));
    until_state(t0, &mut state, "mirror back", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;
    until_set(t0, &mut sub, "west group back", has_west_group).await;
    let t0 = Instant::now();
    east.remove(LINK_FILE);
    let t_mirror = until_state(t0, &mut state, "mirror removed with link", |s| {
        !has_mirror(s, "shop", "api-west")
    })
    .await;
    let t_disc = until_set(t0, &mut sub, "group removed with link", |s| {
        s.groups.is_empty()
    })
    .await;
    println!(
        "link deleted -> mirror removed: {}, -> discovery withdrawn: {}",
        ms(t_mirror),
        ms(t_disc)
    );

    // Stop the peer (its gateway and every connection through it): withdrawn past the lease.
    let t0 = Instant::now();
    east.write(LINK_FILE, &link_manifest(gw.addr));
    until_state(t0, &mut state, "mirror back with link", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;
    until_set(t0, &mut sub, "group back with link", has_west_group).await;
    let t0 = Instant::now();
    gw.stop().await;
    let t_disc = until_set(t0, &mut sub, "dead peer withdrawn", |s| s.groups.is_empty()).await;
    let t_mirror = until_state(t0, &mut state, "dead peer's mirror withdrawn", |s| {
        mirror_withdrawn(s, "shop", "api-west")
    })
    .await;
    println!(
        "peer stopped (lease TTL 1 s) -> discovery withdrawn: {}, mirror withdrawn: {}",
        ms(t_disc),
        ms(t_mirror)
    );
    assert!(
        t_disc >= Duration::from_millis(300),
        "withdrawn by the lease, not at once: {t_disc:?}"
    );

    // The peer comes back on the same address: everything returns.
    let t0 = Instant::now();
    let gw2 = gateway_on(gw.addr, &west).await;
    let t_back = until_set(t0, &mut sub, "recovered peer returns", has_west_group).await;
    until_state(t0, &mut state, "mirror ready after recovery", |s| {
        has_mirror(s, "shop", "api-west") && !mirror_withdrawn(s, "shop", "api-west")
    })
    .await;
    println!("peer recovered -> discovery group back: {}", ms(t_back));

    // Link status in the file store tells the story.
    let status_file = east.path("status/links/meshfed-system.west.yaml");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&status_file).unwrap_or_default();
        if text.contains("alive: true") && text.contains("importedServices: 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "link status never showed alive: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = east.metrics();
    assert!(
        metrics.contains("meshfed_controller_imports{link=\"meshfed-system/west\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "meshfed_controller_probe_latency_seconds_count{link=\"meshfed-system/west\"}"
        )
    );
    drop(gw2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peer_controllers_of_the_mesh_open_the_federation_stream() {
    let mesh = Mesh::new();
    let west = Cluster::start(&mesh, "west", None).await;
    west.write("api.yaml", &api_manifest(true));
    let request = || WatchExportsRequest {
        cluster: "east".into(),
        lease_ttl_ms: 3000,
        snapshot_in_parts: false,
    };

    // A peer controller of the mesh gets the snapshot.
    let east_ca = mesh.cluster_ca("east");
    let ok = channel(
        west.federation,
        meshfed_api::sni::FEDERATION,
        creds(&east_ca, CONTROLLER, None),
        id(CONTROLLER),
    )
    .await
    .expect("connect");
    let mut stream = FederationClient::new(ok)
        .watch_exports(request())
        .await
        .expect("authorized")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("snapshot in time")
        .expect("ok")
        .expect("message");
    assert!(first.snapshot);
    assert_eq!(first.cluster, "west");

    // A workload of the same mesh is not a peer controller: refused.
    let workload = channel(
        west.federation,
        meshfed_api::sni::FEDERATION,
        creds(&east_ca, "/ns/shop/sa/api", None),
        id(CONTROLLER),
    )
    .await
    .expect("tls is fine");
    let err = FederationClient::new(workload)
        .watch_exports(request())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // A controller certificate from a foreign root (same trust domain name): no TLS session.
    let foreign = Mesh::new();
    let foreign_ca = foreign.cluster_ca("east");
    let both = bundle_of(&[mesh.root.cert(), foreign.root.cert()]);
    let foreign_creds = creds(&foreign_ca, CONTROLLER, Some(both));
    let refused = match channel(
        west.federation,
        meshfed_api::sni::FEDERATION,
        foreign_creds,
        id(CONTROLLER),
    )
    .await
    {
        Err(_) => true,
        Ok(ch) => FederationClient::new(ch)
            .watch_exports(request())
            .await
            .is_err(),
    };
    assert!(refused, "a foreign root must not get a stream");
    let metrics = west.metrics();
    assert!(
        metrics.contains("meshfed_controller_federation_refused_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_get_a_condition_naming_the_field() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east", None).await;
    let mut policy = objects::policy("shop", "api-failover", "api");
    policy.spec.spill_threshold = 1.5;
    policy.spec.clusters = Some(vec!["west".into()]);
    policy.spec.locality = Some(vec![meshfed_resources::crd::LocalityKey::Region]);
    east.write("policy.yaml", &yaml(&policy));
    let mut link = objects::link("meshfed-system", "west", &["not a host!"], 0, "x", "y");
    link.spec.lease_ttl_seconds = 0;
    east.write("link.yaml", &yaml(&link));
    let read = |file: &str| std::fs::read_to_string(east.path(file)).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (policy_status, link_status) = loop {
        let (p, l) = (
            read("status/failoverpolicies/shop.api-failover.yaml"),
            read("status/links/meshfed-system.west.yaml"),
        );
        if !p.is_empty() && !l.is_empty() {
            break (p, l);
        }
        assert!(Instant::now() < deadline, "statuses never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let policy: meshfed_resources::crd::FailoverPolicy =
        serde_saphyr::from_str(&policy_status).expect("status parses");
    let cond = &policy.status.expect("status").conditions[0];
    assert_eq!(
        (
            cond.type_.as_str(),
            cond.status.as_str(),
            cond.reason.as_str()
        ),
        ("Accepted", "False", "InvalidSpec")
    );
    assert!(
        cond.message.contains("spec.spillThreshold"),
        "{}",
        cond.message
    );
    assert!(cond.message.contains("spec.clusters"), "{}", cond.message);
    let link: meshfed_resources::crd::Link =
        serde_saphyr::from_str(&link_status).expect("status parses");
    let status = link.status.expect("status");
    let accepted = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .expect("accepted");
    assert_eq!(accepted.status, "False");
    for field in [
        "spec.gateway.addresses[0]",
        "spec.gateway.port",
        "spec.gateway.identity",
        "spec.leaseTtlSeconds",
    ] {
        assert!(
            accepted.message.contains(field),
            "{field} missing from {}",
            accepted.message
        );
    }
    assert_eq!(status.alive, Some(false), "an invalid link runs no peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_yaml_is_reported_with_file_and_line_and_the_last_good_state_kept() {
    let mesh = Mesh::new();
    let west = Cluster::start(&mesh, "west", None).await;
    let mut state = west.state();
    west.write("api.yaml", &api_manifest(true));
    let t0 = Instant::now();
    until_state(t0, &mut state, "api read", |s| s.services.len() == 1).await;
    let broken = api_manifest(true).replacen("port: 80", "port: eighty", 1);
    west.write("api.yaml", &broken);
    let deadline = Instant::now() + Duration::from_secs(10);
    let errors = loop {
        let e = west.store.errors();
        if !e.is_empty() {
            break e;
        }
        assert!(Instant::now() < deadline, "bad file never reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let line = broken
        .lines()
        .position(|l| l.contains("eighty"))
        .expect("line")
        + 1;
    let want = format!("{}:{line}:", west.path("api.yaml").display());
    assert!(
        errors[0].starts_with(&want),
        "{errors:?} should start with {want}"
    );
    assert_eq!(state.borrow().services.len(), 1, "last good objects kept");
    assert_eq!(west.controller_exports(), 1, "and still exported");
    west.write("api.yaml", &api_manifest(true));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !west.store.errors().is_empty() {
        assert!(Instant::now() < deadline, "fixed file still reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_keeps_live_mirrors_and_removes_stale_ones() {
    let mesh = Mesh::new();
    let west = Cluster::start(&mesh, "west", None).await;
    let mut east = Cluster::start(&mesh, "east", None).await;
    let gw = gateway(&west).await;
    west.write("api.yaml", &api_manifest(true));
    east.write(LINK_FILE, &link_manifest(gw.addr));
    let mut state = east.state();
    let t0 = Instant::now();
    until_state(t0, &mut state, "mirror", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;
    let mirror_file = east.path("mirrors/shop/api-west.yaml");
    let before = std::fs::read_to_string(&mirror_file).expect("mirror file");
    let mtime = std::fs::metadata(&mirror_file)
        .and_then(|m| m.modified())
        .expect("mtime");

    // While the controller is down, a mirror of a service west no longer exports is left behind.
    east.stop_controller();
    // Give the aborted tasks a moment to be dropped before the files change.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stale = before
        .replace("api-west", "gone-west")
        .replace("origin-service: api", "origin-service: gone");
    std::fs::write(east.path("mirrors/shop/gone-west.yaml"), stale).expect("stale mirror");
    east.restart_controller(&mesh).await;
    let mut state = east.state();
    let t0 = Instant::now();
    until_state(t0, &mut state, "stale mirror found", |s| {
        has_mirror(s, "shop", "gone-west")
    })
    .await;
    let took = until_state(t0, &mut state, "stale mirror removed", |s| {
        !has_mirror(s, "shop", "gone-west")
    })
    .await;
    println!("restart -> stale mirror removed: {}", ms(took));
    assert!(
        has_mirror(&state.borrow(), "shop", "api-west"),
        "the live mirror stays"
    );
    assert_eq!(
        std::fs::read_to_string(&mirror_file).expect("mirror file"),
        before,
        "not rewritten"
    );
    assert_eq!(
        std::fs::metadata(&mirror_file)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime,
        "not touched"
    );
}

/// Reads east's Link status from the file store until `f` holds on it.
async fn until_link_status(
    cluster: &Cluster,
    what: &str,
    f: impl Fn(&meshfed_resources::crd::LinkStatus) -> bool,
) -> meshfed_resources::crd::LinkStatus {
    let file = cluster.path("status/links/meshfed-system.west.yaml");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let status = serde_saphyr::from_str::<meshfed_resources::crd::Link>(&text)
            .ok()
            .and_then(|l| l.status);
        if let Some(s) = status.filter(|s| f(s)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "link status never showed {what}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn condition<'a>(
    status: &'a meshfed_resources::crd::LinkStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_that_cannot_be_written_is_named_in_the_link_status() {
    let mesh = Mesh::new();
    let west = Cluster::start(&mesh, "west", None).await;
    let east = Cluster::start(&mesh, "east", None).await;
    let gw = gateway(&west).await;
    // Someone's own Service already holds the mirror's name in east.
    let squatter = objects::service("shop", "api-west", &[("http", 80)], false);
    east.write("squatter.yaml", &yaml(&squatter));
    west.write("api.yaml", &api_manifest(true));
    east.write(LINK_FILE, &link_manifest(gw.addr));

    let status = until_link_status(&east, "the unwritable mirror", |s| {
        s.unwritable_mirror_count == 1
    })
    .await;
    assert_eq!(status.unwritable_mirrors.len(), 1, "{status:?}");
    let named = &status.unwritable_mirrors[0];
    assert_eq!(named.mirror, "shop/api-west");
    assert!(named.reason.contains("is not a mirror"), "{}", named.reason);
    let written = condition(&status, meshfed_resources::crd::CONDITION_MIRRORS_WRITTEN)
        .expect("MirrorsWritten condition");
    assert_eq!(
        (written.status.as_str(), written.reason.as_str()),
        ("False", "WriteFailed")
    );
    assert!(
        written.message.contains("shop/api-west"),
        "{}",
        written.message
    );
    until_metric(
        &east,
        "meshfed_controller_mirrors_unwritable{link=\"meshfed-system/west\"} 1",
    )
    .await;
    let squat = std::fs::read_to_string(east.path("squatter.yaml")).expect("squatter");
    assert!(
        !squat.contains("meshfed.io/origin-cluster"),
        "what is not a mirror is never overwritten"
    );

    // The Service goes: the mirror is written and the status clears.
    let t0 = Instant::now();
    east.remove("squatter.yaml");
    let mut state = east.state();
    until_state(t0, &mut state, "mirror written", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;
    let status = until_link_status(&east, "no unwritable mirror", |s| {
        s.unwritable_mirror_count == 0
    })
    .await;
    assert!(status.unwritable_mirrors.is_empty());
    let written = condition(&status, meshfed_resources::crd::CONDITION_MIRRORS_WRITTEN)
        .expect("MirrorsWritten condition");
    assert_eq!(
        (written.status.as_str(), written.reason.as_str()),
        ("True", "Written")
    );
    until_metric(
        &east,
        "meshfed_controller_mirrors_unwritable{link=\"meshfed-system/west\"} 0",
    )
    .await;
    println!(
        "conflict removed -> mirror written and status clear: {}",
        ms(t0.elapsed())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_controller_behind_a_live_gateway_is_held_through_the_grace() {
    const GRACE: u32 = 3;
    let mesh = Mesh::new();
    let mut west = Cluster::start(&mesh, "west", None).await;
    let east = Cluster::start(&mesh, "east", None).await;
    let gw = gateway(&west).await;
    west.write("api.yaml", &api_manifest(true));
    let mut link: meshfed_resources::crd::Link =
        serde_saphyr::from_str(&link_manifest(gw.addr)).expect("link");
    link.spec.control_plane_grace_seconds = GRACE;
    east.write(LINK_FILE, &yaml(&link));
    let client = creds(&east.ca, "/ns/shop/sa/client", None);
    let mut sub = subscribe(&east, client).await;
    let mut state = east.state();
    let t0 = Instant::now();
    until_set(t0, &mut sub, "west group", has_west_group).await;
    until_state(t0, &mut state, "mirror", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;

    // West's controller stops; its gateway still answers probes.
    let t0 = Instant::now();
    west.stop_controller();
    let held = until_link_status(&east, "imports held", |s| s.imports_held_until.is_some()).await;
    let t_held = t0.elapsed();
    assert_eq!(held.federation_up, Some(false), "{held:?}");
    assert_eq!(held.gateway_alive, Some(true), "{held:?}");
    assert_eq!(held.alive, Some(true), "{held:?}");
    let alive = condition(&held, "Alive").expect("Alive");
    assert_eq!(
        (alive.status.as_str(), alive.reason.as_str()),
        ("True", "ControlPlaneGrace")
    );
    until_metric(
        &east,
        "meshfed_controller_imports_held{link=\"meshfed-system/west\"} 1",
    )
    .await;
    assert!(
        has_mirror(&state.borrow(), "shop", "api-west"),
        "held imports keep their mirror"
    );
    assert!(
        sub.borrow().as_ref().is_some_and(has_west_group),
        "held imports keep their endpoints"
    );

    // Past the grace the endpoints go (the mirror stays, not ready), and
    // the status says why.
    let t_gone = until_set(t0, &mut sub, "withdrawn past the grace", |s| {
        s.groups.is_empty()
    })
    .await;
    until_state(t0, &mut state, "mirror withdrawn past the grace", |s| {
        mirror_withdrawn(s, "shop", "api-west")
    })
    .await;
    let gone = until_link_status(&east, "grace expired", |s| {
        condition(s, "Alive").is_some_and(|c| c.reason == "GraceExpired")
    })
    .await;
    assert_eq!(gone.alive, Some(false));
    assert!(gone.imports_held_until.is_none(), "{gone:?}");
    println!(
        "controller stopped (lease 1 s, grace {GRACE} s) -> held: {}, withdrawn: {}",
        ms(t_held),
        ms(t_gone)
    );
    assert!(
        t_gone >= Duration::from_secs(u64::from(GRACE)) - Duration::from_millis(300),
        "held through the grace, not withdrawn at the lease: {t_gone:?}"
    );

    // The controller comes back: so do the imports.
    let t0 = Instant::now();
    west.restart_controller(&mesh).await;
    until_set(t0, &mut sub, "back with the controller", has_west_group).await;
    until_link_status(&east, "alive again", |s| {
        s.federation_up == Some(true)
            && condition(s, "Alive").is_some_and(|c| c.reason == "ProbeAndLease")
    })
    .await;
}

/// `count` exported services `bulk-0..` with one ready endpoint each, as a cluster holds them.
fn bulk_manifest(count: usize) -> String {
    bulk_manifest_range(0..count)
}

fn mirrors_of(state: &meshfed_controller::ClusterState, prefix: &str) -> usize {
    state
        .services
        .keys()
        .filter(|k| k.name.starts_with(prefix) && k.name.ends_with("-west"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_drops_most_exports_is_doubted_before_mirrors_go() {
    const BULK: usize = 15;
    let mesh = Mesh::new();
    let mut west = Cluster::start(&mesh, "west", None).await;
    let east = Cluster::start(&mesh, "east", None).await;
    let gw = gateway(&west).await;
    west.write("api.yaml", &api_manifest(true));
    west.write("bulk.yaml", &bulk_manifest(BULK));
    east.write(LINK_FILE, &link_manifest(gw.addr));
    let mut state = east.state();
    let t0 = Instant::now();
    until_state(t0, &mut state, "every mirror", |s| {
        mirrors_of(s, "bulk-") == BULK && has_mirror(s, "shop", "api-west")
    })
    .await;

    // West's controller comes back without most of its exports: east doubts
    // the snapshot and keeps every mirror until the hold ends.
    west.stop_controller();
    tokio::time::sleep(Duration::from_millis(100)).await;
    west.remove("bulk.yaml");
    let t0 = Instant::now();
    west.restart_controller(&mesh).await;
    let doubted = "meshfed_controller_imports_doubted{link=\"meshfed-system/west\"} 15";
    until_metric(&east, doubted).await;
    let t_doubted = t0.elapsed();
    let t_gone = loop {
        let n = mirrors_of(&state.borrow_and_update(), "bulk-");
        if n == 0 {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < DOUBT_HOLD * 5,
            "doubted mirrors never went: {n} left"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), state.changed()).await;
    };
    assert!(
        t_gone >= t_doubted + DOUBT_HOLD - Duration::from_millis(500),
        "kept through the hold: doubted at {t_doubted:?}, gone at {t_gone:?}"
    );
    assert!(
        has_mirror(&state.borrow(), "shop", "api-west"),
        "what the snapshot has stays"
    );
    until_metric(
        &east,
        "meshfed_controller_imports_doubted{link=\"meshfed-system/west\"} 0",
    )
    .await;
    println!(
        "snapshot without {BULK} of {} exports -> doubted at {}, mirrors removed at {}",
        BULK + 1,
        ms(t_doubted),
        ms(t_gone)
    );

    // Exports that come back within the hold lose no mirror at all.
    west.write("bulk.yaml", &bulk_manifest(BULK));
    let t0 = Instant::now();
    until_state(t0, &mut state, "mirrors back", |s| {
        mirrors_of(s, "bulk-") == BULK
    })
    .await;
    west.stop_controller();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bulk = std::fs::read_to_string(west.path("bulk.yaml")).expect("bulk");
    west.remove("bulk.yaml");
    west.restart_controller(&mesh).await;
    until_metric(&east, doubted).await;
    west.write("bulk.yaml", &bulk);
    let t0 = Instant::now();
    until_metric(
        &east,
        "meshfed_controller_imports_doubted{link=\"meshfed-system/west\"} 0",
    )
    .await;
    while t0.elapsed() < DOUBT_HOLD + Duration::from_millis(500) {
        let n = mirrors_of(&state.borrow_and_update(), "bulk-");
        assert_eq!(
            n, BULK,
            "a doubted mirror was deleted although its export came back"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), state.changed()).await;
    }

    // Unexports sent as changes are not doubted: they go at once.
    let t0 = Instant::now();
    west.remove("bulk.yaml");
    let t_unexport = until_state(t0, &mut state, "unexported mirrors removed", |s| {
        mirrors_of(s, "bulk-") == 0
    })
    .await;
    assert!(
        t_unexport < DOUBT_HOLD,
        "removals sent one by one are believed: {t_unexport:?}"
    );
}

/// The sum of `name`'s series in a cluster's metrics (0 when none).
fn metric(cluster: &Cluster, name: &str) -> f64 {
    cluster
        .metrics()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 20's restart: the exporter's controller restarts while 5,000
/// exports are being added. The importer never deletes a mirror (its
/// delete counter stays at zero, so not even one deleted and rewritten
/// between two looks goes unseen), and every mirror exists at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_restarting_during_a_bulk_export_costs_no_live_mirror() {
    const FILES: usize = 50;
    const PER_FILE: usize = 100;
    const TOTAL: usize = FILES * PER_FILE;
    let mesh = Mesh::new();
    let mut west = Cluster::start(&mesh, "west", None).await;
    let east = Cluster::start(&mesh, "east", None).await;
    let gw = gateway(&west).await;
    west.write("api.yaml", &api_manifest(true));
    east.write(LINK_FILE, &link_manifest(gw.addr));
    let mut state = east.state();
    until_state(Instant::now(), &mut state, "the first mirror", |s| {
        has_mirror(s, "shop", "api-west")
    })
    .await;

    // Files of 100 exports each, one every 40 ms, from another thread.
    let dir = west.dir.path().to_path_buf();
    let (written_tx, mut written) = watch::channel(0usize);
    let writer = std::thread::spawn(move || {
        for f in 0..FILES {
            let text = bulk_manifest_range(f * PER_FILE..(f + 1) * PER_FILE);
            write_file(&dir.join(format!("bulk-{f:03}.yaml")), &text);
            let _ = written_tx.send(f + 1);
            std::thread::sleep(Duration::from_millis(40));
        }
    });
    let deleted = "meshfed_controller_mirror_writes_total{op=\"delete\"}";
    let t0 = Instant::now();
    let _ = written.wait_for(|n| *n >= FILES * 2 / 5).await;
    let mirrored_before = mirrors_of(&state.borrow(), "bulk-");
    west.stop_controller();
    tokio::time::sleep(Duration::from_millis(200)).await;
    west.restart_controller(&mesh).await;
    let restarted = t0.elapsed();
    writer.join().expect("writer");

    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert_eq!(metric(&east, deleted), 0.0, "the importer deleted a mirror");
        let n = mirrors_of(&state.borrow_and_update(), "bulk-");
        if n == TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {TOTAL} mirrors after 240 s"
        );
        let _ = tokio::time::timeout(Duration::from_millis(50), state.changed()).await;
    }
    let done = t0.elapsed();
    // Past the doubt hold, nothing goes either.
    tokio::time::sleep(DOUBT_HOLD + Duration::from_millis(500)).await;
    assert_eq!(metric(&east, deleted), 0.0, "the importer deleted a mirror");
    let final_state = east.state().borrow().clone();
    assert_eq!(mirrors_of(&final_state, "bulk-"), TOTAL);
    assert!(has_mirror(&final_state, "shop", "api-west"));
    let applied = metric(
        &east,
        "meshfed_controller_mirror_writes_total{op=\"apply\"}",
    );
    println!(
        "{TOTAL} exports added in {FILES} files; exporter restarted at {} with {mirrored_before} \
         mirrored; every mirror at {}, {applied} mirror writes, 0 deletes",
        ms(restarted),
        ms(done)
    );
}

/// [`bulk_manifest`] of the services numbered `range`.
fn bulk_manifest_range(range: std::ops::Range<usize>) -> String {
    let mut docs = Vec::new();
    for i in range {
        let name = format!("bulk-{i}");
        docs.push(yaml(&objects::service(
            "shop",
            &name,
            &[("http", 80)],
            true,
        )));
        let ip = format!("10.2.{}.{}", i / 200, i % 200 + 1);
        let (pods, slice) = objects::pods_and_slice(
            "shop",
            &name,
            &name,
            &[("http", 8080)],
            &[(ip.as_str(), Some("west-a"), true)],
        );
        docs.push(yaml(&slice));
        docs.extend(pods.iter().map(yaml));
    }
    docs.join("---\n")
}
