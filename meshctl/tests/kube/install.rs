//! `install --apply`.

use crate::objects::*;
use crate::prelude::*;
use crate::standin::*;

/// Where the API server takes each kind install makes: kind, apiVersion,
/// resource, namespaced.
const RESOURCES: &[(&str, &str, &str, bool)] = &[
    ("Namespace", "v1", "namespaces", false),
    (
        "CustomResourceDefinition",
        "apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        false,
    ),
    ("ServiceAccount", "v1", "serviceaccounts", true),
    (
        "ClusterRole",
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        false,
    ),
    (
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        false,
    ),
    ("Role", "rbac.authorization.k8s.io/v1", "roles", true),
    (
        "RoleBinding",
        "rbac.authorization.k8s.io/v1",
        "rolebindings",
        true,
    ),
    ("ConfigMap", "v1", "configmaps", true),
    ("Secret", "v1", "secrets", true),
    ("Service", "v1", "services", true),
    ("Deployment", "apps/v1", "deployments", true),
    (
        "PodDisruptionBudget",
        "policy/v1",
        "poddisruptionbudgets",
        true,
    ),
    (
        "MutatingWebhookConfiguration",
        "admissionregistration.k8s.io/v1",
        "mutatingwebhookconfigurations",
        false,
    ),
];

/// The server-side apply URL of `object`.
fn apply_uri(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let Some((_, api_version, resource, namespaced)) = RESOURCES.iter().find(|r| r.0 == kind)
    else {
        panic!("install made a {kind} ({name}), which this test has no URL for");
    };
    assert_eq!(object["apiVersion"], *api_version, "{kind} {name}");
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    let ns = object["metadata"]["namespace"].as_str();
    // Namespaced objects name their namespace, so printed manifests land there too.
    let scope = match (namespaced, ns) {
        (true, Some(ns)) => format!("/namespaces/{ns}"),
        (false, None) => String::new(),
        _ => panic!("{kind} {name}: namespace {ns:?} for a namespaced={namespaced} kind"),
    };
    format!("{prefix}{scope}/{resource}/{name}{SSA}")
}

/// One apply per object, in order, each answered with the object as stored.
fn apply_transcript(objects: &[Value]) -> Vec<Exchange> {
    objects
        .iter()
        .map(|o| Exchange::apply(apply_uri(o), o.clone()).answers(served(o.clone())))
        .collect()
}

async fn apply(transcript: Vec<Exchange>, objects: &[Value]) -> anyhow::Result<usize> {
    let (client, api) = ApiServer::start(transcript);
    let east = stand_in(client, "east");
    let result = within(meshctl::apply_objects(&east, objects)).await;
    api.assert_done();
    result
}

#[tokio::test]
async fn install_apply_applies_every_object_in_order() {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let transcript = apply_transcript(&objects);
    let uris: Vec<&str> = transcript.iter().map(|e| e.uri.as_str()).collect();
    for want in [
        "/api/v1/namespaces/meshfed-system?&force=true&fieldManager=meshctl",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/links.meshfed.io?&force=true&fieldManager=meshctl",
        "/apis/apps/v1/namespaces/meshfed-system/deployments/meshfed-gateway?&force=true&fieldManager=meshctl",
        "/apis/policy/v1/namespaces/meshfed-system/poddisruptionbudgets/meshfed-gateway?&force=true&fieldManager=meshctl",
        // The leader Lease's RBAC, in the controller's namespace only.
        "/apis/rbac.authorization.k8s.io/v1/namespaces/meshfed-system/roles/meshfed-controller?&force=true&fieldManager=meshctl",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/meshfed-system/rolebindings/meshfed-controller?&force=true&fieldManager=meshctl",
        "/apis/policy/v1/namespaces/meshfed-system/poddisruptionbudgets/meshfed-controller?&force=true&fieldManager=meshctl",
    ] {
        assert!(uris.contains(&want), "{want} not among {uris:#?}");
    }

    let applied = apply(transcript, &objects).await.expect("apply");
    assert_eq!(applied, objects.len());
}

#[tokio::test]
async fn install_apply_with_a_ca_applies_the_secret_and_trust() {
    let dir = tempfile::tempdir().expect("tempdir");
    member(dir.path(), &root(&dir.path().join("root")), "east");
    let ca = dir.path().join("east");
    let ca = ca.to_str().expect("utf-8 path");
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--ca", ca]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let transcript = apply_transcript(&objects);
    let uris: Vec<&str> = transcript.iter().map(|e| e.uri.as_str()).collect();
    for want in [
        "/api/v1/namespaces/meshfed-system/secrets/meshfed-ca?&force=true&fieldManager=meshctl",
        "/api/v1/namespaces/meshfed-system/configmaps/meshfed-trust?&force=true&fieldManager=meshctl",
    ] {
        assert!(uris.contains(&want), "{want} not among {uris:#?}");
    }

    let applied = apply(transcript, &objects).await.expect("apply");
    assert_eq!(applied, objects.len());
}

