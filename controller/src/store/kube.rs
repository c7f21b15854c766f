//! The Kubernetes backend of the cluster store. [`KubeStore`] owns one
//! watcher per resource the controller reads (Services, EndpointSlices, Pods,
//! Nodes, Links, FailoverPolicies and HTTPRoutes, in all namespaces), folds
//! their events into one [`ClusterState`] published on a watch channel, and
//! makes the controller's few writes: server-side apply of mirrors under
//! [`CONTROLLER`], their deletion, and the status of Links, FailoverPolicies
//! and HTTPRoutes.
//!
//! The Gateway API's HTTPRoute CRD is the cluster's, not Meshfed's: when
//! the API server does not serve it, the store starts without routes, says
//! so once, and takes them in as soon as the CRD is installed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, BoxStream, SelectAll, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::watcher::Event;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use meshfed_api::labels::{CONTROLLER, ORIGIN_CLUSTER, ZONE};
use meshfed_resources::crd::{
    FailoverPolicy, FailoverPolicyStatus, Link, LinkStatus, RateLimitPolicy, RateLimitPolicyStatus,
};
use meshfed_resources::route::{HttpRoute, HttpRouteStatusParents};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    ClusterState, Mirror, ObjKey, Outcomes, PodAccount, Store, StoreError, Table, compact_service,
    compact_slice, diffed, diffed_key, is_mirror, merged_route_parents,
};

/// How long [`KubeStore::start`] waits for every watcher's initial list.
const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Mirror writes in flight at once: a bulk import is neither one round
/// trip per mirror after the other nor a flood for the API server.
const PARALLEL_WRITES: usize = 16;

/// The cluster store backed by the Kubernetes API. Dropping it stops its
/// watchers.
pub struct KubeStore {
    client: Client,
    state: watch::Sender<Arc<ClusterState>>,
    watchers: JoinHandle<()>,
}

impl KubeStore {
    /// Starts the watchers and returns once every one of them has listed its
    /// resource, waiting at most a minute.
    pub async fn start(client: Client) -> Result<Self, StoreError> {
        Self::start_with_timeout(client, DEFAULT_SYNC_TIMEOUT).await
    }

    /// Like [`KubeStore::start`], waiting at most `timeout` for the initial
    /// lists. A resource the API server does not serve (the Meshfed CRDs not
    /// installed) fails at once rather than at the timeout.
    pub async fn start_with_timeout(client: Client, timeout: Duration) -> Result<Self, StoreError> {
        let events = stream::select_all([
            watch_all(&client, SERVICES, Update::Service),
            watch_all(&client, SLICES, Update::Slice),
            watch_all(&client, NODES, |e| Update::Node(Box::new(e))),
            watch_pods(&client),
            watch_all(&client, LINKS, Update::Link),
            watch_all(&client, POLICIES, Update::Policy),
            watch_all(&client, RATE_LIMITS, Update::RateLimit),
            watch_all(&client, ROUTES, Update::Route),
        ]);
        let (state, _) = watch::channel(Arc::default());
        let (progress_tx, mut progress) = watch::channel(Progress::new());
        let watchers = tokio::spawn(run(events, state.clone(), progress_tx));
        // Built before waiting so that every early return aborts the watchers.
        let store = Self {
            client,
            state,
            watchers,
        };
        let waited = tokio::time::timeout(timeout, async {
            progress.wait_for(Progress::finished).await.map(|_| ())
        })
        .await;
        let progress = progress.borrow();
        match waited {
            Ok(Ok(())) if progress.missing.is_none() => {
                tracing::info!("cluster state synced");
                Ok(store)
            }
            Ok(Err(_)) => Err(StoreError::NotSynced(
                "the watch task ended before the cluster state synced".into(),
            )),
            _ => Err(StoreError::NotSynced(progress.failure(timeout))),
        }
    }

    async fn apply(&self, mirror: Mirror) -> Result<(), StoreError> {
        let key = mirror.key();
        check_shape(&mirror, &key)?;
        self.cached_mirror(&key)?;
        let params = PatchParams::apply(CONTROLLER).force();
        let services: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        let applied = services
            .patch(&key.name, &params, &Patch::Apply(for_apply(mirror.service)))
            .await?;
        let uid = applied.metadata.uid.ok_or_else(|| {
            StoreError::Refused(format!(
                "the API server applied Service {key} but sent no uid"
            ))
        })?;
        let mut slice = for_apply(mirror.slice);
        own_by_service(&mut slice.metadata, &key.name, uid);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
        slices
            .patch(&key.name, &params, &Patch::Apply(slice))
            .await?;
        Ok(())
    }

