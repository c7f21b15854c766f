//! `check`.

use crate::objects::*;
use crate::prelude::*;
use crate::standin::*;

/// What differs between a healthy cluster and a failing one.
struct Health {
    gateway_ready: u32,
    controller_ready: u32,
    /// The answer to GET of the leader Lease.
    lease: Exchange,
    /// West's Link status.
    link_status: Value,
    links_crd: Value,
    /// The lists of FailoverPolicies and RateLimitPolicies.
    policies: [Exchange; 2],
    /// The answer to the list of HTTPRoutes.
    routes: Exchange,
    clock: SystemTime,
}

/// The leader Lease's path.
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/meshfed-system/leases/meshfed-controller";
/// The pod of the leading replica.
const LEADER: &str = "meshfed-controller-6f7c9d8b5-k2x7q";

impl Health {
    fn good(links_crd: Value) -> Self {
        Self {
            gateway_ready: 2,
            controller_ready: 2,
            lease: Exchange::get(LEASE).answers(lease(Some(LEADER), SystemTime::now())),
            link_status: link_status(true, None),
            links_crd,
            policies: policies(
                vec![policy("api-failover", ("True", "Valid", "spec is valid"))],
                Vec::new(),
            ),
            routes: Exchange::get(ROUTES).answers(list(
                "gateway.networking.k8s.io/v1",
                "HTTPRouteList",
                vec![route(
                    ("True", "Accepted", "ok"),
                    ("True", "ResolvedRefs", "ok"),
                )],
            )),
            clock: SystemTime::now(),
        }
    }
}

/// The list of every HTTPRoute.
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes?";

/// The lists of every FailoverPolicy and every RateLimitPolicy.
fn policies(failover: Vec<Value>, limits: Vec<Value>) -> [Exchange; 2] {
    let group = "meshfed.io/v1alpha1";
    [
        Exchange::get(format!("/apis/{group}/failoverpolicies?")).answers(list(
            group,
            "FailoverPolicyList",
            failover,
        )),
        Exchange::get(format!("/apis/{group}/ratelimitpolicies?")).answers(list(
            group,
            "RateLimitPolicyList",
            limits,
        )),
    ]
}

/// A policy in shop with its `Accepted` condition as (status, reason, message).
fn policy(name: &str, (status, reason, message): (&str, &str, &str)) -> Value {
    json!({
        "apiVersion": "meshfed.io/v1alpha1", "kind": "FailoverPolicy",
        "metadata": { "name": name, "namespace": "shop", "generation": 1 },
        "spec": { "service": "api" },
        "status": { "observedGeneration": 1, "conditions": [{
            "type": "Accepted", "status": status, "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z",
        }] },
    })
}

/// An HTTPRoute on shop/api splitting it with api-west, with the
/// controller's entry: `accepted` and `resolved` as (status, reason, message).
fn route(accepted: (&str, &str, &str), resolved: (&str, &str, &str)) -> Value {
    let cond = |t: &str, (status, reason, message): (&str, &str, &str)| {
        json!({
            "type": t, "status": status, "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    };
    let parent = json!({ "group": "", "kind": "Service", "name": "api", "port": 8080 });
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "api-split", "namespace": "shop", "generation": 1 },
        "spec": {
            "parentRefs": [parent],
            "rules": [{ "backendRefs": [
                { "name": "api", "port": 8080, "weight": 90 },
                { "name": "api-west", "port": 8080, "weight": 10 },
            ]}],
        },
        "status": { "parents": [{
            "parentRef": parent,
            "controllerName": "meshfed.io/mesh-controller",
            "conditions": [cond("Accepted", accepted), cond("ResolvedRefs", resolved)],
        }]},
    })
}

/// The leader Lease as kube-lease-manager leaves it: held by `holder`,
/// renewed at `renewed`, lasting 10 s.
fn lease(holder: Option<&str>, renewed: SystemTime) -> Value {
    let micro = |t: SystemTime| humantime::format_rfc3339_micros(t).to_string();
    let mut spec = json!({ "leaseTransitions": 3 });
    if let Some(h) = holder {
        spec = json!({
            "holderIdentity": h, "leaseDurationSeconds": 10, "leaseTransitions": 3,
            "acquireTime": micro(renewed - Duration::from_secs(600)), "renewTime": micro(renewed),
        });
    }
    served(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "meshfed-controller", "namespace": NS },
        "spec": spec,
    }))
}

