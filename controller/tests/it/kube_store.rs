//! The Kubernetes store against a stand-in API server (a tower-test mock
//! behind a real `kube::Client`): the initial sync, watch events, mirror
//! apply and delete with their refusals, status patches, the ways start-up
//! fails, and shutdown; and discovery over real mTLS serving each endpoint
//! with the identity of the Pod the cluster's objects name.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::client::Body;
use meshfed_api::discovery::{EndpointSet, Locality};
use meshfed_api::labels;
use meshfed_controller::{
    Controller, ControllerConfig, KubeStore, Mirror, ObjKey, Store, StoreError,
};
use meshfed_resources::crd::{FailoverPolicyStatus, LinkStatus};
use tokio::time::Instant;

use crate::support::{CONTROLLER, Mesh, TD, creds, until, watch_endpoints};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/pods";
const LINKS: &str = "/apis/meshfed.io/v1alpha1/links";
const POLICIES: &str = "/apis/meshfed.io/v1alpha1/failoverpolicies";
const RATE_LIMITS: &str = "/apis/meshfed.io/v1alpha1/ratelimitpolicies";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";

// === the stand-in API server ===

/// A write (anything but a list or watch) the API server received.
#[derive(Debug, Clone)]
struct Recorded {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

/// What the API server holds and how it misbehaves.
#[derive(Debug, Default)]
struct Cluster {
    /// Objects listed per collection path.
    lists: HashMap<&'static str, Vec<Value>>,
    /// Collection paths whose list answers 404, as for a CRD not installed.
    unserved: Vec<&'static str>,
    /// Collection paths whose list is never answered.
    stalled: Vec<&'static str>,
    /// Object paths that answer writes with 404.
    gone: Vec<String>,
}

/// A list request's collection path and query.
type ListRequest = (String, BTreeMap<String, String>);
type Mocked = Handle<Request<Body>, Response<Body>>;
type Responder = SendResponse<Response<Body>>;

/// The running API server: what it recorded, and a way to push watch events.
struct ApiServer {
    writes: Arc<Mutex<Vec<Recorded>>>,
    /// Every list request: its collection path and query.
    lists: Arc<Mutex<Vec<ListRequest>>>,
    events: mpsc::UnboundedSender<(&'static str, Value)>,
    task: JoinHandle<()>,
}

impl ApiServer {
    fn writes(&self) -> Vec<Recorded> {
        self.writes.lock().expect("lock").clone()
    }

    /// The queries of the lists of `collection`.
    fn list_queries(&self, collection: &str) -> Vec<BTreeMap<String, String>> {
        let lists = self.lists.lock().expect("lock");
        lists
            .iter()
            .filter(|(path, _)| path == collection)
            .map(|(_, q)| q.clone())
            .collect()
    }