/// The install's objects, and the transcript up to the `kind` named
/// `name`, whose apply the API server refuses with `code` and `status`.
fn refused_at(
    kind: &str,
    name: &str,
    code: StatusCode,
    status: Value,
) -> (Vec<Value>, Vec<Exchange>) {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let at = objects
        .iter()
        .position(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("install makes {kind} {name}"));
    let mut transcript = apply_transcript(&objects[..=at]);
    let last = transcript.pop().expect("one exchange at least");
    transcript.push(last.fails(code, status));
    (objects, transcript)
}

#[tokio::test]
async fn install_apply_stops_at_the_first_refusal_and_says_who_may_not_do_what() {
    let message = "clusterroles.rbac.authorization.k8s.io \"meshfed-controller\" is forbidden: \
        User \"dev\" cannot patch resource \"clusterroles\" in API group \
        \"rbac.authorization.k8s.io\" at the cluster scope";
    let forbidden = refusal(
        403,
        "Forbidden",
        message,
        json!({ "name": "meshfed-controller", "group": "rbac.authorization.k8s.io", "kind": "clusterroles" }),
    );
    let (objects, transcript) = refused_at(
        "ClusterRole",
        "meshfed-controller",
        StatusCode::FORBIDDEN,
        forbidden,
    );

    let err = apply(transcript, &objects).await.expect_err("forbidden");
    let text = assert_reads(
        &err,
        &[
            "applying ClusterRole meshfed-controller",
            "context east (https://east.k8s.test:6443)",
            "403 Forbidden",
            message,
        ],
    );
    assert_eq!(
        text,
        format!(
            "applying ClusterRole meshfed-controller in context east (https://east.k8s.test:6443) \
             failed: 403 Forbidden: {message}; your credentials for context east may not patch \
             clusterroles.rbac.authorization.k8s.io; ask a cluster admin for RBAC (kubectl auth \
             can-i patch clusterroles.rbac.authorization.k8s.io --all-namespaces --context east)"
        )
    );
}

#[tokio::test]
async fn install_apply_of_an_object_another_manager_owns_says_whose_fields_conflict() {
    let message = "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using v1: .data.x";
    let conflict = refusal(
        409,
        "Conflict",
        message,
        json!({ "causes": [{
            "reason": "FieldManagerConflict",
            "message": "conflict with \"kubectl-client-side-apply\" using v1",
            "field": ".data.x",
        }] }),
    );
    let (objects, transcript) = refused_at(
        "ConfigMap",
        "meshfed-cluster",
        StatusCode::CONFLICT,
        conflict,
    );

    let err = apply(transcript, &objects).await.expect_err("conflict");
    assert_reads(
        &err,
        &[
            "applying ConfigMap meshfed-system/meshfed-cluster in context east \
             (https://east.k8s.test:6443) failed: 409 Conflict: ",
            message,
            "kubectl get configmaps meshfed-cluster -n meshfed-system --show-managed-fields \
             -o yaml --context east",
        ],
    );
}

#[tokio::test]
async fn install_apply_to_an_unreachable_api_server_names_context_and_address() {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let (east, url) = unreachable("east").await;

    let err = within(meshctl::apply_objects(&east, &objects))
        .await
        .expect_err("nothing listens");
    assert_reads(
        &err,
        &[
            &format!(
                "applying Namespace meshfed-system: cannot reach the API server of context east \
                 at {url}: Connection refused"
            ),
            "; is the cluster up and the kubeconfig current?",
        ],
    );
}

/// One GET per CRD (established) and per Deployment (rolled out) of
/// `objects`, in order; `first` answers go before the ready one of the
/// Deployment they name.
fn wait_transcript(objects: &[Value], first: &[(&str, Value)]) -> Vec<Exchange> {
    let mut t = Vec::new();
    for o in objects {
        let name = o["metadata"]["name"].as_str().expect("named");
        match o["kind"].as_str() {
            Some("CustomResourceDefinition") => t.push(
                Exchange::get(format!("{CRDS}/{name}"))
                    .answers(crd_as_served(o.as_object().expect("an object"))),
            ),
            Some("Deployment") => {
                for (_, answer) in first.iter().filter(|(n, _)| *n == name) {
                    t.push(Exchange::get(format!("{DEPLOYMENTS}/{name}")).answers(answer.clone()));
                }
                let want = o["spec"]["replicas"].as_u64().unwrap_or(1) as u32;
                t.push(
                    Exchange::get(format!("{DEPLOYMENTS}/{name}"))
                        .answers(deployment(name, want, want)),
                );
            }
            _ => {}
        }
    }
    t
}

