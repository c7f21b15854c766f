//! The file store: a directory of Kubernetes-style YAML manifests, watched
//! by polling, as the cluster of local mode, demos and tests.
//!
//! Layout under the directory:
//! - any `*.yaml` / `*.yml` file (sub-directories too) holds manifests,
//!   several per file separated by `---`: Services, EndpointSlices, Pods,
//!   Nodes, Links and FailoverPolicies; other kinds are ignored;
//! - `mirrors/<namespace>/<name>.yaml` are the mirrors the controller writes
//!   (read back like any manifest, so a restarted controller finds them);
//! - `status/<kind>/<namespace>.<name>.yaml` is where statuses are written
//!   (the object with its status, for people and `meshctl`); never read.
//!
//! A file that fails to parse is reported with its path and line, and the
//! objects it held before keep counting until it is fixed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meshfed_api::crd::{FailoverPolicy, FailoverPolicyStatus, Link, LinkStatus};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{ClusterState, Mirror, ObjKey, PodAccount, Store, StoreError, is_mirror};

const MIRRORS_DIR: &str = "mirrors";
pub(super) const STATUS_DIR: &str = "status";
/// Deeper trees are not scanned: a manifest directory is shallow.
pub(super) const MAX_DEPTH: usize = 4;
/// Larger files are refused rather than read.
pub(super) const MAX_FILE_BYTES: u64 = 8 << 20;

/// Where the file store reads and how often it looks for changes.
#[derive(Debug, Clone)]
pub struct FileStoreConfig {
    /// The manifest directory.
    pub dir: PathBuf,
    /// How often the directory is checked for changed files.
    pub poll: Duration,
}

impl FileStoreConfig {
    /// The directory, checked every 100 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            poll: Duration::from_millis(100),
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
}

/// What the last scan found, file by file.
#[derive(Debug, Default)]
struct Scan {
    files: BTreeMap<PathBuf, FileEntry>,
}

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
    Service(Box<Service>),
    Slice(Box<EndpointSlice>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Link(Box<Link>),
    Policy(Box<FailoverPolicy>),
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
        });
        inner.clone().rescan().await;
        let poller = tokio::spawn(poll(inner.clone(), config.poll));
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
}

impl Drop for FileStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn poll(inner: Arc<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.clone().rescan().await;
    }
}

impl Store for FileStore {
    fn state(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.inner.tx.subscribe()
    }