    /// Delivers `{"type": kind, "object": object}` on the watch of `collection`.
    fn event(&self, collection: &'static str, kind: &str, object: Value) {
        let event = json!({ "type": kind, "object": object });
        self.events
            .send((collection, event))
            .expect("api server running");
    }
}

impl Cluster {
    fn serve(self) -> (kube::Client, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (writes, lists) = (Arc::default(), Arc::default());
        let (events, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(self.run(handle, rx, Arc::clone(&writes), Arc::clone(&lists)));
        let server = ApiServer {
            writes,
            lists,
            events,
            task,
        };
        (kube::Client::new(service, "default"), server)
    }

    async fn run(
        self,
        mut handle: Mocked,
        mut events: mpsc::UnboundedReceiver<(&'static str, Value)>,
        writes: Arc<Mutex<Vec<Recorded>>>,
        lists: Arc<Mutex<Vec<ListRequest>>>,
    ) {
        // Open watches wait here until the test has an event for them.
        let mut watches: HashMap<String, Responder> = HashMap::new();
        let mut queued: HashMap<String, Vec<Value>> = HashMap::new();
        let mut stalled = Vec::new();
        loop {
            tokio::select! {
                next = handle.next_request() => {
                    // Every client is gone: the store stopped its watchers.
                    let Some((req, send)) = next else { return };
                    let path = req.uri().path().to_owned();
                    let query = parse_query(req.uri().query().unwrap_or_default());
                    if query.get("watch").is_some_and(|w| w == "true") {
                        match queued.remove(&path) {
                            Some(events) => send.send_response(watch_body(&events)),
                            None => {
                                watches.insert(path, send);
                            }
                        }
                    } else if req.method() == Method::GET {
                        lists.lock().expect("lock").push((path.clone(), query.clone()));
                        if self.unserved.iter().any(|p| *p == path) {
                            send.send_response(not_found(&path));
                        } else if self.stalled.iter().any(|p| *p == path) {
                            stalled.push(send);
                        } else {
                            send.send_response(self.list(&path));
                        }
                    } else {
                        let recorded = record(req, path, query).await;
                        let response = self.write(&recorded);
                        // Recorded before answering, so the caller sees it once its call returns.
                        writes.lock().expect("lock").push(recorded);
                        send.send_response(response);
                    }
                }
                Some((path, event)) = events.recv() => match watches.remove(path) {
                    Some(send) => send.send_response(watch_body(&[event])),
                    None => queued.entry(path.to_owned()).or_default().push(event),
                },
            }
        }
    }

    fn list(&self, path: &str) -> Response<Body> {
        let items = self.lists.get(path).cloned().unwrap_or_default();
        ok(json!({ "metadata": { "resourceVersion": "100" }, "items": items }))
    }

    /// Answers a write like the API server would: PATCH with the object as
    /// stored (the fixture overlaid with the body, a uid assigned to new
    /// objects), DELETE with a success Status.
    fn write(&self, w: &Recorded) -> Response<Body> {
        let object_path = w.path.trim_end_matches("/status");
        if self.gone.iter().any(|p| p == object_path) {
            return not_found(object_path);
        }
        if w.method == Method::DELETE {
            return ok(json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }));
        }
        let name = object_path.rsplit('/').next().unwrap_or_default();
        let mut object = self
            .lists
            .iter()
            .flat_map(|(collection, items)| items.iter().map(move |o| (*collection, o)))
            .find(|(collection, o)| object_path_of(collection, o) == object_path)
            .map_or_else(|| json!({ "metadata": {} }), |(_, o)| o.clone());
        for (field, value) in w.body.as_object().into_iter().flatten() {
            if field == "metadata" {
                for (k, v) in value.as_object().into_iter().flatten() {
                    object["metadata"][k] = v.clone();
                }
            } else {
                object[field] = value.clone();
            }
        }
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("server-uid-{name}"));
        }
        object["metadata"]["resourceVersion"] = json!("101");
        ok(object)
    }
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn record(req: Request<Body>, path: String, query: BTreeMap<String, String>) -> Recorded {
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = req.into_body().collect_bytes().await.expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("request body is JSON")
    };
    Recorded {
        method,
        path,
        query,
        content_type,
        body,
    }
}

/// `/api/v1/services` + shop/api → `/api/v1/namespaces/shop/services/api`.
fn object_path_of(collection: &str, object: &Value) -> String {
    let (prefix, plural) = collection.rsplit_once('/').expect("collection path");
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{prefix}/{plural}/{name}"),
    }
}

fn ok(body: Value) -> Response<Body> {
    respond(StatusCode::OK, &body)
}

fn not_found(path: &str) -> Response<Body> {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
        "code": 404, "message": format!("{path} not found"),
    });
    respond(StatusCode::NOT_FOUND, &status)
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

/// A watch response carrying `events` as newline-delimited JSON; the watch
/// ends after them and the watcher opens the next one.
fn watch_body(events: &[Value]) -> Response<Body> {
    let mut bytes = Vec::new();
    for event in events {
        serde_json::to_writer(&mut bytes, event).expect("json");
        bytes.push(b'\n');
    }
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(bytes))
        .expect("response")
}

// === fixtures ===

fn meta(ns: Option<&str>, name: &str, uid: &str, labels: Value) -> Value {
    let mut meta = json!({ "name": name, "uid": uid, "resourceVersion": "7", "labels": labels });
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    meta
}

fn mirror_labels() -> Value {
    json!({
        (labels::ORIGIN_CLUSTER): "east",
        (labels::LINK): "east",
        (labels::ORIGIN_SERVICE): "cart",
    })
}

fn service(name: &str, labels: Value) -> Value {
    json!({
        "metadata": meta(Some("shop"), name, &format!("uid-svc-{name}"), labels),
        "spec": { "ports": [{ "name": "http", "port": 80 }] },
    })
}

fn slice(name: &str, labels: Value) -> Value {
    json!({
        "metadata": meta(Some("shop"), name, &format!("uid-slice-{name}"), labels),
        "addressType": "IPv4",
        "endpoints": [{ "addresses": ["10.0.0.5"], "nodeName": "n1" }],
        "ports": [{ "name": "http", "port": 8080 }],
    })
}

fn node(name: &str, labels: Value) -> Value {
    json!({ "metadata": meta(None, name, &format!("uid-node-{name}"), labels) })
}

fn link(status: Value) -> Value {
    json!({
        "metadata": meta(Some("meshfed-system"), "east", "uid-link-east", json!({})),
        "spec": {
            "cluster": "east",
            "gateway": {
                "addresses": ["192.0.2.10"],
                "port": 15443,
                "identity": "spiffe://mesh.example/ns/meshfed-system/sa/meshfed-gateway",
                "controllerIdentity": "spiffe://mesh.example/ns/meshfed-system/sa/meshfed-controller",
            },
        },
        "status": status,
    })
}

