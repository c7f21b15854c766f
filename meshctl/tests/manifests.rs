//! Everything meshctl and deploy/ hand to a Kubernetes API server parses
//! strictly into the k8s-openapi types (a field those types do not know, or
//! a value of the wrong shape, fails), the reference manifests in deploy/
//! are exactly what `meshctl install` prints, the container build has a
//! stage for every image install refers to, and the data plane's
//! profile-guided build script refuses what it cannot do before it builds.
//!
//! Regenerate the reference manifests after a deliberate change:
//! `MESHFED_UPDATE_MANIFESTS=1 cargo test -p meshctl --test manifests`.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use meshfed_resources::crd::{FailoverPolicy, Link};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const REFERENCE: &str = "manifests/sample-cluster.yaml";
/// The flags the reference manifests are made with.
const REFERENCE_ARGS: &[&str] = &["--cluster", "sample", "--trust-domain", "mesh.example"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn meshctl(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run meshctl");
    assert!(
        out.status.success(),
        "meshctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A root and the `east` intermediate in `dir` (made fresh; nothing checked in).
fn cluster_ca(dir: &Path) -> PathBuf {
    meshctl(
        &[
            "trust",
            "init",
            "--trust-domain",
            "mesh.example",
            "--out",
            "root",
        ],
        dir,
    );
    meshctl(
        &[
            "trust",
            "issue-cluster",
            "--root",
            "root",
            "--cluster",
            "sample",
            "--out",
            "ca",
        ],
        dir,
    );
    dir.join("ca")
}

fn documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("valid YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Deserializes into `T` and back; anything the type dropped or reshaped is an error.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(doc, &back, String::new()) {
        None => Ok(()),
        Some(path) => Err(format!("{path} does not survive the typed round trip")),
    }
}

fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    None => return Some(format!("{p} (unknown field)")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, p) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k} (added)"))
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]"))),
        // Integers written as floats (`minimum: 0.0`) and back are the same number.
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(path),
    }
}

/// Parses one document by its apiVersion and kind; unknown kinds fail.
fn parse_strictly(doc: &Value) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api_version, kind) {
        ("v1", "Namespace") => strict::<Namespace>(doc),
        ("v1", "ServiceAccount") => strict::<ServiceAccount>(doc),
        ("v1", "ConfigMap") => strict::<ConfigMap>(doc),
        ("v1", "Secret") => strict::<Secret>(doc),
        ("v1", "Service") => strict::<Service>(doc),
        ("apps/v1", "Deployment") => strict::<Deployment>(doc),
        ("policy/v1", "PodDisruptionBudget") => strict::<PodDisruptionBudget>(doc),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            strict::<MutatingWebhookConfiguration>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => strict::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => strict::<ClusterRoleBinding>(doc),
        ("rbac.authorization.k8s.io/v1", "Role") => strict::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => strict::<RoleBinding>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            strict::<CustomResourceDefinition>(doc)
        }
        ("meshfed.io/v1alpha1", "Link") => strict::<Link>(doc),
        ("meshfed.io/v1alpha1", "FailoverPolicy") => strict::<FailoverPolicy>(doc),
        _ => Err(format!("no type for {api_version} {kind}")),
    }
}

fn assert_strict(what: &str, docs: &[Value]) {
    assert!(!docs.is_empty(), "{what}: no documents");
    for doc in docs {
        let name = format!(
            "{what}: {} {}",
            doc["kind"].as_str().unwrap_or("?"),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        if let Err(e) = parse_strictly(doc) {
            panic!("{name}: {e}");
        }
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn the_strict_parse_catches_what_it_should() {
    let mut svc: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "a", "namespace": "b" },
        "spec": { "ports": [{ "port": 80 }] },
    });
    assert_eq!(parse_strictly(&svc), Ok(()));
    svc["spec"]["ports"][0]["prot"] = "TCP".into();
    let err = parse_strictly(&svc).expect_err("a misspelt field fails");
    assert!(err.contains(".spec.ports[0].prot"), "{err}");
    svc["spec"]["ports"][0] = serde_json::json!({ "port": "eighty" });
    assert!(parse_strictly(&svc).is_err(), "a port must be a number");
    let unknown =
        serde_json::json!({ "apiVersion": "v1", "kind": "Pdo", "metadata": { "name": "a" } });
    assert!(parse_strictly(&unknown).is_err());
}

#[test]
fn every_manifest_in_deploy_parses_strictly() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(
        files.len() >= 3,
        "the CRDs and the reference manifests: {files:?}"
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        assert_strict(&f.display().to_string(), &documents(&text));
    }
}

