//! The trust ConfigMaps against a stand-in API server (a tower-test mock
//! behind a real `kube::Client`): every labelled namespace gets the roots,
//! a newly labelled one too, a rotated bundle reaches them all, and a
//! refused write is tried again; each namespace's inbound policy is known
//! once the namespaces are listed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use meshfed_ca::{KeyAlgorithm, RootCa};
use meshfed_injector::{KEY_ROOTS, NamespacePolicies, TRUST_CONFIG, follow_namespaces};
use meshfed_trust::{Credentials, SpiffeId, TrustBundle, TrustDomain, certs_to_pem};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock;

const NAMESPACES: &str = "/api/v1/namespaces";

/// One ConfigMap write: namespace, roots written, field manager.
type Write = (String, String, String);

struct ApiServer {
    writes: Arc<Mutex<Vec<Write>>>,
    events: mpsc::UnboundedSender<Value>,
}

impl ApiServer {
    /// Serves a list of `labelled` namespaces; the first write to each of
    /// `refuse_once` is answered 403.
    fn start(labelled: &[&str], refuse_once: &[&str]) -> (kube::Client, Self) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
        let (events, mut rx) = mpsc::unbounded_channel::<Value>();
        let items: Vec<Value> = labelled
            .iter()
            .map(|n| {
                // web wants callers outside the mesh refused.
                let annotations = if *n == "web" { json!({ "meshfed.io/inbound-policy": "strict" }) } else { json!({}) };
                json!({ "metadata": { "name": n, "labels": { "meshfed.io/inject": "enabled" }, "annotations": annotations } })
            })
            .collect();
        let mut refuse: Vec<String> = refuse_once.iter().map(|s| (*s).to_owned()).collect();
        let recorded = writes.clone();
        tokio::spawn(async move {
            let mut watch = None;
            loop {
                tokio::select! {
                    next = handle.next_request() => {
                        let Some((req, send)) = next else { return };
                        let path = req.uri().path().to_owned();
                        let query = req.uri().query().unwrap_or_default().to_owned();
                        if path == NAMESPACES {
                            assert!(query.contains("labelSelector=meshfed.io%2Finject%3Denabled"), "{query}");
                            if query.contains("watch=true") {
                                watch = Some(send);
                            } else {
                                send.send_response(ok(&json!({ "metadata": { "resourceVersion": "1" }, "items": items })));
                            }
                            continue;
                        }
                        assert_eq!(req.method(), Method::PATCH, "{path}");
                        let ns = path.split('/').nth(4).unwrap_or_default().to_owned();
                        assert_eq!(path, format!("/api/v1/namespaces/{ns}/configmaps/{TRUST_CONFIG}"));
                        let manager = query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("fieldManager="))
                            .unwrap_or_default()
                            .to_owned();
                        let bytes = req.into_body().collect_bytes().await.expect("body");
                        let body: Value = serde_json::from_slice(&bytes).expect("json");
                        if let Some(i) = refuse.iter().position(|n| *n == ns) {
                            refuse.remove(i);
                            let status = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "Forbidden", "code": 403,
                                "message": "configmaps \"meshfed-trust\" is forbidden" });
                            send.send_response(respond(StatusCode::FORBIDDEN, &status));
                            continue;
                        }
                        let roots = body["data"][KEY_ROOTS].as_str().unwrap_or_default().to_owned();
                        recorded.lock().expect("lock").push((ns, roots, manager));
                        send.send_response(ok(&body));
                    }
                    Some(event) = rx.recv() => {
                        if let Some(send) = watch.take() {
                            send.send_response(ok_lines(&event));
                        }
                    }
                }
            }
        });
        (
            kube::Client::new(service, "default"),
            Self { writes, events },
        )
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().expect("lock").clone()
    }

    /// Waits until the writes hold `n` entries; returns them sorted.
    async fn until_writes(&self, n: usize) -> Vec<Write> {
        for _ in 0..200 {
            let w = self.writes();
            if w.len() >= n {
                let mut w = w;
                w.sort();
                return w;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} writes, got {:#?}", self.writes());
    }
}

fn ok(body: &Value) -> Response<Body> {
    respond(StatusCode::OK, body)
}

fn ok_lines(event: &Value) -> Response<Body> {
    let mut bytes = serde_json::to_vec(event).expect("json");
    bytes.push(b'\n');
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(bytes))
        .expect("response")
}

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn root(td: &TrustDomain) -> RootCa {
    RootCa::generate(td, KeyAlgorithm::EcdsaP256, Duration::from_secs(3600)).expect("root")
}

