//! A controller on the file store: statuses go with their Links and
//! FailoverPolicies, and broken manifest files are counted in
//! `meshfed_controller_store_file_errors`.

use std::time::Duration;

use meshfed_resources::objects;
use tokio::time::Instant;

use crate::support::*;

const LINK_STATUS: &str = "status/links/meshfed-system.west.yaml";
const POLICY_STATUS: &str = "status/failoverpolicies/shop.api-failover.yaml";

/// Waits, at most 10 s, until `holds` does.
async fn eventually(what: &str, holds: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A valid Link to a gateway that never answers: it gets a status all the same.
fn link() -> String {
    let (gw, ctl) = (id(GATEWAY).to_string(), id(CONTROLLER).to_string());
    yaml(&objects::link(
        "meshfed-system",
        "west",
        &["127.0.0.1"],
        9,
        &gw,
        &ctl,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_of_deleted_links_and_policies_are_removed() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east", None).await;
    east.write("link.yaml", &link());
    let policy = objects::policy("shop", "api-failover", "api");
    east.write("policy.yaml", &yaml(&policy));
    let exists = |file: &str| east.path(file).exists();
    eventually("both statuses written", || {
        exists(LINK_STATUS) && exists(POLICY_STATUS)
    })
    .await;

    east.remove("link.yaml");
    eventually("the Link's status removed", || !exists(LINK_STATUS)).await;
    assert!(exists(POLICY_STATUS), "the policy is still there");
    east.remove("policy.yaml");
    eventually("the policy's status removed", || !exists(POLICY_STATUS)).await;

    // Three status periods: a write the status task had under way when the
    // objects went is refused, not a new status file.
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        assert!(
            !exists(LINK_STATUS) && !exists(POLICY_STATUS),
            "status back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_manifest_files_are_counted_until_fixed_or_removed() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east", None).await;
    let gauge = |n: u32| format!("\nmeshfed_controller_store_file_errors {n}\n");
    let shows = |n| east.metrics().contains(&gauge(n));
    assert!(shows(0), "{}", east.metrics());

    east.write(
        "link.yaml",
        &link().replacen("port: 9\n", "port: nine\n", 1),
    );
    eventually("one broken file", || shows(1)).await;
    east.write("other.yaml", "apiVersion: v1\nkind: [Service\n");
    eventually("two broken files", || shows(2)).await;
    east.write("link.yaml", &link());
    eventually("the fixed one no longer counted", || shows(1)).await;
    east.remove("other.yaml");
    eventually("the removed one no longer counted", || shows(0)).await;
    assert_eq!(east.state().borrow().links.len(), 1);
}

/// An HTTPRoute on shop/api splitting `primary`/`canary` percent between
/// api and api-west.
fn split_route(primary: u32, canary: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: api-split\n  namespace: shop\n\
         spec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: api, port: 80}}\n  rules:\n  - backendRefs:\n    \
         - {{name: api, port: 80, weight: {primary}}}\n    - {{name: api-west, port: 80, weight: {canary}}}\n"
    )
}

const ROUTE_STATUS: &str = "status/httproutes/shop.api-split.yaml";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_is_accepted_in_its_status_and_its_split_reaches_subscribers() {
    let mesh = Mesh::new();
    let east = Cluster::start(&mesh, "east", None).await;
    for name in ["api", "api-west"] {
        let svc = objects::service("shop", name, &[("http", 80)], false);
        east.write(&format!("{name}.yaml"), &yaml(&svc));
    }
    east.write("route.yaml", &split_route(90, 10));
    let caller = meshfed_api::discovery::Locality::default();
    let client = creds(&east.ca, "/ns/shop/sa/client", None);
    let mut sets = watch_endpoints(east.discovery, client, caller).await;
    let weights =
        |sets: &tokio::sync::watch::Receiver<Option<meshfed_api::discovery::EndpointSet>>| {
            sets.borrow().as_ref().map(|s| {
                s.routes
                    .iter()
                    .flat_map(|r| r.backends.iter().map(|b| (b.name.clone(), b.weight)))
                    .collect::<Vec<_>>()
            })
        };
    let wanted = |p: u32, c: u32| Some(vec![("api".to_owned(), p), ("api-west".to_owned(), c)]);
    until_weights(&mut sets, &weights, wanted(90, 10)).await;
    eventually("the route's status written", || {
        std::fs::read_to_string(east.path(ROUTE_STATUS)).is_ok_and(|s| {
            s.contains("controllerName: meshfed.io/mesh-controller")
                && s.contains("reason: Accepted")
                && s.contains("reason: ResolvedRefs")
        })
    })
    .await;
    // Written once: three status periods later it is the same file.
    let written = std::fs::metadata(east.path(ROUTE_STATUS)).and_then(|m| m.modified());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let now = std::fs::metadata(east.path(ROUTE_STATUS)).and_then(|m| m.modified());
    assert_eq!(
        written.ok(),
        now.ok(),
        "an unchanged status is not written again"
    );

    // A shift reaches the subscriber within a second.
    let shifted = Instant::now();
    east.write("route.yaml", &split_route(50, 50));
    until_weights(&mut sets, &weights, wanted(50, 50)).await;
    assert!(
        shifted.elapsed() < Duration::from_secs(1),
        "{:?}",
        shifted.elapsed()
    );

    // A backend that goes is marked invalid (its share answered 500), and
    // the status says why.
    east.remove("api-west.yaml");
    eventually("BackendNotFound in the status", || {
        std::fs::read_to_string(east.path(ROUTE_STATUS))
            .is_ok_and(|s| s.contains("reason: BackendNotFound"))
    })
    .await;
    east.remove("route.yaml");
    until_weights(&mut sets, &weights, Some(Vec::new())).await;
    eventually("the route's status removed", || {
        !east.path(ROUTE_STATUS).exists()
    })
    .await;
}

/// Waits, at most 10 s, until the subscriber's routes weigh `want`.
async fn until_weights<F>(
    sets: &mut tokio::sync::watch::Receiver<Option<meshfed_api::discovery::EndpointSet>>,
    weights: &F,
    want: Option<Vec<(String, u32)>>,
) where
    F: Fn(
        &tokio::sync::watch::Receiver<Option<meshfed_api::discovery::EndpointSet>>,
    ) -> Option<Vec<(String, u32)>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while weights(sets) != want {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "routes {:?}, waiting for {want:?}",
            weights(sets)
        );
        let _ = tokio::time::timeout(left, sets.changed()).await;
    }
}