#[test]
fn every_install_output_parses_strictly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = cluster_ca(tmp.path());
    let ca = ca.to_str().expect("utf-8 path");
    let variants: &[&[&str]] = &[
        &["install", "--cluster", "east", "--ca", ca],
        &[
            "install",
            "--cluster",
            "east",
            "--ca",
            ca,
            "--gateway-service-type",
            "NodePort",
            "--gateway-replicas",
            "3",
            "--region",
            "eu-west",
            "--image-registry",
            "registry.example/mesh/",
            "--image-tag",
            "v9",
            "--leaf-ttl",
            "10m",
        ],
        &[
            "install",
            "--cluster",
            "east",
            "--trust-domain",
            "mesh.example",
            "--gateway-api-crds",
        ],
    ];
    for args in variants {
        let yaml = meshctl(args, tmp.path());
        let docs = documents(&yaml);
        assert_strict(&format!("meshctl {args:?}"), &docs);
        // The HTTPRoute CRD only when asked for: served as v1, its status a
        // subresource the controller writes.
        let routes = docs.iter().find(|d| {
            d["kind"] == "CustomResourceDefinition"
                && d["metadata"]["name"] == "httproutes.gateway.networking.k8s.io"
        });
        assert_eq!(
            routes.is_some(),
            args.contains(&"--gateway-api-crds"),
            "{args:?}"
        );
        if let Some(crd) = routes {
            let v1 = &crd["spec"]["versions"][0];
            assert_eq!(
                (&v1["name"], &v1["served"], &v1["storage"]),
                (&json!("v1"), &json!(true), &json!(true))
            );
            assert!(v1["subresources"]["status"].is_object(), "{v1}");
            let crds = docs.iter().position(|d| d == crd).expect("listed");
            let first_deployment = docs
                .iter()
                .position(|d| d["kind"] == "Deployment")
                .expect("deployments");
            assert!(crds < first_deployment, "applied before what reads it");
        }
        let identity_env = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "meshfed-identity")
            .map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].clone())
            .expect("the identity Deployment");
        let leaf_ttl = identity_env
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == meshfed_runtime::env::LEAF_TTL)
            .map(|e| e["value"].clone());
        let wanted = args.contains(&"--leaf-ttl").then(|| Value::from("10m"));
        assert_eq!(leaf_ttl, wanted, "{args:?}");
        // -o json is the same objects as a List.
        let mut json_args = args.to_vec();
        json_args.extend(["-o", "json"]);
        let list: Value = serde_json::from_str(&meshctl(&json_args, tmp.path())).expect("JSON");
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().expect("items"), &docs);
    }
    // Injected workloads go to the same API server.
    let inject_args = [
        "inject",
        "-f",
        "app.yaml",
        "--cluster",
        "east",
        "--ca",
        ca,
        "-n",
        "shop",
    ];
    let inject = || meshctl(&inject_args, tmp.path());
    let app = tmp.path().join("app.yaml");
    std::fs::write(&app, APP).expect("write app.yaml");
    let injected = inject();
    let docs = documents(&injected);
    let deploy = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    assert_strict("meshctl inject", std::slice::from_ref(deploy));
    let init = deploy["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .expect("init containers");
    assert_eq!(init[0]["name"], "meshfed-init");
    assert_eq!(init[1]["name"], "meshfed-sidecar");
    assert_eq!(init[1]["restartPolicy"], "Always");
    let env = init[1]["env"].as_array().expect("env");
    let var = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        var(meshfed_runtime::env::ID),
        Some("spiffe://mesh.example/ns/shop/sa/api".into())
    );
    assert_eq!(
        var(meshfed_runtime::env::INBOUND),
        Some("15006=8080".into())
    );
    assert_eq!(
        var(meshfed_runtime::env::UPSTREAMS),
        Some("db.data:5432=15001 cache.data:6379=127.0.0.1:15002".into())
    );
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "ConfigMap" && d["metadata"]["namespace"] == "shop")
    );
    // Injecting twice changes nothing more.
    std::fs::write(&app, &injected).expect("write injected");
    let again = inject();
    let again = documents(&again);
    assert_eq!(
        again.iter().find(|d| d["kind"] == "Deployment"),
        Some(deploy),
        "a second inject leaves the workload as it was"
    );
    // Without meshfed.io/inbound, inbound is transparent: the Service keeps
    // its targetPort, and the output still parses strictly.
    let transparent_app = APP
        .replace("        meshfed.io/inbound: \"15006=8080\"\n", "")
        .replace("targetPort: 15006", "targetPort: 8080");
    assert_ne!(transparent_app, APP);
    std::fs::write(&app, &transparent_app).expect("write");
    let docs = documents(&inject());
    let deploy = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    assert_strict("meshctl inject (transparent)", std::slice::from_ref(deploy));
    let init = &deploy["spec"]["template"]["spec"]["initContainers"];
    assert!(
        init[0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--inbound-proxy-port"),
        "{init}"
    );
    assert!(
        init[1]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == meshfed_runtime::env::INBOUND_TRANSPARENT),
        "{init}"
    );
    // A malformed upstream is refused, naming the annotation.
    std::fs::write(&app, APP.replace("db.data:5432=15001", "db:5432=15001")).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(inject_args)
        .current_dir(tmp.path())
        .output()
        .expect("run meshctl");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("meshfed.io/upstreams"),
        "{err}"
    );
}

