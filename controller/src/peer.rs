//! One linked cluster: resolves its gateway, probes it, and holds the
//! federation stream that carries its exports (and is its lease). Each runs
//! as tasks that write into the peer's entry of the [`World`](crate::world::World).

mod probe;
mod resolve;

use std::sync::Arc;
use std::time::Duration;

use meshfed_resources::crd::LinkSpec;
use meshfed_trust::{CredentialsWatch, ExpectedIds, SpiffeId, client_config};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::federation::client::run_federation_client;
use crate::metrics::Metrics;
use crate::world::PeerWriter;

/// What a peer's tasks share.
#[derive(Debug, Clone)]
pub(crate) struct PeerContext {
    /// This cluster's name, sent to the peer for its logs.
    pub(crate) local_cluster: String,
    pub(crate) creds: CredentialsWatch,
    pub(crate) metrics: Arc<Metrics>,
    /// How long services a fresh snapshot dropped are doubted (kept).
    pub(crate) doubt_hold: Duration,
}

/// The running tasks of one peer; dropping it stops them.
#[derive(Debug)]
pub(crate) struct PeerHandle {
    pub(crate) spec: LinkSpec,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why a Link's identities cannot be used (validation catches these first).
fn identity(s: &str, field: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| format!("spec.gateway.{field}: {e}"))
}

/// Starts the peer's tasks. The writer's entry must already exist.
pub(crate) fn spawn(
    spec: LinkSpec,
    writer: PeerWriter,
    ctx: PeerContext,
) -> Result<PeerHandle, String> {
    let gateway_id = identity(&spec.gateway.identity, "identity")?;
    let controller_id = identity(&spec.gateway.controller_identity, "controllerIdentity")?;
    let probe_tls = Arc::new(client_config(
        ctx.creds.clone(),
        ExpectedIds::one(gateway_id),
    ));
    let mut fed_tls = client_config(ctx.creds.clone(), ExpectedIds::one(controller_id));
    fed_tls.alpn_protocols = vec![b"h2".to_vec()];
    // The federation client asks for a probe the moment the control plane goes quiet.
    let probe_now = Arc::new(Notify::new());
    let tasks = vec![
        tokio::spawn(resolve::run(spec.clone(), writer.clone())),
        tokio::spawn(probe::run(
            spec.clone(),
            writer.clone(),
            probe_tls,
            ctx.metrics.clone(),
            probe_now.clone(),
        )),
        tokio::spawn(run_federation_client(
            spec.clone(),
            writer,
            Arc::new(fed_tls),
            ctx,
            probe_now,
        )),
    ];
    Ok(PeerHandle { spec, tasks })
}

/// The lease TTL of a Link.
pub(crate) fn lease_ttl(spec: &LinkSpec) -> Duration {
    Duration::from_secs(u64::from(spec.lease_ttl_seconds.max(1)))
}

/// How long a Link keeps a peer whose controller is quiet but whose gateway answers.
pub(crate) fn control_plane_grace(spec: &LinkSpec) -> Duration {
    Duration::from_secs(u64::from(
        spec.control_plane_grace_seconds
            .min(meshfed_resources::crd::MAX_CONTROL_PLANE_GRACE_SECONDS),
    ))
}

/// How often the gateway is probed: the Link's period, but while the
/// control plane is quiet at least three times per lease TTL, because then
/// the probes are what keeps the peer.
pub(crate) fn probe_period(spec: &LinkSpec, quiet: bool) -> Duration {
    let period = Duration::from_secs(u64::from(spec.probe.period_seconds.max(1)));
    if quiet {
        period.min(lease_ttl(spec) / 3)
    } else {
        period
    }
}