    async fn delete(&self, key: ObjKey) -> Result<(), StoreError> {
        let (service, slice) = self.cached_mirror(&key)?;
        // What the cache has never seen is not deleted: a name unknown to it may
        // belong to a user's object created a moment ago.
        if let Some(meta) = slice {
            let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &key.namespace);
            delete_pinned(&api, &key.name, meta.uid).await?;
        }
        if let Some(meta) = service {
            let api: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
            delete_pinned(&api, &key.name, meta.uid).await?;
        }
        Ok(())
    }

    /// The cached Service and EndpointSlice under `key`, refusing either if it
    /// exists and is not a mirror: the cache is what keeps the controller's
    /// forced apply and its deletes off a user's own objects.
    fn cached_mirror(
        &self,
        key: &ObjKey,
    ) -> Result<(Option<ObjectMeta>, Option<ObjectMeta>), StoreError> {
        let state = self.state.borrow();
        let check = |meta: Option<&ObjectMeta>, kind: &str| match meta {
            Some(meta) if !is_mirror(meta.labels.as_ref()) => Err(StoreError::Refused(format!(
                "{kind} {key} exists and is not a Meshfed mirror (no {ORIGIN_CLUSTER} label); \
                 refusing to change it"
            ))),
            meta => Ok(meta.cloned()),
        };
        Ok((
            check(state.services.get(key).map(|s| &s.metadata), "Service")?,
            check(state.slices.get(key).map(|s| &s.metadata), "EndpointSlice")?,
        ))
    }

    async fn apply_status<K>(
        &self,
        key: ObjKey,
        kind: &'static str,
        status: impl Serialize,
    ) -> Result<(), StoreError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
        K: Clone + DeserializeOwned + fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        // Apply rather than merge: a field this manager set before and now
        // leaves out (a cleared lastError) is removed, so the status is replaced.
        let patch = Patch::Apply(serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": kind,
            "metadata": { "name": &*key.name, "namespace": &*key.namespace },
            "status": status,
        }));
        let params = PatchParams::apply(CONTROLLER).force();
        match api.patch_status(&key.name, &params, &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(StoreError::NotFound { kind, key }),
            Err(e) => Err(e.into()),
        }
    }

    /// A route's status is shared by every controller of its parents, and
    /// the Gateway API's `status.parents` is one list, replaced whole by a
    /// write: the others' entries are kept as the cache has them, and the
    /// write is conditional on that very version (a conflict is tried again
    /// at the next status pass, from the newer version).
    async fn route_status(
        &self,
        key: ObjKey,
        parents: Vec<HttpRouteStatusParents>,
    ) -> Result<(), StoreError> {
        let not_found = || StoreError::NotFound {
            kind: "HTTPRoute",
            key: key.clone(),
        };
        let current = self.state.borrow().routes.get(&key).cloned();
        let current = current.ok_or_else(not_found)?;
        let parents = merged_route_parents(current.status.as_ref(), parents);
        let patch = Patch::Merge(serde_json::json!({
            "metadata": { "resourceVersion": current.metadata.resource_version },
            "status": { "parents": parents },
        }));
        let api: Api<HttpRoute> = Api::namespaced(self.client.clone(), &key.namespace);
        match api
            .patch_status(&key.name, &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(not_found()),
            Err(e) => Err(e.into()),
        }
    }
}

impl Store for KubeStore {
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.subscribe()
    }

    fn apply_mirror(&self, mirror: Mirror) -> BoxFuture<'_, Result<(), StoreError>> {
        self.apply(mirror).boxed()
    }

    fn delete_mirror(&self, key: ObjKey) -> BoxFuture<'_, Result<(), StoreError>> {
        self.delete(key).boxed()
    }

    fn apply_mirrors(&self, mirrors: Vec<Mirror>) -> BoxFuture<'_, Outcomes> {
        stream::iter(mirrors)
            .map(move |m| async move { (m.key(), self.apply(m).await) })
            .buffered(PARALLEL_WRITES)
            .collect()
            .boxed()
    }

    fn delete_mirrors(&self, keys: Vec<ObjKey>) -> BoxFuture<'_, Outcomes> {
        stream::iter(keys)
            .map(move |k| async move { (k.clone(), self.delete(k).await) })
            .buffered(PARALLEL_WRITES)
            .collect()
            .boxed()
    }

    fn set_link_status(
        &self,
        key: ObjKey,
        status: LinkStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.apply_status::<Link>(key, "Link", status).boxed()
    }

    fn set_policy_status(
        &self,
        key: ObjKey,
        status: FailoverPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.apply_status::<FailoverPolicy>(key, "FailoverPolicy", status)
            .boxed()
    }

    fn set_rate_limit_status(
        &self,
        key: ObjKey,
        status: RateLimitPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.apply_status::<RateLimitPolicy>(key, "RateLimitPolicy", status)
            .boxed()
    }

    fn set_route_status(
        &self,
        key: ObjKey,
        parents: Vec<HttpRouteStatusParents>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.route_status(key, parents).boxed()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        self.watchers.abort();
    }
}

