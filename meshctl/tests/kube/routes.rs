//! `routes`: the observed share read from the calling sidecars' metrics
//! through the API server's pod proxy — every running meshed pod with
//! `--observed`, or the pods named — and a pod that cannot be read named
//! in a sentence.

use meshctl::{MetricsSource, read_metrics, route_rows};
use meshfed_resources::route::HttpRoute;

use crate::prelude::*;
use crate::standin::*;

const PODS: &str = "/api/v1/pods?&fieldSelector=status.phase%3DRunning&labelSelector=meshfed.io%2Finjected%3Dtrue&limit=200";
/// The sidecar's metrics through the API server's pod proxy.
fn proxy() -> String {
    format!(
        "/api/v1/namespaces/web/pods/frontend-1:{}/proxy/metrics",
        meshfed_runtime::port::SIDECAR_ADMIN
    )
}

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: api, port: 80}]
  rules:
  - backendRefs: [{name: api, port: 80, weight: 90}, {name: api-west, port: 80, weight: 10}]
"#;

/// What frontend-1's sidecar counted of the split.
const METRICS: &str = "# TYPE meshfed_sidecar_route_requests counter\n\
meshfed_sidecar_route_requests_total{service=\"api.shop:80\",route=\"shop/api-split\",rule=\"0\",backend=\"api.shop:80\"} 88\n\
meshfed_sidecar_route_requests_total{service=\"api.shop:80\",route=\"shop/api-split\",rule=\"0\",backend=\"api-west.shop:80\"} 12\n";

/// The metadata-only list of meshed pods (kube asks it with a JSON content type).
fn list_meshed() -> Exchange {
    Exchange {
        content_type: Some(JSON),
        ..Exchange::get(PODS)
    }
}

fn meshed_pods(pods: &[(&str, &str)], more: bool) -> Value {
    let items: Vec<Value> = pods
        .iter()
        .map(|(ns, name)| {
            json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": { "name": name, "namespace": ns,
                              "labels": { "meshfed.io/injected": "true" } },
            })
        })
        .collect();
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": { "resourceVersion": "4711", "continue": if more { "more" } else { "" } },
        "items": items,
    })
}

#[tokio::test]
async fn observed_reads_each_running_meshed_pod_through_the_pod_proxy() {
    let (client, api) = ApiServer::start(vec![
        list_meshed().answers(meshed_pods(&[("web", "frontend-1")], false)),
        Exchange::get(proxy()).answers_text(METRICS),
    ]);
    let cluster = kube_cluster(client, "east");
    let observed = within(read_metrics(&cluster, &[], true))
        .await
        .expect("metrics read");
    api.assert_done();
    assert_eq!((observed.read, observed.more), (1, false));
    assert!(observed.unread.is_empty(), "{:?}", observed.unread);
    let route: HttpRoute = serde_saphyr::from_str(ROUTE).expect("route");
    let rows = route_rows(&[route], &observed.samples);
    let shares: Vec<_> = rows[0]
        .backends
        .iter()
        .map(|b| (b.backend.as_str(), b.observed, b.requests))
        .collect();
    assert_eq!(
        shares,
        [
            ("api.shop:80", Some(88.0), Some(88)),
            ("api-west.shop:80", Some(12.0), Some(12)),
        ]
    );
}

#[tokio::test]
async fn a_meshed_pod_that_does_not_answer_is_left_out_and_named() {
    let refused = refusal(
        503,
        "ServiceUnavailable",
        &format!(
            "error trying to reach service: dial tcp 10.244.1.7:{}: connect: connection refused",
            meshfed_runtime::port::SIDECAR_ADMIN
        ),
        json!({}),
    );
    let (client, api) = ApiServer::start(vec![
        list_meshed().answers(meshed_pods(&[("web", "frontend-1")], true)),
        Exchange::get(proxy()).fails(StatusCode::SERVICE_UNAVAILABLE, refused),
    ]);
    let cluster = kube_cluster(client, "east");
    let observed = within(read_metrics(&cluster, &[], true))
        .await
        .expect("the share over the others");
    api.assert_done();
    assert_eq!((observed.read, observed.more), (0, true));
    let [why] = observed.unread.as_slice() else {
        panic!("one pod unread: {:?}", observed.unread);
    };
    for piece in [
        "pod web/frontend-1",
        "reading Pod web/frontend-1 through its proxy subresource in context east",
        "503 Service Unavailable",
        "connect: connection refused",
        "the API server could not reach the pod's port",
    ] {
        assert!(why.contains(piece), "{piece:?} missing from: {why}");
    }
}

#[tokio::test]
async fn a_named_pod_the_credentials_may_not_proxy_to_fails_saying_which_rbac() {
    let forbidden = refusal(
        403,
        "Forbidden",
        "pods \"frontend-1\" is forbidden: User \"dev\" cannot get resource \"pods/proxy\" in API group \"\" in the namespace \"web\"",
        json!({ "name": "frontend-1", "kind": "pods" }),
    );
    let (client, api) = ApiServer::start(vec![
        Exchange::get(proxy()).fails(StatusCode::FORBIDDEN, forbidden),
    ]);
    let cluster = kube_cluster(client, "east");
    let source: MetricsSource = "web/frontend-1".parse().expect("a pod");
    let err = within(read_metrics(&cluster, &[source], false))
        .await
        .expect_err("forbidden");
    api.assert_done();
    assert_reads(
        &err,
        &[
            "reading the metrics of pod web/frontend-1",
            "403 Forbidden",
            "cannot get resource \"pods/proxy\"",
            "may not get pods/proxy in namespace web",
            "kubectl auth can-i get pods --subresource=proxy -n web --context east",
        ],
    );
}

#[tokio::test]
async fn observed_and_pods_need_a_kubernetes_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::File(meshctl::FileCluster::open(dir.path()).expect("file cluster"));
    let err = read_metrics(&cluster, &[], true)
        .await
        .expect_err("not on a file store");
    assert_reads(
        &err,
        &[
            "--observed reads the sidecars of a Kubernetes cluster",
            "--metrics HOST:PORT",
        ],
    );
    let pod: MetricsSource = "web/frontend-1".parse().expect("a pod");
    let err = read_metrics(&cluster, &[pod], false)
        .await
        .expect_err("not on a file store");
    assert_reads(
        &err,
        &["pod web/frontend-1", "through a Kubernetes API server"],
    );
    for bad in ["frontend", "Web/x", "web/", "10.0.0.1"] {
        let why = bad.parse::<MetricsSource>().expect_err(bad);
        assert!(why.contains("neither HOST:PORT"), "{why}");
    }
}