/// shop/api is a user's Service with its slice; cart-east is a mirror.
fn cluster() -> Cluster {
    let lists = HashMap::from([
        (
            SERVICES,
            vec![
                service("api", json!({ (labels::EXPORTED): "true" })),
                service("cart-east", mirror_labels()),
            ],
        ),
        (
            SLICES,
            vec![
                slice("api-x7k2p", json!({ (labels::SERVICE_NAME): "api" })),
                slice("cart-east", mirror_labels()),
            ],
        ),
        (
            NODES,
            vec![
                node("n1", json!({ (labels::ZONE): "eu-west-1a" })),
                node("n2", json!({})),
            ],
        ),
        (LINKS, vec![link(json!({}))]),
        (
            POLICIES,
            vec![json!({
                "metadata": meta(Some("shop"), "api", "uid-fp-api", json!({})),
                "spec": { "service": "api", "clusters": ["east"] },
            })],
        ),
        (
            RATE_LIMITS,
            vec![json!({
                "metadata": meta(Some("shop"), "api-limit", "uid-rlp-api", json!({})),
                "spec": { "service": "api", "port": 80, "perCaller": { "requestsPerSecond": 5 } },
            })],
        ),
    ]);
    Cluster {
        lists,
        ..Cluster::default()
    }
}

fn mirror(name: &str) -> Mirror {
    let mut service: Service = serde_json::from_value(service(name, mirror_labels())).expect("svc");
    service.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "meshfed.io/v1alpha1", "kind": "Link", "name": "east", "uid": "uid-link-east",
        }))
        .expect("owner reference"),
    ]);
    let slice: EndpointSlice = serde_json::from_value(slice(name, mirror_labels())).expect("slice");
    Mirror { service, slice }
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 5 s"))
}

async fn started(cluster: Cluster) -> (KubeStore, ApiServer) {
    let (client, server) = cluster.serve();
    let store = within("start", KubeStore::start(client))
        .await
        .expect("store starts");
    (store, server)
}

// === tests ===

#[tokio::test]
async fn start_returns_with_every_resource_listed() {
    let (store, server) = started(cluster()).await;
    let state = store.state().borrow().clone();
    assert_eq!(
        state.services.keys().cloned().collect::<Vec<_>>(),
        [ObjKey::new("shop", "api"), ObjKey::new("shop", "cart-east")]
    );
    assert_eq!(
        state.slices.keys().cloned().collect::<Vec<_>>(),
        [
            ObjKey::new("shop", "api-x7k2p"),
            ObjKey::new("shop", "cart-east")
        ]
    );
    let slice = &state.slices[&ObjKey::new("shop", "cart-east")];
    let endpoints = slice.endpoints.as_deref().unwrap_or_default();
    assert_eq!(endpoints[0].addresses, ["10.0.0.5"]);
    // Only labelled nodes have a zone.
    assert_eq!(
        state.node_zones,
        BTreeMap::from([("n1".to_owned(), "eu-west-1a".to_owned())]).into()
    );
    let link = &state.links[&ObjKey::new("meshfed-system", "east")];
    assert_eq!(link.spec.cluster, "east");
    assert_eq!(link.spec.gateway.port, 15443);
    let policy = &state.policies[&ObjKey::new("shop", "api")];
    assert_eq!(
        policy.spec.clusters.as_deref(),
        Some(&["east".to_owned()][..])
    );
    let limit = &state.rate_limits[&ObjKey::new("shop", "api-limit")];
    assert_eq!(limit.spec.port, Some(80));
    assert_eq!(
        limit
            .spec
            .per_caller
            .map(|b| (b.requests_per_second, b.burst)),
        Some((5, None))
    );
    assert!(server.writes().is_empty(), "{:?}", server.writes());
}

#[tokio::test]
async fn watch_events_reach_the_published_state() {
    let (store, server) = started(cluster()).await;
    let mut state = store.state();
    assert!(
        !state.has_changed().expect("sender alive"),
        "nothing new yet"
    );

    let mut web = service("web", json!({}));
    web["metadata"]["resourceVersion"] = json!("120");
    server.event(SERVICES, "ADDED", web);
    let mut alive = link(json!({ "alive": true, "importedServices": 4 }));
    alive["metadata"]["resourceVersion"] = json!("121");
    server.event(LINKS, "MODIFIED", alive);
    let mut gone = node("n1", json!({ (labels::ZONE): "eu-west-1a" }));
    gone["metadata"]["resourceVersion"] = json!("122");
    server.event(NODES, "DELETED", gone);

    let key = ObjKey::new("meshfed-system", "east");
    within(
        "the watch events",
        state.wait_for(|s| {
            s.services.contains_key(&ObjKey::new("shop", "web"))
                && s.links[&key].status.as_ref().and_then(|st| st.alive) == Some(true)
                && s.node_zones.is_empty()
        }),
    )
    .await
    .expect("store alive");
    let status = store.state().borrow().links[&key].status.clone();
    assert_eq!(status.map(|s| s.imported_services), Some(4));
}

