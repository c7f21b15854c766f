//! What a failed Kubernetes API call tells a person: one sentence naming
//! what was asked of which object, the context and its API server, the HTTP
//! status, the API's own message and what to do about it — never kube's
//! `Status { .. }` debug dump, which its `Error::Api` Display appends.

use std::error::Error as _;

use kube::core::{ApiResource, Status};

/// What meshctl asked of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    List,
    /// A server-side apply.
    Apply,
    /// A merge patch.
    Patch,
    Delete,
}

impl Verb {
    /// The verb RBAC checks.
    fn rbac(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Apply | Verb::Patch => "patch",
            Verb::Delete => "delete",
        }
    }

    fn doing(self) -> &'static str {
        match self {
            Verb::Get => "reading",
            Verb::List => "listing",
            Verb::Apply => "applying",
            Verb::Patch => "patching",
            Verb::Delete => "deleting",
        }
    }
}

/// One API call, as messages name it: the verb and the object.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    verb: Verb,
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    Object {
        resource: ApiResource,
        /// `None`: cluster-wide (a cluster-scoped kind, or every namespace).
        namespace: Option<String>,
        /// `None`: the whole collection.
        name: Option<String>,
        /// A subresource of the object (`proxy`), if the call is on one.
        subresource: Option<&'static str>,
    },
    /// A non-resource URL such as `/version`.
    Path(String),
}

impl Call {
    /// A call on the kind `K` (cluster-wide until [`Call::namespace`]).
    pub(crate) fn on<K: kube::Resource<DynamicType = ()>>(verb: Verb) -> Self {
        Self::on_resource(verb, &ApiResource::erase::<K>(&()))
    }

    pub(crate) fn on_resource(verb: Verb, resource: &ApiResource) -> Self {
        Self {
            verb,
            target: Target::Object {
                resource: resource.clone(),
                namespace: None,
                name: None,
                subresource: None,
            },
        }
    }

    /// A call on a non-resource URL such as `/version`.
    pub(crate) fn path(verb: Verb, path: &str) -> Self {
        Self {
            verb,
            target: Target::Path(path.to_owned()),
        }
    }

    pub(crate) fn namespace(mut self, ns: &str) -> Self {
        if let Target::Object { namespace, .. } = &mut self.target {
            *namespace = Some(ns.to_owned());
        }
        self
    }

    pub(crate) fn named(mut self, object: &str) -> Self {
        if let Target::Object { name, .. } = &mut self.target {
            *name = Some(object.to_owned());
        }
        self
    }

    /// The call is on the object's subresource `sub` (`proxy`).
    pub(crate) fn subresource(mut self, sub: &'static str) -> Self {
        if let Target::Object { subresource, .. } = &mut self.target {
            *subresource = Some(sub);
        }
        self
    }

    fn sub(&self) -> Option<&'static str> {
        match &self.target {
            Target::Object { subresource, .. } => *subresource,
            Target::Path(_) => None,
        }
    }

    /// `applying Link meshfed-system/west`, `listing Services`, `reading /version`.
    fn describe(&self) -> String {
        let doing = self.verb.doing();
        match &self.target {
            Target::Path(p) => format!("{doing} {p}"),
            Target::Object {
                resource,
                namespace,
                name,
                subresource: Some(sub),
            } => {
                let ns = namespace
                    .as_deref()
                    .map_or_else(String::new, |ns| format!("{ns}/"));
                let n = name.as_deref().unwrap_or_default();
                format!(
                    "{doing} {} {ns}{n} through its {sub} subresource",
                    resource.kind
                )
            }
            Target::Object {
                resource,
                namespace,
                name,
                subresource: None,
            } => match (namespace, name) {
                (Some(ns), Some(n)) => format!("{doing} {} {ns}/{n}", resource.kind),
                (None, Some(n)) => format!("{doing} {} {n}", resource.kind),
                (Some(ns), None) => format!("{doing} {}s in namespace {ns}", resource.kind),
                (None, None) => format!("{doing} {}s", resource.kind),
            },
        }
    }

    /// `links.meshfed.io`, as RBAC and `kubectl auth can-i` name it.
    fn resource(&self) -> String {
        let plain = self.resource_without_sub();
        match self.sub() {
            Some(sub) => format!("{plain}/{sub}"),
            None => plain,
        }
    }

    fn resource_without_sub(&self) -> String {
        match &self.target {
            Target::Path(p) => p.clone(),
            Target::Object { resource, .. } if resource.group.is_empty() => resource.plural.clone(),
            Target::Object { resource, .. } => format!("{}.{}", resource.plural, resource.group),
        }
    }

    fn namespace_of(&self) -> Option<&str> {
        match &self.target {
            Target::Object { namespace, .. } => namespace.as_deref(),
            Target::Path(_) => None,
        }
    }

    /// A Meshfed custom resource, which exists only once the CRDs are installed.
    fn is_meshfed(&self) -> bool {
        matches!(&self.target, Target::Object { resource, .. } if resource.group == meshfed_resources::crd::GROUP)
    }

    /// `kubectl auth can-i` asking the question the API server asked.
    fn can_i(&self, context: &str) -> String {
        let scope = match (&self.target, self.namespace_of()) {
            (Target::Path(_), _) => String::new(),
            (_, Some(ns)) => format!(" -n {ns}"),
            (_, None) => " --all-namespaces".to_owned(),
        };
        let sub = self
            .sub()
            .map_or_else(String::new, |s| format!(" --subresource={s}"));
        format!(
            "kubectl auth can-i {} {}{sub}{scope} --context {context}",
            self.verb.rbac(),
            self.resource_without_sub()
        )
    }

    /// The object `kubectl get` shows with its field managers.
    fn managed_fields(&self, context: &str) -> String {
        let (name, ns) = match &self.target {
            Target::Object {
                name, namespace, ..
            } => (
                name.as_deref().unwrap_or_default(),
                namespace
                    .as_deref()
                    .map_or_else(String::new, |ns| format!(" -n {ns}")),
            ),
            Target::Path(_) => ("", String::new()),
        };
        format!(
            "kubectl get {} {name}{ns} --show-managed-fields -o yaml --context {context}",
            self.resource()
        )
    }
}

