//! Leader election: of the controller's replicas, only the leader writes
//! (mirrors, statuses); every replica watches its cluster and serves
//! discovery and federation from its own state, so nothing a sidecar or a
//! peer sees depends on which replica leads.
//!
//! A [`Leadership`] is a `watch` of "this replica leads now". Two backends:
//!
//! - **Kubernetes** ([`Leadership::kube`]): the `coordination.k8s.io/v1`
//!   Lease `meshfed-controller` in the controller's namespace, through the
//!   maintained `kube-lease-manager` crate (server-side apply, conflict
//!   backoff, forced release of an expired holder) rather than a loop of our
//!   own. Lease duration 10 s, renewed 3 s before it runs out. A leader that
//!   stops (SIGTERM) releases the Lease, and a follower takes over at its
//!   next look (within about 1 s); a killed leader is replaced once its
//!   Lease expires, within 12 s. A replica that cannot reach the API server
//!   stops leading at once and releases what it can: two writers are worse
//!   than a short pause in writes, which nothing on the data path waits for.
//! - **File store** ([`Leadership::file`]): an exclusive `flock` on
//!   `leases/meshfed-controller.lock` in the store directory. The kernel
//!   drops the lock with its process, so a follower takes over within
//!   [`FILE_RETRY`] of the leader's death or stop. The leader also writes the
//!   Lease object a cluster would hold (`leases/meshfed-system.meshfed-controller.yaml`,
//!   holder, acquire and renew times, transitions), so people and tools find
//!   the leader the same way on both.
//!
//! A controller started without a leadership (embedded in a test or a
//! tool, one replica with nothing to elect against) always leads.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use rustix::fs::{FlockOperation, flock};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The Lease's name, on Kubernetes and in the file store.
pub const LEASE_NAME: &str = "meshfed-controller";
/// The Lease's namespace in the file store (on Kubernetes: the controller's own).
pub const FILE_LEASE_NAMESPACE: &str = "meshfed-system";
/// Seconds a Kubernetes Lease is valid after its last renewal.
pub const KUBE_LEASE_SECONDS: u64 = 10;
/// Seconds before it runs out that the holder renews it.
const KUBE_RENEW_BEFORE_SECONDS: u64 = 3;
/// How often a follower tries the file lock.
pub const FILE_RETRY: Duration = Duration::from_millis(200);
/// How often the file leader renews the Lease object and checks its lock.
const FILE_RENEW: Duration = Duration::from_secs(5);
/// `leaseDurationSeconds` of the file store's Lease object.
const FILE_LEASE_SECONDS: i32 = 15;
/// Longest a release may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether this replica leads, as it changes.
#[derive(Debug)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
    release: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Leadership {
    /// Competes for the file lock of the store at `dir` as `replica`.
    pub fn file(dir: &Path, replica: &str) -> std::io::Result<Self> {
        let lock_path = dir.join("leases").join(format!("{LEASE_NAME}.lock"));
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Opened once here, so a directory that cannot hold it fails the start.
        drop(open_lock(&lock_path)?);
        let (tx, leading) = watch::channel(false);
        let (release, released) = oneshot::channel();
        let lease = FileLease {
            lock_path,
            object_path: dir
                .join("leases")
                .join(format!("{FILE_LEASE_NAMESPACE}.{LEASE_NAME}.yaml")),
            replica: replica.to_owned(),
        };
        let task = tokio::spawn(lease.run(tx, released));
        Ok(Self {
            leading,
            release: Some(release),
            task: Some(task),
        })
    }

    /// Competes for the Lease `meshfed-controller` in `namespace` as `replica`.
    pub async fn kube(
        client: kube::Client,
        namespace: &str,
        replica: &str,
    ) -> Result<Self, kube_lease_manager::LeaseManagerError> {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client, LEASE_NAME)
            .with_namespace(namespace)
            .with_identity(replica)
            .with_duration(KUBE_LEASE_SECONDS)
            .with_grace(KUBE_RENEW_BEFORE_SECONDS)
            .with_field_manager("meshfed-controller")
            .build()
            .await?;
        let (tx, leading) = watch::channel(false);
        let (release, released) = oneshot::channel();
        let task = tokio::spawn(run_kube(manager, tx, released, replica.to_owned()));
        Ok(Self {
            leading,
            release: Some(release),
            task: Some(task),
        })
    }

    /// Follows whether this replica leads.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Stops competing and gives the lease up, so a follower takes over at
    /// once rather than when it expires.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if let Some(task) = self.task.take()
            && tokio::time::timeout(RELEASE_TIMEOUT, task).await.is_err()
        {
            tracing::warn!("the leader lease was not released within 2 s");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn run_kube(
    manager: kube_lease_manager::LeaseManager,
    tx: watch::Sender<bool>,
    mut released: oneshot::Receiver<()>,
    replica: String,
) {
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = &mut released => {
                tx.send_replace(false);
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "releasing the leader Lease failed; it expires on its own");
                }
                return;
            }
            changed = manager.changed() => match changed {
                Ok(leading) => {
                    backoff = Duration::from_millis(500);
                    announce(&tx, leading, &replica);
                }
                Err(e) => {
                    // Leading is only safe while the Lease is known to be ours.
                    tracing::warn!(error = %e, "the leader Lease cannot be read or renewed; not leading until it can");
                    announce(&tx, false, &replica);
                    let _ = manager.release().await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

fn announce(tx: &watch::Sender<bool>, leading: bool, replica: &str) {
    let was = tx.send_replace(leading);
    if was != leading {
        if leading {
            tracing::info!(
                replica,
                "leading: this replica now writes mirrors and statuses"
            );
        } else {
            tracing::info!(replica, "following: another replica writes");
        }
    }
}

struct FileLease {
    lock_path: PathBuf,
    object_path: PathBuf,
    replica: String,
}

impl FileLease {
    async fn run(self, tx: watch::Sender<bool>, mut released: oneshot::Receiver<()>) {
        loop {
            // Follow: try the lock until it is ours.
            let held = loop {
                match try_lock(&self.lock_path) {
                    Ok(Some(file)) => break file,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(path = %self.lock_path.display(), error = %e, "cannot try the leader lock")
                    }
                }
                tokio::select! {
                    _ = &mut released => return,
                    _ = tokio::time::sleep(FILE_RETRY) => {}
                }
            };
            if let Err(e) = self.write_object(true, true) {
                tracing::warn!(path = %self.object_path.display(), error = %e, "cannot write the Lease object");
            }
            announce(&tx, true, &self.replica);
            // Lead: renew the object, and make sure the lock is still the
            // file's (a removed and recreated lock file would let another
            // replica lock a new one).
            loop {
                tokio::select! {
                    _ = &mut released => {
                        tx.send_replace(false);
                        if let Err(e) = self.write_object(false, false) {
                            tracing::warn!(error = %e, "cannot clear the Lease object");
                        }
                        drop(held);
                        return;
                    }
                    _ = tokio::time::sleep(FILE_RENEW) => {}
                }
                if !same_file(&held, &self.lock_path) {
                    tracing::warn!(path = %self.lock_path.display(), "the leader lock file was replaced; competing again");
                    announce(&tx, false, &self.replica);
                    break;
                }
                if let Err(e) = self.write_object(true, false) {
                    tracing::warn!(path = %self.object_path.display(), error = %e, "cannot renew the Lease object");
                }
            }
        }
    }

    /// Writes the Lease a cluster would hold: held by this replica (renewed
    /// now, acquired now when `acquired`) or released (no holder).
    fn write_object(&self, holding: bool, acquired: bool) -> std::io::Result<()> {
        let now = MicroTime(Timestamp::now());
        let previous: Option<Lease> = std::fs::read_to_string(&self.object_path)
            .ok()
            .and_then(|t| serde_saphyr::from_str(&t).ok());
        let mut spec = previous.and_then(|l| l.spec).unwrap_or_default();
        if holding {
            if acquired {
                if spec.holder_identity.as_deref() != Some(self.replica.as_str()) {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.acquire_time = Some(now.clone());
            }
            spec.holder_identity = Some(self.replica.clone());
            spec.lease_duration_seconds = Some(FILE_LEASE_SECONDS);
            spec.renew_time = Some(now);
        } else {
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = None;
        }
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                namespace: Some(FILE_LEASE_NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        };
        let mut text = String::from(
            "# The controller replicas' leader Lease; the holder is the replica that writes.\n",
        );
        text.push_str(&serde_saphyr::to_string(&lease).map_err(std::io::Error::other)?);
        let tmp = self.object_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.object_path)
    }
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// The lock file, locked, or `None` when another process holds it.
fn try_lock(path: &Path) -> std::io::Result<Option<File>> {
    let file = open_lock(path)?;
    match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `held` is still the file at `path`.
fn same_file(held: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (held.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| *l == want))
            .await
            .expect("in time")
            .expect("open");
    }

    fn holder(dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(
            dir.join("leases")
                .join(format!("{FILE_LEASE_NAMESPACE}.{LEASE_NAME}.yaml")),
        )
        .ok()?;
        let lease: Lease = serde_saphyr::from_str(&text).expect("a Lease");
        lease.spec?.holder_identity
    }

    #[tokio::test]
    async fn one_file_replica_leads_and_a_follower_takes_over_on_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Leadership::file(dir.path(), "controller-0").expect("a");
        let mut a_rx = a.watch();
        until(&mut a_rx, true).await;
        let b = Leadership::file(dir.path(), "controller-1").expect("b");
        let mut b_rx = b.watch();
        tokio::time::sleep(FILE_RETRY * 3).await;
        assert!(!b.is_leader(), "the lock is held");
        assert_eq!(holder(dir.path()).as_deref(), Some("controller-0"));

        a.release().await;
        until(&mut b_rx, true).await;
        assert_eq!(holder(dir.path()).as_deref(), Some("controller-1"));
        let text = std::fs::read_to_string(
            dir.path()
                .join("leases")
                .join(format!("{FILE_LEASE_NAMESPACE}.{LEASE_NAME}.yaml")),
        )
        .expect("lease");
        let lease: Lease = serde_saphyr::from_str(&text).expect("a Lease");
        assert_eq!(lease.spec.and_then(|s| s.lease_transitions), Some(2));
    }

    #[tokio::test]
    async fn a_dropped_holder_lets_the_follower_lead() {
        // As a killed process: no release, the kernel drops the lock.
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Leadership::file(dir.path(), "a").expect("a");
        until(&mut a.watch(), true).await;
        let b = Leadership::file(dir.path(), "b").expect("b");
        drop(a);
        until(&mut b.watch(), true).await;
        assert_eq!(holder(dir.path()).as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn a_replaced_lock_file_makes_the_leader_step_down_and_compete_again() {
        tokio::time::pause();
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Leadership::file(dir.path(), "a").expect("a");
        let mut rx = a.watch();
        until(&mut rx, true).await;
        let lock = dir.path().join("leases").join(format!("{LEASE_NAME}.lock"));
        std::fs::remove_file(&lock).expect("remove");
        // Someone else locks the new file.
        let other = try_lock(&lock).expect("lock").expect("free");
        tokio::time::advance(FILE_RENEW + Duration::from_millis(10)).await;
        until(&mut rx, false).await;
        drop(other);
        tokio::time::advance(FILE_RETRY * 2).await;
        until(&mut rx, true).await;
    }
}
