//! The file store: a directory of Kubernetes-style YAML manifests, watched
//! for changes (see [`changes`]), as the cluster of local mode, demos and
//! tests.
//!
//! Layout under the directory:
//! - any `*.yaml` / `*.yml` file (sub-directories too) holds manifests,
//!   several per file separated by `---`: Services, EndpointSlices, Pods,
//!   Nodes, Links, FailoverPolicies and HTTPRoutes; other kinds are ignored;
//! - `mirrors/<namespace>/<name>.yaml` are the mirrors the controller writes
//!   (read back like any manifest, so a restarted controller finds them);
//! - `status/<kind>/<namespace>.<name>.yaml` is where statuses are written
//!   (the object with its status, for people and `meshctl`); never read. As
//!   on Kubernetes the status is part of its object: it is removed when the
//!   object goes (and, at start, for objects deleted while no store ran), and
//!   a status written for an object already gone is refused as not found.
//!
//! A file that fails to parse is reported with its path and line, counted in
//! [`ClusterState::broken_files`], and the objects it held before keep
//! counting until it is fixed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_resources::crd::{
    FailoverPolicy, FailoverPolicyStatus, Link, LinkStatus, RateLimitPolicy, RateLimitPolicyStatus,
};
use meshfed_resources::route::{HttpRoute, HttpRouteStatus, HttpRouteStatusParents};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    ClusterState, Mirror, ObjKey, Outcomes, PodAccount, Store, StoreError, compact_service,
    compact_slice, is_mirror, manifest, merged_route_parents,
};

mod changes;

use manifest::{
    MAX_DEPTH, MAX_FILE_BYTES, STATUS_DIR, collect_files, from_yaml, split_documents, stamp,
    to_yaml,
};

const MIRRORS_DIR: &str = "mirrors";
/// Where the file store reads and how it learns of changes.
#[derive(Debug, Clone)]
pub struct FileStoreConfig {
    /// The manifest directory.
    pub dir: PathBuf,
    /// How often the whole directory is read when changes cannot be
    /// watched (no inotify, or its limits reached).
    pub poll: Duration,
    /// How often the whole directory is read anyway while changes are
    /// watched: a safety net for anything the kernel did not report.
    pub rescan: Duration,
}

impl FileStoreConfig {
    /// The directory, watched, read whole every 30 s (every 100 ms when
    /// it cannot be watched).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll: Duration::from_millis(100),
            rescan: Duration::from_secs(30),
        }
    }
}

/// A cluster store backed by a manifest directory.
#[derive(Debug)]
pub struct FileStore {
    inner: Arc<Inner>,
    poller: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    tx: watch::Sender<Arc<ClusterState>>,
    scan: Mutex<Scan>,
    /// Held from a status write's check that its object exists to the end
    /// of the write, and while statuses of deleted objects are removed: a
    /// write racing a deletion cannot bring the status file back.
    statuses: tokio::sync::Mutex<()>,
    /// How many times the whole directory was read.
    whole_reads: AtomicUsize,
}

/// What the last scan found, file by file, and the state those files make,
/// kept up to date as files change: a change costs the objects of the files
/// it touched, not a rebuild from every file.
#[derive(Debug, Default)]
struct Scan {
    files: BTreeMap<PathBuf, FileEntry>,
    /// Whether the status files of objects deleted before the store opened
    /// were looked for. That waits for a scan with no broken file: an object
    /// in a file that never parsed is unseen, not gone.
    swept: bool,
    /// The files defining each object, in path order: the first wins.
    /// Nearly always one.
    defined_in: HashMap<Identity, Vec<Arc<Path>>>,
    /// What the files define (`broken_files` is set as it is published).
    state: ClusterState,
}

