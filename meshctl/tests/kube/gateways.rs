//! `gateways`.

use crate::objects::*;
use crate::prelude::*;
use crate::standin::*;

#[tokio::test]
async fn gateways_reads_every_link_status_in_one_list() {
    let (_dir, west, _) = federation();
    let mut status = link_status(true, None);
    status["importedServices"] = json!(3);
    let west_link = with_status(
        west_link(
            &["203.0.113.10"],
            meshfed_runtime::port::GATEWAY,
            &west.fingerprints,
        ),
        status,
    );
    let mut north = west_link.clone();
    north["metadata"]["name"] = json!("north");
    north["spec"]["cluster"] = json!("north");
    north["spec"]["gateway"]["addresses"] = json!(["gw.north.example"]);
    // Not reported on yet: the controller has not written a status.
    north.as_object_mut().expect("an object").remove("status");
    let (client, api) = ApiServer::start(vec![
        Exchange::get("/apis/meshfed.io/v1alpha1/links?").answers(list(
            "meshfed.io/v1alpha1",
            "LinkList",
            vec![west_link, north],
        )),
    ]);

    let rows = within(meshctl::gateways(&kube_cluster(client, "east"))).await;
    api.assert_done();
    let row = |cluster: &str, alive: bool, reported: bool| GatewayRow {
        cluster: cluster.to_owned(),
        link: format!("{NS}/{cluster}"),
        alive,
        alive_reason: reported.then(|| "Alive".to_owned()),
        federation_up: reported.then_some(true),
        imports_held_until: None,
        gateway_alive: reported.then_some(true),
        addresses: Vec::new(),
        latency_p50: reported.then(|| "1.2ms".to_owned()),
        latency_p99: reported.then(|| "4.8ms".to_owned()),
        services: if reported { 3 } else { 0 },
        unwritable_mirror_count: 0,
        unwritable_mirrors: Vec::new(),
        last_error: None,
        reported,
    };
    assert_eq!(
        rows.expect("gateways"),
        [
            GatewayRow {
                addresses: vec![format!(
                    "gw.north.example:{}",
                    meshfed_runtime::port::GATEWAY
                )],
                ..row("north", false, false)
            },
            GatewayRow {
                addresses: vec![format!("203.0.113.10:{}", meshfed_runtime::port::GATEWAY)],
                ..row("west", true, true)
            },
        ]
    );
}

#[tokio::test]
async fn gateways_json_shows_control_plane_and_gateway_apart_with_what_is_held_and_unwritable() {
    let (_dir, west, _) = federation();
    let link = |name: &str, status: Value| {
        let mut l = with_status(
            west_link(
                &["203.0.113.10"],
                meshfed_runtime::port::GATEWAY,
                &west.fingerprints,
            ),
            status,
        );
        l["metadata"]["name"] = json!(name);
        l["spec"]["cluster"] = json!(name);
        l
    };
    // Healthy.
    let healthy = link_status(true, None);
    // Its controller silent, its gateway answering: imports held.
    let mut held = link_status(true, Some("federation stream: connection reset by peer"));
    held["federationUp"] = json!(false);
    held["importsHeldUntil"] = json!("2025-01-15T12:03:04Z");
    held["conditions"][1]["reason"] = json!("ControlPlaneGrace");
    // One mirror it cannot write.
    let mut unwritable = link_status(true, None);
    unwritable["unwritableMirrors"] = json!([{ "mirror": "shop/api-south", "reason": "404 Not Found: namespaces \"shop\" not found" }]);
    unwritable["unwritableMirrorCount"] = json!(1);
    let (client, api) = ApiServer::start(vec![
        Exchange::get("/apis/meshfed.io/v1alpha1/links?").answers(list(
            "meshfed.io/v1alpha1",
            "LinkList",
            vec![
                link("west", healthy),
                link("north", held),
                link("south", unwritable),
            ],
        )),
    ]);

    let rows = within(meshctl::gateways(&kube_cluster(client, "east")))
        .await
        .expect("gateways");
    api.assert_done();
    // What -o json prints.
    let json = serde_json::to_value(&rows).expect("json");
    let by = |c: &str| {
        json.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["cluster"] == c)
            .unwrap_or_else(|| panic!("no {c}"))
            .clone()
    };
    let north = by("north");
    assert_eq!(north["federationUp"], false);
    assert_eq!(north["gatewayAlive"], true);
    assert_eq!(north["importsHeldUntil"], "2025-01-15T12:03:04Z");
    assert_eq!(north["aliveReason"], "ControlPlaneGrace");
    let south = by("south");
    assert_eq!(south["unwritableMirrorCount"], 1);
    assert_eq!(
        south["unwritableMirrors"],
        json!([{ "mirror": "shop/api-south", "reason": "404 Not Found: namespaces \"shop\" not found" }])
    );
    let west = by("west");
    assert_eq!(
        (west["federationUp"].clone(), west["gatewayAlive"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(west["importsHeldUntil"], Value::Null);
    assert_eq!(west["unwritableMirrorCount"], 0);
}
