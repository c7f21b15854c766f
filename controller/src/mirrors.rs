//! Mirrors: for every service imported from a peer, a local `<name>-<cluster>`
//! Service and EndpointSlice at the peer's gateway. Reconciled from the
//! world on every change: missing or changed mirrors are applied, mirrors
//! nothing imports any more are deleted (found by label, never by name).
//! A mirror whose peer has not sent its first snapshot since start is left
//! alone, so a restarting controller churns nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use meshfed_api::federation::ExportedService;
use meshfed_api::labels;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{ErrorLabels, LinkLabels, Metrics, WriteLabels};
use crate::store::{
    ClusterState, Mirror, ObjKey, Store, StoreError, diffed, diffed_key, is_mirror,
};
use crate::world::{PeerState, World};

/// Annotation holding the [`input_digest`] of what the controller last
/// applied, so an unchanged mirror is never rewritten (nor even built).
const HASH: &str = "meshfed.io/mirror-hash";
/// Re-check everything this often even without changes.
const RESYNC: Duration = Duration::from_secs(10);
/// Wait before retrying a write that failed.
const RETRY: Duration = Duration::from_secs(2);

/// The mirror name of `service` imported from `cluster`, if it is a valid
/// Service name.
pub(crate) fn mirror_name(service: &str, cluster: &str) -> Option<String> {
    let name = format!("{service}-{cluster}");
    meshfed_api::sni::is_dns_label(&name).then_some(name)
}

/// Whether `labels` match a Link's selector (no selector matches all).
/// Generic over the map: exports carry a `HashMap`, objects a `BTreeMap`.
pub(crate) fn selector_matches<'l>(
    selector: Option<&LabelSelector>,
    labels: impl Labels<'l>,
) -> bool {
    let Some(sel) = selector else { return true };
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.value(k) == Some(v));
    let by_exprs = sel.match_expressions.iter().flatten().all(|e| {
        let value = labels.value(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // Validation refuses such Links; match nothing rather than everything.
            _ => false,
        }
    });
    by_labels && by_exprs
}

/// A label map of either kind.
pub(crate) trait Labels<'l>: Copy {
    fn value(self, key: &str) -> Option<&'l String>;
}

impl<'l> Labels<'l> for &'l BTreeMap<String, String> {
    fn value(self, key: &str) -> Option<&'l String> {
        self.get(key)
    }
}

impl<'l> Labels<'l> for &'l std::collections::HashMap<String, String> {
    fn value(self, key: &str) -> Option<&'l String> {
        self.get(key)
    }
}

/// The exports of `peer` its Link selects.
pub(crate) fn selected<'a>(peer: &'a PeerState) -> impl Iterator<Item = &'a ExportedService> + 'a {
    let sel = peer.spec.selector.as_ref();
    peer.imports
        .iter()
        .flat_map(|set| set.values())
        .map(|svc| &**svc)
        .filter(move |svc| selector_matches(sel, &svc.labels))
}

/// The export `key` of `peer`, if its Link selects it.
pub(crate) fn imported<'a>(peer: &'a PeerState, key: &ObjKey) -> Option<&'a ExportedService> {
    let svc = peer.imports.as_ref()?.get(key)?;
    selector_matches(peer.spec.selector.as_ref(), &svc.labels).then_some(&**svc)
}

/// A mirror that should exist: the import it mirrors, through which Link,
/// and the digest of what [`build`] makes of them.
struct Wanted<'w> {
    link: &'w ObjKey,
    peer: &'w PeerState,
    svc: &'w ExportedService,
    name: String,
    owner: Option<OwnerReference>,
    digest: String,
}

impl Wanted<'_> {
    fn build(&self) -> Mirror {
        build(
            self.svc,
            &self.name,
            self.link,
            self.peer,
            self.owner.clone(),
            &self.digest,
        )
    }
}

/// What should exist, by mirror key. Nothing is built: a pass builds only
/// the mirrors it writes.
fn desired(world: &World) -> BTreeMap<ObjKey, Wanted<'_>> {
    let mut out = BTreeMap::new();
    for (link_key, peer) in &world.peers {
        for svc in selected(peer) {
            let Some(name) = mirror_name(&svc.name, &peer.spec.cluster) else {
                tracing::warn!(service = %svc.name, cluster = %peer.spec.cluster,
                    "mirror name would exceed 63 characters; not mirrored");
                continue;
            };
            let key = ObjKey::new(&svc.namespace, &name);
            if out.contains_key(&key) {
                continue;
            }
            out.insert(key, wanted(world, link_key, peer, svc, name));
        }
    }
    out
}

