//! The one function that meshes a pod: an init container that installs the
//! interception rules (outbound, and inbound unless the pod names explicit
//! inbound ports) and the sidecar as a native sidecar container (it starts,
//! and is ready, before the app). `meshctl inject` runs it on manifests and
//! the webhook on every pod created in a labelled namespace, so both write
//! the same pod.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ResourceRequirements, SeccompProfile, SecurityContext,
};
use meshfed_runtime::port;
use serde_json::{Value, json};

use meshfed_sidecar::Plaintext;
use meshfed_trust::TrustDomain;

use crate::contract::{
    CONTROLLER, NAMESPACE, SIDECAR, SIDECAR_UID, admin_probe, container, env as var, env_from_pod,
    identity_client, quantities,
};
use crate::namespaces::NamespacePolicies;
use crate::review::Inject;

/// Pod template annotation: `LISTEN=APP ...`, explicit inbound ports
/// instead of transparent inbound (the Service targets LISTEN).
pub const INBOUND: &str = "meshfed.io/inbound";
/// Pod template annotation: `PORT=ID[,ID...] ...`, who may call an inbound
/// port (an app port; with explicit inbound, a LISTEN port).
pub const ALLOW: &str = "meshfed.io/allow";
/// Pod template (or Namespace) annotation: `permissive` or `strict`, what
/// callers outside the mesh get on the app's ports (transparent inbound).
pub const INBOUND_POLICY: &str = "meshfed.io/inbound-policy";
/// Pod template annotation: `PORT=strict|permissive ...`, a port's own policy.
pub const INBOUND_PORT_POLICY: &str = "meshfed.io/inbound-port-policy";
/// Pod template annotation: `PORT ...` (or comma-separated), inbound ports
/// never intercepted (transparent inbound).
pub const SKIP_INBOUND_PORTS: &str = "meshfed.io/skip-inbound-ports";
/// Pod template annotation: `NAME.NAMESPACE:PORT=LISTEN ...`, explicit
/// upstreams: the app (or a port-forward) dials LISTEN on the pod's loopback
/// to reach the service, besides the transparent interception.
pub const UPSTREAMS: &str = "meshfed.io/upstreams";
/// Pod template annotation: `"false"` leaves the workload alone.
pub const INJECT: &str = "meshfed.io/inject";

/// Label on every pod the sidecar was added to.
pub const INJECTED: &str = "meshfed.io/injected";

/// What every sidecar of a cluster is given, from its install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarTemplate {
    /// The cluster's name.
    pub cluster: String,
    /// The cluster's region.
    pub region: Option<String>,
    /// The trust domain pods' identities are in.
    pub trust_domain: TrustDomain,
    /// The sidecar image.
    pub image: String,
    /// The SPIFFE ID the identity service presents.
    pub identity_server_id: String,
}

/// The webhook's [`Inject`]: [`add_sidecar`] with the policy of the pod's
/// namespace.
#[derive(Debug, Clone)]
pub struct PodInjector {
    /// What every sidecar is given.
    pub template: SidecarTemplate,
    /// The labelled namespaces' inbound policies.
    pub namespaces: NamespacePolicies,
}

impl Inject for PodInjector {
    fn inject(&self, pod: &mut Value, namespace: &str) -> Result<bool, String> {
        let policy = self.namespaces.of(namespace)?;
        add_sidecar(pod, namespace, policy, &self.template).map_err(|e| e.to_string())
    }
}

/// Why a pod cannot be meshed as it asks: a sentence naming the annotation
/// or field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(String);

impl InjectError {
    fn new(message: &str) -> Self {
        Self(message.to_owned())
    }
}

