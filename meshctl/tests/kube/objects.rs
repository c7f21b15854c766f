//! Fixtures: trust material and API objects shaped as a real API server returns them.

use crate::prelude::*;
use crate::standin::*;

/// One cluster's trust material, as its `meshfed-trust` ConfigMap holds it.
#[derive(Debug)]
pub struct Member {
    pub cluster: &'static str,
    pub roots_pem: String,
    pub intermediate_pem: String,
    pub fingerprints: Vec<String>,
}

/// A root saved in `dir`.
pub fn root(dir: &Path) -> RootCa {
    let td = TrustDomain::new(TRUST_DOMAIN).expect("trust domain");
    let root = RootCa::generate(&td, KeyAlgorithm::EcdsaP256, 365 * DAY).expect("root");
    std::fs::create_dir_all(dir).expect("root dir");
    root.save(dir, false).expect("save root");
    root
}

/// `cluster`'s intermediate from `root`, saved in `dir/cluster` and read back.
pub fn member(dir: &Path, root: &RootCa, cluster: &'static str) -> Member {
    let ca = root
        .issue_cluster(cluster, 90 * DAY, Vec::new())
        .expect("cluster CA");
    let out = dir.join(cluster);
    std::fs::create_dir_all(&out).expect("cluster dir");
    ca.save(&out, false).expect("save cluster CA");
    let read = |f: &str| std::fs::read_to_string(out.join(f)).expect("saved CA file");
    Member {
        cluster,
        roots_pem: read(meshfed_trust::paths::ROOT_CERT),
        intermediate_pem: read(meshfed_trust::paths::INTERMEDIATE_CERT),
        fingerprints: ca.bundle().fingerprints(),
    }
}

/// West and east, issued from one root.
pub fn federation() -> (TempDir, Member, Member) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = root(&dir.path().join("root"));
    let west = member(dir.path(), &root, "west");
    let east = member(dir.path(), &root, "east");
    (dir, west, east)
}

pub fn part_of(name: &str) -> Value {
    json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "meshfed" })
}

/// A stable, UUID-shaped uid per object.
pub fn uid(ns: &str, name: &str) -> String {
    let h = format!("{ns}/{name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (h >> 20) & 0xfff,
        h & 0xffff_ffff_ffff
    )
}

/// `object` as the API server returns it: with uid, resourceVersion and creationTimestamp.
pub fn served(mut object: Value) -> Value {
    let meta = &mut object["metadata"];
    let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
    let name = meta["name"].as_str().unwrap_or_default().to_owned();
    meta["uid"] = json!(uid(&ns, &name));
    meta["resourceVersion"] = json!("48213");
    meta["creationTimestamp"] = json!(CREATED);
    object
}

pub fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": { "resourceVersion": "48213" }, "items": items,
    })
}

/// Items of a built-in kind's list carry no apiVersion and kind.
pub fn list_item(mut object: Value) -> Value {
    if let Value::Object(m) = &mut object {
        m.remove("apiVersion");
        m.remove("kind");
    }
    object
}

pub fn config_map(name: &str, data: Value) -> Value {
    served(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": NS, "labels": part_of(name) },
        "data": data,
    }))
}

pub fn spiffe(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{service_account}")
}

/// The two GETs of a cluster's `meshfed-cluster` and `meshfed-trust` ConfigMaps.
pub fn info_exchanges(m: &Member) -> [Exchange; 2] {
    let cluster = config_map(
        "meshfed-cluster",
        json!({
            "cluster": m.cluster, "trustDomain": TRUST_DOMAIN, "gatewayPort": meshfed_runtime::port::GATEWAY.to_string(),
            "gatewayIdentity": spiffe("meshfed-gateway"),
            "controllerIdentity": spiffe("meshfed-controller"),
        }),
    );
    let trust = config_map(
        "meshfed-trust",
        json!({ "root.crt": m.roots_pem, "intermediate.crt": m.intermediate_pem }),
    );
    [
        Exchange::get(format!("{CONFIG_MAPS}/meshfed-cluster")).answers(cluster),
        Exchange::get(format!("{CONFIG_MAPS}/meshfed-trust")).answers(trust),
    ]
}

/// The gateway Service install made, as the API server holds it once allocated.
pub fn gateway_service(type_: &str, node_port: u16, ingress: Value) -> Value {
    served(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "meshfed-gateway", "namespace": NS, "labels": part_of("meshfed-gateway") },
        "spec": {
            "type": type_, "clusterIP": "10.96.14.20", "clusterIPs": ["10.96.14.20"],
            "ports": [{
                "name": "gateway", "protocol": "TCP", "port": meshfed_runtime::port::GATEWAY,
                "targetPort": "gateway", "nodePort": node_port,
            }],
            "selector": { "app.kubernetes.io/name": "meshfed-gateway" },
            "sessionAffinity": "None", "externalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": { "loadBalancer": ingress },
    }))
}

