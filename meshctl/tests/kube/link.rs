//! `link` and `unlink`.

use crate::objects::*;
use crate::prelude::*;
use crate::standin::*;

fn west_gateway_exchange() -> Exchange {
    let ingress = json!({ "ingress": [{ "ip": "203.0.113.10", "ipMode": "VIP" }] });
    Exchange::get(format!("/api/v1/namespaces/{NS}/services/meshfed-gateway"))
        .answers(gateway_service("LoadBalancer", 31460, ingress))
}

fn link_args() -> meshctl::LinkArgs {
    args(&["--from-context", "west", "--to-context", "east"])
}

/// Runs `meshctl link` (make the Link, put it into east) against both transcripts.
async fn link(
    west: Vec<Exchange>,
    east: Vec<Exchange>,
) -> anyhow::Result<(meshfed_resources::crd::Link, Change)> {
    let (west_client, west_api) = ApiServer::start(west);
    let (east_client, east_api) = ApiServer::start(east);
    let (from, to) = (
        kube_cluster(west_client, "west"),
        kube_cluster(east_client, "east"),
    );
    let result = within(async {
        let link = meshctl::make_link(&link_args(), &from, &to).await?;
        let change = to.put_link(&link).await?;
        anyhow::Ok((link, change))
    })
    .await;
    west_api.assert_done();
    east_api.assert_done();
    result
}

/// West's and east's transcripts of a `meshctl link` that makes Link west
/// in east; `answer` answers its apply (given the Link applied).
fn new_link(
    answer: impl FnOnce(Exchange, Value) -> Exchange,
) -> (TempDir, Vec<Exchange>, Vec<Exchange>) {
    let (dir, west, east) = federation();
    let body = west_link(
        &["203.0.113.10"],
        meshfed_runtime::port::GATEWAY,
        &west.fingerprints,
    );
    let mut west_t = Vec::from(info_exchanges(&west));
    west_t.push(west_gateway_exchange());
    let mut east_t = Vec::from(info_exchanges(&east));
    east_t.extend([
        Exchange::get(format!("{LINKS}/west")).not_found("links.meshfed.io", "west"),
        answer(
            Exchange::apply(format!("{LINKS}/west{SSA}"), body.clone()),
            body,
        ),
    ]);
    (dir, west_t, east_t)
}

#[tokio::test]
async fn link_applies_a_new_link_into_the_importing_cluster() {
    let (_dir, west_t, east_t) = new_link(|apply, body| apply.answers(stored(body)));

    let (link, change) = link(west_t, east_t).await.expect("link");
    assert_eq!(change, Change::Created);
    assert_eq!(link.spec.gateway.addresses, ["203.0.113.10"]);
}

#[tokio::test]
async fn link_is_unchanged_when_the_same_link_is_there() {
    let (_dir, west, east) = federation();
    let body = west_link(
        &["203.0.113.10"],
        meshfed_runtime::port::GATEWAY,
        &west.fingerprints,
    );
    let mut west_t = Vec::from(info_exchanges(&west));
    west_t.push(west_gateway_exchange());
    let mut east_t = Vec::from(info_exchanges(&east));
    // Stored with server fields and a status: still the same Link, so no write.
    east_t.push(
        Exchange::get(format!("{LINKS}/west")).answers(with_status(body, link_status(true, None))),
    );

    let (_, change) = link(west_t, east_t).await.expect("link");
    assert_eq!(change, Change::Unchanged);
}

#[tokio::test]
async fn link_through_a_node_port_dials_the_nodes() {
    let (_dir, west, east) = federation();
    let mut west_t = Vec::from(info_exchanges(&west));
    west_t.extend([
        Exchange::get(format!("/api/v1/namespaces/{NS}/services/meshfed-gateway"))
            .answers(gateway_service("NodePort", 30460, json!({}))),
        Exchange::get("/api/v1/nodes?").answers(list(
            "v1",
            "NodeList",
            vec![
                node("node-b", &[("InternalIP", "10.0.0.12")]),
                node(
                    "node-a",
                    &[("InternalIP", "10.0.0.11"), ("ExternalIP", "198.51.100.7")],
                ),
            ],
        )),
    ]);
    let (west_client, west_api) = ApiServer::start(west_t);
    let (east_client, east_api) = ApiServer::start(Vec::from(info_exchanges(&east)));
    let (from, to) = (
        kube_cluster(west_client, "west"),
        kube_cluster(east_client, "east"),
    );

    let link = within(meshctl::make_link(&link_args(), &from, &to)).await;
    west_api.assert_done();
    east_api.assert_done();
    let gateway = link.expect("link").spec.gateway;
    // A node's external address when it has one, else its internal one; the node port.
    assert_eq!(gateway.addresses, ["10.0.0.12", "198.51.100.7"]);
    assert_eq!(gateway.port, 30460);
}