const APP: &str = "\
# the shop's API
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
spec:
  selector:
    matchLabels: { app: api }
  template:
    metadata:
      labels: { app: api }
      annotations:
        meshfed.io/inbound: \"15006=8080\"
        meshfed.io/upstreams: \"db.data:5432=15001 cache.data:6379=127.0.0.1:15002\"
    spec:
      serviceAccountName: api
      containers:
      - name: api
        image: registry.example/api:1
        ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  selector: { app: api }
  ports: [{ port: 80, targetPort: 15006 }]
";

#[test]
fn reference_manifests_are_what_install_prints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["install"];
    args.extend(REFERENCE_ARGS);
    let printed = meshctl(&args, tmp.path());
    let path = deploy_dir().join(REFERENCE);
    if std::env::var_os("MESHFED_UPDATE_MANIFESTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let header = format!(
            "# Generated by `meshctl install {}`; do not edit.\n\
             # Regenerate: MESHFED_UPDATE_MANIFESTS=1 cargo test -p meshctl --test manifests\n\
             # The CA Secret and the trust ConfigMap are left out (they hold the cluster's own\n\
             # certificates): `meshctl install --ca DIR` prints them too.\n",
            REFERENCE_ARGS.join(" ")
        );
        std::fs::write(&path, header + &printed).expect("write reference");
    }
    let reference = std::fs::read_to_string(&path).unwrap_or_default();
    let body: String = reference
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        body == printed,
        "deploy/{REFERENCE} is not what `meshctl install {}` prints; regenerate it with \
         MESHFED_UPDATE_MANIFESTS=1 cargo test -p meshctl --test manifests",
        REFERENCE_ARGS.join(" ")
    );

    // With the CA, install prints the same plus exactly the trust objects.
    let ca = cluster_ca(tmp.path());
    let mut with_ca = vec![
        "install",
        "--cluster",
        "sample",
        "--ca",
        ca.to_str().expect("utf-8"),
    ];
    with_ca.extend(["--image-tag", env!("CARGO_PKG_VERSION")]);
    let full = documents(&meshctl(&with_ca, tmp.path()));
    let reference = documents(&printed);
    let extra: Vec<String> = full
        .iter()
        .filter(|d| !reference.contains(d))
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert_eq!(
        extra,
        [
            "ConfigMap meshfed-trust",
            "Secret meshfed-ca",
            "MutatingWebhookConfiguration meshfed-injector"
        ]
    );
    assert!(reference.iter().all(|d| full.contains(d)));
    // The API server checks the injector's certificate against the cluster's roots.
    let webhook = full
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("the webhook");
    use base64::Engine as _;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(
            webhook["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .expect("caBundle"),
        )
        .expect("base64");
    let roots = std::fs::read(ca.join("root.crt")).expect("root.crt");
    assert_eq!(bundle, roots);
    assert_eq!(
        webhook["webhooks"][0]["clientConfig"]["service"],
        serde_json::json!({ "name": "meshfed-injector", "namespace": "meshfed-system", "path": "/inject", "port": 443 })
    );
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"],
        serde_json::json!([
            { "key": "meshfed.io/inject", "operator": "In", "values": ["enabled"] },
            { "key": "kubernetes.io/metadata.name", "operator": "NotIn",
              "values": ["kube-system", "kube-public", "kube-node-lease", "meshfed-system"] },
        ])
    );
    assert_eq!(
        webhook["webhooks"][0]["rules"],
        serde_json::json!([{ "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"], "scope": "Namespaced" }])
    );
    assert_eq!(
        webhook["webhooks"][0]["admissionReviewVersions"],
        serde_json::json!(["v1"])
    );
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(webhook["webhooks"][0]["sideEffects"], "None");
}

