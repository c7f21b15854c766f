//! Requests waiting for an endpoint. When a destination has endpoints but
//! none able to serve now — down after a failed connect, ejected, or not
//! ready — a request that may be sent again waits for one rather than
//! failing at once: the only endpoint may be a remote gateway frozen for a
//! few seconds, or a cluster withdrawn while its lease renews.
//!
//! - **Bounded:** at most `Breakers::max_waiting` (default 256) requests of
//!   a destination wait at once; past it a request fails at once, as
//!   before, with `no_healthy_endpoints`. Each waits at most what is left
//!   of its request timeout, then fails as it would have without waiting.
//! - **Woken, not polling:** a waiter looks again when a probe reports, a
//!   down endpoint connects, or discovery sends a new endpoint set; else it
//!   sleeps until the balancer's next known change in time (a probe falls
//!   due — its pick starts the probe — or an ejection ends).
//! - Nothing here runs on the request path while an endpoint can serve.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::{Breaker, Dest};
use crate::balance::Pick;
use crate::metrics::{ServiceLabels, WaitLabels, WaitOutcome};
use crate::reason::Reason;

impl Dest {
    /// Waits, within `deadline`, until an endpoint can take the request
    /// whose attempts went to `tried`, and picks it. Called when a pick
    /// found none able to serve; fails with `no_healthy_endpoints` when the
    /// queue is full or the deadline passes.
    pub(crate) async fn wait_for_endpoint(
        self: &Arc<Self>,
        tried: &[Arc<str>],
        deadline: Instant,
    ) -> Result<Pick, Reason> {
        let Some(_place) = Place::take(self) else {
            self.waited(WaitOutcome::queue_full);
            return Err(Reason::NoHealthyEndpoints);
        };
        let mut sets = self.set.lock().expect("set lock").clone();
        sets.borrow_and_update();
        let mut discovery_open = true;
        loop {
            // Listening before looking: a change between the two still wakes.
            let mut changed = pin!(self.changes.notified());
            changed.as_mut().enable();
            match self.pick(tried, Breaker::Requests) {
                Ok(pick) => {
                    self.waited(WaitOutcome::served);
                    return Ok(pick);
                }
                Err(Reason::NoHealthyEndpoints) => {}
                Err(other) => {
                    self.waited(WaitOutcome::failed);
                    return Err(other);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.waited(WaitOutcome::timeout);
                return Err(Reason::NoHealthyEndpoints);
            }
            let wake = self.next_change(now).map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = changed => {}
                sent = sets.changed(), if discovery_open => discovery_open = sent.is_ok(),
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn next_change(&self, now: Instant) -> Option<Instant> {
        self.balancer
            .lock()
            .expect("balancer lock")
            .next_change(now)
    }

    fn waited(&self, outcome: WaitOutcome) {
        self.shared
            .metrics
            .endpoint_waits
            .get_or_create(&WaitLabels {
                service: self.label.clone(),
                outcome,
            })
            .inc();
    }

    fn waiting_gauge(&self, delta: i64) {
        self.shared
            .metrics
            .endpoint_waiting
            .get_or_create(&ServiceLabels {
                service: self.label.clone(),
            })
            .inc_by(delta);
    }
}

/// A place in a destination's queue, given back when dropped.
struct Place<'a>(&'a Dest);

impl<'a> Place<'a> {
    fn take(dest: &'a Dest) -> Option<Self> {
        let max = dest.shared.breakers.max_waiting;
        dest.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        dest.waiting_gauge(1);
        Some(Self(dest))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting_gauge(-1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshfed_api::discovery::{Endpoint, EndpointSet, Locality, Policy, PriorityGroup};
    use meshfed_trust::{Credentials, KeyAlgorithm, RootCa, SpiffeId, TrustDomain};
    use prometheus_client::registry::Registry;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::{Breakers, ServiceTarget, Timeouts};
    use crate::connect::Connector;
    use crate::dest::Shared;
    use crate::metrics::Metrics;

    const ID: &str = "spiffe://mesh.test/ns/shop/sa/api";

    type Sets = watch::Sender<Option<Arc<EndpointSet>>>;

    /// A destination fed by the returned sender; no endpoint is ever dialled.
    fn dest(max_waiting: usize) -> (Arc<Dest>, Sets) {
        meshfed_trust::install_crypto_provider();
        let td = TrustDomain::new("mesh.test").expect("td");
        let ca = RootCa::generate(&td, KeyAlgorithm::EcdsaP256, Duration::from_secs(3600))
            .expect("root")
            .issue_cluster("east", Duration::from_secs(3600), Vec::new())
            .expect("cluster ca");
        let w = ca
            .issue_workload(
                &SpiffeId::parse("spiffe://mesh.test/ns/web/sa/frontend").expect("id"),
                Duration::from_secs(3600),
            )
            .expect("workload");
        let creds = Credentials::new(
            w.chain,
            PrivatePkcs8KeyDer::from(w.key_pkcs8).into(),
            w.bundle,
        )
        .expect("credentials")
        .into_watch()
        .1;
        let stop = CancellationToken::new();
        let timeouts = Timeouts::default();
        let shared = Arc::new(Shared {
            connector: Arc::new(Connector::new(
                creds,
                timeouts.connect,
                timeouts.liveness,
                None,
                stop.clone(),
            )),
            metrics: Arc::new(Metrics::new(&mut Registry::default())),
            timeouts,
            breakers: Breakers {
                max_waiting,
                ..Breakers::default()
            },
            cluster: "east".into(),
            tasks: TaskTracker::new(),
            stop,
        });
        let (tx, rx) = watch::channel(None);
        let target = ServiceTarget::new("api", "shop", 80).expect("target");
        (Dest::new(target, rx, shared), tx)
    }

    /// api in one group of east: `(address, ready)` each; one failure
    /// ejects for a second, and every endpoint may be ejected.
    fn set(endpoints: &[(&str, bool)]) -> Option<Arc<EndpointSet>> {
        let endpoints: Vec<Endpoint> = endpoints
            .iter()
            .map(|(addr, ready)| Endpoint {
                address: (*addr).into(),
                weight: 1,
                identities: vec![ID.into()],
                locality: None,
                ready: *ready,
                sni: String::new(),
            })
            .collect();
        Some(Arc::new(EndpointSet {
            exists: true,
            groups: vec![PriorityGroup {
                locality: Some(Locality {
                    cluster: "east".into(),
                    region: String::new(),
                    zone: "a".into(),
                }),
                remote: false,
                total: endpoints.len() as u32,
                healthy: endpoints.iter().filter(|e| e.ready).count() as u32,
                endpoints,
                spill_threshold: 0.7,
                load_permille: 0,
            }],
            policy: Some(Policy {
                spill_threshold: 0.7,
                consecutive_failures: 1,
                ejection_time_ms: 1000,
                max_ejected_percent: 100,
                failback_hold_ms: 0,
                retry_budget_percent: 20,
                min_retries_per_second: 10,
            }),
            revision: 1,
        }))
    }

    fn waits(d: &Dest, outcome: WaitOutcome) -> u64 {
        d.shared
            .metrics
            .endpoint_waits
            .get_or_create(&WaitLabels {
                service: d.label.clone(),
                outcome,
            })
            .get()
    }

    fn waiting(d: &Dest) -> i64 {
        d.shared
            .metrics
            .endpoint_waiting
            .get_or_create(&ServiceLabels {
                service: d.label.clone(),
            })
            .get()
    }

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_set_ends_the_wait() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        assert_eq!(
            d.pick(&[], Breaker::Requests).map(|_| ()),
            Err(Reason::NoHealthyEndpoints)
        );
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_endpoint(&[], in_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!waiter.is_finished(), "nothing can serve yet");
        assert_eq!(waiting(&d), 1);
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        let pick = waiter.await.expect("task").expect("picked");
        assert_eq!(pick.endpoint.addr.to_string(), "10.0.0.1:80");
        assert_eq!(waits(&d, WaitOutcome::served), 1);
        assert_eq!(waiting(&d), 0, "the place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_that_ends_ends_the_wait_without_news() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        let pick = d.pick(&[], Breaker::Requests).expect("picked");
        d.start(&pick).answered(true);
        let ejected = Instant::now();
        assert_eq!(
            d.pick(&[], Breaker::Requests).map(|_| ()),
            Err(Reason::NoHealthyEndpoints)
        );
        let pick = d
            .wait_for_endpoint(&[], in_secs(10))
            .await
            .expect("picked after the ejection");
        assert_eq!(pick.endpoint.addr.to_string(), "10.0.0.1:80");
        // Woken when the ejection ended (1 s), not at the deadline.
        assert!(ejected.elapsed() < Duration::from_secs(2));
        assert_eq!(waits(&d, WaitOutcome::served), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_ends_the_wait_with_the_same_reason() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        let deadline = in_secs(3);
        let waited = d.wait_for_endpoint(&[], deadline).await.map(|_| ());
        assert_eq!(waited, Err(Reason::NoHealthyEndpoints));
        assert!(Instant::now() >= deadline);
        assert_eq!(waits(&d, WaitOutcome::timeout), 1);
        // A deadline already past: one look, no wait.
        let now = Instant::now();
        let waited = d.wait_for_endpoint(&[], now).await.map(|_| ());
        assert_eq!(waited, Err(Reason::NoHealthyEndpoints));
        assert_eq!(Instant::now(), now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_fails_at_once() {
        let (d, sets) = dest(1);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        let first = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_endpoint(&[], in_secs(10)).await })
        };
        while waiting(&d) == 0 {
            tokio::task::yield_now().await;
        }
        let now = Instant::now();
        let second = d.wait_for_endpoint(&[], in_secs(10)).await.map(|_| ());
        assert_eq!(second, Err(Reason::NoHealthyEndpoints));
        assert_eq!(Instant::now(), now, "no time passed");
        assert_eq!(waits(&d, WaitOutcome::queue_full), 1);
        sets.send_replace(set(&[("10.0.0.1:80", true)]));
        first.await.expect("task").expect("the first is served");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_left_with_no_endpoint_ends_the_wait() {
        let (d, sets) = dest(256);
        sets.send_replace(set(&[("10.0.0.1:80", false)]));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.wait_for_endpoint(&[], in_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        sets.send_replace(set(&[]));
        let waited = waiter.await.expect("task").map(|_| ());
        assert_eq!(waited, Err(Reason::NoEndpoints));
        assert_eq!(waits(&d, WaitOutcome::failed), 1);
    }
}