fn injector_creds(
    root: &RootCa,
    extra: Vec<rustls_pki_types::CertificateDer<'static>>,
) -> Credentials {
    let ca = root
        .issue_cluster("east", Duration::from_secs(3600), extra)
        .expect("cluster ca");
    let id =
        SpiffeId::parse("spiffe://mesh.test/ns/meshfed-system/sa/meshfed-injector").expect("id");
    let w = ca
        .issue_workload(&id, Duration::from_secs(600))
        .expect("leaf");
    w.into_credentials().expect("creds")
}

fn pem(bundle: &TrustBundle) -> String {
    certs_to_pem(bundle.roots())
}

#[tokio::test]
async fn every_labelled_namespace_gets_the_roots_and_keeps_them_current() {
    meshfed_trust::install_crypto_provider();
    let td = TrustDomain::new("mesh.test").expect("td");
    let old = root(&td);
    let first = injector_creds(&old, Vec::new());
    let first_pem = pem(first.bundle());
    let (tx, creds) = first.into_watch();
    let (client, api) = ApiServer::start(&["shop", "web"], &["web"]);
    let (policies, ready) = (
        NamespacePolicies::default(),
        meshfed_runtime::Readiness::default(),
    );
    let task = tokio::spawn(follow_namespaces(
        client,
        creds,
        policies.clone(),
        ready.clone(),
    ));

    // shop at once; web after its refused write is tried again (5 s).
    let writes = api.until_writes(2).await;
    assert!(ready.get(), "ready once the namespaces are listed");
    assert_eq!(
        policies.of("web"),
        Ok(Some(meshfed_sidecar::Plaintext::Strict))
    );
    assert_eq!(policies.of("shop"), Ok(None));
    let manager = "meshfed-injector".to_owned();
    assert_eq!(
        writes,
        [
            ("shop".to_owned(), first_pem.clone(), manager.clone()),
            ("web".to_owned(), first_pem.clone(), manager.clone()),
        ]
    );
    assert!(
        first_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{first_pem}"
    );

    // A namespace labelled later.
    api.events
        .send(json!({ "type": "ADDED", "object": { "metadata": { "name": "blog", "resourceVersion": "2",
            "labels": { "meshfed.io/inject": "enabled" },
            "annotations": { "meshfed.io/inbound-policy": "loose" } } } }))
        .expect("api server running");
    let writes = api.until_writes(3).await;
    assert!(
        writes.contains(&("blog".to_owned(), first_pem.clone(), manager.clone())),
        "{writes:#?}"
    );

    // A root rotation: the injector's next certificate trusts old and new.
    let new = root(&td);
    let rotated = injector_creds(&new, old_roots(&first_pem));
    let rotated_pem = pem(rotated.bundle());
    assert_ne!(rotated_pem, first_pem);
    tx.send(Arc::new(rotated)).expect("receiver alive");
    let writes = api.until_writes(6).await;
    let latest: BTreeMap<String, String> = writes
        .iter()
        .filter(|w| w.1 == rotated_pem)
        .map(|w| (w.0.clone(), w.1.clone()))
        .collect();
    assert_eq!(latest.keys().collect::<Vec<_>>(), ["blog", "shop", "web"]);
    task.abort();
}

fn old_roots(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    meshfed_trust::parse_certs(pem.as_bytes()).expect("pem")
}
