//! The cluster store: the one narrow interface through which the controller
//! reads its own cluster and writes mirrors and statuses. Two backends:
//! [`FileStore`] (a directory of YAML manifests) and [`KubeStore`] (the
//! Kubernetes API).

mod file;
mod kube;
pub mod manifest;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use meshfed_resources::crd::{
    FailoverPolicy, FailoverPolicyStatus, Link, LinkStatus, RateLimitPolicy, RateLimitPolicyStatus,
};
use meshfed_resources::route::{HttpRoute, HttpRouteStatusParents};
use tokio::sync::watch;

pub use self::file::{FileStore, FileStoreConfig};
pub use self::kube::KubeStore;

/// A namespaced object's name. Both parts are shared strings: a key is
/// held in many tables (the state's, the derived exports and routes, the
/// file store's owners, the mirror passes), and copying it copies no text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjKey {
    /// Builds a key.
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: Arc::from(namespace.as_ref()),
            name: Arc::from(name.as_ref()),
        }
    }

    /// A key in this key's namespace, sharing its text.
    pub fn sibling(&self, name: impl AsRef<str>) -> Self {
        Self {
            namespace: self.namespace.clone(),
            name: Arc::from(name.as_ref()),
        }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Everything the controller reads from its cluster, as one consistent view.
/// Mirrors the controller wrote are part of it (they are Services and
/// EndpointSlices carrying [`meshfed_api::labels::ORIGIN_CLUSTER`]).
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Services by namespace/name. Each object is shared: successive
    /// states hold the same unchanged objects, not copies.
    pub services: Table<ObjKey, Arc<Service>>,
    /// EndpointSlices by namespace/name, shared as Services are.
    pub slices: Table<ObjKey, Arc<EndpointSlice>>,
    /// Zone of each Node (from `topology.kubernetes.io/zone`), for endpoints
    /// that name a node but no zone.
    pub node_zones: Table<String, String>,
    /// Who each running Pod runs as, for the endpoints whose `targetRef`
    /// names it. Only what identity needs is kept of a Pod.
    pub pods: Table<ObjKey, PodAccount>,
    /// Links by namespace/name.
    pub links: Table<ObjKey, Link>,
    /// FailoverPolicies by namespace/name.
    pub policies: Table<ObjKey, FailoverPolicy>,
    /// RateLimitPolicies by namespace/name.
    pub rate_limits: Table<ObjKey, RateLimitPolicy>,
    /// HTTPRoutes by namespace/name (whatever their parents: which are
    /// Meshfed's is decided where they are read).
    pub routes: Table<ObjKey, Arc<HttpRoute>>,
    /// Manifest files that do not parse now (file store; the kube store
    /// has none). The objects they held keep their last good version.
    pub broken_files: usize,
    /// Each Service's slices, built on first use from the newest index of
    /// this state's line; not part of the value.
    slice_index: SliceIndex,
    /// The routes naming each Service as a parent, built on first use for
    /// the routes this state holds; not part of the value.
    route_index: RouteIndexCell,
}

impl PartialEq for ClusterState {
    /// Equal content. The tables are persistent maps: a state made from
    /// another shares every unchanged part with it, and comparing them skips
    /// what is shared, so comparing successive states costs what changed.
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
            && self.slices == other.slices
            && self.node_zones == other.node_zones
            && self.pods == other.pods
            && self.links == other.links
            && self.policies == other.policies
            && self.rate_limits == other.rate_limits
            && self.routes == other.routes
            && self.broken_files == other.broken_files
    }
}

/// A table of a [`ClusterState`]: an ordered map whose clones share
/// structure, so a state derived from another costs what changed, and
/// [`imbl::OrdMap::diff`] between them visits only that.
pub type Table<K, V> = imbl::OrdMap<K, V>;

/// A changed entry's old and new versions.
pub(crate) type Version<'a, K, V> = Option<(&'a K, &'a V)>;

/// What a [`Table`] diff item says: the entry before and after.
pub(crate) fn diffed<'a, K, V>(
    change: &imbl::ordmap::DiffItem<'a, 'a, K, V>,
) -> (Version<'a, K, V>, Version<'a, K, V>) {
    match change {
        imbl::ordmap::DiffItem::Add(k, v) => (None, Some((k, v))),
        imbl::ordmap::DiffItem::Remove(k, v) => (Some((k, v)), None),
        imbl::ordmap::DiffItem::Update { old, new } => (Some(*old), Some(*new)),
    }
}

