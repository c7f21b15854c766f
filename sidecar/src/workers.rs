//! The data plane's threads. Each worker is a thread with a runtime of its
//! own (tokio's current-thread scheduler); an accepted connection is handed
//! to one of them, round robin, and everything it leads to — the app's
//! requests, the stack, the mesh connections it opens and their tasks —
//! runs on that thread. So a request goes from accept to answer on one
//! thread, without waking another (what a work-stealing pool does for
//! every request: both its workers wake, measured at ~10 context switches
//! per request for a sidecar pair against 5 here). Connections are pooled
//! per worker for the same reason (`pool`, the inbound app clients).
//!
//! The control plane (discovery, the admin server, accepting) stays on the
//! runtime that built the sidecar.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

thread_local! {
    /// This thread's worker index; `None` off the workers.
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker this runs on: 0 off the workers, so state kept
/// per worker has one slot for everything else.
pub(crate) fn current() -> usize {
    INDEX.with(Cell::get).unwrap_or(0)
}

/// The worker threads.
#[derive(Debug)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Fired when the workers are dropped: their threads end.
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` workers (at least one).
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for index in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("meshfed-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(Some(index)));
                    runtime.block_on(stop.cancelled());
                })?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// How many workers there are (state kept per worker has this many slots).
    pub(crate) fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs `work` on this worker when called on one, else on the next
    /// worker in turn.
    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        if INDEX.with(Cell::get).is_some() {
            tokio::spawn(work);
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(work);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One `T` per worker, each used only from its worker.
#[derive(Debug)]
pub(crate) struct PerWorker<T>(Vec<T>);

impl<T> PerWorker<T> {
    pub(crate) fn new(workers: &Workers, mut make: impl FnMut() -> T) -> Self {
        Self((0..workers.count()).map(|_| make()).collect())
    }

    /// This worker's.
    pub(crate) fn mine(&self) -> &T {
        &self.0[current() % self.0.len()]
    }

    /// Every worker's.
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn connections_are_dealt_round_robin_and_what_they_spawn_stays() {
        let workers = Arc::new(Workers::start(2).expect("workers"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (seen, w, tx) = (seen.clone(), workers.clone(), tx.clone());
            workers.spawn(async move {
                let outer = (current(), std::thread::current().id());
                let (inner_tx, inner_rx) = tokio::sync::oneshot::channel();
                // Spawned from a worker: stays on it.
                w.spawn(async move {
                    let _ = inner_tx.send((current(), std::thread::current().id()));
                });
                let inner = inner_rx.await.expect("inner ran");
                seen.lock().expect("seen").push((outer, inner));
                let _ = tx.send(());
            });
        }
        for _ in 0..4 {
            rx.recv().await.expect("ran");
        }
        let seen = seen.lock().expect("seen").clone();
        let mut indexes: Vec<usize> = seen.iter().map(|(o, _)| o.0).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 0, 1, 1]);
        assert!(seen.iter().all(|(o, i)| o == i), "{seen:?}");
        assert_ne!(seen[0].0.1, std::thread::current().id());
    }

    #[test]
    fn per_worker_state_has_one_slot_off_the_workers() {
        let workers = Workers::start(3).expect("workers");
        let n = AtomicUsize::new(0);
        let slots = PerWorker::new(&workers, || n.fetch_add(1, Ordering::Relaxed));
        assert_eq!(slots.0.len(), 3);
        assert_eq!(*slots.mine(), 0);
    }
}
