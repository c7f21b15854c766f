//! `check`.

use crate::objects::*;
use crate::prelude::*;
use crate::standin::*;

/// What differs between a healthy cluster and a failing one.
struct Health {
    gateway_ready: u32,
    gateway_alive: bool,
    links_crd: Value,
    clock: SystemTime,
}

/// Every request `meshctl check` makes of east, in order.
fn check_transcript(east: &Member, h: Health) -> Vec<Exchange> {
    let link = with_status(
        west_link(&["203.0.113.10"], 7460, &east.fingerprints),
        link_status(
            h.gateway_alive,
            (!h.gateway_alive).then_some("probe 203.0.113.10:7460: connection refused"),
        ),
    );
    let mirror = list_item(service(
        "shop",
        "api-west",
        json!({
            labels::ORIGIN_CLUSTER: "west", labels::LINK: "west", labels::ORIGIN_SERVICE: "api",
        }),
    ));
    let failover = serde_json::to_value(&meshfed_api::crd::all()[1]).expect("crd json");
    let failover = failover.as_object().expect("an object");
    let mut t = Vec::from(info_exchanges(east));
    t.extend([
        Exchange::get(format!("{CRDS}/links.meshfed.io")).answers(h.links_crd),
        Exchange::get(format!("{CRDS}/failoverpolicies.meshfed.io"))
            .answers(crd_as_served(failover)),
        Exchange::get(format!("{DEPLOYMENTS}/meshfed-identity")).answers(deployment(
            "meshfed-identity",
            2,
            2,
        )),
        Exchange::get(format!("{DEPLOYMENTS}/meshfed-controller")).answers(deployment(
            "meshfed-controller",
            1,
            1,
        )),
        Exchange::get(format!("{DEPLOYMENTS}/meshfed-gateway")).answers(deployment(
            "meshfed-gateway",
            2,
            h.gateway_ready,
        )),
        Exchange::get(format!("{DEPLOYMENTS}/meshfed-injector")).answers(deployment(
            "meshfed-injector",
            2,
            2,
        )),
        Exchange::get("/apis/meshfed.io/v1alpha1/links?").answers(list(
            "meshfed.io/v1alpha1",
            "LinkList",
            vec![link],
        )),
        Exchange::get(format!(
            "/api/v1/services?&labelSelector={}",
            labels::ORIGIN_CLUSTER.replace('/', "%2F")
        ))
        .answers(list("v1", "ServiceList", vec![mirror])),
        Exchange::get("/version")
            .answers(json!({
                "major": "1", "minor": "31", "gitVersion": "v1.31.4",
                "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b", "gitTreeState": "clean",
                "buildDate": "2024-12-10T11:37:39Z", "goVersion": "go1.22.9",
                "compiler": "gc", "platform": "linux/amd64",
            }))
            .dated(h.clock),
    ]);
    t
}

fn links_crd() -> serde_json::Map<String, Value> {
    let crd = serde_json::to_value(&meshfed_api::crd::all()[0]).expect("crd json");
    let crd = crd.as_object().expect("an object").clone();
    assert_eq!(crd["metadata"]["name"], "links.meshfed.io");
    crd
}

async fn check(transcript: Vec<Exchange>) -> Vec<Outcome> {
    let (client, api) = ApiServer::start(transcript);
    let east = kube_cluster(client, "east");
    let outcomes = within(meshctl::check(&[east], 30 * DAY)).await;
    api.assert_done();
    for o in &outcomes {
        assert_eq!(o.cluster, "east (context east)", "{o:?}");
    }
    outcomes
}

fn statuses(outcomes: &[Outcome]) -> Vec<(&str, Status)> {
    outcomes
        .iter()
        .map(|o| (o.check.as_str(), o.status))
        .collect()
}

fn outcome<'o>(outcomes: &'o [Outcome], check: &str) -> &'o Outcome {
    outcomes
        .iter()
        .find(|o| o.check == check)
        .unwrap_or_else(|| panic!("no {check:?} among {outcomes:#?}"))
}

#[tokio::test]
async fn check_passes_a_healthy_cluster() {
    let (_dir, _, east) = federation();
    let health = Health {
        gateway_ready: 2,
        gateway_alive: true,
        links_crd: crd_as_served(&links_crd()),
        clock: SystemTime::now(),
    };

    let outcomes = check(check_transcript(&east, health)).await;
    use Status::Pass;
    assert_eq!(
        statuses(&outcomes),
        [
            ("Meshfed installed", Pass),
            ("CRDs installed and current", Pass),
            ("components ready", Pass),
            ("certificates valid", Pass),
            ("link west: trust roots shared", Pass),
            ("link west: federation stream up", Pass),
            ("link west: gateway alive", Pass),
            ("mirrors backed by live exports", Pass),
            ("clock skew", Pass),
        ],
        "{outcomes:#?}"
    );
    assert_eq!(
        outcome(&outcomes, "components ready").detail,
        "meshfed-identity 2/2 ready, meshfed-controller 1/1 ready, meshfed-gateway 2/2 ready, \
         meshfed-injector 2/2 ready"
    );
}

#[tokio::test]
async fn check_says_what_fails_and_how_to_fix_it() {
    let (_dir, _, east) = federation();
    let mut changed = links_crd();
    let spec = &mut changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    let dropped = spec
        .as_object_mut()
        .expect("spec properties")
        .remove("leaseTtlSeconds");
    assert!(dropped.is_some(), "the Link schema has leaseTtlSeconds");
    let health = Health {
        gateway_ready: 0,
        gateway_alive: false,
        links_crd: crd_as_served(&changed),
        clock: SystemTime::now() + Duration::from_secs(300),
    };

    let outcomes = check(check_transcript(&east, health)).await;
    use Status::{Fail, Pass};
    assert_eq!(
        statuses(&outcomes),
        [
            ("Meshfed installed", Pass),
            ("CRDs installed and current", Fail),
            ("components ready", Fail),
            ("certificates valid", Pass),
            ("link west: trust roots shared", Pass),
            ("link west: federation stream up", Pass),
            ("link west: gateway alive", Fail),
            ("mirrors backed by live exports", Pass),
            ("clock skew", Fail),
        ],
        "{outcomes:#?}"
    );
    for (check, detail, hint) in [
        (
            "CRDs installed and current",
            "links.meshfed.io differs from this meshctl's",
            "meshctl install",
        ),
        (
            "components ready",
            "meshfed-gateway: 0/2 ready",
            "kubectl -n meshfed-system logs",
        ),
        (
            "link west: gateway alive",
            "203.0.113.10:7460 does not answer probes; last error: probe 203.0.113.10:7460: connection refused",
            "firewall",
        ),
        ("clock skew", "ahead of this machine", "NTP"),
    ] {
        let o = outcome(&outcomes, check);
        assert!(o.detail.contains(detail), "{o:#?}");
        let h = o.hint.as_deref().unwrap_or_default();
        assert!(h.contains(hint), "{o:#?}");
    }
}