/// An object's kind and name.
type Identity = (&'static str, ObjKey);

impl Scan {
    /// Reads `path` unless its stamp is the one read last; whether it did.
    fn read(&mut self, path: &Path, stamp: (SystemTime, u64)) -> bool {
        if self.files.get(path).is_some_and(|f| f.stamp == stamp) {
            return false;
        }
        let parsed = read_manifests(path);
        let entry = self
            .files
            .entry(path.to_path_buf())
            .or_insert_with(|| FileEntry {
                stamp,
                objects: Vec::new(),
                error: None,
            });
        entry.stamp = stamp;
        match parsed {
            Ok(objects) => {
                if entry.error.take().is_some() {
                    tracing::info!(file = %path.display(), "manifest file parses again");
                }
                let old = std::mem::replace(&mut entry.objects, objects);
                self.redefine(path, &old);
            }
            Err(e) => {
                let msg = format!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                tracing::error!(error = %msg, "bad manifest; keeping its last good objects");
                entry.error = Some(msg);
            }
        }
        true
    }

    /// Takes `entry` as what `path` holds now (a file the store wrote).
    fn put(&mut self, path: PathBuf, entry: FileEntry) {
        let old = self.files.insert(path.clone(), entry);
        self.redefine(&path, &old.map(|f| f.objects).unwrap_or_default());
    }

    /// Forgets `path` (gone); whether it was known.
    fn forget(&mut self, path: &Path) -> bool {
        let Some(old) = self.files.remove(path) else {
            return false;
        };
        self.redefine(path, &old.objects);
        true
    }

    /// Brings the state up to date after `path`'s objects changed from
    /// `old` to what `files` holds for it now (nothing if it is gone).
    fn redefine(&mut self, path: &Path, old: &[Object]) {
        let new = self.files.get(path).map_or(&[][..], |f| &f.objects[..]);
        let shared: Arc<Path> = Arc::from(path);
        let mut now_defined = std::collections::HashSet::with_capacity(new.len());
        for obj in new {
            let id = obj.identity();
            if !now_defined.insert(id.clone()) {
                tracing::warn!(kind = %id.0, key = %id.1, file = %path.display(),
                    "object defined twice in one file; using the first");
                continue;
            }
            let owners = self.defined_in.entry(id.clone()).or_default();
            if let Err(at) = owners.binary_search_by(|p| (**p).cmp(path)) {
                owners.insert(at, shared.clone());
                if owners.len() > 1 {
                    tracing::warn!(kind = %id.0, key = %id.1, file = %path.display(),
                        first = %owners[0].display(), "object defined twice; using the first");
                }
            }
            if *owners[0] == *path {
                take(&mut self.state, &id, Some(obj));
            }
        }
        for obj in old {
            let id = obj.identity();
            if now_defined.contains(&id) {
                continue;
            }
            let Some(owners) = self.defined_in.get_mut(&id) else {
                continue;
            };
            let was_first = owners.first().is_some_and(|p| **p == *path);
            owners.retain(|p| **p != *path);
            match owners.first().cloned() {
                None => {
                    self.defined_in.remove(&id);
                    take(&mut self.state, &id, None);
                }
                // Another file defines it too: its version takes over.
                Some(next) if was_first => {
                    let objects = self.files.get(&*next).map_or(&[][..], |f| &f.objects[..]);
                    let obj = objects.iter().find(|o| o.identity() == id);
                    take(&mut self.state, &id, obj);
                }
                Some(_) => {}
            }
        }
    }

    /// The state to publish.
    fn state(&self) -> ClusterState {
        ClusterState {
            broken_files: self.files.values().filter(|f| f.error.is_some()).count(),
            ..self.state.clone()
        }
    }
}

/// Sets object `id` of `state` to `obj`, or removes it.
fn take(state: &mut ClusterState, id: &Identity, obj: Option<&Object>) {
    let key = id.1.clone();
    match obj {
        Some(Object::Service(s)) => {
            state.services.insert(key, s.clone());
        }
        Some(Object::Slice(s)) => {
            state.slices.insert(key, s.clone());
        }
        Some(Object::Node(n)) => {
            let zone = n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(meshfed_api::labels::ZONE));
            match zone {
                Some(zone) => state.node_zones.insert(key.name.to_string(), zone.clone()),
                None => state.node_zones.remove(&*key.name),
            };
        }
        Some(Object::Pod(pod)) => {
            let (_, account) = &**pod;
            match account {
                Some(account) => state.pods.insert(key, account.clone()),
                None => state.pods.remove(&key),
            };
        }
        Some(Object::Link(l)) => {
            state.links.insert(key, (**l).clone());
        }
        Some(Object::Policy(p)) => {
            state.policies.insert(key, (**p).clone());
        }
        Some(Object::RateLimit(p)) => {
            state.rate_limits.insert(key, (**p).clone());
        }
        Some(Object::Route(r)) => {
            state.routes.insert(key, r.clone());
        }
        None => match id.0 {
            SERVICE => drop(state.services.remove(&key)),
            SLICE => drop(state.slices.remove(&key)),
            NODE => drop(state.node_zones.remove(&*key.name)),
            POD => drop(state.pods.remove(&key)),
            LINK => drop(state.links.remove(&key)),
            ROUTE => drop(state.routes.remove(&key)),
            RATE_LIMIT => drop(state.rate_limits.remove(&key)),
            _ => drop(state.policies.remove(&key)),
        },
    }
}

const SERVICE: &str = "Service";
const SLICE: &str = "EndpointSlice";
const NODE: &str = "Node";
const POD: &str = "Pod";
const LINK: &str = "Link";
const POLICY: &str = "FailoverPolicy";
const RATE_LIMIT: &str = "RateLimitPolicy";
const ROUTE: &str = "HTTPRoute";

/// The objects that have a status, by the folder of their status files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusOf {
    Link,
    Policy,
    RateLimit,
    Route,
}

/// A status file whose object is gone: (its kind, the object).
type Orphan = (StatusOf, ObjKey);

#[derive(Debug)]
struct FileEntry {
    stamp: (SystemTime, u64),
    /// The objects of the last version that parsed.
    objects: Vec<Object>,
    /// Why the current version does not parse, if it does not.
    error: Option<String>,
}

#[derive(Debug, Clone)]
enum Object {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Node(Arc<Node>),
    /// Of a Pod only its name and what identity needs is kept.
    /// Boxed: the other variants are one pointer, and a file holds many.
    Pod(Box<(ObjKey, Option<PodAccount>)>),
    Link(Arc<Link>),
    Policy(Arc<FailoverPolicy>),
    RateLimit(Arc<RateLimitPolicy>),
    Route(Arc<HttpRoute>),
}

/// A manifest that cannot be used, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParseError {
    line: usize,
    column: usize,
    message: String,
}

// === impl FileStore ===

impl FileStore {
    /// Reads the directory once (so the state is synced), then watches it.
    pub async fn open(config: FileStoreConfig) -> Result<Self, StoreError> {
        let dir = config.dir.clone();
        let meta = tokio::fs::metadata(&dir)
            .await
            .map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        if !meta.is_dir() {
            return Err(StoreError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let (tx, _) = watch::channel(Arc::new(ClusterState::default()));
        let inner = Arc::new(Inner {
            dir,
            tx,
            scan: Mutex::new(Scan::default()),
            statuses: tokio::sync::Mutex::new(()),
            whole_reads: AtomicUsize::new(0),
        });
        let watch = changes::watch(&config);
        inner.clone().rescan().await;
        let poller = tokio::spawn(changes::follow(inner.clone(), config, watch));
        Ok(Self { inner, poller })
    }

    /// The files that currently fail to parse, as `path:line:column: why`.
    pub fn errors(&self) -> Vec<String> {
        self.inner
            .lock()
            .files
            .values()
            .filter_map(|f| f.error.clone())
            .collect()
    }

    /// Looks at the directory now instead of at the next poll.
    pub async fn rescan(&self) {
        self.inner.clone().rescan().await;
    }

    /// The directory this store reads.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Runs a batch of mirror writes off the runtime, then removes the
    /// statuses of objects it took away; every key fails if the batch dies.
    async fn batch(
        &self,
        keys: Vec<ObjKey>,
        run: impl FnOnce() -> (Outcomes, Vec<Orphan>) + Send + 'static,
    ) -> Outcomes {
        match tokio::task::spawn_blocking(run).await {
            Ok((out, orphans)) => {
                self.inner.remove_statuses(orphans).await;
                out
            }
            Err(e) => failed_batch(keys, &e),
        }
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Store for FileStore {
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.tx.subscribe()
    }

    fn apply_mirror(&self, mirror: Mirror) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { only(self.apply_mirrors(vec![mirror]).await) })
    }

    fn delete_mirror(&self, key: ObjKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { only(self.delete_mirrors(vec![key]).await) })
    }

