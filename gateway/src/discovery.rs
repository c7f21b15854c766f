//! The route stream from the local controller: a snapshot, then diffs,
//! folded into the routing table. When the controller is unreachable the
//! last table stays in force (the endpoints it lists were healthy a moment
//! ago; an empty table would cut every cross-cluster call) and the stream is
//! retried with jittered backoff.

use std::sync::Arc;
use std::time::Duration;

use meshfed_api::discovery::WatchRoutesRequest;
use meshfed_api::discovery::discovery_client::DiscoveryClient;
use meshfed_runtime::mtls_channel;
use meshfed_trust::{CredentialsWatch, ExpectedIds, SpiffeId, client_config};
use rand::Rng;
use rustls_pki_types::ServerName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::routes::RouteTable;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest route update accepted (10,000 services fit well within).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Where the routes come from.
#[derive(Debug, Clone)]
pub struct RoutesSource {
    /// The controller's discovery listener, `host:port`.
    pub discovery: String,
    /// The identity the controller must present.
    pub controller_id: SpiffeId,
    /// This gateway's name (for the controller's logs).
    pub gateway: String,
}

/// Follows the controller's routes; the receiver always holds the table in
/// force. Dropping the handle's task stops following.
pub fn follow_routes(
    source: RoutesSource,
    creds: CredentialsWatch,
    metrics: Arc<Metrics>,
) -> (watch::Receiver<Arc<RouteTable>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(RouteTable::default()));
    let tls = client_config(creds, ExpectedIds::one(source.controller_id.clone()));
    let name = ServerName::try_from("discovery.meshfed.local").expect("a valid DNS name");
    let channel = mtls_channel(source.discovery.clone(), name, tls, CONNECT_TIMEOUT);
    let task = tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        loop {
            let mut client =
                DiscoveryClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);
            match follow_once(&mut client, &source, &tx, &metrics).await {
                Ok(()) => backoff = MIN_BACKOFF,
                Err(e) => {
                    tracing::warn!(discovery = %source.discovery, error = %e, "route stream failed");
                }
            }
            metrics.routes_stream_up.set(0);
            let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
            tokio::time::sleep(jittered).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
    (rx, task)
}

/// One stream; `Ok` when it delivered a snapshot before it ended.
async fn follow_once(
    client: &mut DiscoveryClient<tonic::transport::Channel>,
    source: &RoutesSource,
    tx: &watch::Sender<Arc<RouteTable>>,
    metrics: &Metrics,
) -> Result<(), String> {
    let request = WatchRoutesRequest {
        gateway: source.gateway.clone(),
    };
    let mut stream = client
        .watch_routes(request)
        .await
        .map_err(|s| format!("{} ({:?})", s.message(), s.code()))?
        .into_inner();
    metrics.routes_stream_up.set(1);
    let mut snapshot_seen = false;
    loop {
        let update = match stream.message().await {
            Ok(Some(u)) => u,
            Ok(None) if snapshot_seen => return Ok(()),
            Ok(None) => return Err("stream ended before a snapshot".into()),
            Err(s) if snapshot_seen => {
                tracing::info!(error = %s.message(), "route stream ended");
                return Ok(());
            }
            Err(s) => return Err(format!("{} ({:?})", s.message(), s.code())),
        };
        if !snapshot_seen && !update.snapshot {
            return Err("first message is not a snapshot".into());
        }
        snapshot_seen = true;
        // A table built from a bad update is never published.
        let next = tx
            .borrow()
            .apply(update)
            .map_err(|e| format!("refused route update: {e}"))?;
        metrics
            .routes
            .set(i64::try_from(next.len()).unwrap_or(i64::MAX));
        tracing::debug!(
            revision = next.revision(),
            routes = next.len(),
            "routes updated"
        );
        tx.send_replace(Arc::new(next));
    }
}