impl fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

/// Refuses a mirror whose two objects disagree on their key or that would not
/// be recognisable as a mirror once written.
fn check_shape(mirror: &Mirror, key: &ObjKey) -> Result<(), StoreError> {
    let slice = &mirror.slice;
    let slice_key = ObjKey::new(slice.namespace().unwrap_or_default(), slice.name_any());
    if key.namespace.is_empty() || key.name.is_empty() || slice_key != *key {
        return Err(StoreError::Refused(format!(
            "mirror {key}: its Service and EndpointSlice ({slice_key}) must share one namespace and name"
        )));
    }
    if !is_mirror(mirror.service.metadata.labels.as_ref())
        || !is_mirror(slice.metadata.labels.as_ref())
    {
        return Err(StoreError::Refused(format!(
            "mirror {key} lacks the {ORIGIN_CLUSTER} label on its Service or EndpointSlice"
        )));
    }
    Ok(())
}

/// Drops what the server owns: an apply carrying a resourceVersion turns into
/// a conditional update, and one carrying managedFields is rejected.
fn for_apply<K: Resource>(mut obj: K) -> K {
    let meta = obj.meta_mut();
    meta.resource_version = None;
    meta.uid = None;
    meta.managed_fields = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    obj
}

/// Makes the Service the slice's controller, so deleting the Service (by us or
/// by hand) garbage-collects the slice. Replaces a reference to an earlier
/// incarnation of the Service.
fn own_by_service(meta: &mut ObjectMeta, name: &str, uid: String) {
    let api_version = <Service as k8s_openapi::Resource>::API_VERSION;
    let kind = <Service as k8s_openapi::Resource>::KIND;
    let refs = meta.owner_references.get_or_insert_with(Vec::new);
    refs.retain(|r| !(r.api_version == api_version && r.kind == kind));
    refs.push(OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name.into(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
}

/// Deletes `name`, pinned by uid to the object the cache vouched for as a
/// mirror rather than one created since under the same name. Gone is success.
async fn delete_pinned<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<(), StoreError>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug,
{
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

// === watching ===

/// The watched resources, named as `kubectl api-resources` does.
const SERVICES: &str = "services";
const SLICES: &str = "endpointslices.discovery.k8s.io";
const NODES: &str = "nodes";
const PODS: &str = "pods";
const LINKS: &str = "links.meshfed.io";
const POLICIES: &str = "failoverpolicies.meshfed.io";
const RATE_LIMITS: &str = "ratelimitpolicies.meshfed.io";
const ROUTES: &str = "httproutes.gateway.networking.k8s.io";
const WATCHED: [&str; 8] = [
    SERVICES,
    SLICES,
    NODES,
    PODS,
    LINKS,
    POLICIES,
    RATE_LIMITS,
    ROUTES,
];

/// One watcher event, by the table it goes to.
enum Update {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
    Node(Box<Event<Node>>),
    Pod(Event<PodIdentity>),
    Link(Event<Link>),
    Policy(Event<FailoverPolicy>),
    RateLimit(Event<RateLimitPolicy>),
    Route(Event<HttpRoute>),
}

/// A watcher's events and errors, tagged with the resource's name.
type Events = BoxStream<'static, (&'static str, Result<Update, watcher::Error>)>;

fn watch_all<K>(client: &Client, name: &'static str, tag: fn(Event<K>) -> Update) -> Events
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watch_with(client, name, watcher::Config::default(), tag)
}

/// Pods that can serve (not finished), read as [`PodIdentity`]: a cluster's
/// Pods are its largest collection, and only who each one runs as is kept.
fn watch_pods(client: &Client) -> Events {
    let running = watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    watch_with(client, PODS, running, Update::Pod)
}

fn watch_with<K>(
    client: &Client,
    name: &'static str,
    config: watcher::Config,
    tag: fn(Event<K>) -> Update,
) -> Events
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), config)
        // Paces the watcher's own retries after errors.
        .default_backoff()
        .map(move |event| {
            // managedFields are large, change on every write and nothing reads them.
            let event = event.map(|e| tag(e.modify(|o| o.meta_mut().managed_fields = None)));
            (name, event)
        })
        .boxed()
}