/// What should exist at mirror `key`, if anything: the import of the first
/// peer (in Link order, as [`desired`] takes them) whose mirror it is.
fn desired_at<'w>(world: &'w World, key: &ObjKey) -> Option<Wanted<'w>> {
    world.peers.iter().find_map(|(link_key, peer)| {
        let import = key
            .name
            .strip_suffix(peer.spec.cluster.as_str())?
            .strip_suffix('-')?;
        let svc = imported(peer, &ObjKey::new(&key.namespace, import))?;
        let name = mirror_name(&svc.name, &peer.spec.cluster).filter(|n| **n == *key.name)?;
        Some(wanted(world, link_key, peer, svc, name))
    })
}

fn wanted<'w>(
    world: &'w World,
    link: &'w ObjKey,
    peer: &'w PeerState,
    svc: &'w ExportedService,
    name: String,
) -> Wanted<'w> {
    let owner = world.local.links.get(link).and_then(|l| {
        // Owner references cannot cross namespaces.
        (l.metadata.namespace.as_deref() == Some(svc.namespace.as_str()))
            .then(|| owner_ref(l))
            .flatten()
    });
    let digest = input_digest(svc, &name, link, peer, owner.as_ref());
    Wanted {
        link,
        peer,
        svc,
        name,
        owner,
        digest,
    }
}

fn owner_ref(link: &meshfed_resources::crd::Link) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "meshfed.io/v1alpha1".into(),
        kind: "Link".into(),
        name: link.metadata.name.clone()?,
        uid: link.metadata.uid.clone()?,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}