/// Where a call went: the kubeconfig context and its API server's URL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Server<'a> {
    pub context: &'a str,
    pub url: &'a str,
}

/// The sentence for `err`, which `call` to `server` failed with. It keeps
/// no source: every cause it knows is in the sentence, so printing the chain
/// adds nothing.
pub(crate) fn explain(err: &kube::Error, call: &Call, server: Server<'_>) -> anyhow::Error {
    let Server { context, url } = server;
    let what = call.describe();
    let sentence = match err {
        kube::Error::Api(status) => {
            let mut s = format!(
                "{what} in context {context} ({url}) failed: {}",
                status_line(status)
            );
            if let Some(message) = api_message(status) {
                s.push_str(": ");
                s.push_str(&message);
            }
            if let Some(hint) = hint(status, call, context) {
                s.push_str("; ");
                s.push_str(&hint);
            }
            s
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => match io_cause(err) {
            Some(io) => format!(
                "{what}: cannot reach the API server of context {context} at {url}: {io}; \
                 is the cluster up and the kubeconfig current?"
            ),
            None => format!(
                "{what}: the connection to the API server of context {context} at {url} failed: \
                 {}; run the command again, and check the cluster is up",
                deepest(err)
            ),
        },
        kube::Error::Auth(e) => format!(
            "{what} in context {context} ({url}): the kubeconfig's credentials for context \
             {context} cannot be used: {}; log in again or refresh the kubeconfig",
            chain(e)
        ),
        kube::Error::SerdeError(e) => format!(
            "{what} in context {context} ({url}): meshctl cannot read the API server's answer \
             ({e}); does this meshctl suit the cluster's Kubernetes version? (meshctl check)"
        ),
        other => format!("{what} in context {context} ({url}): {}", chain(other)),
    };
    anyhow::Error::msg(sentence)
}

/// `403 Forbidden`; the API's reason too where it says more than the code
/// (`409 Conflict (AlreadyExists)`, `422 Unprocessable Entity (Invalid)`).
fn status_line(status: &Status) -> String {
    let phrase = http::StatusCode::from_u16(status.code)
        .ok()
        .and_then(|c| c.canonical_reason());
    let mut line = match phrase {
        Some(p) => format!("{} {p}", status.code),
        None => format!("HTTP {}", status.code),
    };
    let reason = status.reason.as_str();
    let says_more = !reason.is_empty()
        && !reason.contains(' ')
        && phrase.is_none_or(|p| p.replace(' ', "") != reason);
    if says_more {
        line.push_str(&format!(" ({reason})"));
    }
    line
}

/// The API's `Status.message`, or the start of a body that was no Status
/// (a proxy's page, `404 page not found` for an API the server lacks).
fn api_message(status: &Status) -> Option<String> {
    /// kube's reason for a body it could not parse as a Status.
    const NOT_A_STATUS: &str = "Failed to parse error data";
    /// As much of a foreign body as a sentence can carry.
    const BODY_CHARS: usize = 300;
    let message = status.message.trim();
    if message.is_empty() {
        return None;
    }
    if status.reason == NOT_A_STATUS && message.chars().count() > BODY_CHARS {
        let start: String = message.chars().take(BODY_CHARS).collect();
        return Some(format!("{start}…"));
    }
    Some(message.to_owned())
}

/// What to do about `status`.
fn hint(status: &Status, call: &Call, context: &str) -> Option<String> {
    let verb = call.verb.rbac();
    let resource = call.resource();
    Some(match status.code {
        401 => format!(
            "the API server did not accept the credentials of context {context}: they may have \
             expired; log in again or refresh the kubeconfig (kubectl auth whoami --context {context})"
        ),
        403 => {
            let scope = call
                .namespace_of()
                .map_or_else(String::new, |ns| format!(" in namespace {ns}"));
            format!(
                "your credentials for context {context} may not {verb} {resource}{scope}; ask a \
                 cluster admin for RBAC ({})",
                call.can_i(context)
            )
        }
        404 if call.is_meshfed() => format!(
            "context {context} serves no {resource}: install Meshfed first \
             (meshctl install --apply --context {context})"
        ),
        404 => format!(
            "context {context} has no such object or API: is it the cluster you meant, and does \
             the namespace exist?"
        ),
        409 if call.verb == Verb::Apply => format!(
            "another writer owns fields meshctl sets, or changed the object meanwhile (the API's \
             message names it); see who with {}, hand those fields over or remove them, then \
             run the command again",
            call.managed_fields(context)
        ),
        409 => "the object changed meanwhile; run the command again".to_owned(),
        422 if call.is_meshfed() => "the API's message names the invalid fields; a Meshfed CRD \
             older than this meshctl rejects new ones: upgrade it first (meshctl install --apply)"
            .to_owned(),
        422 => "the API's message names the invalid fields; does this meshctl suit the \
             cluster's Kubernetes version?"
            .to_owned(),
        429 => "the API server is throttling requests; wait a moment and run the command again"
            .to_owned(),
        500..=599 if call.sub() == Some("proxy") => {
            "the API server could not reach the pod's port (the API's message says why): is \
             the pod running, and does it serve that port?"
                .to_owned()
        }
        500..=599 => format!(
            "the API server failed, not the request; run the command again, and if it keeps \
             failing look at the API server's health (kubectl get --raw /readyz --context {context})"
        ),
        _ => return None,
    })
}

/// The operating system's word on a connection that failed (`Connection
/// refused (os error 111)`, a DNS failure, a timeout), from kube's error
/// down through hyper's.
fn io_cause(err: &kube::Error) -> Option<String> {
    let mut cause = err.source();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.to_string());
        }
        cause = e.source();
    }
    None
}