#[tokio::test]
async fn a_relist_drops_what_was_deleted_while_unwatched() {
    let (store, server) = started(cluster()).await;
    let mut state = store.state();
    let web = ObjKey::new("shop", "web");
    let mut added = service("web", json!({}));
    added["metadata"]["resourceVersion"] = json!("120");
    server.event(SERVICES, "ADDED", added);
    within(
        "the ADDED event",
        state.wait_for(|s| s.services.contains_key(&web)),
    )
    .await
    .expect("store alive");

    // The watch fell out of the server's window: the watcher lists again, and
    // the list (the fixtures) no longer has shop/web.
    let expired = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "reason": "Expired", "code": 410, "message": "too old resource version",
    });
    server.event(SERVICES, "ERROR", expired);
    within(
        "the relist",
        state.wait_for(|s| !s.services.contains_key(&web)),
    )
    .await
    .expect("store alive");
    assert_eq!(store.state().borrow().services.len(), 2);
}

#[tokio::test]
async fn apply_mirror_applies_the_service_then_a_slice_owned_by_it() {
    let (store, server) = started(cluster()).await;
    let mut new = mirror("orders-east");
    // A stale copy: the server's fields must not travel back in an apply.
    new.service.metadata.resource_version = Some("3".into());
    within("apply", store.apply_mirror(new))
        .await
        .expect("applied");

    let writes = server.writes();
    assert_eq!(writes.len(), 2, "{writes:#?}");
    let (svc, slice) = (&writes[0], &writes[1]);
    for w in [svc, slice] {
        assert_eq!(w.method, Method::PATCH);
        assert_eq!(w.query["fieldManager"], labels::CONTROLLER);
        assert_eq!(w.query["force"], "true");
        assert_eq!(w.content_type, "application/apply-patch+yaml");
        assert_eq!(w.body["metadata"]["labels"], mirror_labels());
        assert!(w.body["metadata"]["resourceVersion"].is_null(), "{w:?}");
        assert!(w.body["metadata"]["uid"].is_null(), "{w:?}");
    }
    assert_eq!(svc.path, "/api/v1/namespaces/shop/services/orders-east");
    assert_eq!(
        (&svc.body["apiVersion"], &svc.body["kind"]),
        (&json!("v1"), &json!("Service"))
    );
    assert_eq!(svc.body["metadata"]["ownerReferences"][0]["kind"], "Link");
    assert_eq!(svc.body["spec"]["ports"][0]["port"], 80);

    assert_eq!(
        slice.path,
        "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/orders-east"
    );
    assert_eq!(slice.body["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(slice.body["kind"], "EndpointSlice");
    // The uid is the one the server gave the Service in answer to the apply.
    assert_eq!(
        slice.body["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "v1", "kind": "Service", "name": "orders-east",
            "uid": "server-uid-orders-east", "controller": true, "blockOwnerDeletion": true,
        }])
    );
    assert_eq!(slice.body["endpoints"][0]["addresses"], json!(["10.0.0.5"]));

    // An existing mirror is updated in place.
    within("re-apply", store.apply_mirror(mirror("cart-east")))
        .await
        .expect("applied");
    let writes = server.writes();
    assert_eq!(writes.len(), 4, "{writes:#?}");
    assert_eq!(
        writes[3].body["metadata"]["ownerReferences"][0]["uid"],
        "uid-svc-cart-east"
    );
}

