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
        west_link(&["203.0.113.10"], 7460, &west.fingerprints),
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
        federation_up: reported.then_some(true),
        gateway_alive: reported.then_some(true),
        addresses: Vec::new(),
        latency_p50: reported.then(|| "1.2ms".to_owned()),
        latency_p99: reported.then(|| "4.8ms".to_owned()),
        services: if reported { 3 } else { 0 },
        last_error: None,
        reported,
    };
    assert_eq!(
        rows.expect("gateways"),
        [
            GatewayRow {
                addresses: vec!["gw.north.example:7460".to_owned()],
                ..row("north", false, false)
            },
            GatewayRow {
                addresses: vec!["203.0.113.10:7460".to_owned()],
                ..row("west", true, true)
            },
        ]
    );
}