async fn wait(
    transcript: Vec<Exchange>,
    objects: &[Value],
    timeout: Duration,
) -> (anyhow::Result<()>, Vec<String>) {
    let (client, api) = ApiServer::start(transcript);
    let east = stand_in(client, "east");
    let seen = std::sync::Mutex::new(Vec::new());
    let every = Duration::from_millis(10);
    let result = within(meshctl::wait_rolled_out(
        &east,
        objects,
        timeout,
        every,
        |what| seen.lock().expect("seen").push(what.to_owned()),
    ))
    .await;
    api.assert_done();
    (result, seen.into_inner().expect("seen"))
}

#[tokio::test]
async fn install_waits_for_the_crds_to_be_established_and_the_deployments_to_roll_out() {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    // The gateway's new spec is not observed yet, then no replica is
    // available yet, then it is rolled out.
    let mut unobserved = deployment("meshfed-gateway", 2, 2);
    unobserved["metadata"]["generation"] = json!(2);
    let first = [
        ("meshfed-gateway", unobserved),
        ("meshfed-gateway", deployment("meshfed-gateway", 2, 0)),
    ];
    let (result, seen) = wait(wait_transcript(&objects, &first), &objects, DEADLINE).await;
    result.expect("ready");
    let expected: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            let name = o["metadata"]["name"].as_str()?;
            match o["kind"].as_str()? {
                "CustomResourceDefinition" => Some(format!("CustomResourceDefinition {name}")),
                "Deployment" => Some(format!("Deployment {NS}/{name}")),
                _ => None,
            }
        })
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn install_wait_gives_up_naming_what_is_not_ready() {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let first = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    let name = first["metadata"]["name"].as_str().expect("named");
    let mut t = wait_transcript(&objects, &[]);
    let at = t
        .iter()
        .position(|e| e.uri.ends_with(&format!("deployments/{name}")))
        .expect("asked");
    t.truncate(at);
    t.push(Exchange::get(format!("{DEPLOYMENTS}/{name}")).answers(deployment(name, 2, 0)));
    // No time left: the first answer that is not ready is the last asked.
    let (result, _) = wait(t, &objects, Duration::ZERO).await;
    let message = format!("{:#}", result.expect_err("not ready"));
    assert_eq!(
        message,
        format!("Deployment {NS}/{name} is not ready after 0s: 0 of 2 updated replicas available")
    );
}

#[tokio::test]
async fn install_wait_stops_at_a_rollout_past_its_progress_deadline() {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let mut t = wait_transcript(&objects, &[]);
    let at = t
        .iter()
        .position(|e| e.uri.ends_with("deployments/meshfed-gateway"))
        .expect("asked");
    t.truncate(at);
    let mut stuck = deployment("meshfed-gateway", 2, 0);
    stuck["status"]["conditions"] = json!([{
        "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
        "message": "ReplicaSet \"meshfed-gateway-7d9f\" has timed out progressing.",
        "lastUpdateTime": CREATED, "lastTransitionTime": CREATED,
    }]);
    t.push(Exchange::get(format!("{DEPLOYMENTS}/meshfed-gateway")).answers(stuck));
    let (result, _) = wait(t, &objects, DEADLINE).await;
    let message = format!("{:#}", result.expect_err("stuck"));
    assert_eq!(
        message,
        format!(
            "Deployment {NS}/meshfed-gateway: the rollout exceeded its progress deadline: \
             ReplicaSet \"meshfed-gateway-7d9f\" has timed out progressing."
        )
    );
}

#[tokio::test]
async fn install_wait_with_expired_credentials_says_to_log_in_again() {
    let args: meshctl::InstallArgs = args(&["--cluster", "east", "--trust-domain", TRUST_DOMAIN]);
    let objects = meshctl::install_objects(&args).expect("objects");
    let mut t = wait_transcript(&objects, &[]);
    t.truncate(1);
    let first = t.pop().expect("a CRD is waited for");
    let crd = first.uri.rsplit('/').next().expect("a name").to_owned();
    // What the API server writes for a token it no longer accepts.
    t.push(first.fails(
        StatusCode::UNAUTHORIZED,
        refusal(401, "Unauthorized", "Unauthorized", json!({})),
    ));

    let (result, seen) = wait(t, &objects, DEADLINE).await;
    assert!(seen.is_empty(), "{seen:?}");
    assert_reads(
        &result.expect_err("unauthorized"),
        &[
            &format!(
                "reading CustomResourceDefinition {crd} in context east \
                 (https://east.k8s.test:6443) failed: 401 Unauthorized: Unauthorized; "
            ),
            "log in again or refresh the kubeconfig (kubectl auth whoami --context east)",
        ],
    );
}