    fn apply_mirror(&self, mirror: Mirror) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let key = mirror.key();
            if let Some(svc) = self.inner.tx.borrow().services.get(&key)
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
            text.push_str(&to_yaml(&key, &mirror.service)?);
            text.push_str("---\n");
            text.push_str(&to_yaml(&key, &mirror.slice)?);
            let path = self.inner.mirror_path(&key);
            write_atomic(&path, text).await?;
            self.inner.clone().rescan().await;
            Ok(())
        })
    }

    fn delete_mirror(&self, key: ObjKey) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let path = self.inner.mirror_path(&key);
            if let Some(svc) = self.inner.tx.borrow().services.get(&key)
                && !is_mirror(svc.metadata.labels.as_ref())
            {
                return Err(StoreError::Refused(format!(
                    "service {key} is not a mirror; not deleting it"
                )));
            }
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Io {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
            self.inner.clone().rescan().await;
            if self.inner.tx.borrow().services.contains_key(&key) {
                return Err(StoreError::Refused(format!(
                    "mirror {key} is defined outside {}; remove it by hand",
                    self.inner.dir.join(MIRRORS_DIR).display()
                )));
            }
            Ok(())
        })
    }

    fn set_link_status(
        &self,
        key: ObjKey,
        status: LinkStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let link = self.inner.tx.borrow().links.get(&key).cloned();
            let mut link = link.ok_or(StoreError::NotFound {
                kind: "Link",
                key: key.clone(),
            })?;
            link.status = Some(status);
            self.inner.write_status("links", &key, &link).await
        })
    }

    fn set_policy_status(
        &self,
        key: ObjKey,
        status: FailoverPolicyStatus,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let policy = self.inner.tx.borrow().policies.get(&key).cloned();
            let mut policy = policy.ok_or(StoreError::NotFound {
                kind: "FailoverPolicy",
                key: key.clone(),
            })?;
            policy.status = Some(status);
            self.inner
                .write_status("failoverpolicies", &key, &policy)
                .await
        })
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
            .join(&key.namespace)
            .join(format!("{}.yaml", key.name))
    }

    async fn write_status<T: serde::Serialize>(
        &self,
        kind: &str,
        key: &ObjKey,
        obj: &T,
    ) -> Result<(), StoreError> {
        let path = self
            .dir
            .join(STATUS_DIR)
            .join(kind)
            .join(format!("{}.{}.yaml", key.namespace, key.name));
        let text = to_yaml(key, obj)?;
        if tokio::fs::read_to_string(&path).await.ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        write_atomic(&path, text).await
    }

    async fn rescan(self: Arc<Self>) {
        let this = self.clone();
        let done = tokio::task::spawn_blocking(move || this.rescan_blocking()).await;
        if let Err(e) = done {
            tracing::error!(error = %e, "file store scan failed");
        }
    }

    fn rescan_blocking(&self) {
        let mut scan = self.lock();
        let mut seen = Vec::new();
        collect_files(&self.dir, 0, &mut seen);
        let mut changed = false;
        let live: std::collections::HashSet<&PathBuf> = seen.iter().map(|(p, _)| p).collect();
        scan.files.retain(|p, _| {
            let keep = live.contains(p);
            changed |= !keep;
            keep
        });
        for (path, stamp) in &seen {
            if scan.files.get(path).is_some_and(|f| f.stamp == *stamp) {
                continue;
            }
            changed = true;
            let parsed = read_manifests(path);
            let entry = scan.files.entry(path.clone()).or_insert_with(|| FileEntry {
                stamp: *stamp,
                objects: Vec::new(),
                error: None,
            });
            entry.stamp = *stamp;
            match parsed {
                Ok(objects) => {
                    if entry.error.take().is_some() {
                        tracing::info!(file = %path.display(), "manifest file parses again");
                    }
                    entry.objects = objects;
                }
                Err(e) => {
                    let msg = format!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                    tracing::error!(error = %msg, "bad manifest; keeping its last good objects");
                    entry.error = Some(msg);
                }
            }
        }
        if !changed {
            return;
        }
        let state = assemble(&scan);
        self.tx.send_if_modified(|cur| {
            if **cur == state {
                return false;
            }
            *cur = Arc::new(state);
            true
        });
    }
}

/// Builds the cluster view from every file's objects; the first file (in
/// path order) to define an object wins.
fn assemble(scan: &Scan) -> ClusterState {
    let mut state = ClusterState::default();
    let mut owners: HashMap<(&'static str, ObjKey), &Path> = HashMap::new();
    for (path, file) in &scan.files {
        for obj in &file.objects {
            let (kind, key) = obj.identity();
            if let Some(first) = owners.get(&(kind, key.clone())) {
                tracing::warn!(%kind, %key, file = %path.display(), first = %first.display(),
                    "object defined twice; using the first");
                continue;
            }
            owners.insert((kind, key.clone()), path);
            match obj.clone() {
                Object::Service(s) => {
                    state.services.insert(key, *s);
                }
                Object::Slice(s) => {
                    state.slices.insert(key, *s);
                }
                Object::Node(n) => {
                    let zone = n
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(meshfed_api::labels::ZONE));
                    if let Some(zone) = zone {
                        state.node_zones.insert(key.name, zone.clone());
                    }
                }
                Object::Pod(p) => {
                    if let Some(account) = PodAccount::of(&p) {
                        state.pods.insert(key, account);
                    }
                }
                Object::Link(l) => {
                    state.links.insert(key, *l);
                }
                Object::Policy(p) => {
                    state.policies.insert(key, *p);
                }
            }
        }
    }
    state
}