/// Every request `meshctl check` makes of east, in order.
fn check_transcript(east: &Member, h: Health) -> Vec<Exchange> {
    let link = with_status(
        west_link(
            &["203.0.113.10"],
            meshfed_runtime::port::GATEWAY,
            &east.fingerprints,
        ),
        h.link_status,
    );
    let mirror = list_item(service(
        "shop",
        "api-west",
        json!({
            labels::ORIGIN_CLUSTER: "west", labels::LINK: "west", labels::ORIGIN_SERVICE: "api",
        }),
    ));
    let failover = serde_json::to_value(&meshfed_resources::crd::all()[1]).expect("crd json");
    let failover = failover.as_object().expect("an object");
    let limits = serde_json::to_value(&meshfed_resources::crd::all()[2]).expect("crd json");
    let limits = limits.as_object().expect("an object");
    let mut t = Vec::from(info_exchanges(east));
    t.extend([
        Exchange::get(format!("{CRDS}/links.meshfed.io")).answers(h.links_crd),
        Exchange::get(format!("{CRDS}/failoverpolicies.meshfed.io"))
            .answers(crd_as_served(failover)),
        Exchange::get(format!("{CRDS}/ratelimitpolicies.meshfed.io"))
            .answers(crd_as_served(limits)),
        Exchange::get(format!("{DEPLOYMENTS}/meshfed-identity")).answers(deployment(
            "meshfed-identity",
            2,
            2,
        )),
        Exchange::get(format!("{DEPLOYMENTS}/meshfed-controller")).answers(deployment(
            "meshfed-controller",
            2,
            h.controller_ready,
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
        h.lease,
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
    ]);
    t.extend(h.policies);
    t.extend([
        h.routes,
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
    let crd = serde_json::to_value(&meshfed_resources::crd::all()[0]).expect("crd json");
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
    let health = Health::good(crd_as_served(&links_crd()));

    let outcomes = check(check_transcript(&east, health)).await;
    use Status::Pass;
    assert_eq!(
        statuses(&outcomes),
        [
            ("Meshfed installed", Pass),
            ("CRDs installed and current", Pass),
            ("components ready", Pass),
            ("controller leader", Pass),
            ("certificates valid", Pass),
            ("link west: trust roots shared", Pass),
            ("link west: federation stream up", Pass),
            ("link west: gateway alive", Pass),
            ("link west: mirrors written", Pass),
            ("mirrors backed by live exports", Pass),
            ("policies", Pass),
            ("routes", Pass),
            ("clock skew", Pass),
        ],
        "{outcomes:#?}"
    );
    assert_eq!(
        outcome(&outcomes, "components ready").detail,
        "meshfed-identity 2/2 ready, meshfed-controller 2/2 ready, meshfed-gateway 2/2 ready, \
         meshfed-injector 2/2 ready"
    );
    let leader = &outcome(&outcomes, "controller leader").detail;
    assert!(
        leader.starts_with(&format!("{LEADER} leads (renewed ")),
        "{leader}"
    );
    assert_eq!(
        outcome(&outcomes, "link west: mirrors written").detail,
        "1 imported service(s), each mirrored here"
    );
    assert_eq!(
        outcome(&outcomes, "routes").detail,
        "shop/api-split accepted, every backend resolved"
    );
    assert_eq!(outcome(&outcomes, "policies").detail, "1 accepted");
}

#[tokio::test]
async fn check_names_a_refused_policy_and_the_fields_at_fault() {
    let (_dir, _, east) = federation();
    let mut limit = policy(
        "api-limit",
        (
            "False",
            "InvalidSpec",
            "spec.total.requestsPerSecond: must be between 1 and 1000000 (got 0)",
        ),
    );
    limit["kind"] = json!("RateLimitPolicy");
    limit["spec"] = json!({ "service": "api", "total": { "requestsPerSecond": 0 } });
    let mut waiting = policy("api-limit-new", ("True", "Valid", "spec is valid"));
    waiting["kind"] = json!("RateLimitPolicy");
    waiting["spec"] = json!({ "service": "api", "perCaller": { "requestsPerSecond": 5 } });
    waiting.as_object_mut().expect("an object").remove("status");
    let health = Health {
        policies: policies(
            vec![policy("api-failover", ("True", "Valid", "spec is valid"))],
            vec![limit, waiting.clone()],
        ),
        ..Health::good(crd_as_served(&links_crd()))
    };
    let outcomes = check(check_transcript(&east, health)).await;
    let o = outcome(&outcomes, "policies");
    assert_eq!(o.status, Status::Warn);
    assert_eq!(
        o.detail,
        "RateLimitPolicy shop/api-limit refused: spec.total.requestsPerSecond: must be between \
         1 and 1000000 (got 0)"
    );
    assert!(
        o.hint.as_deref().is_some_and(|h| h.contains("no effect")),
        "{o:?}"
    );
    // Only a policy the controller has not judged yet: passed, and said so.
    let health = Health {
        policies: policies(Vec::new(), vec![waiting]),
        ..Health::good(crd_as_served(&links_crd()))
    };
    let outcomes = check(check_transcript(&east, health)).await;
    let o = outcome(&outcomes, "policies");
    assert_eq!(o.status, Status::Pass);
    assert_eq!(o.detail, "0 accepted, 1 not judged by the controller yet");
}

#[tokio::test]
async fn check_names_a_refused_route_and_why() {
    let (_dir, _, east) = federation();
    let refused = route(
        (
            "False",
            "UnsupportedValue",
            "spec.rules[0].filters[0].type: URLRewrite is not supported",
        ),
        ("True", "ResolvedRefs", "ok"),
    );
    let health = Health {
        routes: Exchange::get(ROUTES).answers(list(
            "gateway.networking.k8s.io/v1",
            "HTTPRouteList",
            vec![refused],
        )),
        ..Health::good(crd_as_served(&links_crd()))
    };
    let outcomes = check(check_transcript(&east, health)).await;
    let o = outcome(&outcomes, "routes");
    assert_eq!(o.status, Status::Warn);
    assert_eq!(
        o.detail,
        "HTTPRoute shop/api-split on shop/api:8080: UnsupportedValue: \
         spec.rules[0].filters[0].type: URLRewrite is not supported"
    );
    assert!(
        o.hint
            .as_deref()
            .is_some_and(|h| h.contains("meshctl routes")),
        "{o:?}"
    );
}

#[tokio::test]
async fn check_says_routes_are_off_without_the_httproute_crd() {
    let (_dir, _, east) = federation();
    let not_found = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": "the server could not find the requested resource",
    });
    let health = Health {
        routes: Exchange::get(ROUTES).fails(StatusCode::NOT_FOUND, not_found),
        ..Health::good(crd_as_served(&links_crd()))
    };
    let outcomes = check(check_transcript(&east, health)).await;
    let o = outcome(&outcomes, "routes");
    assert_eq!(o.status, Status::Skip);
    assert!(
        o.detail
            .starts_with("HTTPRoutes cannot be listed, so none applies: "),
        "{}",
        o.detail
    );
    assert!(
        o.detail
            .contains("HTTPRoute CRD is not installed in context east")
            && o.detail.contains("meshctl install --gateway-api-crds"),
        "{}",
        o.detail
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
        link_status: link_status(
            false,
            Some(&format!(
                "probe 203.0.113.10:{}: connection refused",
                meshfed_runtime::port::GATEWAY
            )),
        ),
        clock: SystemTime::now() + Duration::from_secs(300),
        ..Health::good(crd_as_served(&changed))
    };

    let outcomes = check(check_transcript(&east, health)).await;
    use Status::{Fail, Pass};
    assert_eq!(
        statuses(&outcomes),
        [
            ("Meshfed installed", Pass),
            ("CRDs installed and current", Fail),
            ("components ready", Fail),
            ("controller leader", Pass),
            ("certificates valid", Pass),
            ("link west: trust roots shared", Pass),
            ("link west: federation stream up", Pass),
            ("link west: gateway alive", Fail),
            ("link west: mirrors written", Pass),
            ("mirrors backed by live exports", Pass),
            ("policies", Pass),
            ("routes", Pass),
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
            &format!(
                "203.0.113.10:{gw} does not answer probes; last error: probe 203.0.113.10:{gw}: connection refused",
                gw = meshfed_runtime::port::GATEWAY
            ),
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

/// West's Link status while its controller is silent and its gateway
/// answers: imports held until `until`.
fn held_status(until: SystemTime) -> Value {
    let mut status = link_status(true, Some("federation stream: connection reset by peer"));
    status["federationUp"] = json!(false);
    status["importsHeldUntil"] = json!(humantime::format_rfc3339_seconds(until).to_string());
    status["conditions"][1]["reason"] = json!("ControlPlaneGrace");
    status
}

#[tokio::test]
async fn check_warns_while_a_silent_peer_controller_is_held_in_grace() {
    let (_dir, _, east) = federation();
    // The Link's grace is the default 300 s; 60 s of it gone.
    let until = SystemTime::now() + Duration::from_secs(240);
    let since = until - Duration::from_secs(300);
    let health = Health {
        link_status: held_status(until),
        ..Health::good(crd_as_served(&links_crd()))
    };

    let outcomes = check(check_transcript(&east, health)).await;
    use Status::{Pass, Warn};
    let links: Vec<_> = statuses(&outcomes)
        .into_iter()
        .filter(|(c, _)| c.starts_with("link") || c.starts_with("mirrors"))
        .collect();
    assert_eq!(
        links,
        [
            ("link west: trust roots shared", Pass),
            ("link west: federation stream up", Warn),
            ("link west: gateway alive", Pass),
            ("link west: mirrors written", Pass),
            // Kept on purpose: not a mirror of a dead cluster.
            ("mirrors backed by live exports", Pass),
        ],
        "{outcomes:#?}"
    );
    let o = outcome(&outcomes, "link west: federation stream up");
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let (head, tail) = o
        .detail
        .split_once(" from now)")
        .expect("how long from now");
    assert!(
        head.starts_with(&format!(
            "the peer controller has been silent since {}, but its gateway answers probes: \
             west's services are kept until {} (",
            at(since),
            at(until)
        )),
        "{o:#?}"
    );
    assert_eq!(
        tail,
        ", then withdrawn unless it speaks again; last error: federation stream: connection \
         reset by peer"
    );
    assert_eq!(
        o.hint.as_deref(),
        Some(
            "look at west's controller pods (kubectl -n meshfed-system get pods -l \
             app.kubernetes.io/name=meshfed-controller in west; a rollout, a crash loop, or no \
             replica ready), or meshctl check on west"
        )
    );
    // A warning is no failure: check still exits 0.
    assert!(!outcomes.iter().any(|o| o.status == Status::Fail));
}

#[tokio::test]
async fn check_names_each_unwritable_mirror_and_how_to_fix_it() {
    let (_dir, _, east) = federation();
    let mut status = link_status(true, None);
    status["importedServices"] = json!(7);
    // What the API server answers a write into a namespace that is not there.
    let missing = |ns: &str| format!("404 Not Found: namespaces \"{ns}\" not found");
    status["unwritableMirrors"] = json!([
        { "mirror": "shop/api-west", "reason": missing("shop") },
        { "mirror": "shop/web-west", "reason": missing("shop") },
        { "mirror": "billing/pay-west", "reason": "409 Conflict: service billing/pay-west exists and is not a mirror; not overwriting it" },
        { "mirror": "data/db-west", "reason": missing("data") },
    ]);
    status["unwritableMirrorCount"] = json!(5);
    status["conditions"]
        .as_array_mut()
        .expect("conditions")
        .push(json!({
            "type": "MirrorsWritten", "status": "False", "reason": "WriteFailed",
            "message": "5 of 7 imported services cannot be mirrored",
            "lastTransitionTime": "2025-01-15T10:00:05Z", "observedGeneration": 1,
        }));
    let health = Health {
        link_status: status,
        ..Health::good(crd_as_served(&links_crd()))
    };

    let outcomes = check(check_transcript(&east, health)).await;
    let o = outcome(&outcomes, "link west: mirrors written");
    assert_eq!(o.status, Status::Fail, "{o:#?}");
    assert_eq!(
        o.detail,
        "5 imported service(s) of west have no mirror here: \
         shop/api-west: 404 Not Found: namespaces \"shop\" not found; \
         shop/web-west: 404 Not Found: namespaces \"shop\" not found; \
         billing/pay-west: 409 Conflict: service billing/pay-west exists and is not a mirror; \
         not overwriting it; and 2 more"
    );
    assert_eq!(
        o.hint.as_deref(),
        Some(
            "create namespace data in this cluster (kubectl create namespace data), or narrow \
             the Link's selector (Link meshfed-system/west, spec.selector) so it does not import \
             it; create namespace shop in this cluster (kubectl create namespace shop), or \
             narrow the Link's selector (Link meshfed-system/west, spec.selector) so it does not \
             import it; for the others, what the cluster answered says why; the leading \
             controller replica's logs say more"
        )
    );
    // The other checks of the link stand as they were.
    assert_eq!(
        outcome(&outcomes, "link west: federation stream up").status,
        Status::Pass
    );
}

#[tokio::test]
async fn check_warns_of_one_controller_replica_and_says_when_the_leader_is_unreadable() {
    let (_dir, _, east) = federation();
    let message = "leases.coordination.k8s.io \"meshfed-controller\" is forbidden: User \"viewer\" \
        cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \
        \"meshfed-system\"";
    let forbidden = refusal(
        403,
        "Forbidden",
        message,
        json!({ "name": "meshfed-controller", "group": "coordination.k8s.io", "kind": "leases" }),
    );
    let health = Health {
        controller_ready: 1,
        lease: Exchange::get(LEASE).fails(StatusCode::FORBIDDEN, forbidden),
        ..Health::good(crd_as_served(&links_crd()))
    };

    let outcomes = check(check_transcript(&east, health)).await;
    let o = outcome(&outcomes, "components ready");
    assert_eq!(o.status, Status::Warn, "{o:#?}");
    assert!(
        o.detail.starts_with(
            "meshfed-identity 2/2 ready, meshfed-gateway 2/2 ready, meshfed-injector 2/2 ready, \
             meshfed-controller 1/2 ready; with fewer than 2 controller replicas ready none takes \
             over when the leader stops"
        ),
        "{o:#?}"
    );
    assert!(
        o.hint.as_deref().unwrap_or_default().contains(
            "kubectl -n meshfed-system get pods -l app.kubernetes.io/name=meshfed-controller"
        ),
        "{o:#?}"
    );
    let o = outcome(&outcomes, "controller leader");
    assert_eq!(o.status, Status::Skip, "{o:#?}");
    assert!(
        o.detail.starts_with(
            "cannot tell which replica leads, the Lease meshfed-system/meshfed-controller is not \
             readable: reading Lease meshfed-system/meshfed-controller in context east"
        ),
        "{o:#?}"
    );
    for piece in [
        "403 Forbidden",
        "kubectl auth can-i get leases.coordination.k8s.io -n meshfed-system --context east",
    ] {
        assert!(o.detail.contains(piece), "{piece:?} missing from {o:#?}");
    }
}

#[tokio::test]
async fn check_warns_when_no_replica_holds_the_lease_or_its_holder_went_quiet() {
    let (_dir, _, east) = federation();
    for (lease, says) in [
        (
            lease(None, SystemTime::now()),
            "no replica holds the Lease meshfed-system/meshfed-controller: mirrors and statuses \
             go unwritten until one takes it (about a second when a leader stops)"
                .to_owned(),
        ),
        (
            lease(Some(LEADER), SystemTime::now() - Duration::from_secs(120)),
            format!(
                "{LEADER} holds the Lease meshfed-system/meshfed-controller but last renewed it \
                 2m ago (it lasts 10s): a replica takes over once it runs out; until then \
                 nothing writes"
            ),
        ),
    ] {
        let health = Health {
            lease: Exchange::get(LEASE).answers(lease),
            ..Health::good(crd_as_served(&links_crd()))
        };
        let outcomes = check(check_transcript(&east, health)).await;
        let o = outcome(&outcomes, "controller leader");
        assert_eq!(o.status, Status::Warn, "{o:#?}");
        assert_eq!(o.detail, says);
        assert!(
            o.hint.as_deref().unwrap_or_default().contains(
                "kubectl -n meshfed-system logs -l app.kubernetes.io/name=meshfed-controller"
            ),
            "{o:#?}"
        );
    }
}
