//! Keeps the `meshfed-trust` ConfigMap in every namespace labelled for
//! injection. An injected sidecar mounts it for the roots it trusts the
//! identity service with before its first certificate, and a webhook may
//! not create objects itself (`sideEffects: None`), so the injector keeps
//! them level-triggered: each labelled namespace gets the roots of the
//! injector's own current bundle, again whenever a namespace is labelled, a
//! watch restarts, or the bundle changes (a root rotation reaches the
//! injector with its next certificate); and every few minutes, so a
//! ConfigMap deleted or edited by hand comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use meshfed_trust::{CredentialsWatch, certs_to_pem};
use serde_json::json;

/// The ConfigMap injected pods mount.
pub const TRUST_CONFIG: &str = "meshfed-trust";
/// Its key holding the roots (PEM).
pub const KEY_ROOTS: &str = "root.crt";
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

/// Runs until the client's API server is gone for good (never, in practice).
pub async fn keep_trust_configs(client: Client, mut creds: CredentialsWatch) {
    let selector = format!("{INJECT_LABEL}={INJECT_ENABLED}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut events = watcher(namespaces, watcher::Config::default().labels(&selector))
        .default_backoff()
        .boxed();
    let mut labelled = BTreeSet::new();
    let mut listing: Option<BTreeSet<String>> = None;
    // What each namespace was last given; empty after a failure, so it is retried.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    let mut roots = roots_pem(&creds);
    let start = tokio::time::Instant::now();
    let mut retry = tokio::time::interval_at(start + RETRY, RETRY);
    let mut resync = tokio::time::interval_at(start + RESYNC, RESYNC);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Event::Init)) => listing = Some(BTreeSet::new()),
                Some(Ok(Event::InitApply(ns))) => {
                    if let Some(l) = listing.as_mut() {
                        l.insert(ns.name_any());
                    }
                }
                Some(Ok(Event::InitDone)) => labelled = listing.take().unwrap_or_default(),
                Some(Ok(Event::Apply(ns))) => {
                    labelled.insert(ns.name_any());
                }
                Some(Ok(Event::Delete(ns))) => {
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