pub(super) fn collect_files(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, (SystemTime, u64))>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || (depth == 0 && name == STATUS_DIR) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let path = entry.path();
        if meta.is_dir() {
            if depth + 1 < MAX_DEPTH {
                collect_files(&path, depth + 1, out);
            }
        } else if meta.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.push((path, (mtime, meta.len())));
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
            ("v1", "Service") => Object::Service(typed(doc, &at)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => Object::Slice(typed(doc, &at)?),
            ("v1", "Node") => Object::Node(typed(doc, &at)?),
            ("v1", "Pod") => Object::Pod(typed(doc, &at)?),
            ("meshfed.io/v1alpha1", "Link") => Object::Link(typed(doc, &at)?),
            ("meshfed.io/v1alpha1", "FailoverPolicy") => Object::Policy(typed(doc, &at)?),
            (_, "Service" | "EndpointSlice" | "Node" | "Pod" | "Link" | "FailoverPolicy") => {
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
) -> Result<Box<T>, ParseError> {
    from_yaml(doc)
        .map(Box::new)
        .map_err(|(l, c, m)| at(l, c, m))
}

/// Deserializes one document; errors as (line, column, message).
pub(super) fn from_yaml<T: DeserializeOwned>(doc: &str) -> Result<T, (usize, usize, String)> {
    serde_saphyr::from_str(doc).map_err(|e| {
        let (line, column) = e
            .location()
            .map_or((1, 1), |l| (l.line() as usize, l.column() as usize));
        (line, column, short_message(&e.to_string()))
    })
}

/// serde-saphyr's message opens with `error: line L column C: why` and then
/// draws a source excerpt; keep just the why.
fn short_message(full: &str) -> String {
    let first = full.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((loc, why)) if loc.starts_with("line ") => why.to_owned(),
        _ => first.to_owned(),
    }
}

/// Splits at `---` lines; yields each document with its first line number.
pub(super) fn split_documents(text: &str) -> Vec<(usize, &str)> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") || bare == "..." {
            docs.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push((start_line, &text[start..]));
    docs
}

impl Object {
    fn identity(&self) -> (&'static str, ObjKey) {
        let (kind, meta) = match self {
            Object::Service(o) => ("Service", &o.metadata),
            Object::Slice(o) => ("EndpointSlice", &o.metadata),
            Object::Node(o) => ("Node", &o.metadata),
            Object::Pod(o) => ("Pod", &o.metadata),
            Object::Link(o) => ("Link", &o.metadata),
            Object::Policy(o) => ("FailoverPolicy", &o.metadata),
        };
        let namespace = if kind == "Node" {
            String::new()
        } else {
            meta.namespace.clone().unwrap_or_else(|| "default".into())
        };
        (
            kind,
            ObjKey::new(namespace, meta.name.clone().unwrap_or_default()),
        )
    }
}

// === writing ===

pub(super) fn to_yaml<T: serde::Serialize>(key: &ObjKey, obj: &T) -> Result<String, StoreError> {
    serde_saphyr::to_string(obj).map_err(|e| StoreError::Serialize {
        what: key.to_string(),
        reason: e.to_string(),
    })
}

/// Writes via a temporary file and a rename, so a reader never sees half a file.
async fn write_atomic(path: &Path, text: String) -> Result<(), StoreError> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| StoreError::Io { path: p, source }
    };
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    let tmp = path.with_extension("yaml.tmp");
    tokio::fs::write(&tmp, text).await.map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, path).await.map_err(io(path))
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

    #[test]
    fn refuses_documents_without_kind_or_name() {
        let err = parse_manifests("\n\nfoo: bar\n").expect_err("no kind");
        assert_eq!(err.line, 1);
        let err = parse_manifests("apiVersion: v1\nkind: Service\n").expect_err("no name");
        assert!(err.message.contains("metadata.name"));
    }
}
