//! `export` and `unexport`.

use crate::objects::*;
use crate::prelude::*;
use crate::standin::*;

const API: &str = "/api/v1/namespaces/shop/services/api";

async fn set_exported(transcript: Vec<Exchange>, on: bool) -> anyhow::Result<Change> {
    let (client, api) = ApiServer::start(transcript);
    let result = within(kube_cluster(client, "west").set_exported("shop", "api", on)).await;
    api.assert_done();
    result
}

#[tokio::test]
async fn export_sets_the_label_with_a_merge_patch() {
    let labels = json!({ "app": "api", labels::EXPORTED: "true" });
    let change = set_exported(
        vec![
            Exchange::get(API).answers(service("shop", "api", json!({ "app": "api" }))),
            Exchange::merge(
                format!("{API}?"),
                json!({ "metadata": { "labels": { labels::EXPORTED: "true" } } }),
            )
            .answers(service("shop", "api", labels)),
        ],
        true,
    )
    .await;
    assert_eq!(change.expect("export"), Change::Updated);
}

#[tokio::test]
async fn unexport_clears_the_label() {
    let labels = json!({ "app": "api", labels::EXPORTED: "true" });
    let change = set_exported(
        vec![
            Exchange::get(API).answers(service("shop", "api", labels)),
            Exchange::merge(
                format!("{API}?"),
                json!({ "metadata": { "labels": { labels::EXPORTED: null } } }),
            )
            .answers(service("shop", "api", json!({ "app": "api" }))),
        ],
        false,
    )
    .await;
    assert_eq!(change.expect("unexport"), Change::Updated);
}

#[tokio::test]
async fn export_of_an_exported_service_only_reads_it() {
    let labels = json!({ "app": "api", labels::EXPORTED: "true" });
    let change = set_exported(
        vec![Exchange::get(API).answers(service("shop", "api", labels))],
        true,
    )
    .await;
    assert_eq!(change.expect("export"), Change::Unchanged);
}

#[tokio::test]
async fn export_refuses_a_mirror() {
    let labels = json!({
        labels::ORIGIN_CLUSTER: "east", labels::LINK: "east", labels::ORIGIN_SERVICE: "api",
    });
    let result = set_exported(
        vec![Exchange::get(API).answers(service("shop", "api", labels))],
        true,
    )
    .await;
    let message = format!("{:#}", result.expect_err("a mirror"));
    assert!(
        message.contains("mirror") && message.contains("cluster east"),
        "{message}"
    );
}

#[tokio::test]
async fn export_of_a_missing_service_names_it() {
    let result = set_exported(vec![Exchange::get(API).not_found("services", "api")], true).await;
    let message = format!("{:#}", result.expect_err("no such Service"));
    assert!(message.contains("no Service shop/api"), "{message}");
}
