//! A scenario's traffic: calls from a client pod through its sidecar's
//! upstream listener, paced at a rate, each recorded with when it was sent,
//! when it ended and who served it (HTTP) or whether the echo came back
//! (TCP).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use super::spec::Protocol;
use crate::dev::{Caller, Net};

/// A call is failed past this (retries inside the mesh take a while).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many calls in flight; past it the pace waits.
const MAX_IN_FLIGHT: usize = 256;

/// One call.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Instant,
    pub done: Instant,
    /// The cluster that served it (HTTP), or `Ok("")` for an echoed TCP call.
    pub result: Result<String, String>,
    /// The Service that served it (HTTP): `api`, or a version of it.
    pub service: Option<String>,
}

impl Outcome {
    pub fn served_by(&self) -> Option<&str> {
        self.result.as_deref().ok().filter(|c| !c.is_empty())
    }
}

/// The `p`th percentile (0–100) of `sorted`, nearest rank; `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * p / 100.0).round() as usize;
    sorted.get(i.min(last)).copied()
}

/// Calls running in the background.
#[derive(Debug)]
pub struct Traffic {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    in_flight: Arc<Semaphore>,
}

impl Traffic {
    /// `rate` calls per second to `target` from `net`, for `duration` if given.
    pub fn start(
        net: &Net,
        target: SocketAddr,
        protocol: Protocol,
        rate: u32,
        duration: Option<Duration>,
        headers: Vec<(String, String)>,
    ) -> Self {
        let headers = Arc::new(headers);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let caller = Caller::from(net, CALL_TIMEOUT);
        let net = net.clone();
        let (rec, sem) = (outcomes.clone(), in_flight.clone());
        let task = tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                if *stopped.borrow() || duration.is_some_and(|d| began.elapsed() >= d) {
                    break;
                }
                let Ok(permit) = sem.clone().acquire_owned().await else {
                    break;
                };
                n += 1;
                let (rec, caller, net) = (rec.clone(), caller.clone(), net.clone());
                let headers = headers.clone();
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let (result, service) = match protocol {
                        Protocol::Http => match caller.get_with(target, "/", &headers).await {
                            Ok(s) => (Ok(s.cluster), Some(s.service)),
                            Err(e) => (Err(e), None),
                        },
                        Protocol::Tcp => {
                            (echo(&net, target, n).await.map(|()| String::new()), None)
                        }
                    };
                    let done = Instant::now();
                    rec.lock().expect("outcomes lock").push(Outcome {
                        sent,
                        done,
                        result,
                        service,
                    });
                    drop(permit);
                });
            }
        });
        Self {
            outcomes,
            stop,
            task: Some(task),
            in_flight,
        }
    }

    /// Every call so far, in the order they were sent.
    pub fn outcomes(&self) -> Vec<Outcome> {
        let mut all = self.outcomes.lock().expect("outcomes lock").clone();
        all.sort_by_key(|o| o.sent);
        all
    }

    /// Calls sent at or after `since`.
    pub fn since(&self, since: Instant) -> Vec<Outcome> {
        let mut v: Vec<Outcome> = self
            .outcomes()
            .into_iter()
            .filter(|o| o.sent >= since)
            .collect();
        v.sort_by_key(|o| o.sent);
        v
    }

    /// Stops sending and waits until the calls in flight end.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let all = u32::try_from(MAX_IN_FLIGHT).expect("small");
        let _ = tokio::time::timeout(CALL_TIMEOUT * 2, self.in_flight.acquire_many(all)).await;
    }
}

/// One TCP call: a line out, the same line back.
async fn echo(net: &Net, target: SocketAddr, n: u64) -> Result<(), String> {
    let call = async {
        let mut conn = net
            .connect(target)
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        let line = format!("meshfed scenario call {n}\n");
        conn.write_all(line.as_bytes())
            .await
            .map_err(|e| format!("{target}: writing: {e}"))?;
        let mut back = vec![0; line.len()];
        conn.read_exact(&mut back)
            .await
            .map_err(|e| format!("{target}: reading the echo: {e}"))?;
        if back != line.as_bytes() {
            return Err(format!("{target}: the echo differs from what was sent"));
        }
        Ok(())
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(format!("{target}: no echo within {CALL_TIMEOUT:?}")),
    }
}

/// The start of the trailing run of `outcomes` all served by `cluster`, if
/// that run is at least `n` long.
pub fn settled(outcomes: &[Outcome], cluster: &str, n: usize) -> Option<Instant> {
    let run: Vec<&Outcome> = outcomes
        .iter()
        .rev()
        .take_while(|o| o.served_by() == Some(cluster))
        .collect();
    (run.len() >= n)
        .then(|| run.last().map(|o| o.sent))
        .flatten()
}