/// The mirror of `svc` from `peer`, annotated with `digest`, the
/// [`input_digest`] of the same inputs.
fn build(
    svc: &ExportedService,
    name: &str,
    link: &ObjKey,
    peer: &PeerState,
    owner: Option<OwnerReference>,
    digest: &str,
) -> Mirror {
    let mut mirror_labels = BTreeMap::from([
        (labels::ORIGIN_CLUSTER.to_owned(), peer.spec.cluster.clone()),
        (labels::LINK.to_owned(), link.name.to_string()),
        (labels::ORIGIN_SERVICE.to_owned(), svc.name.clone()),
    ]);
    let service = Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(svc.namespace.clone()),
            labels: Some(mirror_labels.clone()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: (!p.name.is_empty()).then(|| p.name.clone()),
                        port: i32::try_from(p.port).unwrap_or_default(),
                        protocol: Some(p.protocol.clone()),
                        app_protocol: (!p.app_protocol.is_empty()).then(|| p.app_protocol.clone()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    mirror_labels.insert(labels::SERVICE_NAME.into(), name.into());
    mirror_labels.insert(labels::MANAGED_BY.into(), labels::CONTROLLER.into());
    let v4: Vec<&SocketAddr> = peer.gateways.iter().filter(|a| a.is_ipv4()).collect();
    let (address_type, gateways) = if v4.is_empty() {
        ("IPv6", peer.gateways.iter().collect())
    } else {
        ("IPv4", v4)
    };
    let ready = peer.alive();
    let slice = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(svc.namespace.clone()),
            labels: Some(mirror_labels),
            ..ObjectMeta::default()
        },
        address_type: address_type.into(),
        endpoints: Some(
            gateways
                .iter()
                .map(|a| Endpoint {
                    addresses: vec![a.ip().to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(
            svc.ports
                .iter()
                .map(|p| EndpointPort {
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                    port: Some(i32::from(peer.spec.gateway.port)),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    };
    let mut mirror = Mirror { service, slice };
    for meta in [&mut mirror.service.metadata, &mut mirror.slice.metadata] {
        meta.annotations = Some(BTreeMap::from([(HASH.to_owned(), digest.to_owned())]));
    }
    mirror
}

/// Changed whenever [`build`] makes something else of the same inputs, so
/// that every mirror is rewritten once.
const BUILD_VERSION: &[u8] = b"2";

/// A digest of everything [`build`] reads: equal digests, equal mirrors.
/// Far cheaper than building and serialising the mirror, so a pass over
/// 10,000 imports builds only the few mirrors it writes.
fn input_digest(
    svc: &ExportedService,
    name: &str,
    link: &ObjKey,
    peer: &PeerState,
    owner: Option<&OwnerReference>,
) -> String {
    let mut h = Sha256::new();
    // Each field with its length, so no two field lists hash alike.
    let mut put = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(BUILD_VERSION);
    for text in [
        &svc.namespace,
        &svc.name,
        name,
        &link.name,
        &peer.spec.cluster,
    ] {
        put(text.as_bytes());
    }
    put(&peer.spec.gateway.port.to_le_bytes());
    put(&[u8::from(peer.alive())]);
    put(&(peer.gateways.len() as u64).to_le_bytes());
    for addr in &peer.gateways {
        put(addr.to_string().as_bytes());
    }
    put(&(svc.ports.len() as u64).to_le_bytes());
    for p in &svc.ports {
        put(p.name.as_bytes());
        put(&p.port.to_le_bytes());
        put(p.protocol.as_bytes());
        put(p.app_protocol.as_bytes());
    }
    match owner {
        Some(o) => {
            put(b"owner");
            put(o.name.as_bytes());
            put(o.uid.as_bytes());
        }
        None => put(b"no owner"),
    }
    let d = h.finalize();
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

fn applied_digest(svc: &Service) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(HASH)
        .map(String::as_str)
}

/// The writes that bring the store to the desired mirrors. A mirror to
/// apply is named, not built: a pass builds each batch as it writes it, so
/// a bulk import of 10,000 holds a batch of objects at a time, not all.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub(crate) apply: Vec<ObjKey>,
    pub(crate) delete: Vec<ObjKey>,
}

/// Mirror `key` as the world wants it now, if it wants it.
fn build_at(world: &World, key: &ObjKey) -> Option<Mirror> {
    desired_at(world, key).map(|wanted| wanted.build())
}

/// Every write that brings the store to the desired mirrors.
pub(crate) fn plan(world: &World) -> Plan {
    let desired = desired(world);
    let mut plan = Plan::default();
    for (key, wanted) in &desired {
        if !is_applied(world, key, wanted) {
            plan.apply.push(key.clone());
        }
    }
    for (key, svc) in &world.local.services {
        if !desired.contains_key(key) && is_stale(world, svc) {
            plan.delete.push(key.clone());
        }
    }
    plan
}

/// The writes [`plan`] would make at `keys`, looking at nothing else: what
/// a change touched is planned in the time of its own size.
fn plan_at(world: &World, keys: &BTreeSet<ObjKey>) -> Plan {
    let mut plan = Plan::default();
    for key in keys {
        match desired_at(world, key) {
            Some(wanted) if !is_applied(world, key, &wanted) => plan.apply.push(key.clone()),
            Some(_) => {}
            None => {
                if world
                    .local
                    .services
                    .get(key)
                    .is_some_and(|svc| is_stale(world, svc))
                {
                    plan.delete.push(key.clone());
                }
            }
        }
    }
    plan
}

/// Whether the store holds `wanted` as it would be built now.
fn is_applied(world: &World, key: &ObjKey, wanted: &Wanted<'_>) -> bool {
    let current = world.local.services.get(key);
    let same = current.and_then(|s| applied_digest(s)) == Some(wanted.digest.as_str());
    same && world.local.slices.contains_key(key)
}

/// Whether `svc`, wanted by nothing, is a mirror to delete.
fn is_stale(world: &World, svc: &Service) -> bool {
    let labels_ = svc.metadata.labels.as_ref();
    if !is_mirror(labels_) {
        return false;
    }
    let link_name = labels_.and_then(|l| l.get(labels::LINK));
    // Its peer has not spoken since start: keep it until it does or its lease ends.
    let pending = world
        .peers
        .iter()
        .any(|(k, p)| link_name.is_some_and(|l| **l == *k.name) && p.imports.is_none());
    !pending
}

/// Mirrors that cannot be written, by mirror: the name of the Link that
/// imports it and why, as the store said. Shared with the status writer,
/// so a Link's status names them.
pub(crate) type Unwritable = Arc<std::sync::Mutex<BTreeMap<ObjKey, (String, String)>>>;

/// Keeps the store's mirrors in line with the world until the world ends.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    mut world: watch::Receiver<Arc<World>>,
    metrics: Arc<Metrics>,
    unwritable: Unwritable,
) {
    let mut failed: HashMap<ObjKey, Instant> = HashMap::new();
    let mut last_inputs: Option<Inputs> = None;
    let mut last_pass = Instant::now();
    // Whether the last pass did all it planned; if not, the next plans all.
    let mut finished = false;
    let mut counted = MirrorCount::default();
    loop {
        let snapshot = world.borrow_and_update().clone();
        // Probe latencies change the world every period; mirrors do not
        // depend on them, so such changes cost no re-plan.
        let inputs = Inputs::of(&snapshot);
        let scope = match &last_inputs {
            Some(last) if finished && last_pass.elapsed() < RESYNC => {
                inputs.touched_since(last).map(|mut keys| {
                    keys.extend(failed.keys().cloned());
                    keys
                })
            }
            _ => None,
        };
        last_inputs = Some(inputs);
        if scope.as_ref().is_none_or(|keys| !keys.is_empty()) {
            if scope.is_none() {
                last_pass = Instant::now();
            }
            let planned_from = &last_inputs;
            let peers_moved = || {
                world.has_changed().unwrap_or(true)
                    && planned_from
                        .as_ref()
                        .is_none_or(|i| !i.same_peers(&Inputs::of(&world.borrow())))
            };
            finished = reconcile(
                &*store,
                &snapshot,
                scope.as_ref(),
                Writes {
                    failed: &mut failed,
                    metrics: &metrics,
                    unwritable: &unwritable,
                },
                &peers_moved,
            )
            .await;
        }
        counted.update(&snapshot, &metrics);
        let next_retry = failed.values().min().copied();
        tokio::select! {
            changed = world.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RESYNC) => {}
            () = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Where a pass records its writes' outcomes.
struct Writes<'a> {
    failed: &'a mut HashMap<ObjKey, Instant>,
    metrics: &'a Metrics,
    unwritable: &'a Unwritable,
}

/// Mirror writes handed to the store at once: big enough that a bulk
/// import is a few dozen store updates, small enough that a pass notices a
/// peer's change between batches.
const BATCH: usize = 256;

/// One pass over every mirror, or over `scope` alone: deletes, then mirrors
/// that do not exist yet, then mirrors that changed, in batches, skipping
/// keys whose last write failed less than [`RETRY`] ago. Stops early when `peers_moved` says a peer's imports,
/// gateways or liveness changed meanwhile, so the next pass starts from
/// them instead of finishing a plan made stale (a new export is not queued
/// behind thousands of re-applies). Returns whether it finished.
async fn reconcile(
    store: &dyn Store,
    world: &World,
    scope: Option<&BTreeSet<ObjKey>>,
    writes: Writes<'_>,
    peers_moved: &(dyn Fn() -> bool + Sync),
) -> bool {
    let Writes {
        failed,
        metrics,
        unwritable,
    } = writes;
    let plan = match scope {
        Some(keys) => plan_at(world, keys),
        None => plan(world),
    };
    let now = Instant::now();
    failed.retain(|_, until| *until > now);
    {
        // A mirror no longer wanted is no longer a problem.
        let wanted: std::collections::HashSet<&ObjKey> = plan.apply.iter().collect();
        let looked_at = |k: &ObjKey| scope.is_none_or(|keys| keys.contains(k));
        lock(unwritable).retain(|k, _| wanted.contains(k) || !looked_at(k));
    }
    let deletes: Vec<ObjKey> = plan
        .delete
        .into_iter()
        .filter(|k| !failed.contains_key(k))
        .collect();
    let (new, changed): (Vec<ObjKey>, Vec<ObjKey>) = plan
        .apply
        .into_iter()
        .filter(|k| !failed.contains_key(k))
        .partition(|k| !world.local.services.contains_key(k));
    let todo = deletes.len() + new.len() + changed.len();
    if todo == 0 {
        return true;
    }
    let mut pass = Pass {
        now,
        failed,
        metrics,
        unwritable,
        started: std::time::Instant::now(),
        planned: todo,
        applied: 0,
        deleted: 0,
        failures: 0,
    };
    for batch in deletes.chunks(BATCH) {
        for (key, result) in store.delete_mirrors(batch.to_vec()).await {
            pass.deleted(key, result);
        }
        if peers_moved() {
            return pass.end(false);
        }
    }
    for mirrors in [new, changed] {
        let mut mirrors = mirrors.into_iter().peekable();
        while mirrors.peek().is_some() {
            let batch: Vec<Mirror> = mirrors
                .by_ref()
                .take(BATCH)
                .filter_map(|k| build_at(world, &k))
                .collect();
            let links: HashMap<ObjKey, String> = batch
                .iter()
                .map(|m| (m.key(), link_of(m).to_owned()))
                .collect();
            for (key, result) in store.apply_mirrors(batch).await {
                let link = links.get(&key).cloned().unwrap_or_default();
                pass.applied(key, link, result);
            }
            if peers_moved() {
                return pass.end(false);
            }
        }
    }
    pass.end(true)
}

fn link_of(m: &Mirror) -> &str {
    m.service
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::LINK))
        .map_or("", String::as_str)
}

/// One pass under way: where each outcome is recorded, and what it did for
/// its one summary line.
struct Pass<'a> {
    now: Instant,
    failed: &'a mut HashMap<ObjKey, Instant>,
    metrics: &'a Metrics,
    unwritable: &'a Unwritable,
    started: std::time::Instant,
    planned: usize,
    applied: usize,
    deleted: usize,
    failures: usize,
}

impl Pass<'_> {
    fn applied(&mut self, key: ObjKey, link: String, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                self.applied += 1;
                let op = WriteLabels { op: "apply" };
                self.metrics.mirror_writes.get_or_create(&op).inc();
                lock(self.unwritable).remove(&key);
                tracing::debug!(mirror = %key, "mirror applied");
            }
            Err(e) => {
                tracing::warn!(mirror = %key, error = %e, "applying mirror failed");
                lock(self.unwritable).insert(key.clone(), (link, e.to_string()));
                self.failed_on(key, "apply_mirror");
            }
        }
    }

    fn deleted(&mut self, key: ObjKey, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                self.deleted += 1;
                let op = WriteLabels { op: "delete" };
                self.metrics.mirror_writes.get_or_create(&op).inc();
                tracing::debug!(mirror = %key, "mirror deleted");
            }
            Err(e) => {
                tracing::warn!(mirror = %key, error = %e, "deleting mirror failed");
                self.failed_on(key, "delete_mirror");
            }
        }
    }

    /// Counts the failure and holds `key` back until [`RETRY`] is up.
    fn failed_on(&mut self, key: ObjKey, what: &'static str) {
        self.failures += 1;
        let labels = ErrorLabels { what };
        self.metrics.reconcile_errors.get_or_create(&labels).inc();
        self.failed.insert(key, self.now + RETRY);
    }

    /// Logs what the pass did; returns whether it finished.
    fn end(self, finished: bool) -> bool {
        let ms = self.started.elapsed().as_millis();
        let (applied, deleted, failed) = (self.applied, self.deleted, self.failures);
        if finished {
            tracing::info!(applied, deleted, failed, ms, "mirrors reconciled");
        } else {
            tracing::info!(
                applied,
                deleted,
                failed,
                planned = self.planned,
                ms,
                "mirror pass cut short: a peer changed; planning again"
            );
        }
        finished
    }
}