    fn apply_mirrors(&self, mirrors: Vec<Mirror>) -> BoxFuture<'_, Outcomes> {
        let keys = mirrors.iter().map(Mirror::key).collect();
        let inner = self.inner.clone();
        Box::pin(self.batch(keys, move || inner.write_mirrors(mirrors)))
    }

    fn delete_mirrors(&self, keys: Vec<ObjKey>) -> BoxFuture<'_, Outcomes> {
        let inner = self.inner.clone();
        let asked = keys.clone();
        Box::pin(self.batch(asked, move || inner.remove_mirrors(keys)))
    }

    fn set_link_status(
        &self,
        key: ObjKey,
        status: LinkStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.inner.set_status(StatusOf::Link, key, |state, key| {
            let mut link = state.links.get(key)?.clone();
            link.status = Some(status);
            Some(link)
        }))
    }

    fn set_policy_status(
        &self,
        key: ObjKey,
        status: FailoverPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.inner.set_status(StatusOf::Policy, key, |state, key| {
            let mut policy = state.policies.get(key)?.clone();
            policy.status = Some(status);
            Some(policy)
        }))
    }

    fn set_rate_limit_status(
        &self,
        key: ObjKey,
        status: RateLimitPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.inner
                .set_status(StatusOf::RateLimit, key, |state, key| {
                    let mut policy = state.rate_limits.get(key)?.clone();
                    policy.status = Some(status);
                    Some(policy)
                }),
        )
    }

    fn set_route_status(
        &self,
        key: ObjKey,
        parents: Vec<HttpRouteStatusParents>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.inner.set_status(StatusOf::Route, key, |state, key| {
            let mut route = (**state.routes.get(key)?).clone();
            let parents = merged_route_parents(route.status.as_ref(), parents);
            route.status = Some(HttpRouteStatus { parents });
            Some(route)
        }))
    }
}

