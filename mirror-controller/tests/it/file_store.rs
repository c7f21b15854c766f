//! A controller on the file store: statuses go with their Links and
//! FailoverPolicies, and broken manifest files are counted in
//! `meshfed_controller_store_file_errors`.

use std::time::Duration;

use meshfed_mirror::fixtures;
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
    yaml(&fixtures::link(
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
    let policy = fixtures::policy("shop", "api-failover", "api");
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