/// The key of a [`Table`] diff item.
pub(crate) fn diffed_key<'a, K, V>(change: &imbl::ordmap::DiffItem<'a, 'a, K, V>) -> &'a K {
    match change {
        imbl::ordmap::DiffItem::Add(k, _)
        | imbl::ordmap::DiffItem::Remove(k, _)
        | imbl::ordmap::DiffItem::Update { new: (k, _), .. } => k,
    }
}

impl ClusterState {
    /// The EndpointSlices of Service `key`: those of its namespace that
    /// carry its name in `kubernetes.io/service-name`, as the endpoint-slice
    /// controller labels them, in name order. The index behind it is built
    /// once and then brought up to date from what changed in `slices`
    /// since; a state cloned from another starts from the newest index of
    /// the states it descends from, so a lookup costs the slices that
    /// changed.
    pub fn slices_of<'a>(&'a self, key: &ObjKey) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let names = self.slice_index.of(&self.slices).get(key).cloned();
        let found: Vec<&EndpointSlice> = names
            .iter()
            .flat_map(|n| n.iter())
            .filter_map(|k| self.slices.get(k).map(|s| &**s))
            .collect();
        found.into_iter()
    }
}

impl ClusterState {
    /// The HTTPRoutes that name Service `key` as a parent, with their keys,
    /// in key order. The index behind it is built once per set of routes
    /// (states that share their routes share it), so a lookup costs the
    /// routes of that Service, not all routes.
    pub(crate) fn routes_of(&self, key: &ObjKey) -> Vec<(ObjKey, &HttpRoute)> {
        let names = self.route_index.of(&self.routes).get(key).cloned();
        names
            .iter()
            .flat_map(|n| n.iter())
            .filter_map(|k| Some((k.clone(), &**self.routes.get(k)?)))
            .collect()
    }
}

/// The routes of a state.
type Routes = Table<ObjKey, Arc<HttpRoute>>;

/// [`ClusterState::routes_of`]'s index, with the routes it was built from.
#[derive(Default, Clone)]
struct RouteIndexCell(Arc<Mutex<Option<(Routes, crate::httproute::RouteIndex)>>>);

impl RouteIndexCell {
    fn of(&self, routes: &Routes) -> crate::httproute::RouteIndex {
        let mut cell = locked(&self.0);
        if let Some((of, index)) = cell.as_ref()
            && of.ptr_eq(routes)
        {
            return index.clone();
        }
        let mut by_parent: BTreeMap<ObjKey, Vec<ObjKey>> = BTreeMap::new();
        for (key, route) in routes {
            for parent in crate::httproute::parents_of(key, route) {
                by_parent.entry(parent).or_default().push(key.clone());
            }
        }
        let index: crate::httproute::RouteIndex = by_parent
            .into_iter()
            .map(|(k, v)| (k, Arc::from(v)))
            .collect();
        *cell = Some((routes.clone(), index.clone()));
        index
    }
}

impl fmt::Debug for RouteIndexCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RouteIndex")
    }
}

impl ClusterState {
    /// Joins `other`'s line of slice indexes, so that the first lookup in
    /// this state costs the slices that differ from the newest index built
    /// for any state of it. A store building each state anew calls it with
    /// the state it published last.
    pub fn reuse_index(&mut self, other: &ClusterState) {
        self.slice_index = other.slice_index.clone();
    }
}

/// Gives back what a parser's growing vectors left spare: a slice of two
/// endpoints parsed from YAML or JSON holds room for four, and at 10,000
/// slices that is megabytes.
pub(crate) fn compact_slice(mut slice: EndpointSlice) -> EndpointSlice {
    if let Some(endpoints) = slice.endpoints.as_mut() {
        for ep in endpoints.iter_mut() {
            ep.addresses.shrink_to_fit();
        }
        endpoints.shrink_to_fit();
    }
    if let Some(ports) = slice.ports.as_mut() {
        ports.shrink_to_fit();
    }
    slice
}

/// [`compact_slice`] for a Service's ports.
pub(crate) fn compact_service(mut svc: Service) -> Service {
    if let Some(ports) = svc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports.shrink_to_fit();
    }
    svc
}

/// The Service a slice belongs to, by its `kubernetes.io/service-name` label.
pub(crate) fn service_of(key: &ObjKey, slice: &EndpointSlice) -> Option<ObjKey> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(meshfed_api::labels::SERVICE_NAME)?;
    Some(key.sibling(service))
}

