//! A sidecar's view of a cluster's discovery: `meshfed.discovery.v1.
//! Discovery/Watch` over mTLS to the controller's Service address, as a
//! workload of that cluster whose certificate the cluster's CA issued
//! (offline, from the dev federation's CA directory), refusing any server
//! but the controller's identity.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshctl::dev::{ClusterTopology, Kind, Topology};
use meshfed_api::discovery::discovery_client::DiscoveryClient;
use meshfed_api::discovery::{EndpointSet, Locality, WatchRequest};
use meshfed_ca::ClusterCa;
use meshfed_runtime::mtls_channel;
use meshfed_trust::{ExpectedIds, SpiffeId, TrustDomain, client_config};
use rustls_pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::workload::{NAMESPACE, PORT};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What a sidecar accepts (`sidecar/src/discovery.rs`).
const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Subscriptions to one cluster's discovery.
#[derive(Debug)]
pub struct Subscriber {
    client: DiscoveryClient<Channel>,
    caller: Locality,
    /// The controller's Service address.
    pub addr: SocketAddr,
}

impl Subscriber {
    /// A workload `bench/watcher` of cluster `c`, in its first zone.
    pub fn new(t: &Topology, c: &ClusterTopology) -> anyhow::Result<Self> {
        let ca = ClusterCa::load(&c.ca_dir).context("the cluster's CA")?;
        let id = TrustDomain::new(&t.trust_domain)?.workload(NAMESPACE, "watcher")?;
        let issued = ca.issue_workload(&id, Duration::from_secs(3600))?;
        let creds = issued.into_credentials()?.into_watch().1;
        let controller = c
            .processes
            .iter()
            .find(|p| p.kind == Kind::Controller)
            .context("a controller")?;
        let addr = *controller
            .listen
            .get("discovery")
            .context("the controller's discovery address")?;
        let server = SpiffeId::parse(controller.identity.as_deref().unwrap_or_default())?;
        let tls = client_config(creds, ExpectedIds::one(server));
        let name = ServerName::try_from("discovery.meshfed.local")?;
        let channel = mtls_channel(addr.to_string(), name, tls, CONNECT_TIMEOUT);
        Ok(Self {
            client: DiscoveryClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES),
            caller: Locality {
                cluster: c.name.clone(),
                region: c.region.clone(),
                zone: c.zones.first().cloned().unwrap_or_default(),
            },
            addr,
        })
    }

    /// Follows `bench/name` port 80 from now on.
    pub async fn watch(&self, name: &str) -> anyhow::Result<Watch> {
        let mut stream = self
            .client
            .clone()
            .watch(WatchRequest {
                name: name.to_owned(),
                namespace: NAMESPACE.to_owned(),
                port: u32::from(PORT),
                caller: Some(self.caller.clone()),
            })
            .await
            .with_context(|| format!("watching {name} at {}", self.addr))?
            .into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(Some(set)) = stream.message().await {
                if tx.send((Instant::now(), set)).is_err() {
                    return;
                }
            }
        });
        Ok(Watch { rx, task })
    }
}

/// One subscription: every endpoint set, stamped as it arrived.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::UnboundedReceiver<(Instant, EndpointSet)>,
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    /// When the first set from now on that `holds` arrived, waiting at most
    /// `within`; `None` if none did.
    pub async fn until(
        &mut self,
        within: Duration,
        holds: impl Fn(&EndpointSet) -> bool,
    ) -> anyhow::Result<Option<Instant>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("the discovery stream ended"),
                Ok(Some((at, set))) if holds(&set) => return Ok(Some(at)),
                Ok(Some(_)) => {}
            }
        }
    }
}

/// Healthy endpoints of `cluster`'s remote group in `set` (`None`: no such
/// group, the service is not imported from there).
pub fn remote_healthy(set: &EndpointSet, cluster: &str) -> Option<u32> {
    set.groups
        .iter()
        .find(|g| g.remote && g.locality.as_ref().is_some_and(|l| l.cluster == cluster))
        .map(|g| g.healthy)
}