/// Adds the sidecar to a pod (template); `false` when it opts out or has one.
pub fn add_sidecar(
    pod: &mut Value,
    ns: &str,
    ns_policy: Option<Plaintext>,
    t: &SidecarTemplate,
) -> Result<bool, InjectError> {
    let annotations = pod["metadata"]["annotations"].clone();
    let note = |k: &str| {
        annotations
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if note(INJECT).as_deref() == Some("false") {
        return Ok(false);
    }
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Err(InjectError::new("has no pod spec"));
    };
    let has = |list: Option<&Value>| {
        list.and_then(Value::as_array)
            .is_some_and(|l| l.iter().any(|c| c["name"] == SIDECAR))
    };
    if has(spec.get("initContainers")) || has(spec.get("containers")) {
        return Ok(false);
    }
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let id = t
        .trust_domain
        .workload(ns, sa)
        .map_err(|e| InjectError(format!("identity of service account {ns}/{sa}: {e}")))?;
    let image = t.image.clone();
    let inbound = note(INBOUND).unwrap_or_default();
    let inbound_ports: Vec<u16> = inbound
        .split_whitespace()
        .map(|entry| {
            let listen = entry.split_once('=').map_or(entry, |(l, _)| l);
            let port = listen.rsplit(':').next().unwrap_or(listen);
            port.parse()
                .map_err(|_| InjectError(format!("{INBOUND}: {entry:?} is not LISTEN=APP")))
        })
        .collect::<Result<_, _>>()?;

    // Explicit inbound ports, or else transparent inbound.
    let transparent = inbound.is_empty();
    let skip_ports = match note(SKIP_INBOUND_PORTS) {
        Some(_) if !transparent => {
            return Err(InjectError(format!(
                "{SKIP_INBOUND_PORTS} is for transparent inbound; the pod names {INBOUND}"
            )));
        }
        Some(list) => list
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| InjectError(format!("{SKIP_INBOUND_PORTS}: {p:?} is not a port")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let policy = match note(INBOUND_POLICY) {
        Some(p) => {
            Some(parse_policy(&p).map_err(|e| InjectError(format!("{INBOUND_POLICY}: {e}")))?)
        }
        None => ns_policy,
    };
    let port_policies = note(INBOUND_PORT_POLICY);
    for entry in port_policies.iter().flat_map(|p| p.split_whitespace()) {
        entry
            .parse::<meshfed_sidecar::PortPolicy>()
            .map_err(|e| InjectError(format!("{INBOUND_PORT_POLICY}: {entry:?}: {e}")))?;
    }

    let mut ports = vec![("admin", port::SIDECAR_ADMIN)];
    let names: Vec<String> = (0..inbound_ports.len())
        .map(|i| format!("mesh-in-{i}"))
        .collect();
    ports.extend(
        names
            .iter()
            .map(String::as_str)
            .zip(inbound_ports.iter().copied()),
    );
    if transparent {
        ports.push(("mesh-in", port::SIDECAR_INBOUND));
    }
    let mut sidecar = container(SIDECAR, image.clone(), &ports);
    sidecar.args = Some(vec!["run".into()]);
    sidecar.restart_policy = Some("Always".into());
    if let Some(sc) = sidecar.security_context.as_mut() {
        sc.run_as_user = Some(SIDECAR_UID);
        sc.run_as_group = Some(SIDECAR_UID);
    }
    if let Some(r) = sidecar.resources.as_mut() {
        r.limits = Some(quantities(&[("memory", "64Mi")]));
    }
    // The app starts only once the sidecar is ready to carry its calls.
    sidecar.startup_probe = Some(admin_probe("/ready", 1, 30));
    let (id_env, volumes, mounts) = identity_client(&t.identity_server_id, &id.to_string());
    let env = sidecar.env.get_or_insert_with(Vec::new);
    env.push(var(meshfed_runtime::env::CLUSTER, &t.cluster));
    if let Some(region) = &t.region {
        env.push(var(meshfed_runtime::env::REGION, region));
    }
    env.extend([
        // Pods carry their node's zone label (Kubernetes 1.33+); empty otherwise.
        env_from_pod(
            meshfed_runtime::env::ZONE,
            "metadata.labels['topology.kubernetes.io/zone']",
        ),
        // How the controller finds this pod's rate limits (its EndpointSlices list it so).
        env_from_pod(meshfed_runtime::env::POD_IP, "status.podIP"),
        var(
            meshfed_runtime::env::DISCOVERY,
            format!("{CONTROLLER}.{NAMESPACE}.svc:{}", port::DISCOVERY),
        ),
        var(
            meshfed_runtime::env::TRANSPARENT_LISTEN,
            meshfed_runtime::loopback(port::SIDECAR_OUTBOUND).to_string(),
        ),
        var(
            meshfed_runtime::env::ADMIN_LISTEN,
            meshfed_runtime::all_interfaces(port::SIDECAR_ADMIN).to_string(),
        ),
    ]);
    if transparent {
        env.extend([
            var(
                meshfed_runtime::env::INBOUND_TRANSPARENT,
                meshfed_runtime::all_interfaces(port::SIDECAR_INBOUND).to_string(),
            ),
            var(
                meshfed_runtime::env::INBOUND_POLICY,
                policy.unwrap_or_default().as_str(),
            ),
        ]);
    } else {
        env.push(var(meshfed_runtime::env::INBOUND, inbound));
    }
    if let Some(p) = port_policies {
        env.push(var(meshfed_runtime::env::INBOUND_PORT_POLICY, p));
    }
    if let Some(allow) = note(ALLOW) {
        env.push(var(meshfed_runtime::env::ALLOW, allow));
    }
    if let Some(upstreams) = note(UPSTREAMS) {
        for entry in upstreams.split_whitespace() {
            entry
                .parse::<meshfed_sidecar::Upstream>()
                .map_err(|e| InjectError(format!("{UPSTREAMS}: {entry:?}: {e}")))?;
        }
        env.push(var(meshfed_runtime::env::UPSTREAMS, upstreams));
    }
    env.extend(id_env);
    sidecar.volume_mounts = Some(mounts);

    let mut init_args: Vec<String> = [
        "init-iptables",
        "--proxy-port",
        &port::SIDECAR_OUTBOUND.to_string(),
        "--proxy-uid",
        &SIDECAR_UID.to_string(),
    ]
    .map(str::to_owned)
    .into();
    if transparent {
        init_args.extend(
            [
                "--inbound-proxy-port",
                &port::SIDECAR_INBOUND.to_string(),
                "--admin-port",
                &port::SIDECAR_ADMIN.to_string(),
            ]
            .map(str::to_owned),
        );
        for p in skip_ports {
            init_args.extend(["--inbound-skip-port".to_owned(), p.to_string()]);
        }
    }
    let init = Container {
        name: "meshfed-init".into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(init_args),
        // Installing nat rules needs root and NET_ADMIN, only in this short-lived container.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            // iptables takes its lock under /run.
            read_only_root_filesystem: Some(false),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "16Mi")])),
            limits: Some(quantities(&[("memory", "64Mi")])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let (sidecar, init) = (to_json(&sidecar)?, to_json(&init)?);
    let volumes = volumes.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
    let inits = spec.entry("initContainers").or_insert_with(|| json!([]));
    let inits = inits
        .as_array_mut()
        .ok_or_else(|| InjectError::new("initContainers is not a list"))?;
    inits.insert(0, sidecar);
    inits.insert(0, init);
    let vols = spec.entry("volumes").or_insert_with(|| json!([]));
    let vols = vols
        .as_array_mut()
        .ok_or_else(|| InjectError::new("volumes is not a list"))?;
    vols.extend(volumes);
    let pod = pod
        .as_object_mut()
        .ok_or_else(|| InjectError::new("a pod template is a map"))?;
    let meta = pod.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    let labels = meta
        .as_object_mut()
        .ok_or_else(|| InjectError::new("metadata is a map"))?
        .entry("labels")
        .or_insert_with(|| json!({}));
    if labels.is_null() {
        *labels = json!({});
    }
    if let Value::Object(l) = labels {
        l.insert(INJECTED.into(), "true".into());
    }
    Ok(true)
}

/// A container or volume as the pod's JSON holds it.
fn to_json<T: serde::Serialize>(part: &T) -> Result<Value, InjectError> {
    serde_json::to_value(part).map_err(|e| InjectError(format!("cannot serialize: {e}")))
}

/// A `permissive` or `strict` policy annotation.
pub fn parse_policy(p: &str) -> Result<Plaintext, InjectError> {
    p.parse::<Plaintext>()
        .map_err(|e| InjectError(e.to_string()))
}