#[tokio::test]
async fn link_is_refused_without_a_shared_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let west = member(dir.path(), &root(&dir.path().join("root-a")), "west");
    let east = member(dir.path(), &root(&dir.path().join("root-b")), "east");
    // Both clusters are read; then nothing else, and above all no write.
    let (west_client, west_api) = ApiServer::start(Vec::from(info_exchanges(&west)));
    let (east_client, east_api) = ApiServer::start(Vec::from(info_exchanges(&east)));
    let (from, to) = (
        kube_cluster(west_client, "west"),
        kube_cluster(east_client, "east"),
    );

    let result = within(meshctl::make_link(&link_args(), &from, &to)).await;
    west_api.assert_done();
    east_api.assert_done();
    let message = format!("{:#}", result.expect_err("no shared root"));
    assert!(message.contains("share no trust root"), "{message}");
    assert!(message.contains(&west.fingerprints[0][..11]), "{message}");
    assert!(message.contains(&east.fingerprints[0][..11]), "{message}");
}

async fn unlink(exchange: Exchange) -> anyhow::Result<bool> {
    let (client, api) = ApiServer::start(vec![exchange]);
    let result = within(kube_cluster(client, "east").delete_link("west")).await;
    api.assert_done();
    result
}

#[tokio::test]
async fn unlink_deletes_the_link() {
    let (_dir, west, _) = federation();
    let stored = with_status(
        west_link(
            &["203.0.113.10"],
            meshfed_runtime::port::GATEWAY,
            &west.fingerprints,
        ),
        link_status(true, None),
    );
    let deleted = unlink(Exchange::delete(format!("{LINKS}/west?")).answers(stored)).await;
    assert!(deleted.expect("delete"));
}

#[tokio::test]
async fn unlink_of_a_missing_link_says_so() {
    let deleted =
        unlink(Exchange::delete(format!("{LINKS}/west?")).not_found("links.meshfed.io", "west"))
            .await;
    assert!(!deleted.expect("a missing Link is no error"));
}

#[tokio::test]
async fn link_without_rbac_for_links_says_who_may_not_do_what() {
    // Exactly as the API server writes it.
    let forbidden: Value = serde_json::from_str(
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"links.meshfed.io \"west\" is forbidden: User \"system:serviceaccount:default:ci\" cannot patch resource \"links\" in API group \"meshfed.io\" in the namespace \"meshfed-system\"","reason":"Forbidden","details":{"name":"west","group":"meshfed.io","kind":"links"},"code":403}"#,
    )
    .expect("a Status");
    let message = forbidden["message"].as_str().expect("a message").to_owned();
    let (_dir, west_t, east_t) = new_link(|apply, _| apply.fails(StatusCode::FORBIDDEN, forbidden));

    let err = link(west_t, east_t).await.expect_err("forbidden");
    let text = assert_reads(
        &err,
        &[
            "applying Link meshfed-system/west",
            "context east (https://east.k8s.test:6443)",
            "403 Forbidden",
            &message,
        ],
    );
    assert_eq!(
        text,
        format!(
            "applying Link meshfed-system/west in context east (https://east.k8s.test:6443) \
             failed: 403 Forbidden: {message}; your credentials for context east may not patch \
             links.meshfed.io in namespace meshfed-system; ask a cluster admin for RBAC \
             (kubectl auth can-i patch links.meshfed.io -n meshfed-system --context east)"
        )
    );
}

#[tokio::test]
async fn link_over_a_link_another_manager_owns_says_whose_fields_conflict() {
    let message = "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" \
                   using meshfed.io/v1alpha1: .spec.gateway.port";
    let conflict = refusal(
        409,
        "Conflict",
        message,
        json!({ "name": "west", "group": "meshfed.io", "kind": "links", "causes": [{
            "reason": "FieldManagerConflict",
            "message": "conflict with \"kubectl-client-side-apply\" using meshfed.io/v1alpha1",
            "field": ".spec.gateway.port",
        }] }),
    );
    let (_dir, west_t, east_t) = new_link(|apply, _| apply.fails(StatusCode::CONFLICT, conflict));

    let err = link(west_t, east_t).await.expect_err("conflict");
    assert_reads(
        &err,
        &[
            "applying Link meshfed-system/west in context east (https://east.k8s.test:6443) \
             failed: 409 Conflict: ",
            message,
            "; another writer owns fields meshctl sets",
            "kubectl get links.meshfed.io west -n meshfed-system --show-managed-fields -o yaml \
             --context east",
        ],
    );
}

#[tokio::test]
async fn link_to_an_unreachable_api_server_names_context_and_address() {
    let (_dir, west, _) = federation();
    // West answers; east's API server is not there.
    let (west_client, west_api) = ApiServer::start(Vec::from(info_exchanges(&west)));
    let from = kube_cluster(west_client, "west");
    let (east, url) = unreachable("east").await;
    let to = Cluster::Kube(east);

    let result = within(meshctl::make_link(&link_args(), &from, &to)).await;
    west_api.assert_done();
    assert_reads(
        &result.expect_err("nothing listens"),
        &[
            &format!(
                "reading ConfigMap meshfed-system/meshfed-cluster: cannot reach the API server \
                 of context east at {url}: Connection refused"
            ),
            "; is the cluster up and the kubeconfig current?",
        ],
    );
}