pub(crate) fn lock(
    u: &Unwritable,
) -> std::sync::MutexGuard<'_, BTreeMap<ObjKey, (String, String)>> {
    u.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What mirrors depend on, cheap to compare: the local state and each
/// peer's spec, gateways, liveness and import set. The `Arc`s are held, so
/// comparing them by address is sound.
#[derive(Debug)]
struct Inputs {
    local: Arc<crate::store::ClusterState>,
    peers: Vec<(ObjKey, PeerInputs)>,
}

#[derive(Debug)]
struct PeerInputs {
    spec: meshfed_resources::crd::LinkSpec,
    gateways: Vec<SocketAddr>,
    alive: bool,
    imports: Option<Arc<crate::local::ExportSet>>,
}

impl PartialEq for Inputs {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.local, &other.local) && self.same_peers(other)
    }
}

impl Inputs {
    /// The peers' part alone: the controller's own mirror writes change
    /// the local state, never this.
    fn same_peers(&self, other: &Self) -> bool {
        self.peers.len() == other.peers.len()
            && self
                .peers
                .iter()
                .zip(&other.peers)
                .all(|((ka, a), (kb, b))| {
                    ka == kb
                        && a.spec == b.spec
                        && a.gateways == b.gateways
                        && a.alive == b.alive
                        && match (&a.imports, &b.imports) {
                            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                            (None, None) => true,
                            _ => false,
                        }
                })
    }