// === impl Inner ===

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Scan> {
        // A panic while holding the lock leaves a scan half-updated at worst;
        // the next scan repairs it.
        self.scan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mirror_path(&self, key: &ObjKey) -> PathBuf {
        self.dir
            .join(MIRRORS_DIR)
            .join(&*key.namespace)
            .join(format!("{}.yaml", key.name))
    }

    fn status_path(&self, of: StatusOf, key: &ObjKey) -> PathBuf {
        self.dir
            .join(STATUS_DIR)
            .join(of.plural())
            .join(format!("{}.{}.yaml", key.namespace, key.name))
    }

    /// Writes the object `with` makes of the current one, with its status;
    /// [`StoreError::NotFound`] if the object is gone, as Kubernetes answers.
    async fn set_status<T: serde::Serialize>(
        &self,
        of: StatusOf,
        key: ObjKey,
        with: impl FnOnce(&ClusterState, &ObjKey) -> Option<T>,
    ) -> Result<(), StoreError> {
        let _writing = self.statuses.lock().await;
        let obj = with(&self.tx.borrow(), &key);
        let obj = obj.ok_or_else(|| StoreError::NotFound {
            kind: of.kind(),
            key: key.clone(),
        })?;
        let path = self.status_path(of, &key);
        let text = to_yaml(&key, &obj)?;
        if tokio::fs::read_to_string(&path).await.ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        write_atomic(&path, text).await
    }

    /// Reads the files a watch reported, or the whole directory when that
    /// is not enough.
    async fn reread(self: Arc<Self>, paths: std::collections::BTreeSet<PathBuf>) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reread_blocking(&paths)).await {
            Ok(Some(orphans)) => self.remove_statuses(orphans).await,
            Ok(None) => self.rescan().await,
            Err(e) => tracing::error!(error = %e, "file store read failed"),
        }
    }

    async fn rescan(self: Arc<Self>) {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.rescan_blocking()).await {
            Ok(orphans) => self.remove_statuses(orphans).await,
            Err(e) => tracing::error!(error = %e, "file store scan failed"),
        }
    }

    /// Removes the status files of objects that are gone, unless the object
    /// is back by now.
    async fn remove_statuses(&self, orphans: Vec<Orphan>) {
        if orphans.is_empty() {
            return;
        }
        let _writing = self.statuses.lock().await;
        let state = self.tx.borrow().clone();
        for (of, key) in orphans {
            if of.exists(&state, &key) {
                continue;
            }
            let path = self.status_path(of, &key);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => tracing::debug!(kind = of.kind(), object = %key, "status removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %path.display(), error = %e,
                    "cannot remove the status of a deleted object"),
            }
        }
    }

    /// Reads what changed in the whole directory; returns the statuses
    /// whose objects are gone.
    fn rescan_blocking(&self) -> Vec<Orphan> {
        let mut scan = self.lock();
        self.whole_reads.fetch_add(1, Ordering::Relaxed);
        let mut seen = Vec::new();
        collect_files(&self.dir, 0, &mut seen);
        let mut changed = false;
        let live: std::collections::HashSet<&PathBuf> = seen.iter().map(|(p, _)| p).collect();
        let gone: Vec<PathBuf> = scan
            .files
            .keys()
            .filter(|p| !live.contains(p))
            .cloned()
            .collect();
        for path in gone {
            changed |= scan.forget(&path);
        }
        for (path, stamp) in &seen {
            changed |= scan.read(path, *stamp);
        }
        self.settle(&mut scan, changed)
    }

    /// Reads the files `paths` name, as the watch reported them; `None`
    /// when that is not enough (a directory appeared or went) and the
    /// whole directory must be read.
    fn reread_blocking(&self, paths: &std::collections::BTreeSet<PathBuf>) -> Option<Vec<Orphan>> {
        let mut scan = self.lock();
        // Looked at before anything changes: a read that gives up for the
        // whole directory must leave nothing half taken in.
        let mut found = Vec::with_capacity(paths.len());
        for path in paths {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => return None,
                Ok(meta) if meta.is_file() && self.is_manifest(path) => {
                    found.push((path, Some(stamp(&meta))));
                }
                Ok(_) => {}
                Err(_) if scan.files.contains_key(path) => found.push((path, None)),
                Err(_) => {
                    let known_inside = scan
                        .files
                        .range(path.clone()..)
                        .next()
                        .is_some_and(|(known, _)| known.starts_with(path));
                    if known_inside {
                        // A directory of known files went.
                        return None;
                    }
                }
            }
        }
        let mut changed = false;
        for (path, stamp) in found {
            changed |= match stamp {
                Some(stamp) => scan.read(path, stamp),
                None => scan.forget(path),
            };
        }
        Some(self.settle(&mut scan, changed))
    }

    /// Whether `path` is a file [`collect_files`] would find.
    fn is_manifest(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.dir) else {
            return false;
        };
        let names: Vec<_> = rel.components().map(|c| c.as_os_str()).collect();
        let (Some(first), Some(last)) = (names.first(), names.last()) else {
            return false;
        };
        let last = last.to_string_lossy();
        names.len() <= MAX_DEPTH
            && !(names.len() > 1 && *first == STATUS_DIR)
            && names.iter().all(|n| !n.to_string_lossy().starts_with('.'))
            && (last.ends_with(".yaml") || last.ends_with(".yml"))
    }

    /// After a read: publishes what changed, and sweeps the statuses of
    /// objects deleted while no store ran once nothing is broken.
    fn settle(&self, scan: &mut Scan, changed: bool) -> Vec<Orphan> {
        let mut orphans = Vec::new();
        if changed {
            orphans = self.publish(scan);
        }
        if !scan.swept && self.tx.borrow().broken_files == 0 {
            scan.swept = true;
            orphans.extend(self.stale_statuses());
        }
        orphans
    }

    /// Publishes the state the scan holds; returns the statuses whose
    /// objects went with it.
    fn publish(&self, scan: &Scan) -> Vec<Orphan> {
        let mut state = scan.state();
        let before = self.tx.borrow().clone();
        state.reuse_index(&before);
        let mut orphans = Vec::new();
        for of in StatusOf::ALL {
            let gone = of.keys(&before).filter(|key| !of.exists(&state, key));
            orphans.extend(gone.map(|key| (of, key.clone())));
        }
        self.tx.send_if_modified(|cur| {
            if **cur == state {
                return false;
            }
            *cur = Arc::new(state);
            true
        });
        orphans
    }

    /// Writes a batch of mirrors and takes them into the state at once,
    /// without reading the directory again: the store knows what it wrote.
    fn write_mirrors(&self, mirrors: Vec<Mirror>) -> (Outcomes, Vec<Orphan>) {
        let current = self.tx.borrow().clone();
        let mut out = Vec::with_capacity(mirrors.len());
        let mut written = Vec::new();
        for mirror in mirrors {
            let key = mirror.key();
            let result = self.write_mirror(&current, &key, &mirror);
            match result {
                Ok((path, stamp)) => {
                    let objects = vec![
                        Object::Service(Arc::new(mirror.service)),
                        Object::Slice(Arc::new(mirror.slice)),
                    ];
                    written.push((path, stamp, objects));
                    out.push((key, Ok(())));
                }
                Err(e) => out.push((key, Err(e))),
            }
        }
        if written.is_empty() {
            return (out, Vec::new());
        }
        let mut scan = self.lock();
        for (path, stamp, objects) in written {
            scan.put(
                path,
                FileEntry {
                    stamp,
                    objects,
                    error: None,
                },
            );
        }
        let orphans = self.publish(&scan);
        (out, orphans)
    }

    fn write_mirror(
        &self,
        current: &ClusterState,
        key: &ObjKey,
        mirror: &Mirror,
    ) -> Result<(PathBuf, (SystemTime, u64)), StoreError> {
        if let Some(svc) = current.services.get(key)
            && !is_mirror(svc.metadata.labels.as_ref())
        {
            return Err(StoreError::Refused(format!(
                "service {key} exists and is not a mirror; not overwriting it"
            )));
        }
        let mut text = String::from(
            "# Mirror written by meshfed-controller; it is rewritten or removed as the \
             remote export changes.\n",
        );
        text.push_str(&to_yaml(key, &mirror.service)?);
        text.push_str("---\n");
        text.push_str(&to_yaml(key, &mirror.slice)?);
        let path = self.mirror_path(key);
        let stamp = write_stamped(&path, &text)?;
        Ok((path, stamp))
    }

    /// Removes a batch of mirrors' files and drops them from the state at once.
    fn remove_mirrors(&self, keys: Vec<ObjKey>) -> (Outcomes, Vec<Orphan>) {
        let current = self.tx.borrow().clone();
        let mut out = Vec::with_capacity(keys.len());
        let mut removed = Vec::new();
        for key in keys {
            if let Some(svc) = current.services.get(&key)
                && !is_mirror(svc.metadata.labels.as_ref())
            {
                let refused =
                    StoreError::Refused(format!("service {key} is not a mirror; not deleting it"));
                out.push((key, Err(refused)));
                continue;
            }
            let path = self.mirror_path(&key);
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    let path = path.display().to_string();
                    out.push((key, Err(StoreError::Io { path, source })));
                    continue;
                }
            }
            out.push((key, Ok(())));
        }
        let mut orphans = Vec::new();
        if !removed.is_empty() {
            let mut scan = self.lock();
            for path in &removed {
                scan.forget(path);
            }
            orphans = self.publish(&scan);
        }
        // A mirror also defined in a manifest of its own is still there.
        let state = self.tx.borrow().clone();
        let mirrors_dir = self.dir.join(MIRRORS_DIR);
        for (key, result) in &mut out {
            if result.is_ok() && state.services.contains_key(key) {
                *result = Err(StoreError::Refused(format!(
                    "mirror {key} is defined outside {}; remove it by hand",
                    mirrors_dir.display()
                )));
            }
        }
        (out, orphans)
    }

    /// The status files whose objects are not in the store: deleted while
    /// no store ran.
    fn stale_statuses(&self) -> Vec<Orphan> {
        let state = self.tx.borrow().clone();
        let mut stale = Vec::new();
        for of in StatusOf::ALL {
            let dir = self.dir.join(STATUS_DIR).join(of.plural());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let key = name.to_str().and_then(|n| n.strip_suffix(".yaml"));
                // A namespace is a DNS label: the first dot ends it.
                let Some((namespace, name)) = key.and_then(|k| k.split_once('.')) else {
                    continue;
                };
                let key = ObjKey::new(namespace, name);
                if !of.exists(&state, &key) {
                    stale.push((of, key));
                }
            }
        }
        stale
    }
}

