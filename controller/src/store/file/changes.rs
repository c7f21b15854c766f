//! How the file store learns of changes. The kernel says which files
//! changed (inotify, through `notify`) and only those are read again; the
//! whole directory is read when that is not enough (the kernel's queue
//! overflowed, a directory appeared or went) and every
//! [`FileStoreConfig::rescan`] anyway. Where no watch can be set (no
//! inotify, its limits reached) the whole directory is read every
//! [`FileStoreConfig::poll`], as before watching.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::{FileStoreConfig, Inner};

/// How long the reports of one burst are gathered before reading: a batch
/// of mirror writes is one read, not one per file.
const SETTLE: Duration = Duration::from_millis(10);

type Reports = mpsc::UnboundedReceiver<notify::Result<Event>>;

/// A watch on the directory, set before it is first read so that no
/// change falls between the two.
pub(super) type Watch = notify::Result<(notify::RecommendedWatcher, Reports)>;

/// Keeps the store's state in line with its directory until aborted.
pub(super) async fn follow(inner: Arc<Inner>, config: FileStoreConfig, watch: Watch) {
    match watch {
        Ok((mut watcher, reports)) => {
            watched(&inner, &mut watcher, reports, config.rescan).await;
            drop(watcher);
            tracing::warn!(dir = %config.dir.display(), every = ?config.poll,
                "the directory watch ended; reading the directory whole instead");
        }
        Err(e) => tracing::warn!(dir = %config.dir.display(), error = %e, every = ?config.poll,
            "cannot watch the directory for changes; reading it whole instead"),
    }
    polled(&inner, config.poll).await;
}

pub(super) fn watch(config: &FileStoreConfig) -> Watch {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |report| {
        // The store is gone when nobody receives: nothing to tell.
        let _ = tx.send(report);
    })?;
    watcher.watch(&config.dir, RecursiveMode::Recursive)?;
    Ok((watcher, rx))
}

/// Reads what the watch reports, and the whole directory every `every`;
/// returns when the watch stops reporting.
async fn watched(
    inner: &Arc<Inner>,
    watcher: &mut notify::RecommendedWatcher,
    mut reports: Reports,
    every: Duration,
) {
    let mut safety = tokio::time::interval_at(Instant::now() + every, every);
    safety.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else { return };
                let mut burst = Burst::default();
                burst.add(report);
                let until = Instant::now() + SETTLE;
                while let Ok(Some(report)) = tokio::time::timeout_at(until, reports.recv()).await {
                    burst.add(report);
                }
                // `notify` watches a new directory only after reporting it:
                // a file put there in between would be missed until the
                // safety read. Watched here first, the read that follows
                // finds what is already there and the watch the rest.
                for dir in burst.arrived.iter().filter(|p| p.is_dir()) {
                    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
                        tracing::debug!(dir = %dir.display(), error = %e, "cannot watch a new directory");
                    }
                }
                if burst.whole {
                    inner.clone().rescan().await;
                } else if !burst.paths.is_empty() {
                    inner.clone().reread(burst.paths).await;
                }
            }
            _ = safety.tick() => inner.clone().rescan().await,
        }
    }
}

async fn polled(inner: &Arc<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.clone().rescan().await;
    }
}

/// What the reports of one burst name.
#[derive(Default)]
struct Burst {
    paths: BTreeSet<PathBuf>,
    /// What was created or moved in: perhaps a directory.
    arrived: Vec<PathBuf>,
    /// The reports are not enough: read the whole directory.
    whole: bool,
}

impl Burst {
    fn add(&mut self, report: notify::Result<Event>) {
        match report {
            Ok(event) if event.need_rescan() => self.whole = true,
            Ok(event) if matters(&event.kind) => {
                if matches!(
                    event.kind,
                    EventKind::Create(CreateKind::Folder | CreateKind::Any)
                        | EventKind::Modify(ModifyKind::Name(
                            RenameMode::To | RenameMode::Both | RenameMode::Any
                        ))
                ) {
                    self.arrived.extend(event.paths.iter().cloned());
                }
                self.paths.extend(event.paths);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the directory watch reported an error; reading it whole");
                self.whole = true;
            }
        }
    }
}

/// Whether an event can change what the directory holds. Reading is not
/// (the store's own reads open the directory: heeding that would read it
/// again and again), nor are a file's times or mode; a write finishing is.
fn matters(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}