/// Slice names by the Service they belong to, with the table they index.
///
/// Each state keeps its own index, so readers of different states never
/// undo each other's work. A state's first lookup starts from the newest
/// index any state of its line built (`newest`, shared by clones and by
/// [`ClusterState::reuse_index`]): a store copies its last state before
/// readers looked into it, often into states no reader looks into at all,
/// and an index taken along from there may be thousands of slices behind.
#[derive(Default)]
struct SliceIndex {
    own: Mutex<Option<Indexed>>,
    newest: Arc<Mutex<Option<Indexed>>>,
}

#[derive(Clone)]
struct Indexed {
    of: Table<ObjKey, Arc<EndpointSlice>>,
    by_service: Table<ObjKey, Names>,
}

/// A Service's slice names, sorted. Nearly always one or two: a plain
/// shared slice, not a set with room for dozens.
type Names = Arc<[ObjKey]>;

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SliceIndex {
    /// The index of `slices`: this state's if it is of these very slices,
    /// else the closest one held brought up to date by the difference.
    fn of(&self, slices: &Table<ObjKey, Arc<EndpointSlice>>) -> Table<ObjKey, Names> {
        let mut own = locked(&self.own);
        if let Some(indexed) = own.as_ref().filter(|i| i.of.ptr_eq(slices)) {
            return indexed.by_service.clone();
        }
        // The newest index is the one closest to any state of the line:
        // an index a state took along when copied may be far behind, if no
        // reader looked into the states between (their Services unchanged).
        let newest = locked(&self.newest).clone();
        let start = newest.or_else(|| own.take()).unwrap_or(Indexed {
            of: Table::new(),
            by_service: Table::new(),
        });
        let indexed = start.updated(slices);
        let by_service = indexed.by_service.clone();
        *locked(&self.newest) = Some(indexed.clone());
        *own = Some(indexed);
        by_service
    }
}

impl Indexed {
    /// This index moved to `slices` by what differs.
    fn updated(self, slices: &Table<ObjKey, Arc<EndpointSlice>>) -> Indexed {
        let mut by_service = self.by_service;
        let mut unlink = |key: &ObjKey, slice: &EndpointSlice| {
            if let Some(service) = service_of(key, slice)
                && let Some(names) = by_service.get(&service)
            {
                let rest: Names = names.iter().filter(|k| *k != key).cloned().collect();
                if rest.is_empty() {
                    by_service.remove(&service);
                } else {
                    by_service.insert(service, rest);
                }
            }
        };
        let mut added = Vec::new();
        for change in self.of.diff(slices) {
            let (old, new) = diffed(&change);
            if let Some((k, v)) = old {
                unlink(k, v);
            }
            added.extend(new);
        }
        for (key, slice) in added {
            if let Some(service) = service_of(key, slice) {
                let mut names = by_service
                    .get(&service)
                    .map_or_else(Vec::new, |n| n.to_vec());
                if let Err(at) = names.binary_search(key) {
                    names.insert(at, key.clone());
                }
                by_service.insert(service, names.into());
            }
        }
        Indexed {
            of: slices.clone(),
            by_service,
        }
    }
}

impl Clone for SliceIndex {
    /// The clone keeps this state's index, exact while its slices stay
    /// these, and shares the newest of the line.
    fn clone(&self) -> Self {
        Self {
            own: Mutex::new(locked(&self.own).clone()),
            newest: self.newest.clone(),
        }
    }
}

impl fmt::Debug for SliceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SliceIndex")
    }
}

/// What the controller keeps of a Pod: the service account it runs as, which
/// is the identity its endpoints serve under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAccount {
    /// The Pod's uid: an endpoint naming an earlier Pod of the same name (a
    /// StatefulSet's pod recreated) must not take the new one's identity.
    pub uid: Option<String>,
    /// `spec.serviceAccountName`.
    pub service_account: String,
}

impl PodAccount {
    /// What a Pod's fields say. A Pod that has finished (`Succeeded`,
    /// `Failed`) serves nothing and is left out; one without
    /// `serviceAccountName` runs as `default`, as Kubernetes assigns it.
    pub fn new(
        uid: Option<String>,
        service_account: Option<String>,
        phase: Option<&str>,
    ) -> Option<Self> {
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        Some(Self {
            uid,
            service_account: service_account
                .filter(|sa| !sa.is_empty())
                .unwrap_or_else(|| "default".into()),
        })
    }

