//! One AdmissionReview (`admission.k8s.io/v1`) in, one out: a Pod being
//! created is meshed by [`Inject`], and the change goes back as a JSONPatch
//! against the very object the API server sent. Everything else is allowed
//! as it is. A pod that cannot be meshed as its annotations ask is refused
//! with the reason, so nobody ends up with a pod silently outside the mesh.

use http::StatusCode;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

/// How one pod is meshed: the function `meshctl inject` runs too, so a pod
/// injected by the webhook is exactly what `meshctl inject` writes.
pub trait Inject: Send + Sync + 'static {
    /// Adds the sidecar to `pod` (a Pod object) of `namespace`. `Ok(false)`
    /// when the pod opts out (`meshfed.io/inject: "false"`) or has a sidecar
    /// already; `Err` says why the pod cannot be meshed as it asks.
    fn inject(&self, pod: &mut Value, namespace: &str) -> Result<bool, String>;
}

/// What became of a review, as counted in `meshfed_injector_reviews_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A sidecar was added.
    Injected,
    /// Allowed unchanged: opted out, already injected, or not a pod creation.
    Skipped,
    /// The pod asked for something that cannot be done; creation refused.
    Refused,
    /// Not an AdmissionReview v1 the webhook can answer (HTTP 400).
    Malformed,
}

impl Outcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Refused => "refused",
            Self::Malformed => "malformed",
        }
    }
}

/// The answer to one review: an HTTP status and body.
#[derive(Debug)]
pub struct Answer {
    /// What happened.
    pub outcome: Outcome,
    /// 200 with an AdmissionReview, or 400 with a sentence.
    pub status: StatusCode,
    /// The body.
    pub body: Vec<u8>,
}

/// The API version the webhook is registered for.
const REVIEW_VERSION: &str = "admission.k8s.io/v1";

/// Answers the AdmissionReview in `body`.
pub fn review(body: &[u8], inject: &dyn Inject) -> Answer {
    let (raw, req) = match parse(body) {
        Ok(parsed) => parsed,
        Err(why) => {
            return Answer {
                outcome: Outcome::Malformed,
                status: StatusCode::BAD_REQUEST,
                body: format!("malformed AdmissionReview: {why}\n").into_bytes(),
            };
        }
    };
    let response = AdmissionResponse::from(&req);
    let (outcome, response) = decide(&raw, &req, response, inject);
    let mut answer =
        serde_json::to_value(response.into_review()).expect("an AdmissionReview always serializes");
    if let Some(patch) = answer.pointer_mut("/response/patch") {
        base64_patch(patch);
    }
    let body = serde_json::to_vec(&answer).expect("a JSON value always serializes");
    Answer {
        outcome,
        status: StatusCode::OK,
        body,
    }
}

/// The review's object as sent (patches are computed against it, not against
/// a re-serialized copy that might differ), and its typed request.
fn parse(body: &[u8]) -> Result<(Value, AdmissionRequest<DynamicObject>), String> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let version = raw["apiVersion"].as_str().unwrap_or_default();
    if raw["kind"] != "AdmissionReview" || version != REVIEW_VERSION {
        return Err(format!(
            "expected kind AdmissionReview, apiVersion {REVIEW_VERSION}; got kind {}, apiVersion {}",
            raw["kind"], raw["apiVersion"]
        ));
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "the review has no request".to_owned())?;
    if req.uid.is_empty() {
        return Err("the request has no uid".into());
    }
    let object = raw["request"]["object"].clone();
    Ok((object, req))
}