/// How far the initial sync has got; `start` waits on it.
#[derive(Debug)]
struct Progress {
    /// Resources not listed yet, with their latest error.
    unsynced: BTreeMap<&'static str, Option<String>>,
    /// A resource whose list the API server answered with 404.
    missing: Option<&'static str>,
    /// The API server does not serve HTTPRoutes (said once).
    routes_unserved: bool,
}

impl Progress {
    fn new() -> Self {
        let unsynced = WATCHED.into_iter().map(|name| (name, None)).collect();
        Self {
            unsynced,
            missing: None,
            routes_unserved: false,
        }
    }

    fn finished(&self) -> bool {
        self.missing.is_some() || self.unsynced.is_empty()
    }

    fn note(&mut self, name: &'static str, error: &watcher::Error) -> bool {
        let unserved = matches!(error, watcher::Error::InitialListFailed(kube::Error::Api(s))
            if s.is_not_found());
        if name == ROUTES && unserved {
            // Not Meshfed's CRD: without it there are no routes, and the
            // rest runs. The watcher keeps listing, so installing it later
            // brings the routes in.
            if !self.routes_unserved {
                tracing::warn!(
                    "the Gateway API's HTTPRoute CRD is not installed (the API server does not \
                     serve {ROUTES}): no routes apply until it is; install it with \
                     `meshctl install --gateway-api-crds` or the Gateway API's standard install"
                );
            }
            self.routes_unserved = true;
            return self.unsynced.remove(name).is_some();
        }
        let Some(last) = self.unsynced.get_mut(name) else {
            return false;
        };
        if unserved {
            self.missing = Some(name);
        }
        *last = Some(error.to_string());
        true
    }

    fn failure(&self, timeout: Duration) -> String {
        if let Some(name) = self.missing {
            return match name {
                LINKS | POLICIES | RATE_LIMITS => format!(
                    "the Meshfed CRDs are not installed: the API server does not serve {name} \
                     (apply deploy/crds first)"
                ),
                _ => format!("the API server does not serve {name}"),
            };
        }
        let unsynced: Vec<_> = self
            .unsynced
            .iter()
            .map(|(name, error)| match error {
                Some(error) => format!("{name} ({error})"),
                None => (*name).to_owned(),
            })
            .collect();
        format!(
            "cluster state did not sync within {timeout:?}; not listed: {}",
            unsynced.join(", ")
        )
    }
}

/// Folds all watch events into the published state until aborted.
async fn run(
    mut events: SelectAll<Events>,
    state: watch::Sender<Arc<ClusterState>>,
    progress: watch::Sender<Progress>,
) {
    let mut fold = Fold::default();
    while let Some((name, event)) = events.next().await {
        match event {
            Ok(update) => {
                let (changed, synced) = fold.apply(update);
                // Published before the sync is reported, so `start` returns a full state.
                if changed {
                    let mut next = fold.state.clone();
                    next.reuse_index(&state.borrow());
                    state.send_replace(Arc::new(next));
                }
                if synced {
                    progress.send_if_modified(|p| p.unsynced.remove(name).is_some());
                }
            }
            Err(error) => {
                let said = name == ROUTES && progress.borrow().routes_unserved;
                if !said {
                    tracing::warn!(resource = name, %error, "watch failed; retrying");
                }
                progress.send_if_modified(|p| p.note(name, &error));
            }
        }
    }
}

/// The watch task's own state, plus each list in progress: a (re)list replaces
/// a table only once complete, so objects deleted while a watch was down
/// vanish and half a list is never published.
#[derive(Default)]
struct Fold {
    state: ClusterState,
    services: Option<Table<ObjKey, Arc<Service>>>,
    slices: Option<Table<ObjKey, Arc<EndpointSlice>>>,
    nodes: Option<Table<String, String>>,
    pods: Option<Table<ObjKey, PodAccount>>,
    links: Option<Table<ObjKey, Link>>,
    policies: Option<Table<ObjKey, FailoverPolicy>>,
    rate_limits: Option<Table<ObjKey, RateLimitPolicy>>,
    routes: Option<Table<ObjKey, Arc<HttpRoute>>>,
}