    /// [`PodAccount::new`] of a whole Pod.
    pub fn of(pod: &Pod) -> Option<Self> {
        Self::new(
            pod.metadata.uid.clone(),
            pod.spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone()),
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        )
    }
}

/// A mirror of one imported service: a selector-less Service and the
/// EndpointSlice that points at the remote gateway. Both carry the same
/// namespace and name, and the labels naming origin cluster and link.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    /// The mirror Service.
    pub service: Service,
    /// Its EndpointSlice (same name as the Service).
    pub slice: EndpointSlice,
}

impl Mirror {
    /// The mirror's namespace/name.
    pub fn key(&self) -> ObjKey {
        ObjKey::new(
            self.service.metadata.namespace.clone().unwrap_or_default(),
            self.service.metadata.name.clone().unwrap_or_default(),
        )
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file store failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Serializing an object failed.
    #[error("cannot serialize {what}: {reason}")]
    Serialize {
        /// The object.
        what: String,
        /// Why.
        reason: String,
    },
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes api: {0}")]
    Kube(#[from] ::kube::Error),
    /// The object to update does not exist (any more): a status written
    /// for an object just deleted gets this, as from Kubernetes (404), and
    /// means the object is gone, not that the write should be retried.
    #[error("{kind} {key} not found")]
    NotFound {
        /// Its kind.
        kind: &'static str,
        /// Its namespace/name.
        key: ObjKey,
    },
    /// The object is not something the controller may change.
    #[error("{0}")]
    Refused(String),
    /// The store could not list the cluster at start (CRDs missing, timeout).
    #[error("cluster state not synced: {0}")]
    NotSynced(String),
    /// A manifest file does not parse. Editing the directory around it is
    /// refused: an object it holds is invisible, so writing that object
    /// elsewhere would define it twice once the file is fixed.
    #[error(
        "{path}:{line}:{column}: {reason}; fix this file first \
         (editing around a broken file could duplicate an object)"
    )]
    BrokenManifest {
        /// The file.
        path: String,
        /// Line of the error, counted from the start of the file.
        line: usize,
        /// Column of the error.
        column: usize,
        /// Why it does not parse.
        reason: String,
    },
}