fn decide(
    object: &Value,
    req: &AdmissionRequest<DynamicObject>,
    allowed: AdmissionResponse,
    inject: &dyn Inject,
) -> (Outcome, AdmissionResponse) {
    let is_pod = req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
    if !is_pod || req.operation != Operation::Create || req.sub_resource.is_some() {
        return (Outcome::Skipped, allowed);
    }
    if !object.is_object() {
        return refuse(allowed, "the request to create a pod carries no pod".into());
    }
    let namespace = req
        .namespace
        .clone()
        .or_else(|| object["metadata"]["namespace"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "default".into());
    let mut pod = object.clone();
    match inject.inject(&mut pod, &namespace) {
        Ok(false) => (Outcome::Skipped, allowed),
        Ok(true) => {
            let patch = json_patch::diff(object, &pod);
            match allowed.clone().with_patch(patch) {
                Ok(patched) => {
                    tracing::info!(pod = %describe(object, &namespace), "sidecar injected");
                    (Outcome::Injected, patched)
                }
                Err(e) => refuse(
                    allowed,
                    format!("the sidecar patch does not serialize: {e}"),
                ),
            }
        }
        Err(why) => {
            let pod = describe(object, &namespace);
            tracing::warn!(%pod, reason = %why, "pod refused");
            refuse(
                allowed,
                format!("cannot add the Meshfed sidecar to pod {pod}: {why}"),
            )
        }
    }
}

/// kube-core writes the patch (a Go `[]byte`) as an array of numbers, but
/// the API server reads a `[]byte` only as a base64 string (kube-rs#1781).
fn base64_patch(patch: &mut Value) {
    use base64::Engine as _;
    if let Some(numbers) = patch.as_array() {
        let bytes: Vec<u8> = numbers
            .iter()
            .filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect();
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
}

fn refuse(response: AdmissionResponse, message: String) -> (Outcome, AdmissionResponse) {
    let mut refused = response.deny(message);
    refused.result.code = 400;
    refused.result.reason = "BadRequest".into();
    (Outcome::Refused, refused)
}

/// `shop/api-6d4cf56db6-*` for a pod named by its ReplicaSet, else its name.
fn describe(pod: &Value, namespace: &str) -> String {
    let meta = &pod["metadata"];
    match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => format!("{namespace}/{name}"),
        (_, Some(prefix)) => format!("{namespace}/{prefix}*"),
        _ => format!("{namespace}/(unnamed)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Adds a label, or refuses a pod annotated `bad`: enough to test the
    /// review around it (the real injection is tested with the webhook).
    struct Labeller;

    impl Inject for Labeller {
        fn inject(&self, pod: &mut Value, _namespace: &str) -> Result<bool, String> {
            if pod["metadata"]["annotations"]["bad"].is_string() {
                return Err("bad annotation".into());
            }
            if pod["metadata"]["labels"]["meshed"] == "true" {
                return Ok(false);
            }
            pod["metadata"]["labels"]["meshed"] = "true".into();
            Ok(true)
        }
    }

    fn request(kind: &str, operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "kind": "AdmissionReview",
            "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "", "version": "v1", "kind": kind },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "namespace": "shop",
                "operation": operation,
                "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
                "object": object,
                "oldObject": null,
                "dryRun": false,
            },
        }))
        .expect("json")
    }

    fn response(answer: &Answer) -> Value {
        assert_eq!(answer.status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&answer.body).expect("json");
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        v["response"].clone()
    }

    #[test]
    fn a_pod_gets_a_patch_made_against_the_object_sent() {
        let pod = json!({ "metadata": { "generateName": "api-", "labels": { "app": "api" } }, "spec": {} });
        let answer = review(&request("Pod", "CREATE", pod.clone()), &Labeller);
        assert_eq!(answer.outcome, Outcome::Injected);
        let r = response(&answer);
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        use base64::Engine as _;
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().expect("patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("a JSONPatch");
        let mut patched = pod;
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(
            patched["metadata"]["labels"],
            json!({ "app": "api", "meshed": "true" })
        );
    }

    #[test]
    fn what_is_not_a_pod_creation_or_opts_out_is_allowed_unchanged() {
        let pod = json!({ "metadata": { "name": "p" }, "spec": {} });
        for body in [
            request("Pod", "UPDATE", pod.clone()),
            request("Service", "CREATE", pod.clone()),
            request(
                "Pod",
                "CREATE",
                json!({ "metadata": { "name": "p", "labels": { "meshed": "true" } } }),
            ),
        ] {
            let answer = review(&body, &Labeller);
            assert_eq!(answer.outcome, Outcome::Skipped);
            let r = response(&answer);
            assert_eq!(r["allowed"], true);
            assert!(r.get("patch").is_none(), "{r}");
        }
    }

    #[test]
    fn a_pod_that_cannot_be_meshed_is_refused_with_the_reason() {
        let pod = json!({ "metadata": { "generateName": "api-6d4cf56db6-", "annotations": { "bad": "x" } } });
        let answer = review(&request("Pod", "CREATE", pod), &Labeller);
        assert_eq!(answer.outcome, Outcome::Refused);
        let r = response(&answer);
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        assert_eq!(
            r["status"]["message"],
            "cannot add the Meshfed sidecar to pod shop/api-6d4cf56db6-*: bad annotation"
        );
    }

    #[test]
    fn malformed_reviews_get_400_naming_what_is_wrong() {
        for (body, says) in [
            (b"{not json".to_vec(), "not JSON"),
            (
                serde_json::to_vec(&json!({ "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {} })).expect("json"),
                "apiVersion admission.k8s.io/v1",
            ),
            (
                serde_json::to_vec(&json!({ "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1" })).expect("json"),
                "no request",
            ),
            (
                serde_json::to_vec(&json!({ "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": { "uid": 7 } })).expect("json"),
                "invalid type",
            ),
        ] {
            let answer = review(&body, &Labeller);
            assert_eq!(answer.outcome, Outcome::Malformed);
            assert_eq!(answer.status, StatusCode::BAD_REQUEST);
            let text = String::from_utf8(answer.body).expect("utf-8");
            assert!(text.starts_with("malformed AdmissionReview: ") && text.contains(says), "{text}");
        }
    }
}