// === impl StatusOf ===

impl StatusOf {
    const ALL: [Self; 4] = [Self::Link, Self::Policy, Self::RateLimit, Self::Route];

    fn kind(self) -> &'static str {
        match self {
            Self::Link => LINK,
            Self::Policy => POLICY,
            Self::RateLimit => RATE_LIMIT,
            Self::Route => ROUTE,
        }
    }

    /// The folder of its status files, under `status/`.
    fn plural(self) -> &'static str {
        match self {
            Self::Link => "links",
            Self::Policy => "failoverpolicies",
            Self::RateLimit => "ratelimitpolicies",
            Self::Route => "httproutes",
        }
    }

    fn keys(self, state: &ClusterState) -> Box<dyn Iterator<Item = &ObjKey> + '_> {
        match self {
            Self::Link => Box::new(state.links.keys()),
            Self::Policy => Box::new(state.policies.keys()),
            Self::RateLimit => Box::new(state.rate_limits.keys()),
            Self::Route => Box::new(state.routes.keys()),
        }
    }

    fn exists(self, state: &ClusterState, key: &ObjKey) -> bool {
        match self {
            Self::Link => state.links.contains_key(key),
            Self::Policy => state.policies.contains_key(key),
            Self::RateLimit => state.rate_limits.contains_key(key),
            Self::Route => state.routes.contains_key(key),
        }
    }
}

fn read_manifests(path: &Path) -> Result<Vec<Object>, ParseError> {
    let io = |e: std::io::Error| ParseError {
        line: 0,
        column: 0,
        message: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(io(std::io::Error::other(format!(
            "file is {len} bytes, more than the {MAX_FILE_BYTES} a manifest file may be"
        ))));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_manifests(&text)
}

// === parsing ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<ObjectMeta>,
}

/// Parses a multi-document manifest file into the objects the controller
/// reads. Line numbers in errors count from the start of the file.
fn parse_manifests(text: &str) -> Result<Vec<Object>, ParseError> {
    let mut objects = Vec::new();
    for (first_line, doc) in split_documents(text) {
        if doc.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#')
        }) {
            continue;
        }
        let at = |line: usize, column: usize, message: String| ParseError {
            line: first_line + line.max(1) - 1,
            column,
            message,
        };
        let head: Head = from_yaml(doc).map_err(|(l, c, m)| at(l, c, m))?;
        let (Some(api_version), Some(kind)) = (head.api_version, head.kind) else {
            return Err(at(1, 1, "document has no apiVersion or kind".into()));
        };
        if head
            .metadata
            .as_ref()
            .and_then(|m| m.name.as_ref())
            .is_none()
        {
            return Err(at(1, 1, format!("{kind} has no metadata.name")));
        }
        let obj = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => {
                let svc: Service = from_yaml(doc).map_err(|(l, c, m)| at(l, c, m))?;
                Object::Service(Arc::new(compact_service(svc)))
            }
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                let slice: EndpointSlice = from_yaml(doc).map_err(|(l, c, m)| at(l, c, m))?;
                Object::Slice(Arc::new(compact_slice(slice)))
            }
            ("v1", "Node") => Object::Node(typed(doc, &at)?),
            ("v1", "Pod") => {
                let pod: Arc<Pod> = typed(doc, &at)?;
                Object::Pod(Box::new((object_key(&pod.metadata), PodAccount::of(&pod))))
            }
            ("meshfed.io/v1alpha1", "Link") => Object::Link(typed(doc, &at)?),
            ("meshfed.io/v1alpha1", "FailoverPolicy") => Object::Policy(typed(doc, &at)?),
            ("meshfed.io/v1alpha1", RATE_LIMIT) => Object::RateLimit(typed(doc, &at)?),
            // v1beta1 is served from the same schema (what older tools write).
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", ROUTE) => {
                Object::Route(typed(doc, &at)?)
            }
            (
                _,
                "Service" | "EndpointSlice" | "Node" | "Pod" | "Link" | "FailoverPolicy"
                | RATE_LIMIT | ROUTE,
            ) => {
                return Err(at(
                    1,
                    1,
                    format!("{kind} has unsupported apiVersion {api_version}"),
                ));
            }
            _ => {
                tracing::debug!(%kind, %api_version, "ignoring a kind the controller does not read");
                continue;
            }
        };
        objects.push(obj);
    }
    Ok(objects)
}

fn typed<T: DeserializeOwned>(
    doc: &str,
    at: &impl Fn(usize, usize, String) -> ParseError,
) -> Result<Arc<T>, ParseError> {
    from_yaml(doc)
        .map(Arc::new)
        .map_err(|(l, c, m)| at(l, c, m))
}

impl Object {
    fn identity(&self) -> Identity {
        let (kind, meta) = match self {
            Object::Service(o) => (SERVICE, &o.metadata),
            Object::Slice(o) => (SLICE, &o.metadata),
            Object::Node(o) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                return (NODE, ObjKey::new("", name));
            }
            Object::Pod(pod) => return (POD, pod.0.clone()),
            Object::Link(o) => (LINK, &o.metadata),
            Object::Policy(o) => (POLICY, &o.metadata),
            Object::RateLimit(o) => (RATE_LIMIT, &o.metadata),
            Object::Route(o) => (ROUTE, &o.metadata),
        };
        (kind, object_key(meta))
    }
}

/// A namespaced object's key; `default` when it names no namespace, as
/// `kubectl apply` would place it.
fn object_key(meta: &ObjectMeta) -> ObjKey {
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    ObjKey::new(namespace, meta.name.clone().unwrap_or_default())
}

// === writing ===

/// The one outcome of a batch of one.
fn only(mut out: Outcomes) -> Result<(), StoreError> {
    out.pop().map_or_else(
        || Err(StoreError::Refused("nothing done".into())),
        |(_, r)| r,
    )
}

