//! The webhook over real TLS, called the way the API server calls it: the
//! server certificate is checked against the cluster's roots (the
//! `caBundle`) and the Service's DNS name, and an AdmissionReview v1 is
//! POSTed to /inject.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use meshfed_ca::{KeyAlgorithm, RootCa};
use meshfed_injector::{
    MAX_REVIEW_BYTES, Metrics, NamespacePolicies, PodInjector, SidecarTemplate, WebhookConfig,
};
use meshfed_trust::{Credentials, SpiffeId, TrustDomain, serving_names};
use prometheus_client::registry::Registry;
use rustls_pki_types::{PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const SERVICE: &str = "meshfed-injector.meshfed-system.svc";

/// The injector of cluster east, as `meshfed-injector` builds it.
fn injector() -> PodInjector {
    PodInjector {
        template: SidecarTemplate {
            cluster: "east".into(),
            region: Some("eu-west".into()),
            trust_domain: TrustDomain::new("mesh.test").expect("td"),
            image: "registry.test/meshfed-sidecar:1".into(),
            identity_server_id: "spiffe://mesh.test/ns/meshfed-system/sa/meshfed-identity".into(),
        },
        namespaces: NamespacePolicies::default(),
    }
}

struct Webhook {
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    registry: Arc<Registry>,
    _task: tokio::task::JoinHandle<()>,
}

/// The injector's serving certificate from a cluster CA, as the identity
/// service issues it, and the webhook serving with it.
async fn start() -> Webhook {
    meshfed_trust::install_crypto_provider();
    let td = TrustDomain::new("mesh.test").expect("td");
    let root =
        RootCa::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(3600)).expect("root");
    let ca = root
        .issue_cluster("east", Duration::from_secs(3600), Vec::new())
        .expect("cluster ca");
    let id =
        SpiffeId::parse("spiffe://mesh.test/ns/meshfed-system/sa/meshfed-injector").expect("id");
    let key = rcgen::KeyPair::generate().expect("key");
    let names = serving_names("meshfed-system", "meshfed-injector");
    let chain = ca
        .issue_serving_leaf(&id, &names, &key, Duration::from_secs(600))
        .expect("leaf");
    let creds = Credentials::new(
        chain,
        PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        ca.bundle().clone(),
    )
    .expect("credentials")
    .into_watch()
    .1;
    let mut roots = rustls::RootCertStore::empty();
    for r in ca.bundle().roots() {
        roots.add(r.clone()).expect("root");
    }
    let mut registry = Registry::default();
    let metrics = Metrics::new(registry.sub_registry_with_prefix("meshfed_injector"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(meshfed_injector::serve(
        listener,
        creds,
        Arc::new(injector()),
        metrics,
        WebhookConfig::default(),
        std::future::pending(),
    ));
    Webhook {
        addr,
        roots,
        registry: Arc::new(registry),
        _task: task,
    }
}

impl Webhook {
    /// POSTs `body` to `path` as the API server would, checking the server
    /// as `name`.
    async fn post(
        &self,
        name: &str,
        path: &str,
        body: Vec<u8>,
    ) -> std::io::Result<(StatusCode, Vec<u8>)> {
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from(name.to_owned()).map_err(std::io::Error::other)?;
        let tls = TlsConnector::from(Arc::new(tls)).connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::post(path)
            .header("content-type", "application/json")
            .header("host", SERVICE)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok((status, body.to_vec()))
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encode");
        out
    }
}

fn review(pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            "kind": { "group": "", "version": "v1", "kind": "Pod" },
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "requestKind": { "group": "", "version": "v1", "kind": "Pod" },
            "requestResource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": { "kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1" },
        },
    }))
    .expect("json")
}

/// A pod as the ReplicaSet controller creates it for a Deployment.
fn deployment_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "api-6d4cf56db6-", "namespace": "shop",
            "labels": { "app": "api", "pod-template-hash": "6d4cf56db6" },
            "annotations": annotations,
            "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-6d4cf56db6",
                "uid": "0c1e0f5a-8f7e-4c53-9a43-4b1d3f0e5f11", "controller": true, "blockOwnerDeletion": true }],
        },
        "spec": {
            "serviceAccountName": "api",
            "containers": [{ "name": "api", "image": "registry.test/api:1.4",
                "ports": [{ "containerPort": 8080, "protocol": "TCP" }] }],
        },
    })
}

/// The patched pod of a 200 answer, or None when it carries no patch.
fn patched(pod: &Value, body: &[u8]) -> (Value, Option<Value>) {
    use base64::Engine as _;
    let answer: Value = serde_json::from_slice(body).expect("json");
    let response = answer["response"].clone();
    assert_eq!(response["uid"], "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4");
    let Some(patch) = response["patch"].as_str() else {
        return (response, None);
    };
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSONPatch");
    let mut pod = pod.clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies to the object sent");
    (response, Some(pod))
}