impl Fold {
    /// Applies one event: whether the state changed, and whether it completed
    /// a list.
    fn apply(&mut self, update: Update) -> (bool, bool) {
        let s = &mut self.state;
        match update {
            Update::Service(e) => fold(&mut s.services, &mut self.services, e, |svc| {
                shared(compact_service(svc))
            }),
            Update::Slice(e) => fold(&mut s.slices, &mut self.slices, e, |slice| {
                shared(compact_slice(slice))
            }),
            Update::Node(e) => fold(&mut s.node_zones, &mut self.nodes, *e, zone),
            Update::Pod(e) => fold(&mut s.pods, &mut self.pods, e, account),
            Update::Link(e) => fold(&mut s.links, &mut self.links, e, keyed),
            Update::Policy(e) => fold(&mut s.policies, &mut self.policies, e, keyed),
            Update::RateLimit(e) => fold(&mut s.rate_limits, &mut self.rate_limits, e, keyed),
            Update::Route(e) => fold(&mut s.routes, &mut self.routes, e, shared),
        }
    }
}

fn keyed<K: Resource>(obj: K) -> (ObjKey, Option<K>) {
    let key = ObjKey::new(obj.namespace().unwrap_or_default(), obj.name_any());
    (key, Some(obj))
}

/// [`keyed`], the object shared between successive states.
fn shared<K: Resource>(obj: K) -> (ObjKey, Option<Arc<K>>) {
    let (key, obj) = keyed(obj);
    (key, obj.map(Arc::new))
}

/// A finished Pod has no entry (the field selector leaves such Pods out as
/// they finish; the same rule holds for the file store).
fn account(pod: PodIdentity) -> (ObjKey, Option<PodAccount>) {
    let key = ObjKey::new(pod.namespace().unwrap_or_default(), pod.name_any());
    let account = PodAccount::new(
        pod.metadata.uid,
        pod.spec.service_account_name,
        pod.status.phase.as_deref(),
    );
    (key, account)
}

/// A node without a zone label has no entry.
fn zone(node: Node) -> (String, Option<String>) {
    let zone = node.labels().get(ZONE).cloned();
    (node.name_any(), zone)
}

fn fold<K, Key: Ord + Clone, V: PartialEq + Clone>(
    table: &mut Table<Key, V>,
    pending: &mut Option<Table<Key, V>>,
    event: Event<K>,
    entry: fn(K) -> (Key, Option<V>),
) -> (bool, bool) {
    match event {
        Event::Init => *pending = Some(Table::new()),
        Event::InitApply(obj) => {
            if let (Some(pending), (key, Some(value))) = (pending.as_mut(), entry(obj)) {
                pending.insert(key, value);
            }
        }
        Event::InitDone => {
            // Only what the list changed is replaced, so the rest stays
            // shared with the states already published.
            let listed = pending.take().unwrap_or_default();
            let changes: Vec<(Key, Option<V>)> = table
                .diff(&listed)
                .map(|change| {
                    let now = diffed(&change).1.map(|(_, v)| v.clone());
                    (diffed_key(&change).clone(), now)
                })
                .collect();
            let changed = !changes.is_empty();
            for (key, value) in changes {
                match value {
                    Some(value) => table.insert(key, value),
                    None => table.remove(&key),
                };
            }
            return (changed, true);
        }
        Event::Apply(obj) => {
            let changed = match entry(obj) {
                (key, Some(value)) if table.get(&key) != Some(&value) => {
                    table.insert(key, value);
                    true
                }
                (_, Some(_)) => false,
                (key, None) => table.remove(&key).is_some(),
            };
            return (changed, false);
        }
        Event::Delete(obj) => return (table.remove(&entry(obj).0).is_some(), false),
    }
    (false, false)
}

// === impl PodIdentity ===

/// A Pod as the store reads it: the fields identity needs and nothing else.
/// Every other field of the API server's answer is skipped while parsing, so
/// neither the watch's events nor the store grow with the size of Pod specs.
#[derive(Clone, Debug, Deserialize)]
struct PodIdentity {
    #[serde(deserialize_with = "slim_meta")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: PodIdentitySpec,
    #[serde(default)]
    status: PodIdentityStatus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodIdentitySpec {
    service_account_name: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct PodIdentityStatus {
    phase: Option<String>,
}

/// Of a Pod's metadata, what the watcher and the store use.
fn slim_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Slim {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
    }
    let m = Slim::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        ..ObjectMeta::default()
    })
}

impl Resource for PodIdentity {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