/// The narrow interface both backends implement.
///
/// `state()` is synced when the store is handed out: the backend has listed
/// everything once, so an empty view really means an empty cluster.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The latest view of the cluster; changes are published as they happen.
    fn state(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// Creates or updates a mirror (server-side apply under
    /// [`meshfed_api::labels::CONTROLLER`] in kube). Refuses to overwrite an
    /// object that is not a mirror.
    fn apply_mirror(&self, mirror: Mirror) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Deletes a mirror's Service and EndpointSlice; deleting a missing
    /// mirror succeeds. Refuses objects that are not mirrors.
    fn delete_mirror(&self, key: ObjKey) -> BoxFuture<'_, Result<(), StoreError>>;

    /// [`Store::apply_mirror`] of many, each with its own outcome, in the
    /// order given, done together: one state update for the file store,
    /// requests in parallel for Kubernetes.
    fn apply_mirrors(&self, mirrors: Vec<Mirror>) -> BoxFuture<'_, Outcomes>;

    /// [`Store::delete_mirror`] of many, each with its own outcome.
    fn delete_mirrors(&self, keys: Vec<ObjKey>) -> BoxFuture<'_, Outcomes>;

    /// Replaces a Link's status; [`StoreError::NotFound`] if the Link is
    /// gone. A status goes with its object: deleting the object removes it.
    fn set_link_status(
        &self,
        key: ObjKey,
        status: LinkStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Replaces a FailoverPolicy's status; [`StoreError::NotFound`] if the
    /// FailoverPolicy is gone.
    fn set_policy_status(
        &self,
        key: ObjKey,
        status: FailoverPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Replaces a RateLimitPolicy's status; [`StoreError::NotFound`] if
    /// the RateLimitPolicy is gone.
    fn set_rate_limit_status(
        &self,
        key: ObjKey,
        status: RateLimitPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Replaces this controller's entries of an HTTPRoute's
    /// `status.parents` (those under
    /// [`meshfed_resources::route::CONTROLLER_NAME`]) with `parents`, keeping
    /// every other controller's; [`StoreError::NotFound`] if the route is
    /// gone.
    fn set_route_status(
        &self,
        key: ObjKey,
        parents: Vec<HttpRouteStatusParents>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// `current`'s entries of `status.parents` that other controllers wrote,
/// then `ours`: what a route's status becomes when this controller writes.
pub fn merged_route_parents(
    current: Option<&meshfed_resources::route::HttpRouteStatus>,
    ours: Vec<HttpRouteStatusParents>,
) -> Vec<HttpRouteStatusParents> {
    let others = current
        .into_iter()
        .flat_map(|s| s.parents.iter())
        .filter(|p| p.controller_name != meshfed_resources::route::CONTROLLER_NAME)
        .cloned();
    others.chain(ours).collect()
}

/// The outcome of each write of a batch, by object.
pub type Outcomes = Vec<(ObjKey, Result<(), StoreError>)>;

/// Whether an object's labels mark it as a mirror the controller owns.
pub fn is_mirror(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_some_and(|l| l.contains_key(meshfed_api::labels::ORIGIN_CLUSTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::slice;

    fn names(state: &ClusterState, service: &str) -> Vec<String> {
        state
            .slices_of(&ObjKey::new("shop", service))
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    /// A state that takes another's index finds what its own slices say,
    /// whatever the other held.
    #[test]
    fn a_reused_slice_index_follows_the_slices_of_its_own_state() {
        let mut a = ClusterState::default();
        for (svc, name) in [("api", "api-1"), ("api", "api-2"), ("db", "db-1")] {
            let s = slice("shop", svc, name, &[("http", 80)]);
            a.slices.insert(ObjKey::new("shop", name), s.into());
        }
        assert_eq!(names(&a, "api"), ["api-1", "api-2"]);
        let mut b = a.clone();
        b.slices.remove(&ObjKey::new("shop", "api-1"));
        let moved = slice("shop", "db", "api-2", &[("http", 80)]);
        b.slices.insert(ObjKey::new("shop", "api-2"), moved.into());
        let added = slice("shop", "web", "web-1", &[("http", 80)]);
        b.slices.insert(ObjKey::new("shop", "web-1"), added.into());
        let mut c = b.clone();
        c.reuse_index(&a);
        for state in [&b, &c] {
            assert!(names(state, "api").is_empty());
            assert_eq!(names(state, "db"), ["api-2", "db-1"]);
            assert_eq!(names(state, "web"), ["web-1"]);
        }
        assert_eq!(names(&a, "api"), ["api-1", "api-2"], "a keeps its own");
    }

    /// A store copies its last state before readers looked into it. The
    /// copy's first lookup starts from the newest index of its line, not
    /// from nothing and not from an old one: an entry that did not change
    /// since is the very same.
    #[test]
    fn a_state_copied_before_any_lookup_starts_from_the_newest_index() {
        let key = |name: &str| ObjKey::new("shop", name);
        let mut a = ClusterState::default();
        for j in 0..100 {
            let name = format!("s-{j}");
            let s = slice("shop", &name, &name, &[("http", 80)]);
            a.slices.insert(key(&name), s.into());
        }
        // What a store does: the next state from the last, one slice more.
        let next = |from: &ClusterState, service: &str| {
            let mut state = ClusterState {
                slices: from.slices.clone(),
                ..ClusterState::default()
            };
            state.reuse_index(from);
            let name = format!("{service}-{}", from.slices.len());
            let s = slice("shop", service, &name, &[("http", 80)]);
            state.slices.insert(key(&name), s.into());
            state
        };
        let entry = |state: &ClusterState, service: &str| {
            let index = state.slice_index.of(&state.slices);
            index.get(&key(service)).cloned().expect("indexed")
        };
        // Copied one after the other, none read yet.
        let b = next(&a, "s-1");
        let c = next(&b, "s-2");
        assert_eq!(names(&b, "s-1"), ["s-1", "s-1-100"]);
        assert_eq!(names(&c, "s-2"), ["s-2", "s-2-101"]);
        assert!(
            Arc::ptr_eq(&entry(&b, "s-50"), &entry(&c, "s-50")),
            "c's index was made from b's, not built anew"
        );
        assert_eq!(names(&a, "s-1"), ["s-1"], "a still reads its own");

        // No reader looks into the states themselves, only into copies (as
        // one deriving from the last state it saw does): each next state
        // starts from the copy's index, not from the one it took along.
        let d = next(&c, "s-3");
        let seen = d.clone();
        let s3 = entry(&seen, "s-3");
        let e = next(&d, "s-4");
        assert!(Arc::ptr_eq(&s3, &entry(&e, "s-3")));
        assert_eq!(names(&e, "s-4"), ["s-4", "s-4-103"]);
    }
}