#[tokio::test]
async fn apply_mirror_never_overwrites_what_is_not_a_mirror() {
    let (store, server) = started(cluster()).await;
    let refused = |r: Result<(), StoreError>| match r {
        Err(StoreError::Refused(msg)) => msg,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // The user's own Service shop/api.
    let msg = refused(within("apply", store.apply_mirror(mirror("api"))).await);
    assert!(
        msg.contains("Service shop/api") && msg.contains("not a Meshfed mirror"),
        "{msg}"
    );
    // The user's own EndpointSlice, with no Service of that name.
    let msg = refused(within("apply", store.apply_mirror(mirror("api-x7k2p"))).await);
    assert!(msg.contains("EndpointSlice shop/api-x7k2p"), "{msg}");
    // A mirror without its label would be taken for a user's object afterwards.
    let mut unlabelled = mirror("orders-east");
    unlabelled.slice.metadata.labels = None;
    let msg = refused(within("apply", store.apply_mirror(unlabelled)).await);
    assert!(msg.contains(labels::ORIGIN_CLUSTER), "{msg}");

    assert!(server.writes().is_empty(), "{:#?}", server.writes());
}

#[tokio::test]
async fn delete_mirror_deletes_slice_and_service_and_takes_404_as_done() {
    let mut cluster = cluster();
    // Already gone on the server, though the cache still has it.
    cluster
        .gone
        .push("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/cart-east".into());
    let (store, server) = started(cluster).await;

    within(
        "delete",
        store.delete_mirror(ObjKey::new("shop", "cart-east")),
    )
    .await
    .expect("deleted");
    let writes = server.writes();
    let sent: Vec<_> = writes
        .iter()
        .map(|w| {
            (
                w.method.clone(),
                w.path.as_str(),
                &w.body["preconditions"]["uid"],
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            (
                Method::DELETE,
                "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices/cart-east",
                &json!("uid-slice-cart-east")
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/shop/services/cart-east",
                &json!("uid-svc-cart-east")
            ),
        ]
    );

    let err = within("delete", store.delete_mirror(ObjKey::new("shop", "api"))).await;
    assert!(
        matches!(&err, Err(StoreError::Refused(m)) if m.contains("shop/api")),
        "{err:?}"
    );
    // Nothing the cache knows of under that name: nothing to delete.
    within(
        "delete",
        store.delete_mirror(ObjKey::new("shop", "never-was")),
    )
    .await
    .expect("a missing mirror is deleted");
    assert_eq!(server.writes().len(), 2, "{:#?}", server.writes());
}

#[tokio::test]
async fn statuses_are_applied_to_the_status_subresource() {
    let mut cluster = cluster();
    cluster
        .gone
        .push("/apis/meshfed.io/v1alpha1/namespaces/meshfed-system/links/west".into());
    let (store, server) = started(cluster).await;

    let status = LinkStatus {
        alive: Some(true),
        imported_services: 3,
        latency_p50: Some("1.2ms".into()),
        ..LinkStatus::default()
    };
    let east = ObjKey::new("meshfed-system", "east");
    within("link status", store.set_link_status(east, status))
        .await
        .expect("patched");
    let policy = FailoverPolicyStatus {
        observed_generation: Some(2),
        ..FailoverPolicyStatus::default()
    };
    within(
        "policy status",
        store.set_policy_status(ObjKey::new("shop", "api"), policy),
    )
    .await
    .expect("patched");
    let limit = FailoverPolicyStatus {
        observed_generation: Some(1),
        ..FailoverPolicyStatus::default()
    };
    within(
        "rate limit status",
        store.set_rate_limit_status(ObjKey::new("shop", "api-limit"), limit),
    )
    .await
    .expect("patched");

    let writes = server.writes();
    assert_eq!(writes.len(), 3, "{writes:#?}");
    let link = &writes[0];
    assert_eq!(link.method, Method::PATCH);
    assert_eq!(
        link.path,
        "/apis/meshfed.io/v1alpha1/namespaces/meshfed-system/links/east/status"
    );
    assert_eq!(link.query["fieldManager"], labels::CONTROLLER);
    assert_eq!(link.body["kind"], "Link");
    assert_eq!(link.body["apiVersion"], "meshfed.io/v1alpha1");
    assert_eq!(
        link.body["status"],
        json!({ "alive": true, "importedServices": 3, "latencyP50": "1.2ms" })
    );
    assert_eq!(
        writes[1].path,
        "/apis/meshfed.io/v1alpha1/namespaces/shop/failoverpolicies/api/status"
    );
    assert_eq!(writes[1].body["status"], json!({ "observedGeneration": 2 }));
    assert_eq!(
        writes[2].path,
        "/apis/meshfed.io/v1alpha1/namespaces/shop/ratelimitpolicies/api-limit/status"
    );
    assert_eq!(writes[2].body["kind"], "RateLimitPolicy");
    assert_eq!(writes[2].body["status"], json!({ "observedGeneration": 1 }));

    let west = ObjKey::new("meshfed-system", "west");
    let err = within(
        "status",
        store.set_link_status(west.clone(), LinkStatus::default()),
    )
    .await;
    assert!(
        matches!(&err, Err(StoreError::NotFound { kind: "Link", key }) if *key == west),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_cluster_without_the_httproute_crd_starts_without_routes() {
    let mut cluster = cluster();
    cluster.unserved.push(ROUTES);
    let (store, server) = started(cluster).await;
    assert!(store.state().borrow().routes.is_empty());
    assert!(
        !store.state().borrow().services.is_empty(),
        "the rest is read"
    );
    assert!(
        !server.list_queries(ROUTES).is_empty(),
        "routes were asked for"
    );
}

/// An HTTPRoute on Service api whose status holds another controller's
/// entry (a Gateway's), at resourceVersion 7.
fn shared_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": "api-split", "namespace": "shop", "uid": "uid-route",
            "resourceVersion": "7", "generation": 2,
        },
        "spec": {
            "parentRefs": [
                { "group": "", "kind": "Service", "name": "api", "port": 80 },
                { "name": "edge" },
            ],
            "rules": [{ "backendRefs": [{ "name": "api", "port": 80 }] }],
        },
        "status": { "parents": [{
            "parentRef": { "name": "edge" },
            "controllerName": "example.com/gateway",
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        }]},
    })
}