    /// The mirror keys a change from `before` to these inputs may touch:
    /// those of the imports that changed and the local Services and slices
    /// that did. `None` when everything must be planned: a peer came, went,
    /// or changed its spec, gateways or liveness, its imports became known,
    /// or a Link changed (owner references name it).
    fn touched_since(&self, before: &Inputs) -> Option<BTreeSet<ObjKey>> {
        if self.peers.len() != before.peers.len() || self.local.links != before.local.links {
            return None;
        }
        let mut keys = BTreeSet::new();
        for ((ka, a), (kb, b)) in before.peers.iter().zip(&self.peers) {
            if ka != kb || a.spec != b.spec || a.gateways != b.gateways || a.alive != b.alive {
                return None;
            }
            match (&a.imports, &b.imports) {
                (Some(x), Some(y)) => {
                    for change in x.diff(y) {
                        let import = diffed_key(&change);
                        if let Some(name) = mirror_name(&import.name, &b.spec.cluster) {
                            keys.insert(ObjKey::new(&import.namespace, name));
                        }
                    }
                }
                (None, None) => {}
                _ => return None,
            }
        }
        let local = (&before.local, &self.local);
        for change in local.0.services.diff(&local.1.services) {
            keys.insert(diffed_key(&change).clone());
        }
        for change in local.0.slices.diff(&local.1.slices) {
            keys.insert(diffed_key(&change).clone());
        }
        Some(keys)
    }

