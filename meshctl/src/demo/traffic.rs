//! The demo's traffic: a few callers in east's client pod call `api.shop`
//! through the client sidecar, paced, each call recorded with when it was
//! sent, when it ended and who served it (or why it failed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dev::{Caller, Served};

/// One call.
#[derive(Debug, Clone)]
pub struct Call {
    pub sent: Instant,
    pub done: Instant,
    pub result: Result<Served, String>,
}

impl Call {
    pub fn served_by(&self) -> Option<&str> {
        self.result.as_ref().ok().map(|s| s.cluster.as_str())
    }
}

/// Callers running in the background until [`Traffic::stop`].
#[derive(Debug)]
pub struct Traffic {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Per caller: when its call in flight was sent.
    in_flight: Arc<Mutex<Vec<Option<Instant>>>>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// `workers` callers, each pausing `pause` between calls.
    pub fn start(target: SocketAddr, workers: usize, pause: Duration) -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(Mutex::new(vec![None; workers]));
        let (stop, stopped) = watch::channel(false);
        // Retries inside the mesh may take a while; a call is failed only past this.
        let caller = Caller::new(Duration::from_secs(10));
        let workers = (0..workers)
            .map(|i| {
                let (calls, caller, mut stopped) = (calls.clone(), caller.clone(), stopped.clone());
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    while !*stopped.borrow() {
                        let sent = Instant::now();
                        in_flight.lock().expect("in-flight lock")[i] = Some(sent);
                        let result = caller.get(target, "/").await;
                        let call = Call {
                            sent,
                            done: Instant::now(),
                            result,
                        };
                        calls.lock().expect("calls lock").push(call);
                        in_flight.lock().expect("in-flight lock")[i] = None;
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = stopped.changed() => {}
                        }
                    }
                })
            })
            .collect();
        Self {
            calls,
            in_flight,
            stop,
            workers,
        }
    }

    /// Waits until every call sent before `at` has ended and is recorded.
    pub async fn recorded_until(&self, at: Instant) {
        loop {
            let pending = self
                .in_flight
                .lock()
                .expect("in-flight lock")
                .iter()
                .any(|sent| sent.is_some_and(|s| s < at));
            if !pending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The calls as they are recorded, for a live display.
    pub fn shared(&self) -> Arc<Mutex<Vec<Call>>> {
        self.calls.clone()
    }

    /// Calls sent at or after `since`.
    pub fn since(&self, since: Instant) -> Vec<Call> {
        self.calls
            .lock()
            .expect("calls lock")
            .iter()
            .filter(|c| c.sent >= since)
            .cloned()
            .collect()
    }

    /// Waits until the last `n` calls sent after `since` were all served by
    /// `cluster`, or `within` passes. Returns the first call after `since`
    /// served by `cluster`, if the traffic settled there.
    pub async fn settle(
        &self,
        since: Instant,
        cluster: &str,
        n: usize,
        within: Duration,
    ) -> Option<Call> {
        let deadline = Instant::now() + within;
        loop {
            let calls = self.since(since);
            let mut done: Vec<&Call> = calls.iter().collect();
            done.sort_by_key(|c| c.sent);
            let settled = done.len() >= n
                && done[done.len() - n..]
                    .iter()
                    .all(|c| c.served_by() == Some(cluster));
            if settled {
                return done
                    .iter()
                    .find(|c| c.served_by() == Some(cluster))
                    .map(|c| (*c).clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the callers once their calls in flight end.
    pub async fn stop(self) -> Vec<Call> {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
        Arc::try_unwrap(self.calls)
            .map(|m| m.into_inner().expect("calls lock"))
            .unwrap_or_else(|shared| shared.lock().expect("calls lock").clone())
    }
}