#[tokio::test]
async fn a_route_status_keeps_every_other_controllers_entry_and_names_its_version() {
    let mut cluster = cluster();
    cluster.lists.insert(ROUTES, vec![shared_route()]);
    let (store, server) = started(cluster).await;
    let key = ObjKey::new("shop", "api-split");
    let ours: meshfed_resources::route::HttpRouteStatusParents = serde_json::from_value(json!({
        "parentRef": { "group": "", "kind": "Service", "name": "api", "port": 80 },
        "controllerName": meshfed_resources::route::CONTROLLER_NAME,
        "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
            "observedGeneration": 2, "lastTransitionTime": "2026-01-02T00:00:00Z",
        }],
    }))
    .expect("status entry");
    within("route status", store.set_route_status(key, vec![ours]))
        .await
        .expect("patched");
    let writes = server.writes();
    assert_eq!(writes.len(), 1, "{writes:#?}");
    let w = &writes[0];
    assert_eq!(w.method, Method::PATCH);
    assert_eq!(
        w.path,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/api-split/status"
    );
    assert_eq!(w.content_type, "application/merge-patch+json");
    assert_eq!(
        w.body["metadata"]["resourceVersion"], "7",
        "conditional on the version read"
    );
    let parents = w.body["status"]["parents"].as_array().expect("parents");
    let controllers: Vec<&str> = parents
        .iter()
        .map(|p| p["controllerName"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        controllers,
        [
            "example.com/gateway",
            meshfed_resources::route::CONTROLLER_NAME
        ]
    );

    let gone = ObjKey::new("shop", "no-such-route");
    let err = within("status", store.set_route_status(gone, Vec::new())).await;
    assert!(
        matches!(
            err,
            Err(StoreError::NotFound {
                kind: "HTTPRoute",
                ..
            })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn start_fails_at_once_when_the_crds_are_not_installed() {
    let mut cluster = cluster();
    cluster.unserved.push(POLICIES);
    let (client, _server) = cluster.serve();
    let err = within(
        "start",
        KubeStore::start_with_timeout(client, Duration::from_secs(60)),
    )
    .await
    .expect_err("no CRDs");
    let msg = err.to_string();
    assert!(
        msg.contains("CRDs are not installed") && msg.contains("failoverpolicies.meshfed.io"),
        "{msg}"
    );
}

#[tokio::test]
async fn start_gives_up_naming_what_did_not_sync() {
    let mut cluster = cluster();
    cluster.stalled.push(NODES);
    let (client, _server) = cluster.serve();
    let err = within(
        "start",
        KubeStore::start_with_timeout(client, Duration::from_millis(300)),
    )
    .await
    .expect_err("nodes never listed");
    let msg = err.to_string();
    assert!(
        msg.contains("did not sync") && msg.contains("nodes"),
        "{msg}"
    );
    assert!(!msg.contains("services") && !msg.contains("links"), "{msg}");
}

#[tokio::test]
async fn dropping_the_store_stops_its_watchers() {
    let (store, server) = started(cluster()).await;
    drop(store);
    // The API server's loop ends once no client is left to send it requests.
    within("the watchers to stop", server.task)
        .await
        .expect("api server task");
}

// === identity from the workload ===

/// A Pod as the API server answers a list with it: everything a scheduled,
/// running Deployment pod carries, most of which the store must skip.
fn pod(name: &str, uid: &str, service_account: &str, node: &str, ip: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "resourceVersion": "4711",
            "generateName": "api-6d4cf56db6-",
            "labels": { "app": "api", "pod-template-hash": "6d4cf56db6" },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-6d4cf56db6",
                "uid": "0c1e0f5a-8f7e-4c53-9a43-4b1d3f0e5f11", "controller": true,
                "blockOwnerDeletion": true,
            }],
            "managedFields": [{
                "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": { "f:labels": {} } },
            }],
        },
        "spec": {
            "serviceAccountName": service_account,
            "serviceAccount": service_account,
            "nodeName": node,
            "containers": [{
                "name": "api", "image": "registry.example/api:1.4.2",
                "ports": [{ "containerPort": 8080, "protocol": "TCP" }],
                "resources": {},
                "volumeMounts": [{
                    "name": "kube-api-access-x2k9q", "readOnly": true,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                }],
            }],
            "volumes": [{ "name": "kube-api-access-x2k9q", "projected": { "sources": [
                { "serviceAccountToken": { "expirationSeconds": 3607, "path": "token" } },
            ] } }],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }], "hostIP": "172.18.0.3",
            "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "api", "ready": true, "restartCount": 0,
                "image": "registry.example/api:1.4.2", "imageID": "", "started": true,
                "state": { "running": { "startedAt": "2026-12-04T10:00:00Z" } } }],
        },
    })
}