    fn of(w: &World) -> Self {
        Self {
            local: w.local.clone(),
            peers: w
                .peers
                .iter()
                .map(|(k, p)| {
                    let inputs = PeerInputs {
                        spec: p.spec.clone(),
                        gateways: p.gateways.clone(),
                        alive: p.alive(),
                        imports: p.imports.clone(),
                    };
                    (k.clone(), inputs)
                })
                .collect(),
        }
    }
}

/// The mirrors each Link's peer has in the store, by Link name, kept from
/// the difference between the states counted.
#[derive(Default)]
struct MirrorCount {
    of: Option<Arc<ClusterState>>,
    by_link: HashMap<String, i64>,
}

impl MirrorCount {
    fn update(&mut self, world: &World, metrics: &Metrics) {
        fn link(svc: &Service) -> Option<&String> {
            let labels_ = svc.metadata.labels.as_ref()?;
            is_mirror(Some(labels_)).then(|| labels_.get(labels::LINK))?
        }
        let now = &world.local;
        if !self.of.as_ref().is_some_and(|of| Arc::ptr_eq(of, now)) {
            let before = self.of.take().unwrap_or_default();
            for change in before.services.diff(&now.services) {
                let (old, new) = diffed(&change);
                if let Some(name) = old.and_then(|(_, svc)| link(svc)) {
                    *self.by_link.entry(name.clone()).or_default() -= 1;
                }
                if let Some(name) = new.and_then(|(_, svc)| link(svc)) {
                    *self.by_link.entry(name.clone()).or_default() += 1;
                }
            }
            self.by_link.retain(|_, n| *n != 0);
            self.of = Some(now.clone());
        }
        // Every linked peer has its gauge, 0 until it has mirrors.
        for key in world.peers.keys() {
            let n = self.by_link.get(&*key.name).copied().unwrap_or(0);
            let labels = LinkLabels {
                link: key.to_string(),
            };
            metrics.mirrors.get_or_create(&labels).set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use crate::store::ClusterState;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use meshfed_api::federation::ServicePort as WirePort;

    fn exported(name: &str, tier: &str) -> ExportedService {
        ExportedService {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("tier".to_owned(), tier.to_owned())].into(),
            ports: vec![WirePort {
                name: "http".into(),
                port: 80,
                protocol: "TCP".into(),
                app_protocol: String::new(),
            }],
            ..ExportedService::default()
        }
    }

    fn world_with(imports: Option<Vec<ExportedService>>, local: ClusterState) -> World {
        let link = fixtures::link(
            "meshfed",
            "west",
            &["127.0.0.2"],
            4443,
            "spiffe://t/ns/a/sa/gw",
            "spiffe://t/ns/a/sa/c",
        );
        let mut peer = PeerState::new(link.spec.clone());
        peer.gateways = vec!["127.0.0.2:4443".parse().expect("addr")];
        peer.imports = imports.map(|v| {
            Arc::new(
                v.into_iter()
                    .map(|s| (ObjKey::new(&s.namespace, &s.name), Arc::new(s)))
                    .collect(),
            )
        });
        let mut local = local;
        local.links.insert(ObjKey::new("meshfed", "west"), link);
        let mut w = World::new(Arc::new(local));
        w.peers
            .insert(ObjKey::new("meshfed", "west"), Arc::new(peer));
        w
    }

    /// Planned from what changed since the last plan, a pass makes the very
    /// writes a plan of everything would.
    #[test]
    fn a_plan_of_what_changed_is_the_plan_of_everything() {
        let imports: Vec<_> = (0..100)
            .map(|i| exported(&format!("s{i}"), "web"))
            .collect();
        let mut world = world_with(Some(imports), ClusterState::default());
        let west = ObjKey::new("meshfed", "west");
        // What a store holding the plan's writes then holds.
        let written = |world: &mut World, plan: Plan| {
            let mirrors = built(world, &plan);
            let local = Arc::make_mut(&mut world.local);
            for m in mirrors {
                let key = m.key();
                local.services.insert(key.clone(), m.service.into());
                local.slices.insert(key, m.slice.into());
            }
            for k in plan.delete {
                local.services.remove(&k);
                local.slices.remove(&k);
            }
        };
        let from_changes = |before: &World, after: &World| {
            let touched = Inputs::of(after)
                .touched_since(&Inputs::of(before))
                .expect("planned from what changed");
            let plan_ = plan_at(after, &touched);
            assert_eq!(plan_, plan(after));
            (touched.len(), plan_.apply.len() + plan_.delete.len())
        };
        let all = plan(&world);
        assert_eq!(all.apply.len(), 100);
        written(&mut world, all);

        // The peer adds, changes and removes an export.
        let before = world.clone();
        let peer = Arc::make_mut(world.peers.get_mut(&west).expect("peer"));
        let set = Arc::make_mut(peer.imports.as_mut().expect("imports"));
        set.insert(ObjKey::new("shop", "s100"), exported("s100", "web").into());
        let mut s5 = exported("s5", "web");
        s5.ports[0].port = 81;
        set.insert(ObjKey::new("shop", "s5"), s5.into());
        set.remove(&ObjKey::new("shop", "s7"));
        assert_eq!(from_changes(&before, &world), (3, 3));
        let next = plan(&world);
        written(&mut world, next);

        // A mirror's slice is deleted by hand; a label of another changes.
        let before = world.clone();
        let local = Arc::make_mut(&mut world.local);
        local.slices.remove(&ObjKey::new("shop", "s9-west"));
        let s8 = local
            .services
            .get_mut(&ObjKey::new("shop", "s8-west"))
            .expect("s8");
        Arc::make_mut(s8).metadata.annotations = None;
        assert_eq!(from_changes(&before, &world), (2, 2));
        let next = plan(&world);
        written(&mut world, next);
        assert_eq!(from_changes(&world.clone(), &world), (0, 0));

        // The gateway moves: every mirror is planned.
        let before = world.clone();
        let peer = Arc::make_mut(world.peers.get_mut(&west).expect("peer"));
        peer.gateways = vec!["127.0.0.3:4443".parse().expect("addr")];
        let touched = Inputs::of(&world).touched_since(&Inputs::of(&before));
        assert!(touched.is_none(), "{touched:?}");
    }

    /// The mirrors a pass would write for `plan`'s applies.
    fn built(world: &World, plan: &Plan) -> Vec<Mirror> {
        plan.apply
            .iter()
            .map(|k| build_at(world, k).expect("planned mirrors are wanted"))
            .collect()
    }

    #[test]
    fn imports_become_mirrors_at_the_gateway() {
        let w = world_with(Some(vec![exported("api", "web")]), ClusterState::default());
        let p = built(&w, &plan(&w));
        assert_eq!(p.len(), 1);
        let m = &p[0];
        assert_eq!(m.key(), ObjKey::new("shop", "api-west"));
        let l = m.service.metadata.labels.as_ref().expect("labels");
        assert_eq!(l[labels::ORIGIN_CLUSTER], "west");
        assert_eq!(l[labels::LINK], "west");
        assert_eq!(
            m.slice.endpoints.as_ref().expect("endpoints")[0].addresses,
            vec!["127.0.0.2".to_owned()]
        );
        assert_eq!(m.slice.ports.as_ref().expect("ports")[0].port, Some(4443));
    }

    #[test]
    fn applied_mirrors_are_not_rewritten_and_stale_ones_go() {
        let w = world_with(Some(vec![exported("api", "web")]), ClusterState::default());
        let m = built(&w, &plan(&w)).remove(0);
        let mut local = ClusterState::default();
        local.services.insert(m.key(), Arc::new(m.service.clone()));
        local.slices.insert(m.key(), Arc::new(m.slice.clone()));
        let mut stale = m.clone();
        stale.service.metadata.name = Some("old-west".into());
        local
            .services
            .insert(ObjKey::new("shop", "old-west"), Arc::new(stale.service));
        let w = world_with(Some(vec![exported("api", "web")]), local.clone());
        assert_eq!(
            plan(&w),
            Plan {
                apply: vec![],
                delete: vec![ObjKey::new("shop", "old-west")]
            }
        );
        // Before the peer's first snapshot nothing is touched.
        let w = world_with(None, local);
        assert_eq!(plan(&w), Plan::default());
    }

    /// A file store on a fresh directory holding `mirrors`.
    async fn store_holding(mirrors: Vec<Mirror>) -> (tempfile::TempDir, crate::store::FileStore) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::FileStore::open(crate::store::FileStoreConfig::new(tmp.path()))
            .await
            .expect("opens");
        let out = store.apply_mirrors(mirrors).await;
        assert!(out.iter().all(|(_, r)| r.is_ok()), "{out:?}");
        (tmp, store)
    }