#[tokio::test]
async fn the_api_server_reaches_the_webhook_by_its_service_name_and_the_cluster_roots() {
    let hook = start().await;
    for name in serving_names("meshfed-system", "meshfed-injector") {
        let pod = deployment_pod(json!({}));
        let (status, body) = hook
            .post(&name, "/inject", review(pod.clone()))
            .await
            .expect("answered");
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let (response, injected) = patched(&pod, &body);
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let injected = injected.expect("a patch");
        let inits = injected["spec"]["initContainers"]
            .as_array()
            .expect("init containers");
        let names: Vec<&str> = inits.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, ["meshfed-init", "meshfed-sidecar"]);
        assert_eq!(inits[1]["image"], "registry.test/meshfed-sidecar:1");
        let id = inits[1]["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == meshfed_runtime::env::ID)
            .expect(meshfed_runtime::env::ID)["value"]
            .clone();
        assert_eq!(
            id, "spiffe://mesh.test/ns/shop/sa/api",
            "the pod's own service account"
        );
        assert_eq!(
            injected["metadata"]["labels"]["meshfed.io/injected"],
            "true"
        );
        assert_eq!(
            injected["spec"]["containers"], pod["spec"]["containers"],
            "the app is untouched"
        );
    }
    // Another name is not the injector's: the API server would refuse it.
    let err = hook
        .post(
            "meshfed-controller.meshfed-system.svc",
            "/inject",
            review(json!({})),
        )
        .await
        .expect_err("wrong name");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(
        hook.metrics()
            .contains("meshfed_injector_reviews_total{outcome=\"injected\"} 2"),
        "{}",
        hook.metrics()
    );
}

#[tokio::test]
async fn opted_out_and_injected_pods_are_left_alone_and_bad_annotations_refused() {
    let hook = start().await;
    let opted_out = deployment_pod(json!({ "meshfed.io/inject": "false" }));
    let (status, body) = hook
        .post(SERVICE, "/inject", review(opted_out.clone()))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK);
    let (response, patch) = patched(&opted_out, &body);
    assert_eq!((response["allowed"].clone(), patch), (json!(true), None));

    // A pod injected once (e.g. by `meshctl inject`, or reinvocation) is not injected again.
    let pod = deployment_pod(json!({}));
    let (_, body) = hook
        .post(SERVICE, "/inject", review(pod.clone()))
        .await
        .expect("answered");
    let injected = patched(&pod, &body).1.expect("injected");
    let (_, body) = hook
        .post(SERVICE, "/inject", review(injected.clone()))
        .await
        .expect("answered");
    let (response, patch) = patched(&injected, &body);
    assert_eq!((response["allowed"].clone(), patch), (json!(true), None));

    let bad = deployment_pod(json!({ "meshfed.io/skip-inbound-ports": "ssh" }));
    let (status, body) = hook
        .post(SERVICE, "/inject", review(bad.clone()))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::OK);
    let (response, patch) = patched(&bad, &body);
    assert_eq!(patch, None);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    assert_eq!(
        response["status"]["message"],
        "cannot add the Meshfed sidecar to pod shop/api-6d4cf56db6-*: \
         meshfed.io/skip-inbound-ports: \"ssh\" is not a port"
    );
    let metrics = hook.metrics();
    for line in [
        "meshfed_injector_reviews_total{outcome=\"skipped\"} 2",
        "meshfed_injector_reviews_total{outcome=\"refused\"} 1",
        "meshfed_injector_reviews_total{outcome=\"injected\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn huge_and_misdirected_requests_are_refused_and_counted() {
    let hook = start().await;
    let huge = review(json!({ "metadata": { "name": "p", "annotations": {
        "filler": "x".repeat(MAX_REVIEW_BYTES) } } }));
    let (status, body) = hook.post(SERVICE, "/inject", huge).await.expect("answered");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("an AdmissionReview larger than {MAX_REVIEW_BYTES} bytes is refused\n")
    );
    let (status, body) = hook
        .post(
            SERVICE,
            "/inject",
            b"{\"kind\":\"AdmissionReview\"".to_vec(),
        )
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).starts_with("malformed AdmissionReview: not JSON"));
    let (status, _) = hook
        .post(SERVICE, "/mutate", review(json!({})))
        .await
        .expect("answered");
    assert_eq!(status, StatusCode::NOT_FOUND);
    let metrics = hook.metrics();
    assert!(
        metrics.contains("meshfed_injector_reviews_total{outcome=\"malformed\"} 2"),
        "{metrics}"
    );
}

#[test]
fn pods_of_odd_shapes_are_answered_never_a_panic() {
    let injector = injector();
    // Not an object at all: the review itself is malformed.
    let answer = meshfed_injector::review(&review(json!("a string")), &injector);
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let mut answered = 0;
    for pod in [
        json!({ "metadata": "x", "spec": {} }),
        json!({ "metadata": { "labels": ["a"], "annotations": 7 }, "spec": { "containers": [] } }),
        json!({ "metadata": null, "spec": { "initContainers": {}, "containers": [] } }),
        json!({ "metadata": {}, "spec": { "volumes": "none", "containers": [] } }),
        json!({ "metadata": {}, "spec": [] }),
        json!({ "metadata": { "annotations": { "meshfed.io/inbound": "x=y=z" } }, "spec": {} }),
        json!({ "metadata": {}, "spec": { "serviceAccountName": "Not_A_Name!", "containers": [] } }),
    ] {
        let answer = meshfed_injector::review(&review(pod.clone()), &injector);
        // Either a 400 naming what does not parse, or an answer to the request.
        if answer.status == StatusCode::BAD_REQUEST {
            assert!(
                answer.body.starts_with(b"malformed AdmissionReview: "),
                "{pod}"
            );
            continue;
        }
        assert_eq!(answer.status, StatusCode::OK, "{pod}");
        let v: Value = serde_json::from_slice(&answer.body).expect("json");
        assert_eq!(
            v["response"]["uid"], "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            "{pod}"
        );
        answered += 1;
    }
    assert!(
        answered >= 4,
        "most odd pods parse as pods and are answered: {answered}"
    );
}