/// The innermost cause of `err`.
fn deepest(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `err` and its causes on one line, each said once.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    const EAST: Server<'static> = Server {
        context: "east",
        url: "https://east.test:6443",
    };

    #[test]
    fn a_refusal_reads_as_one_sentence() {
        let call = Call::on::<meshfed_resources::crd::Link>(Verb::List);
        let e = status(404, "Failed to parse error data", "404 page not found\n");
        assert_eq!(
            explain(&e, &call, EAST).to_string(),
            "listing Links in context east (https://east.test:6443) failed: 404 Not Found: \
             404 page not found; context east serves no links.meshfed.io: install Meshfed \
             first (meshctl install --apply --context east)"
        );
    }

    #[test]
    fn the_reason_is_named_where_it_says_more_than_the_code() {
        let line = |code, reason| status_line(&Status::failure("", reason).with_code(code));
        assert_eq!(line(403, "Forbidden"), "403 Forbidden");
        assert_eq!(line(409, "AlreadyExists"), "409 Conflict (AlreadyExists)");
        assert_eq!(line(422, "Invalid"), "422 Unprocessable Entity (Invalid)");
        assert_eq!(line(404, "Failed to parse error data"), "404 Not Found");
    }

    #[test]
    fn a_cluster_wide_question_asks_across_namespaces() {
        let call = Call::on::<k8s_openapi::api::core::v1::Node>(Verb::List);
        assert_eq!(
            call.can_i("east"),
            "kubectl auth can-i list nodes --all-namespaces --context east"
        );
        let call = Call::on::<k8s_openapi::api::apps::v1::Deployment>(Verb::Get)
            .namespace("meshfed-system")
            .named("meshfed-gateway");
        assert_eq!(
            call.can_i("east"),
            "kubectl auth can-i get deployments.apps -n meshfed-system --context east"
        );
    }

    #[test]
    fn a_long_foreign_body_is_cut() {
        let page = format!("<html>{}</html>", "x".repeat(1000));
        let e = status(502, "Failed to parse error data", &page);
        let call = Call::path(Verb::Get, "/version");
        let text = explain(&e, &call, EAST).to_string();
        assert!(text.contains("502 Bad Gateway: <html>xxx"), "{text}");
        assert!(!text.contains("</html>"), "{text}");
        assert!(
            text.contains("kubectl get --raw /readyz --context east"),
            "{text}"
        );
    }
}
