//! The sidecar's view of discovery: one live stream per service port it
//! calls, and cluster-IP lookups for transparent interception. When the
//! controller is unreachable the last endpoint set stays in force — the
//! endpoints were serving a moment ago, and an empty set would fail every
//! call — and the stream is retried with jittered backoff.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshfed_api::discovery::discovery_client::DiscoveryClient;
use meshfed_api::discovery::{
    EndpointSet, Locality as WireLocality, ResolveRequest, WatchLimitsRequest, WatchRequest,
};
use meshfed_runtime::mtls_channel;
use meshfed_trust::{CredentialsWatch, ExpectedIds, SpiffeId, client_config};
use rustls_pki_types::ServerName;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::{Locality, ServiceTarget};
use crate::limits::Limits;
use crate::metrics::Metrics;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest endpoint set accepted.
const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// How long a cluster-IP lookup is remembered (a miss: shorter).
const RESOLVED_TTL: Duration = Duration::from_secs(30);
const MISS_TTL: Duration = Duration::from_secs(5);
/// How often a controller that serves no rate limits is asked again.
const UNSERVED_RETRY: Duration = Duration::from_secs(60);
/// Most remembered lookups; beyond it the oldest are forgotten.
const MAX_RESOLVED: usize = 4096;

/// Where discovery is.
#[derive(Debug, Clone)]
pub struct DiscoverySource {
    /// The controller's discovery listener, `host:port`.
    pub addr: String,
    /// The identity the controller must present.
    pub controller_id: SpiffeId,
}

/// A service a destination IP belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) ports: Vec<u32>,
}

type Lookup = (Instant, Option<Resolved>);

/// Discovery streams, shared by everything in the sidecar.
#[derive(Debug)]
pub(crate) struct Discovery {
    channel: Channel,
    caller: Locality,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    streams: Mutex<HashMap<ServiceTarget, watch::Receiver<Option<Arc<EndpointSet>>>>>,
    resolved: Mutex<HashMap<IpAddr, Lookup>>,
}

impl Discovery {
    pub(crate) fn new(
        source: &DiscoverySource,
        creds: CredentialsWatch,
        caller: Locality,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let tls = client_config(creds, ExpectedIds::one(source.controller_id.clone()));
        let name = ServerName::try_from("discovery.meshfed.local").expect("a valid DNS name");
        let channel = mtls_channel(source.addr.clone(), name, tls, CONNECT_TIMEOUT);
        Arc::new(Self {
            channel,
            caller,
            metrics,
            stop,
            streams: Mutex::default(),
            resolved: Mutex::default(),
        })
    }

    fn client(&self) -> DiscoveryClient<Channel> {
        DiscoveryClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The endpoint set of `target`, live (`None` until the first answer).
    pub(crate) fn watch(
        &self,
        target: &ServiceTarget,
    ) -> watch::Receiver<Option<Arc<EndpointSet>>> {
        let mut streams = self.streams.lock().expect("streams lock");
        if let Some(rx) = streams.get(target) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        streams.insert(target.clone(), rx.clone());
        let request = WatchRequest {
            name: target.name.clone(),
            namespace: target.namespace.clone(),
            port: u32::from(target.port),
            caller: Some(WireLocality {
                cluster: self.caller.cluster.clone(),
                region: self.caller.region.clone(),
                zone: self.caller.zone.clone(),
            }),
        };
        let client = self.client();
        let metrics = self.metrics.clone();
        let service = target.to_string();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = follow(client, request, tx, metrics, service) => {}
            }
        });
        rx
    }

    /// Follows the rate limits of the pod at `pod_ip` into `limits` until
    /// the sidecar stops. While the controller is unreachable the last
    /// limits stay in force.
    pub(crate) fn watch_limits(&self, pod_ip: IpAddr, limits: Arc<Limits>) {
        let (client, stop) = (self.client(), self.stop.clone());
        let request = WatchLimitsRequest {
            pod_ip: pod_ip.to_string(),
        };
        let unserved_said = std::sync::atomic::AtomicBool::new(false);
        tokio::spawn(async move {
            let attempt = || {
                let (mut client, request) = (client.clone(), request.clone());
                let (limits, said) = (&limits, &unserved_said);
                async move {
                    let mut stream = match client.watch_limits(request).await {
                        Ok(s) => s.into_inner(),
                        Err(s) if s.code() == tonic::Code::Unimplemented => {
                            // A controller older than this sidecar: asked
                            // again now and then, as it may be upgraded.
                            if !said.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                tracing::warn!(
                                    "the controller serves no rate limits (it is older than this \
                                     sidecar): none apply until it is upgraded"
                                );
                            }
                            tokio::time::sleep(UNSERVED_RETRY).await;
                            return Ok(());
                        }
                        Err(s) => return Err(s),
                    };
                    while let Some(update) = stream.message().await? {
                        limits.update(&update.limits);
                    }
                    Ok(())
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = with_backoff("rate limits", attempt, || false) => {}
            }
        });
    }

    /// The service `ip` is the cluster IP of, if any (remembered a while).
    pub(crate) async fn resolve(&self, ip: IpAddr) -> Result<Option<Resolved>, tonic::Status> {
        let now = Instant::now();
        if let Some((at, hit)) = self.resolved.lock().expect("resolved lock").get(&ip) {
            let ttl = if hit.is_some() {
                RESOLVED_TTL
            } else {
                MISS_TTL
            };
            if now.saturating_duration_since(*at) < ttl {
                return Ok(hit.clone());
            }
        }
        let answer = self
            .client()
            .resolve(ResolveRequest {
                target: ip.to_string(),
            })
            .await?
            .into_inner();
        let hit = answer.found.then_some(Resolved {
            name: answer.name,
            namespace: answer.namespace,
            ports: answer.ports,
        });
        let mut resolved = self.resolved.lock().expect("resolved lock");
        if resolved.len() >= MAX_RESOLVED {
            resolved.retain(|_, (at, _)| now.saturating_duration_since(*at) < MISS_TTL);
            if resolved.len() >= MAX_RESOLVED {
                resolved.clear();
            }
        }
        resolved.insert(ip, (now, hit.clone()));
        Ok(hit)
    }
}