/// Every mirror of a batch whose writer task died.
fn failed_batch(keys: Vec<ObjKey>, e: &tokio::task::JoinError) -> Outcomes {
    keys.into_iter()
        .map(|k| {
            let err = std::io::Error::other(format!("mirror writer failed: {e}"));
            let path = k.to_string();
            (k, Err(StoreError::Io { path, source: err }))
        })
        .collect()
}

/// [`manifest::write_atomic`], then the file's stamp as a scan finds it.
fn write_stamped(path: &Path, text: &str) -> Result<(SystemTime, u64), StoreError> {
    manifest::write_atomic(path, text)?;
    let meta = std::fs::metadata(path).map_err(|source| StoreError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(stamp(&meta))
}

/// [`manifest::write_atomic`] off the runtime.
async fn write_atomic(path: &Path, text: String) -> Result<(), StoreError> {
    let (owned, shown) = (path.to_path_buf(), path.display().to_string());
    tokio::task::spawn_blocking(move || manifest::write_atomic(&owned, &text))
        .await
        .map_err(|e| StoreError::Io {
            path: shown,
            source: std::io::Error::other(format!("writer failed: {e}")),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_line_numbers() {
        let text = "a: 1\n---\nb: 2\nc: 3\n--- # next\nd: 4\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            vec![(1, "a: 1\n"), (3, "b: 2\nc: 3\n"), (6, "d: 4\n")]
        );
    }

    #[test]
    fn errors_name_the_line_in_the_file() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: ok\n---\n\
                    apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: eighty\n";
        let err = parse_manifests(text).expect_err("port is not a number");
        assert_eq!((err.line, err.column), (12, 11), "{err:?}");
        assert!(err.message.contains("i32"), "{}", err.message);
    }

    #[test]
    fn reads_known_kinds_and_skips_others() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n---\n\
                    apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n  labels:\n    topology.kubernetes.io/zone: z1\n";
        let objs = parse_manifests(text).expect("parses");
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].identity(), ("Node", ObjKey::new("", "n1")));
    }

    /// A store on a fresh directory holding `files` (path, text), reading
    /// it whole too rarely to matter: changes are seen as they are reported.
    async fn store_with(files: &[(&str, String)]) -> (tempfile::TempDir, Arc<FileStore>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files {
            let path = tmp.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("in tmp")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        let mut config = FileStoreConfig::new(tmp.path());
        config.poll = Duration::from_secs(3600);
        config.rescan = Duration::from_secs(3600);
        let store = FileStore::open(config).await.expect("opens");
        (tmp, Arc::new(store))
    }

    fn yaml<T: serde::Serialize>(obj: &T) -> String {
        to_yaml(&ObjKey::new("", ""), obj).expect("serializes")
    }

    fn west() -> (ObjKey, String) {
        let link = crate::fixtures::link("ns", "west", &["127.0.0.1"], 1, "a", "b");
        (ObjKey::new("ns", "west"), yaml(&link))
    }

    fn status_file(tmp: &tempfile::TempDir, plural: &str, key: &ObjKey) -> PathBuf {
        let name = format!("{}.{}.yaml", key.namespace, key.name);
        tmp.path().join(STATUS_DIR).join(plural).join(name)
    }

    /// A mirror shaped as the controller writes it: labelled, annotated
    /// with its digest, its slice at a ready gateway.
    fn mirror(name: &str) -> Mirror {
        use meshfed_api::labels;
        let mut service = crate::fixtures::service("shop", name, &[("http", 80)], false);
        let marks = BTreeMap::from([
            (labels::ORIGIN_CLUSTER.to_owned(), "west".to_owned()),
            (labels::LINK.to_owned(), "west".to_owned()),
        ]);
        let digest = BTreeMap::from([("meshfed.io/mirror-hash".to_owned(), name.to_owned())]);
        service.metadata.labels = Some(marks.clone());
        service.metadata.annotations = Some(digest.clone());
        let mut slice = crate::fixtures::slice("shop", name, name, &[("http", 4443)]);
        crate::fixtures::add_host_endpoint(&mut slice, "127.0.0.2", None, true);
        slice.metadata.labels.get_or_insert_default().extend(marks);
        slice.metadata.annotations = Some(digest);
        Mirror { service, slice }
    }

    /// What a store opened afresh on `dir` reads.
    async fn read_afresh(dir: &Path) -> ClusterState {
        let store = FileStore::open(FileStoreConfig::new(dir))
            .await
            .expect("opens");
        (**store.state().borrow()).clone()
    }

    #[tokio::test]
    async fn batched_mirror_writes_hold_what_a_fresh_read_finds() {
        let own = yaml(&crate::fixtures::service(
            "shop",
            "api-west",
            &[("http", 80)],
            false,
        ));
        let (tmp, store) = store_with(&[("services.yaml", own)]).await;
        let mut batch: Vec<Mirror> = (0..300).map(|i| mirror(&format!("m{i}-west"))).collect();
        batch.push(mirror("api-west"));
        let out = store.apply_mirrors(batch).await;
        assert_eq!(out.len(), 301);
        assert!(out[..300].iter().all(|(_, r)| r.is_ok()), "{out:?}");
        assert!(
            matches!(&out[300], (k, Err(StoreError::Refused(why)))
                if &*k.name == "api-west" && why.contains("not a mirror")),
            "{:?}",
            out[300]
        );
        let held = (**store.state().borrow()).clone();
        assert_eq!(held.services.len(), 301);
        assert_eq!(held.slices.len(), 300);
        assert_eq!(held, read_afresh(tmp.path()).await, "as the files say");

        // Rewriting one changes it in place.
        let mut changed = mirror("m7-west");
        changed.service.metadata.annotations = Some(BTreeMap::from([(
            "meshfed.io/mirror-hash".to_owned(),
            "other".to_owned(),
        )]));
        store.apply_mirror(changed.clone()).await.expect("applied");
        let key = ObjKey::new("shop", "m7-west");
        assert_eq!(*store.state().borrow().services[&key], changed.service);

        let mut gone: Vec<ObjKey> = (0..150)
            .map(|i| ObjKey::new("shop", format!("m{i}-west")))
            .collect();
        gone.push(ObjKey::new("shop", "api-west"));
        gone.push(ObjKey::new("shop", "never-there"));
        let out = store.delete_mirrors(gone).await;
        assert!(out[..150].iter().all(|(_, r)| r.is_ok()), "{out:?}");
        assert!(matches!(out[150].1, Err(StoreError::Refused(_))));
        assert!(out[151].1.is_ok(), "deleting what is gone is done");
        let held = (**store.state().borrow()).clone();
        assert_eq!(held.services.len(), 151, "150 mirrors and the Service");
        assert!(held.services.contains_key(&ObjKey::new("shop", "api-west")));
        assert_eq!(held, read_afresh(tmp.path()).await, "as the files say");

        // A poll finds nothing new: the store's stamps are the files'.
        let before = store.state();
        store.rescan().await;
        assert!(
            !before.has_changed().expect("open"),
            "no change after rescan"
        );
    }

    /// Waits, at most 5 s, until the store's state satisfies `holds`.
    async fn until(store: &FileStore, what: &str, holds: impl Fn(&ClusterState) -> bool) {
        let mut state = store.state();
        let waited = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| holds(s)));
        assert!(
            matches!(waited.await, Ok(Ok(_))),
            "not seen within 5 s: {what}"
        );
    }

    #[tokio::test]
    async fn changes_are_seen_without_reading_the_directory() {
        let (tmp, store) = store_with(&[]).await;
        let svc = |name: &str| {
            yaml(&crate::fixtures::service(
                "shop",
                name,
                &[("http", 80)],
                false,
            ))
        };
        let key = |name: &str| ObjKey::new("shop", name);
        std::fs::write(tmp.path().join("a.yaml"), svc("a")).expect("write");
        until(&store, "a new file", |s| s.services.contains_key(&key("a"))).await;
        std::fs::write(tmp.path().join("a.yaml"), svc("b")).expect("write");
        until(&store, "a changed file", |s| {
            s.services.contains_key(&key("b")) && !s.services.contains_key(&key("a"))
        })
        .await;
        // A directory made with files already in it, then moved away.
        let staged = tempfile::tempdir_in(tmp.path().parent().expect("parent")).expect("tmp");
        std::fs::write(staged.path().join("c.yaml"), svc("c")).expect("write");
        let moved = tmp.path().join("team");
        std::fs::rename(staged.path(), &moved).expect("mv");
        until(&store, "a directory moved in", |s| {
            s.services.contains_key(&key("c"))
        })
        .await;
        // Files put in a directory made a moment before.
        for i in 0..20 {
            let dir = tmp.path().join(format!("new-{i}"));
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::write(dir.join("n.yaml"), svc(&format!("n{i}"))).expect("write");
        }
        until(&store, "files in new directories", |s| {
            (0..20).all(|i| s.services.contains_key(&key(&format!("n{i}"))))
        })
        .await;
        for i in 0..20 {
            std::fs::remove_dir_all(tmp.path().join(format!("new-{i}"))).expect("rm");
        }
        std::fs::remove_dir_all(&moved).expect("rm");
        until(&store, "a directory removed", |s| {
            !s.services.contains_key(&key("c"))
        })
        .await;
        std::fs::remove_file(tmp.path().join("a.yaml")).expect("rm");
        until(&store, "a removed file", |s| s.services.is_empty()).await;
        // Other files are not manifests.
        std::fs::write(tmp.path().join("notes.txt"), svc("d")).expect("write");
        std::fs::create_dir_all(tmp.path().join(STATUS_DIR)).expect("mkdir");
        std::fs::write(tmp.path().join(STATUS_DIR).join("e.yaml"), svc("e")).expect("write");
        std::fs::write(tmp.path().join("f.yaml"), svc("f")).expect("write");
        until(&store, "the last file", |s| {
            s.services.contains_key(&key("f"))
        })
        .await;
        let services: Vec<_> = store.state().borrow().services.keys().cloned().collect();
        assert_eq!(services, vec![key("f")]);
        // Reading the directory opens it: that is no change to heed.
        let before = store.inner.whole_reads.load(Ordering::Relaxed);
        store.rescan().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let reads = store.inner.whole_reads.load(Ordering::Relaxed) - before;
        assert_eq!(reads, 1, "a read of the directory led to another");
    }

    #[tokio::test]
    async fn a_status_goes_with_its_object_and_is_not_written_after() {
        let (key, link) = west();
        let policy = yaml(&crate::fixtures::policy("ns", "api", "api"));
        let pkey = ObjKey::new("ns", "api");
        let files = [("link.yaml", link), ("policy.yaml", policy)];
        let (tmp, store) = store_with(&files).await;
        let (link_status, policy_status) = (
            status_file(&tmp, "links", &key),
            status_file(&tmp, "failoverpolicies", &pkey),
        );
        let status = LinkStatus {
            alive: Some(true),
            ..LinkStatus::default()
        };
        store
            .set_link_status(key.clone(), status.clone())
            .await
            .expect("written");
        store
            .set_policy_status(pkey.clone(), FailoverPolicyStatus::default())
            .await
            .expect("written");
        assert!(link_status.exists() && policy_status.exists());

        std::fs::remove_file(tmp.path().join("link.yaml")).expect("rm");
        store.rescan().await;
        assert!(!link_status.exists(), "the Link's status went with it");
        assert!(policy_status.exists(), "the policy is still there");
        let late = store.set_link_status(key.clone(), status).await;
        assert!(
            matches!(&late, Err(StoreError::NotFound { kind: "Link", key: k }) if *k == key),
            "{late:?}"
        );
        assert!(!link_status.exists(), "a late write does not bring it back");

        std::fs::remove_file(tmp.path().join("policy.yaml")).expect("rm");
        store.rescan().await;
        assert!(!policy_status.exists());
        let late = store
            .set_policy_status(pkey, FailoverPolicyStatus::default())
            .await;
        assert!(matches!(late, Err(StoreError::NotFound { .. })), "{late:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_status_write_racing_the_deletion_never_outlives_the_object() {
        let (key, link) = west();
        for round in 0..20 {
            let (tmp, store) = store_with(&[("link.yaml", link.clone())]).await;
            let writer = {
                let (store, key) = (store.clone(), key.clone());
                tokio::spawn(async move {
                    for i in 0..20 {
                        let status = LinkStatus {
                            imported_services: i,
                            ..LinkStatus::default()
                        };
                        match store.set_link_status(key.clone(), status).await {
                            Ok(()) => tokio::task::yield_now().await,
                            Err(StoreError::NotFound { .. }) => return,
                            Err(e) => panic!("round {round}: {e}"),
                        }
                    }
                })
            };
            tokio::task::yield_now().await;
            std::fs::remove_file(tmp.path().join("link.yaml")).expect("rm");
            store.rescan().await;
            writer.await.expect("writer");
            let file = status_file(&tmp, "links", &key);
            assert!(!file.exists(), "round {round}: status of a deleted Link");
        }
    }

    #[tokio::test]
    async fn statuses_of_objects_deleted_while_closed_go_once_nothing_is_broken() {
        let (key, link) = west();
        let gone = ObjKey::new("ns", "gone");
        let mut files = vec![
            ("link.yaml", link.clone()),
            ("status/links/ns.west.yaml", link.clone()),
            ("status/links/ns.gone.yaml", link.clone()),
            ("status/failoverpolicies/ns.gone.yaml", link),
        ];
        files.push(("bad.yaml", "apiVersion: v1\nkind: [".into()));
        let (tmp, store) = store_with(&files).await;
        assert_eq!(store.state().borrow().broken_files, 1);
        let stale = status_file(&tmp, "links", &gone);
        assert!(stale.exists(), "it may be an object in the broken file");
        std::fs::remove_file(tmp.path().join("bad.yaml")).expect("rm");
        store.rescan().await;
        assert_eq!(store.state().borrow().broken_files, 0);
        assert!(!stale.exists());
        assert!(!status_file(&tmp, "failoverpolicies", &gone).exists());
        assert!(status_file(&tmp, "links", &key).exists(), "west is there");
    }

    #[tokio::test]
    async fn broken_files_are_counted_until_fixed_or_removed() {
        let (_, link) = west();
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: [a\n".to_owned();
        let files = [("a.yaml", bad.clone()), ("b.yaml", bad)];
        let (tmp, store) = store_with(&files).await;
        let broken = || store.state().borrow().broken_files;
        assert_eq!(broken(), 2);
        std::fs::write(tmp.path().join("a.yaml"), link).expect("fix");
        store.rescan().await;
        assert_eq!(broken(), 1);
        std::fs::remove_file(tmp.path().join("b.yaml")).expect("rm");
        store.rescan().await;
        assert_eq!(broken(), 0);
        assert_eq!(store.state().borrow().links.len(), 1);
    }

    /// An object two files define is the first file's, in path order, as
    /// files come and go and change; what the store holds after each step is
    /// what a store opened afresh reads.
    #[tokio::test]
    async fn an_object_defined_twice_is_the_first_files_as_files_change() {
        let api = |ports: &[u16]| {
            let docs: Vec<String> = ports
                .iter()
                .map(|p| {
                    yaml(&crate::fixtures::service(
                        "shop",
                        "api",
                        &[("http", *p)],
                        true,
                    ))
                })
                .collect();
            docs.join("---\n")
        };
        let (tmp, store) = store_with(&[("a.yaml", api(&[80])), ("b.yaml", api(&[811]))]).await;
        let dir = tmp.path().to_path_buf();
        let port = || {
            let state = store.state().borrow().clone();
            let svc = state.services.get(&ObjKey::new("shop", "api")).cloned();
            svc.map(|s| {
                s.spec
                    .as_ref()
                    .expect("spec")
                    .ports
                    .as_ref()
                    .expect("ports")[0]
                    .port
            })
        };
        let step = async |what: &str, write: &[(&str, Option<String>)], want: Option<i32>| {
            for (file, text) in write {
                match text {
                    Some(text) => std::fs::write(dir.join(file), text).expect("write"),
                    None => std::fs::remove_file(dir.join(file)).expect("rm"),
                }
            }
            store.rescan().await;
            assert_eq!(port(), want, "{what}");
            assert!(
                **store.state().borrow() == read_afresh(&dir).await,
                "{what}: as read afresh"
            );
        };
        assert_eq!(port(), Some(80), "a.yaml comes first");
        step(
            "the second file changes",
            &[("b.yaml", Some(api(&[8222])))],
            Some(80),
        )
        .await;
        step("the first file goes", &[("a.yaml", None)], Some(8222)).await;
        step(
            "the first file is back",
            &[("a.yaml", Some(api(&[8333])))],
            Some(8333),
        )
        .await;
        let twice = Some(api(&[84, 85]));
        step("twice in the first file", &[("a.yaml", twice)], Some(84)).await;
        step("the second file goes", &[("b.yaml", None)], Some(84)).await;
        step("and the first", &[("a.yaml", None)], None).await;
    }

    /// A parsed slice keeps no spare room: at 10,000 slices the parser's
    /// doubling left megabytes unused.
    #[test]
    fn parsed_slices_and_services_hold_no_spare_room() {
        let (pods, slice) = crate::fixtures::pods_and_slice(
            "shop",
            "api",
            "api",
            &[("http", 8080)],
            &[("10.0.0.1", None, true), ("10.0.0.2", None, true)],
        );
        assert_eq!(pods.len(), 2);
        let svc = crate::fixtures::service("shop", "api", &[("http", 80)], true);
        let text = format!("{}---\n{}", yaml(&svc), yaml(&slice));
        let objects = parse_manifests(&text).expect("parses");
        let [Object::Service(svc), Object::Slice(slice)] = &objects[..] else {
            panic!("a Service and a slice: {objects:?}");
        };
        let endpoints = slice.endpoints.as_ref().expect("endpoints");
        assert_eq!(endpoints.capacity(), endpoints.len());
        let ports = slice.ports.as_ref().expect("ports");
        assert_eq!(ports.capacity(), ports.len());
        let ports = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports");
        assert_eq!(ports.capacity(), ports.len());
    }

    #[test]
    fn refuses_documents_without_kind_or_name() {
        let err = parse_manifests("\n\nfoo: bar\n").expect_err("no kind");
        assert_eq!(err.line, 1);
        let err = parse_manifests("apiVersion: v1\nkind: Service\n").expect_err("no name");
        assert!(err.message.contains("metadata.name"));
    }
}