#[test]
fn install_output_is_stable_and_ordered() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["install"];
    args.extend(REFERENCE_ARGS);
    let a = meshctl(&args, tmp.path());
    assert_eq!(
        a,
        meshctl(&args, tmp.path()),
        "the same flags print the same bytes"
    );
    let docs = documents(&a);
    let rank = |d: &Value| {
        let kind = d["kind"].as_str().unwrap_or_default();
        meshctl::KIND_ORDER
            .iter()
            .position(|k| *k == kind)
            .expect("a known kind")
    };
    assert!(docs.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])));
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[1]["kind"], "CustomResourceDefinition");
    // The gateway: two replicas, a PDB, a LoadBalancer by default.
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
    };
    assert_eq!(find("Deployment", "meshfed-gateway")["spec"]["replicas"], 2);
    assert_eq!(
        find("Service", "meshfed-gateway")["spec"]["type"],
        "LoadBalancer"
    );
    assert_eq!(
        find("PodDisruptionBudget", "meshfed-gateway")["spec"]["minAvailable"],
        1
    );
    // Least privilege: the gateway has no role and no API token.
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "meshfed-gateway")
    );
    assert_eq!(
        find("Deployment", "meshfed-gateway")["spec"]["template"]["spec"]["automountServiceAccountToken"],
        false
    );
    let identity_rules = &find("ClusterRole", "meshfed-identity")["rules"];
    assert_eq!(identity_rules.as_array().map(Vec::len), Some(1));
    assert_eq!(identity_rules[0]["resources"][0], "tokenreviews");
}

#[test]
fn the_controller_is_highly_available() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["install"];
    args.extend(REFERENCE_ARGS);
    let docs = documents(&meshctl(&args, tmp.path()));
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
    };
    let name = "meshfed-controller";
    let d = find("Deployment", name);
    let spec = &d["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    // Two replicas, one leading; a rollout adds the new one before an old one goes.
    assert_eq!(spec["replicas"], 2);
    assert_eq!(
        spec["strategy"],
        serde_json::json!({ "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } })
    );
    // The Deployment and the budget select the pods by their own labels.
    let selects = |selector: &Value| {
        let m = selector["matchLabels"].as_object().expect("matchLabels");
        assert!(!m.is_empty());
        assert!(
            m.iter().all(|(k, v)| pod_labels[k] == *v),
            "{selector} vs {pod_labels}"
        );
    };
    selects(&spec["selector"]);
    let pdb = find("PodDisruptionBudget", name);
    selects(&pdb["spec"]["selector"]);
    assert_eq!(pdb["metadata"]["namespace"], "meshfed-system");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    // Spread over nodes and zones, but never unschedulable for want of them.
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    selects(&anti["labelSelector"]);
    assert!(
        pod["affinity"]["podAntiAffinity"]
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .is_none()
    );
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    selects(&spread["labelSelector"]);
    // The probes ask the admin port the controller listens on.
    let c = &pod["containers"][0];
    let port_named = |n: &str| {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == n)
            .map(|p| p["containerPort"].clone())
            .unwrap_or_else(|| panic!("no port {n}"))
    };
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/live");
    for probe in ["readinessProbe", "livenessProbe"] {
        let port = c[probe]["httpGet"]["port"].as_str().expect("a named port");
        assert_eq!(
            port_named(port),
            meshfed_runtime::port::CONTROLLER_ADMIN,
            "{probe}"
        );
    }
    let env = c["env"].as_array().expect("env");
    let var = |n: &str| {
        env.iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("no {n}"))
    };
    assert_eq!(
        var(meshfed_runtime::env::ADMIN_LISTEN)["value"],
        meshfed_runtime::all_interfaces(meshfed_runtime::port::CONTROLLER_ADMIN).to_string()
    );
    // Each replica is its pod, in its namespace: the Lease's holder and home.
    assert_eq!(
        var(meshfed_runtime::env::POD_NAME)["valueFrom"],
        serde_json::json!({ "fieldRef": { "fieldPath": "metadata.name" } })
    );
    assert_eq!(
        var(meshfed_runtime::env::POD_NAMESPACE)["valueFrom"],
        serde_json::json!({ "fieldRef": { "fieldPath": "metadata.namespace" } })
    );
    // Time to hand the Lease over (2 s) and drain (5 s).
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("set");
    assert!((10..=30).contains(&grace), "{grace}");
    // The Lease, by name, in meshfed-system only: what kube-lease-manager
    // does (get, create, patch), nothing more.
    let role = find("Role", name);
    assert_eq!(role["metadata"]["namespace"], "meshfed-system");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "resourceNames": ["meshfed-controller"], "verbs": ["get", "patch"] },
        ])
    );
    let binding = find("RoleBinding", name);
    assert_eq!(binding["metadata"]["namespace"], "meshfed-system");
    assert_eq!(
        binding["roleRef"],
        serde_json::json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name })
    );
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{ "kind": "ServiceAccount", "name": name, "namespace": "meshfed-system" }])
    );
    assert_eq!(pod["serviceAccountName"], name);
    // No cluster-wide grant on leases.
    let cluster_role = find("ClusterRole", name);
    assert!(
        !cluster_role.to_string().contains("leases"),
        "{cluster_role}"
    );
}