/// Follows one service's stream for as long as anyone holds its receiver.
async fn follow(
    client: DiscoveryClient<Channel>,
    request: WatchRequest,
    tx: watch::Sender<Option<Arc<EndpointSet>>>,
    metrics: Arc<Metrics>,
    service: String,
) {
    let attempt = || {
        let (mut client, request, tx, metrics) = (client.clone(), &request, &tx, &metrics);
        async move { follow_once(&mut client, request, tx, metrics).await }
    };
    with_backoff(&service, attempt, || tx.is_closed()).await;
}

/// Runs `attempt` (one stream, until it ends) again and again, after a
/// jittered backoff that grows while attempts fail, until `done`.
async fn with_backoff<F, Fut>(what: &str, mut attempt: F, done: impl Fn() -> bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        match attempt().await {
            Ok(()) => backoff = MIN_BACKOFF,
            Err(e) => {
                tracing::warn!(%what, error = %e, "discovery stream failed; keeping what it last said")
            }
        }
        if done() {
            return;
        }
        let jittered = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(
    client: &mut DiscoveryClient<Channel>,
    request: &WatchRequest,
    tx: &watch::Sender<Option<Arc<EndpointSet>>>,
    metrics: &Metrics,
) -> Result<(), tonic::Status> {
    let mut stream = client.watch(request.clone()).await?.into_inner();
    metrics.discovery_streams_up.inc();
    let mut delivered = false;
    let ended = loop {
        match stream.message().await {
            Ok(Some(set)) => {
                delivered = true;
                metrics.discovery_updates.inc();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let groups: Vec<String> = set
                        .groups
                        .iter()
                        .map(|g| {
                            let l = g.locality.clone().unwrap_or_default();
                            let ready = g.endpoints.iter().filter(|e| e.ready).count();
                            format!(
                                "{}/{}: {}/{} healthy, {ready} of {} listed ready",
                                l.cluster,
                                l.zone,
                                g.healthy,
                                g.total,
                                g.endpoints.len()
                            )
                        })
                        .collect();
                    let hold_ms = set.policy.as_ref().map(|p| p.failback_hold_ms);
                    tracing::debug!(service = %request.name, ?groups, ?hold_ms, "endpoint set");
                }
                if tx.send(Some(Arc::new(set))).is_err() {
                    break Ok(());
                }
            }
            Ok(None) if delivered => break Ok(()),
            Ok(None) => {
                break Err(tonic::Status::unavailable(
                    "stream ended before any endpoint set",
                ));
            }
            Err(e) => break Err(e),
        }
    };
    metrics.discovery_streams_up.dec();
    ended
}
