//! The install contract every Meshfed pod follows: names and ports of the
//! components, and how a Meshfed container is shaped and gets its
//! certificate. `meshctl install` builds the components' Deployments from it
//! and [`crate::add_sidecar`] builds the sidecar from it, so both agree.

use meshfed_runtime::port;
use serde_json::{Value, json};

/// The namespace every Meshfed component runs in.
pub const NAMESPACE: &str = "meshfed-system";
/// ConfigMap: the cluster's trust bundle (public parts only), in
/// `meshfed-system` and in every namespace with injected pods.
pub const TRUST_CONFIG: &str = "meshfed-trust";
/// The key of [`TRUST_CONFIG`] holding the roots (PEM).
pub const KEY_ROOTS: &str = "root.crt";

/// The identity service (Deployment, Service, ServiceAccount).
pub const IDENTITY: &str = "meshfed-identity";
/// The mirror controller.
pub const CONTROLLER: &str = "meshfed-controller";
/// The workload sidecar.
pub const SIDECAR: &str = "meshfed-sidecar";
/// The sidecar injector (the admission webhook).
pub const INJECTOR: &str = "meshfed-injector";

/// The uid the sidecar runs as; its own connections are not intercepted.
pub const SIDECAR_UID: i64 = 2102;

/// Where a projected ServiceAccount token for the identity service is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/meshfed";
/// Where [`TRUST_CONFIG`] is mounted.
pub const TRUST_DIR: &str = "/etc/meshfed/trust";
/// The audience of the ServiceAccount tokens components prove themselves with.
pub const TOKEN_AUDIENCE: &str = "meshfed-identity";
/// The uid every component runs as.
pub const RUN_AS: i64 = 65532;

/// An environment variable of a container.
pub fn env(name: &str, value: impl Into<String>) -> Value {
    json!({ "name": name, "value": value.into() })
}

/// Env, volumes and mounts for a container that gets its certificate, as
/// `id`, from the identity service (which presents `identity_server_id`)
/// with a projected ServiceAccount token.
pub fn identity_client(identity_server_id: &str, id: &str) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let env = vec![
        env(
            meshfed_runtime::env::IDENTITY_ADDR,
            format!("{IDENTITY}.{NAMESPACE}.svc:{}", port::IDENTITY),
        ),
        env(meshfed_runtime::env::IDENTITY_SERVER_ID, identity_server_id),
        env(meshfed_runtime::env::ID, id),
        env(
            meshfed_runtime::env::TOKEN_FILE,
            format!("{TOKEN_DIR}/token"),
        ),
        env(
            meshfed_runtime::env::BUNDLE,
            format!("{TRUST_DIR}/{KEY_ROOTS}"),
        ),
    ];
    let volumes = vec![
        json!({
            "name": "meshfed-token",
            "projected": { "sources": [{ "serviceAccountToken": {
                "audience": TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token",
            }}]},
        }),
        json!({ "name": "meshfed-trust", "configMap": { "name": TRUST_CONFIG } }),
    ];
    let mounts = vec![
        json!({ "name": "meshfed-token", "mountPath": TOKEN_DIR, "readOnly": true }),
        json!({ "name": "meshfed-trust", "mountPath": TRUST_DIR, "readOnly": true }),
    ];
    (env, volumes, mounts)
}

/// A hardened container: non-root, read-only root, no capabilities.
pub fn container(name: &str, image: String, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({ "name": n, "containerPort": p, "protocol": "TCP" }))
        .collect();
    let admin = json!({ "port": "admin", "path": "/live" });
    json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": ports,
        "env": [env(meshfed_runtime::env::LOG_FORMAT, "json")],
        "livenessProbe": { "httpGet": admin, "periodSeconds": 10, "failureThreshold": 3 },
        "readinessProbe": { "httpGet": { "port": "admin", "path": "/ready" }, "periodSeconds": 2, "failureThreshold": 2 },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "resources": {
            "requests": { "cpu": "50m", "memory": "32Mi" },
            "limits": { "memory": "256Mi" },
        },
    })
}