/// An endpoint as the endpoint-slice controller writes it for a Pod.
fn pod_endpoint(pod: &str, uid: &str, ip: &str, node: &str, zone: &str, ready: bool) -> Value {
    json!({
        "addresses": [ip],
        "conditions": { "ready": ready, "serving": ready, "terminating": false },
        "nodeName": node,
        "zone": zone,
        "hints": { "forZones": [{ "name": zone }] },
        "targetRef": { "kind": "Pod", "namespace": "shop", "name": pod, "uid": uid },
    })
}

/// shop/api's slice, written by the endpoint-slice controller (no Meshfed
/// annotation), with `endpoints`.
fn api_slice(endpoints: Vec<Value>) -> Value {
    json!({
        "metadata": {
            "name": "api-7xk2p", "namespace": "shop", "uid": "uid-slice-api",
            "resourceVersion": "4800", "generateName": "api-",
            "labels": {
                (labels::SERVICE_NAME): "api",
                (labels::MANAGED_BY): "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": "api",
                "uid": "uid-svc-api", "controller": true, "blockOwnerDeletion": true }],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
    })
}

fn addresses_and_identities(set: &EndpointSet) -> BTreeMap<String, Vec<String>> {
    set.groups
        .iter()
        .flat_map(|g| &g.endpoints)
        .map(|e| (e.address.clone(), e.identities.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_offers_each_endpoint_with_its_pods_service_account() {
    const A1: &str = "3b0c4f5e-1a2b-4c3d-8e9f-0a1b2c3d4e5f";
    const C1: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";
    const LATE: &str = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b";
    let mut cluster = cluster();
    cluster.lists.insert(
        PODS,
        vec![
            pod("api-6d4cf56db6-abcde", A1, "api", "worker-a", "10.244.1.5"),
            pod(
                "api-canary-5b7f9-xyz12",
                C1,
                "api-canary",
                "worker-b",
                "10.244.2.7",
            ),
        ],
    );
    cluster.lists.insert(
        NODES,
        vec![
            node("worker-a", json!({ (labels::ZONE): "eu-west-1a", "topology.kubernetes.io/region": "eu-west-1" })),
            node("worker-b", json!({ (labels::ZONE): "eu-west-1b", "topology.kubernetes.io/region": "eu-west-1" })),
        ],
    );
    let mut no_zone = pod_endpoint(
        "api-canary-5b7f9-xyz12",
        C1,
        "10.244.2.7",
        "worker-b",
        "",
        true,
    );
    // An endpoint without its own zone takes its Node's.
    no_zone.as_object_mut().expect("object").remove("zone");
    no_zone.as_object_mut().expect("object").remove("hints");
    let slices = cluster.lists.get_mut(SLICES).expect("slices");
    slices.push(api_slice(vec![
        pod_endpoint(
            "api-6d4cf56db6-abcde",
            A1,
            "10.244.1.5",
            "worker-a",
            "eu-west-1a",
            true,
        ),
        no_zone,
        // Scheduled a moment ago: the slice names it before the Pod reaches the store.
        pod_endpoint(
            "api-6d4cf56db6-late1",
            LATE,
            "10.244.1.9",
            "worker-a",
            "eu-west-1a",
            false,
        ),
    ]));
    let (client, server) = cluster.serve();
    let store = within("start", KubeStore::start(client))
        .await
        .expect("store starts");
    let pod_lists = server.list_queries(PODS);
    assert!(!pod_lists.is_empty(), "pods are listed");
    assert_eq!(
        pod_lists[0].get("fieldSelector").map(String::as_str),
        Some("status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed"),
        "finished Pods are left out by the API server"
    );

    let mesh = Mesh::new();
    let ca = mesh.cluster_ca("east");
    let mut registry = prometheus_client::registry::Registry::default();
    let controller = Controller::start(
        ControllerConfig::new("east"),
        Arc::new(store),
        creds(&ca, CONTROLLER, None),
        &mut registry,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let controller = Arc::new(controller);
    let serving = Arc::clone(&controller);
    let served = tokio::spawn(async move {
        let _ = serving
            .serve_discovery(listener, std::future::pending())
            .await;
    });
    let caller = Locality {
        cluster: "east".into(),
        region: "eu-west-1".into(),
        zone: "eu-west-1a".into(),
    };
    let mut sets = watch_endpoints(addr, creds(&ca, "/ns/shop/sa/client", None), caller).await;
    let id = |sa: &str| vec![format!("spiffe://{TD}/ns/shop/sa/{sa}")];

    let start = Instant::now();
    until(start, &mut sets, "both running pods offered", |s| {
        s.as_ref()
            .is_some_and(|s| addresses_and_identities(s).len() == 2)
    })
    .await;
    let set = sets.borrow().clone().expect("a set");
    assert_eq!(
        addresses_and_identities(&set),
        BTreeMap::from([
            ("10.244.1.5:8080".to_owned(), id("api")),
            ("10.244.2.7:8080".to_owned(), id("api-canary")),
        ]),
        "each endpoint with its own Pod's identity; the one whose Pod is unknown is not offered"
    );
    let zone_of = |address: &str| {
        set.groups
            .iter()
            .flat_map(|g| &g.endpoints)
            .find(|e| e.address == address)
            .and_then(|e| e.locality.as_ref())
            .map(|l| l.zone.clone())
    };
    assert_eq!(zone_of("10.244.1.5:8080").as_deref(), Some("eu-west-1a"));
    assert_eq!(
        zone_of("10.244.2.7:8080").as_deref(),
        Some("eu-west-1b"),
        "the zone of the endpoint's Node"
    );

    let metric = |registry: &prometheus_client::registry::Registry| {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    };
    assert!(
        metric(&registry)
            .contains("meshfed_controller_endpoints_unidentified{reason=\"pod_unknown\"} 1"),
        "the endpoint not offered is counted:\n{}",
        metric(&registry)
    );

    // The late Pod arrives: its endpoint is offered with its identity.
    let mut late = pod(
        "api-6d4cf56db6-late1",
        LATE,
        "api",
        "worker-a",
        "10.244.1.9",
    );
    late["metadata"]["resourceVersion"] = json!("4901");
    server.event(PODS, "ADDED", late);
    until(start, &mut sets, "the late pod's endpoint", |s| {
        s.as_ref()
            .is_some_and(|s| addresses_and_identities(s).get("10.244.1.9:8080") == Some(&id("api")))
    })
    .await;

    assert!(
        metric(&registry)
            .contains("meshfed_controller_endpoints_unidentified{reason=\"pod_unknown\"} 0"),
        "{}",
        metric(&registry)
    );

    // A rollout to a new service account: new Pods, the slice rewritten to
    // name them, the old Pods deleted.
    const V2: &str = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d";
    let mut v2 = pod(
        "api-7f8e9d0c1b-fghij",
        V2,
        "api-v2",
        "worker-a",
        "10.244.1.12",
    );
    v2["metadata"]["resourceVersion"] = json!("5000");
    server.event(PODS, "ADDED", v2);
    let mut rolled = api_slice(vec![
        pod_endpoint(
            "api-7f8e9d0c1b-fghij",
            V2,
            "10.244.1.12",
            "worker-a",
            "eu-west-1a",
            true,
        ),
        pod_endpoint(
            "api-canary-5b7f9-xyz12",
            C1,
            "10.244.2.7",
            "worker-b",
            "eu-west-1b",
            true,
        ),
    ]);
    rolled["metadata"]["resourceVersion"] = json!("5001");
    server.event(SLICES, "MODIFIED", rolled);
    let mut old = pod("api-6d4cf56db6-abcde", A1, "api", "worker-a", "10.244.1.5");
    old["metadata"]["resourceVersion"] = json!("5002");
    server.event(PODS, "DELETED", old);
    until(start, &mut sets, "the rolled-out identity", |s| {
        s.as_ref().is_some_and(|s| {
            addresses_and_identities(s)
                == BTreeMap::from([
                    ("10.244.1.12:8080".to_owned(), id("api-v2")),
                    ("10.244.2.7:8080".to_owned(), id("api-canary")),
                ])
        })
    })
    .await;

    // A Pod that finishes leaves the watch (the API server sends it as
    // deleted once it no longer matches the field selector): its endpoint goes.
    let mut done = pod(
        "api-canary-5b7f9-xyz12",
        C1,
        "api-canary",
        "worker-b",
        "10.244.2.7",
    );
    done["metadata"]["resourceVersion"] = json!("5003");
    server.event(PODS, "DELETED", done);
    until(
        start,
        &mut sets,
        "the finished pod's endpoint withdrawn",
        |s| {
            s.as_ref().is_some_and(|s| {
                addresses_and_identities(s)
                    == BTreeMap::from([("10.244.1.12:8080".to_owned(), id("api-v2"))])
            })
        },
    )
    .await;
    served.abort();
    // Identity is read, never written: the only writes are statuses.
    let writes = server.writes();
    assert!(
        writes.iter().all(|w| w.path.ends_with("/status")),
        "{writes:#?}"
    );
}