    #[tokio::test]
    async fn a_pass_deletes_then_adds_then_rewrites_and_stops_when_a_peer_moves() {
        // Held before: one mirror now stale, one with an old digest.
        let before = world_with(
            Some(vec![exported("api", "web"), exported("old", "web")]),
            ClusterState::default(),
        );
        let mut held = built(&before, &plan(&before));
        let first = &mut held[0];
        for meta in [&mut first.service.metadata, &mut first.slice.metadata] {
            meta.annotations = Some(BTreeMap::from([(HASH.to_owned(), "earlier".to_owned())]));
        }
        let (_tmp, store) = store_holding(held).await;
        let api = ObjKey::new("shop", "api-west");
        let digest = |s: &ClusterState| applied_digest(&s.services[&api]).map(str::to_owned);
        let mut imports = vec![exported("api", "web")];
        imports.extend((0..600).map(|i| exported(&format!("s{i}"), "web")));
        let world = world_with(Some(imports.clone()), (**store.state().borrow()).clone());
        let (metrics, unwritable) = (
            Metrics::new(&mut prometheus_client::registry::Registry::default()),
            Unwritable::default(),
        );
        let mut failed = HashMap::new();

        // The peer moves after the second batch: the pass stops there.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let moved = || asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 2;
        let writes = Writes {
            failed: &mut failed,
            metrics: &metrics,
            unwritable: &unwritable,
        };
        let done = reconcile(&store, &world, None, writes, &moved).await;
        assert!(!done, "cut short");
        let state = (**store.state().borrow()).clone();
        assert!(
            !state
                .services
                .contains_key(&ObjKey::new("shop", "old-west")),
            "deleted first"
        );
        let new = state
            .services
            .keys()
            .filter(|k| k.name.starts_with('s'))
            .count();
        assert_eq!(new, 2 * BATCH, "then new mirrors, a batch at a time");
        assert_eq!(
            digest(&state).as_deref(),
            Some("earlier"),
            "rewrites come last"
        );

        // Planned again from where it stopped, the pass finishes.
        let world = world_with(Some(imports.clone()), state);
        let writes = Writes {
            failed: &mut failed,
            metrics: &metrics,
            unwritable: &unwritable,
        };
        let done = reconcile(&store, &world, None, writes, &|| false).await;
        assert!(done);
        let state = (**store.state().borrow()).clone();
        assert_eq!(state.services.len(), 601);
        assert_ne!(digest(&state).as_deref(), Some("earlier"), "rewritten");
        let world = world_with(Some(imports), state);
        assert_eq!(plan(&world), Plan::default(), "nothing left to do");
    }