#[test]
fn the_container_build_makes_every_image_install_uses() {
    let dockerfile =
        std::fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1))
        .map(str::trim)
        .collect();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["install"];
    args.extend(REFERENCE_ARGS);
    let docs = documents(&meshctl(&args, tmp.path()));
    let mut images: Vec<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["image"].as_str().expect("image").to_owned())
        .collect();
    images.push(format!(
        "ghcr.io/meshfed/meshfed-sidecar:{}",
        env!("CARGO_PKG_VERSION")
    ));
    for image in &images {
        let name = image
            .rsplit('/')
            .next()
            .and_then(|n| n.split(':').next())
            .expect("image name");
        assert!(
            stages.contains(&name),
            "no Dockerfile stage {name} for {image}: {stages:?}"
        );
        assert!(
            dockerfile.contains(&format!("--bin {name}")),
            "the build stage does not build {name}"
        );
    }
    // Each binary the Dockerfile builds is one the workspace defines.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifests: String = [
        "identity",
        "controller",
        "gateway",
        "sidecar",
        "injector",
        "meshctl",
    ]
    .iter()
    .map(|m| std::fs::read_to_string(root.join(m).join("Cargo.toml")).expect("Cargo.toml"))
    .collect();
    for bin in dockerfile.split("--bin ").skip(1) {
        let bin = bin.split_whitespace().next().expect("a name");
        assert!(
            manifests.contains(&format!("name = \"{bin}\"")),
            "the Dockerfile builds {bin}, which no crate defines"
        );
    }
}

/// `deploy/pgo-build` is clean shell and, before it builds anything, refuses
/// when no llvm-profdata of rustc's LLVM version is there (its profiles are
/// read only by that version), naming both ways to get one. It runs with a
/// PATH of only what it uses before that, and a `rustc` that reports an LLVM
/// no machine has.
#[test]
fn the_pgo_build_refuses_without_llvm_profdata_of_rustcs_llvm() {
    let script = deploy_dir().join("pgo-build");
    let t = tempfile::tempdir().expect("tempdir");
    let bin = t.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let path = std::env::var_os("PATH").expect("PATH is set");
    for tool in ["bash", "dirname", "sed", "grep"] {
        let found = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} is on no directory of PATH"));
        std::os::unix::fs::symlink(found, bin.join(tool)).expect("symlink");
    }
    let fake = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let file = bin.join(name);
        std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    fake(
        "rustc",
        r#"case "$1" in -vV) echo "LLVM version: 99.1.0" ;; --print) echo /nonexistent ;; esac"#,
    );
    let ran = t.path().join("cargo-ran");
    fake("cargo", &format!("touch {}", ran.display()));
    let out = Command::new(bin.join("bash"))
        .arg(&script)
        .env_clear()
        .env("PATH", &bin)
        .output()
        .expect("run deploy/pgo-build");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for said in [
        "no llvm-profdata of LLVM 99",
        "rustup component add llvm-tools",
        "apt-get install llvm-99",
    ] {
        assert!(err.contains(said), "no {said:?} in: {err}");
    }
    assert!(!ran.exists(), "cargo ran before the refusal");

    let syntax = Command::new(bin.join("bash"))
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash -n");
    assert!(syntax.status.success(), "bash -n deploy/pgo-build");
    match Command::new("shellcheck").arg(&script).output() {
        Ok(lint) => assert!(
            lint.status.success(),
            "shellcheck deploy/pgo-build:\n{}",
            String::from_utf8_lossy(&lint.stdout)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!(
            "\n\
             ************************************************************************\n\
             * SKIPPED: shellcheck is not installed, deploy/pgo-build was not linted.\n\
             * apt-get install shellcheck (CI installs it).\n\
             ************************************************************************\n"
        ),
        Err(e) => panic!("running shellcheck: {e}"),
    }
}