pub fn node(name: &str, addresses: &[(&str, &str)]) -> Value {
    let addresses: Vec<Value> = addresses
        .iter()
        .map(|(t, a)| json!({ "type": t, "address": a }))
        .chain([json!({ "type": "Hostname", "address": name })])
        .collect();
    list_item(served(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        "spec": { "podCIDR": "10.244.0.0/24" },
        "status": { "addresses": addresses },
    })))
}

/// The Link meshctl applies for `west` into east.
pub fn west_link(addresses: &[&str], port: u16, roots: &[String]) -> Value {
    json!({
        "apiVersion": "meshfed.io/v1alpha1", "kind": "Link",
        "metadata": {
            "name": "west", "namespace": NS, "labels": part_of("meshfed-link"),
            "annotations": { "meshfed.io/trust-roots": roots.join(",") },
        },
        "spec": {
            "cluster": "west",
            "gateway": {
                "addresses": addresses, "port": port,
                "identity": spiffe("meshfed-gateway"),
                "controllerIdentity": spiffe("meshfed-controller"),
                "resolvePeriodSeconds": 30,
            },
            "probe": { "periodSeconds": 2, "timeoutSeconds": 1, "failureThreshold": 3 },
            "leaseTtlSeconds": 5,
            "controlPlaneGraceSeconds": 300,
        },
    })
}

/// A Link as the API server stores it.
pub fn stored(link: Value) -> Value {
    let mut link = served(link);
    link["metadata"]["generation"] = json!(1);
    link
}

/// A stored Link with what its controller wrote in status.
pub fn with_status(link: Value, status: Value) -> Value {
    let mut link = stored(link);
    link["status"] = status;
    link
}

pub fn link_status(gateway_alive: bool, last_error: Option<&str>) -> Value {
    let condition = |type_: &str, ok: bool, reason: &str| {
        json!({
            "type": type_, "status": if ok { "True" } else { "False" }, "reason": reason,
            "message": "", "lastTransitionTime": "2025-01-15T10:00:05Z", "observedGeneration": 1,
        })
    };
    let mut status = json!({
        "conditions": [
            condition("Accepted", true, "Valid"),
            condition("Alive", gateway_alive, if gateway_alive { "Alive" } else { "ProbeFailing" }),
        ],
        "alive": gateway_alive, "federationUp": true, "gatewayAlive": gateway_alive,
        "latencyP50": "1.2ms", "latencyP99": "4.8ms", "importedServices": 1,
        "resolvedAddresses": ["203.0.113.10"], "observedGeneration": 1,
    });
    if let Some(e) = last_error {
        status["lastError"] = json!(e);
    }
    status
}

pub fn service(ns: &str, name: &str, labels: Value) -> Value {
    served(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": ns, "labels": labels },
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.80.17", "clusterIPs": ["10.96.80.17"],
            "ports": [{ "name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080 }],
            "selector": { "app": name }, "sessionAffinity": "None",
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": { "loadBalancer": {} },
    }))
}

/// A CRD as the API server serves it once established.
pub fn crd_as_served(crd: &serde_json::Map<String, Value>) -> Value {
    let mut crd = served(Value::Object(crd.clone()));
    crd["metadata"]["generation"] = json!(1);
    // Defaults the API server fills in, which check must ignore.
    crd["spec"]["conversion"] = json!({ "strategy": "None" });
    let established = |type_: &str, reason: &str| {
        json!({
            "type": type_, "status": "True", "reason": reason, "message": "",
            "lastTransitionTime": CREATED,
        })
    };
    crd["status"] = json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "storedVersions": ["v1alpha1"],
        "conditions": [
            established("NamesAccepted", "NoConflicts"),
            established("Established", "InitialNamesAccepted"),
        ],
    });
    crd
}

/// A Deployment as served, rolled out to `want` replicas of which `ready` are.
pub fn deployment(name: &str, want: u32, ready: u32) -> Value {
    let mut status = json!({
        "observedGeneration": 1, "replicas": want, "updatedReplicas": want,
        "conditions": [{
            "type": "Available", "status": if ready > 0 { "True" } else { "False" },
            "reason": if ready > 0 { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
            "message": "", "lastUpdateTime": CREATED, "lastTransitionTime": CREATED,
        }],
    });
    // The API server leaves out counts that are zero.
    if ready > 0 {
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(ready);
    }
    if want > ready {
        status["unavailableReplicas"] = json!(want - ready);
    }
    let mut d = served(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": NS, "labels": part_of(name), "generation": 1 },
        "spec": {
            "replicas": want,
            "selector": { "matchLabels": { "app.kubernetes.io/name": name } },
            "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": name } },
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{ "name": name, "image": format!("ghcr.io/meshfed/{name}:0.1.0") }],
                },
            },
            "strategy": { "type": "RollingUpdate" },
        },
    }));
    d["status"] = status;
    d
}