    #[test]
    fn the_digest_follows_everything_a_mirror_is_built_from() {
        let w = world_with(Some(vec![exported("api", "web")]), ClusterState::default());
        let link = ObjKey::new("meshfed", "west");
        let peer: &PeerState = &w.peers[&link];
        let svc = exported("api", "web");
        let of = |svc: &ExportedService, peer: &PeerState, owner: Option<&OwnerReference>| {
            input_digest(svc, "api-west", &link, peer, owner)
        };
        let base = of(&svc, peer, None);
        assert_eq!(
            base,
            of(&svc, peer, None),
            "the same inputs, the same digest"
        );
        let mut changed = Vec::new();
        let mut port = svc.clone();
        port.ports[0].port = 81;
        changed.push(("port", of(&port, peer, None)));
        let mut app = svc.clone();
        app.ports[0].app_protocol = "http".into();
        changed.push(("app protocol", of(&app, peer, None)));
        let mut named = svc.clone();
        named.ports[0].name = "web".into();
        changed.push(("port name", of(&named, peer, None)));
        let mut more = svc.clone();
        more.ports.push(more.ports[0].clone());
        changed.push(("a second port", of(&more, peer, None)));
        let mut moved = peer.clone();
        moved.gateways = vec!["127.0.0.3:4443".parse().expect("addr")];
        changed.push(("gateway address", of(&svc, &moved, None)));
        let mut down = peer.clone();
        down.probe_alive = false;
        changed.push(("liveness", of(&svc, &down, None)));
        let mut gw_port = peer.clone();
        gw_port.spec.gateway.port += 1;
        changed.push(("gateway port", of(&svc, &gw_port, None)));
        let owner = OwnerReference {
            name: "west".into(),
            uid: "u-1".into(),
            ..OwnerReference::default()
        };
        changed.push(("owner", of(&svc, peer, Some(&owner))));
        for (what, digest) in changed {
            assert_ne!(digest, base, "{what} changes the digest");
        }
    }

    #[test]
    fn selectors_pick_exports() {
        let mut sel = LabelSelector {
            match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
            ..LabelSelector::default()
        };
        let web: BTreeMap<_, _> = [("tier".to_owned(), "web".to_owned())].into();
        let db: BTreeMap<_, _> = [("tier".to_owned(), "db".to_owned())].into();
        assert!(selector_matches(Some(&sel), &web));
        assert!(!selector_matches(Some(&sel), &db));
        sel.match_labels = None;
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["web".into()]),
        }]);
        assert!(!selector_matches(Some(&sel), &web));
        assert!(selector_matches(Some(&sel), &db));
        assert!(selector_matches(None, &db));
    }

    #[test]
    fn long_names_are_not_mirrored() {
        assert_eq!(mirror_name("api", "west").as_deref(), Some("api-west"));
        assert_eq!(mirror_name(&"a".repeat(60), "west"), None);
    }
}
