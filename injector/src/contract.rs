//! The install contract every Meshfed pod follows: the names of the
//! components, and how a Meshfed container is shaped (k8s-openapi types)
//! and gets its certificate; their ports and environment variables are
//! `meshfed_runtime`'s. `meshctl install` builds the components'
//! Deployments from it and [`crate::add_sidecar`] builds the sidecar from
//! it, so both agree.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshfed_runtime::port;

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
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// An environment variable from the pod's own fields (the downward API),
/// e.g. `metadata.name` or `status.podIP`.
pub fn env_from_pod(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Env, volumes and mounts for a container that gets its certificate, as
/// `id`, from the identity service (which presents `identity_server_id`)
/// with a projected ServiceAccount token.
pub fn identity_client(
    identity_server_id: &str,
    id: &str,
) -> (Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>) {
    use meshfed_runtime::env as var;
    let env = vec![
        env(
            var::IDENTITY_ADDR,
            format!("{IDENTITY}.{NAMESPACE}.svc:{}", port::IDENTITY),
        ),
        env(var::IDENTITY_SERVER_ID, identity_server_id),
        env(var::ID, id),
        env(var::TOKEN_FILE, format!("{TOKEN_DIR}/token")),
        env(var::BUNDLE, format!("{TRUST_DIR}/{KEY_ROOTS}")),
    ];
    let volumes = vec![
        Volume {
            name: "meshfed-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                        ..ServiceAccountTokenProjection::default()
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "meshfed-trust".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: TRUST_CONFIG.into(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mounts = vec![
        mount("meshfed-token", TOKEN_DIR),
        mount("meshfed-trust", TRUST_DIR),
    ];
    (env, volumes, mounts)
}

/// An HTTP probe of the container's admin port.
pub fn admin_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::String("admin".into()),
            path: Some(path.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// CPU and memory as `requests` and `limits` take them.
pub fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}

/// A hardened container: non-root, read-only root, no capabilities.
pub fn container(name: &str, image: String, ports: &[(&str, u16)]) -> Container {
    Container {
        name: name.into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some((*n).into()),
                    container_port: i32::from(*p),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        env: Some(vec![env(meshfed_runtime::env::LOG_FORMAT, "json")]),
        liveness_probe: Some(admin_probe("/live", 10, 3)),
        readiness_probe: Some(admin_probe("/ready", 2, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "50m"), ("memory", "32Mi")])),
            limits: Some(quantities(&[("memory", "256Mi")])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}
