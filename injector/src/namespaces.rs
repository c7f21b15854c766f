//! The namespaces labelled for injection, followed through one watch: each
//! one's inbound policy (the `meshfed.io/inbound-policy` annotation, which
//! the webhook cannot see in a pod's review) for the webhook, and its
//! `meshfed-trust` ConfigMap. An injected sidecar mounts it for the roots it trusts the
//! identity service with before its first certificate, and a webhook may
//! not create objects itself (`sideEffects: None`), so the injector keeps
//! them level-triggered: each labelled namespace gets the roots of the
//! injector's own current bundle, again whenever a namespace is labelled, a
//! watch restarts, or the bundle changes (a root rotation reaches the
//! injector with its next certificate); and every few minutes, so a
//! ConfigMap deleted or edited by hand comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use meshfed_runtime::Readiness;
use meshfed_sidecar::Plaintext;
use meshfed_trust::{CredentialsWatch, certs_to_pem};
use serde_json::json;

use crate::contract::{KEY_ROOTS, TRUST_CONFIG};
use crate::pod::{INBOUND_POLICY, parse_policy};

/// The namespace label that turns injection on.
pub const INJECT_LABEL: &str = "meshfed.io/inject";
/// Its value.
pub const INJECT_ENABLED: &str = "enabled";
/// The field manager of the injector's writes.
pub const FIELD_MANAGER: &str = "meshfed-injector";

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(5);
/// How often every ConfigMap is written again, so one deleted or edited by
/// hand comes back (an unchanged apply is a no-op for the API server).
const RESYNC: Duration = Duration::from_secs(300);

/// Each labelled namespace's inbound policy, if it sets one: the policy, or
/// why its annotation is not one (its pods are then refused, naming it).
#[derive(Debug, Clone, Default)]
pub struct NamespacePolicies(Arc<RwLock<BTreeMap<String, Result<Plaintext, String>>>>);

impl NamespacePolicies {
    /// The policy `namespace` sets for its pods, if any.
    pub fn of(&self, namespace: &str) -> Result<Option<Plaintext>, String> {
        let policies = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match policies.get(namespace) {
            None => Ok(None),
            Some(Ok(p)) => Ok(Some(*p)),
            Some(Err(why)) => Err(format!("Namespace {namespace}: {INBOUND_POLICY}: {why}")),
        }
    }

    fn replace(&self, all: BTreeMap<String, Result<Plaintext, String>>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = all;
    }

    fn set(&self, namespace: String, policy: Option<Result<Plaintext, String>>) {
        let mut policies = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match policy {
            Some(p) => policies.insert(namespace, p),
            None => policies.remove(&namespace),
        };
    }
}

/// A namespace's policy annotation, parsed.
fn policy_of(ns: &Namespace) -> Option<Result<Plaintext, String>> {
    let value = ns.annotations().get(INBOUND_POLICY)?;
    Some(parse_policy(value).map_err(|e| e.to_string()))
}

/// Follows the labelled namespaces until the API server is gone for good
/// (never, in practice): `policies` for the webhook, a trust ConfigMap in
/// each. `ready` is set once the namespaces have been listed, so no pod is
/// meshed before its namespace's policy is known.
pub async fn follow_namespaces(
    client: Client,
    mut creds: CredentialsWatch,
    policies: NamespacePolicies,
    ready: Readiness,
) {
    let selector = format!("{INJECT_LABEL}={INJECT_ENABLED}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut events = watcher(namespaces, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut labelled = BTreeSet::new();
    let mut listing: Option<BTreeMap<String, Option<Result<Plaintext, String>>>> = None;
    // What each namespace was last given; empty after a failure, so it is retried.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut roots = roots_pem(&creds);
    let start = tokio::time::Instant::now();
    let mut retry = tokio::time::interval_at(start + RETRY, RETRY);
    let mut resync = tokio::time::interval_at(start + RESYNC, RESYNC);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listing = Some(BTreeMap::new()),
                Some(Ok(Event::InitApply(ns))) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(ns.name_any(), policy_of(&ns));
                    }
                }
                Some(Ok(Event::InitDone)) => {
                    let listed = listing.take().unwrap_or_default();
                    labelled = listed.keys().cloned().collect();
                    policies.replace(listed.into_iter().filter_map(|(n, p)| Some((n, p?))).collect());
                    ready.set(true);
                }
                Some(Ok(Event::Apply(ns))) => {
                    policies.set(ns.name_any(), policy_of(&ns));
                    labelled.insert(ns.name_any());
                }
                Some(Ok(Event::Delete(ns))) => {
                    policies.set(ns.name_any(), None);
                    labelled.remove(&ns.name_any());
                }
                Some(Err(e)) => tracing::warn!(error = %e, "watching labelled namespaces failed; retrying"),
                None => return,
            },
            changed = creds.changed() => {
                if changed.is_err() {
                    return;
                }
                roots = roots_pem(&creds);
            }
            _ = retry.tick() => {}
            _ = resync.tick() => written.clear(),
        }
        written.retain(|ns, _| labelled.contains(ns));
        for ns in &labelled {
            if written.get(ns) == Some(&roots) {
                continue;
            }
            match apply(&client, ns, &roots).await {
                Ok(()) => {
                    tracing::info!(namespace = %ns, "trust ConfigMap written");
                    written.insert(ns.clone(), roots.clone());
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "cannot write the trust ConfigMap; retrying");
                    written.remove(ns);
                }
            }
        }
    }
}

fn roots_pem(creds: &CredentialsWatch) -> String {
    certs_to_pem(creds.borrow().bundle().roots())
}

async fn apply(client: &Client, namespace: &str, roots: &str) -> Result<(), kube::Error> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": TRUST_CONFIG,
            "namespace": namespace,
            "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER, "app.kubernetes.io/part-of": "meshfed" },
        },
        "data": { KEY_ROOTS: roots },
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    maps.patch(TRUST_CONFIG, &params, &Patch::Apply(map))
        .await?;
    Ok(())
}
