//! A cancellation token watched from one task at the cost of an atomic
//! load. Polling the token's `cancelled()` future takes its lock and swaps
//! the waker it holds, every time; a connection's task is polled a few
//! times per request, so the future is polled only when a task it does not
//! wake yet asks, and otherwise the token is looked at.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A token and the task it wakes when cancelled.
pub(crate) struct Watch {
    token: CancellationToken,
    /// Registered with the task in `waker`.
    fired: Pin<Box<WaitForCancellationFutureOwned>>,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("cancelled", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(crate) fn new(token: CancellationToken) -> Self {
        Self {
            fired: Box::pin(token.clone().cancelled_owned()),
            token,
            waker: None,
        }
    }

    /// Whether it was cancelled, without waking anyone later.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether it was cancelled; if not, `cx`'s task is woken when it is.
    pub(crate) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return self.token.is_cancelled();
        }
        self.waker = Some(cx.waker().clone());
        self.fired.as_mut().poll(cx).is_ready()
    }
}

/// Runs `work` until it ends or `stop` is cancelled.
pub(crate) async fn until(stop: CancellationToken, work: impl Future<Output = ()>) {
    let mut stop = Watch::new(stop);
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if work.as_mut().poll(cx).is_ready() || stop.poll_cancelled(cx) {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn work_ends_when_stopped_however_often_it_is_polled() {
        let stop = CancellationToken::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
        let counted = polls.clone();
        let work = async move {
            // Polled again for each message; never ends by itself.
            while rx.recv().await.is_some() {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            std::future::pending::<()>().await;
        };
        let task = tokio::spawn(until(stop.clone(), work));
        for _ in 0..3 {
            tx.send(()).await.expect("send");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(polls.load(Ordering::Relaxed), 3);
        assert!(!task.is_finished());
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ended when stopped")
            .expect("task");
    }

    #[tokio::test]
    async fn work_that_ends_ends_it() {
        until(CancellationToken::new(), async {}).await;
    }

    #[tokio::test]
    async fn a_new_task_polling_is_woken_too() {
        let token = CancellationToken::new();
        let mut watch = Watch::new(token.clone());
        // Registered with a task that never runs again.
        let other = Waker::noop();
        assert!(!watch.poll_cancelled(&mut Context::from_waker(other)));
        // Then this task asks: it must be the one woken.
        let waited = std::future::poll_fn(|cx| {
            if watch.poll_cancelled(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let cancel = async {
            tokio::task::yield_now().await;
            token.cancel();
        };
        tokio::time::timeout(Duration::from_secs(1), async {
            tokio::join!(waited, cancel)
        })
        .await
        .expect("woken");
    }
}
