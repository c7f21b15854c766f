//! The importing side of federation: holds the stream of one peer's exports
//! through its gateway, applies snapshots and diffs to the peer's imports,
//! and judges the peer when the stream is silent past the lease TTL.
//!
//! Control-plane and data-plane liveness are told apart. When the stream
//! ends, or misses its heartbeats for half the TTL, the control plane is
//! *quiet*: the gateway is probed at once and then three times per TTL.
//! When the lease runs out, a peer whose gateway answered a probe started
//! after it went quiet is *held* — its known exports kept, traffic still
//! going to it — each such probe renewing the lease, for at most the Link's
//! `controlPlaneGraceSeconds` (a controller restart or rollout costs
//! nothing). A peer whose gateway does not answer too is withdrawn when the
//! lease runs out, as a dead cluster must be; so is one still quiet when the
//! grace ends, and one whose exports this controller never learned (there
//! is nothing to keep).
//!
//! A fresh snapshot that drops much of what the peer exported is doubted
//! before it is acted on (see [`super::doubt`]).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshfed_api::federation::federation_client::FederationClient;
use meshfed_api::federation::{ExportedService, ExportsUpdate, WatchExportsRequest};
use meshfed_resources::crd::LinkSpec;
use rand::Rng;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::local::ExportSet;
use crate::metrics::LinkLabels;
use crate::peer::{PeerContext, control_plane_grace, lease_ttl};
use crate::store::ObjKey;
use crate::world::{HeldUntil, PeerWriter, Withdrawn};

use super::doubt::Doubt;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest update accepted from a peer, and largest snapshot in parts
/// (10,000 services fit well within).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

pub(crate) async fn run_federation_client(
    spec: LinkSpec,
    writer: PeerWriter,
    tls: Arc<ClientConfig>,
    ctx: PeerContext,
    probe_now: Arc<Notify>,
) {
    let ttl = lease_ttl(&spec);
    let grace = control_plane_grace(&spec);
    let labels = LinkLabels {
        link: writer.key.to_string(),
    };
    let connector = TlsConnector::from(tls);
    // A restarted controller grants every peer one lease before judging it.
    let mut deadline = Instant::now() + ttl;
    let mut backoff = MIN_BACKOFF;
    let mut turn = 0usize;
    let mut doubt = Doubt::new(ctx.doubt_hold);
    loop {
        let lease = Lease {
            ttl,
            grace,
            probe_now: &probe_now,
        };
        let mut stream = Stream {
            writer: &writer,
            ctx: &ctx,
            lease: &lease,
            doubt: &mut doubt,
        };
        let result = stream
            .watch_once(&connector, &mut deadline, &mut turn)
            .await;
        lease.quiet(&writer, &ctx);
        ctx.metrics
            .federation_stream_up
            .get_or_create(&labels)
            .set(0);
        writer.update(|p| p.stream_up = false);
        let healthy_run = match result {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(link = %writer.key, error = %e, "federation stream ended");
                writer.update(|p| p.last_error = Some(format!("federation: {e}")));
                false
            }
        };
        if healthy_run {
            backoff = MIN_BACKOFF;
        }
        let delay = jitter(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // Wait out the backoff, but judge the peer the moment its lease runs out.
        let retry_at = Instant::now() + delay;
        while deadline < retry_at && writer.get().is_some_and(|p| p.lease_alive) {
            tokio::time::sleep_until(deadline).await;
            match lease.ran_out(&writer, &ctx) {
                Some(next) => deadline = next,
                None => break,
            }
        }
        if writer.get().is_some_and(|p| !p.lease_alive) {
            // Withdrawn: nothing of it is kept, doubted or not.
            doubt.clear();
            ctx.metrics.imports_doubted.get_or_create(&labels).set(0);
        }
        tokio::time::sleep_until(retry_at).await;
    }
}

/// What one stream works with.
struct Stream<'a> {
    writer: &'a PeerWriter,
    ctx: &'a PeerContext,
    lease: &'a Lease<'a>,
    doubt: &'a mut Doubt,
}

impl Stream<'_> {
    /// One stream from connect to end. `Ok` when it delivered a snapshot before
    /// ending (the next attempt starts without backoff).
    async fn watch_once(
        &mut self,
        connector: &TlsConnector,
        deadline: &mut Instant,
        turn: &mut usize,
    ) -> Result<(), String> {
        let (writer, ctx, lease) = (self.writer, self.ctx, self.lease);
        let ttl = lease.ttl;
        let gateways = writer.get().map(|p| p.gateways.clone()).unwrap_or_default();
        if gateways.is_empty() {
            return Err("gateway address not resolved yet".into());
        }
        let target = gateways[*turn % gateways.len()];
        *turn = turn.wrapping_add(1);
        let connector = connector.clone();
        let dial = tower::service_fn(move |_: http::Uri| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(target).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(meshfed_api::sni::FEDERATION)
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        });
        let endpoint = tonic::transport::Endpoint::from_static("http://federation.meshfed.local")
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint.connect_with_connector(dial);
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, channel)
            .await
            .map_err(|_| format!("connecting to {target}: timed out"))?
            .map_err(|e| format!("connecting to {target}: {}", error_chain(&e)))?;
        let mut client =
            FederationClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let request = WatchExportsRequest {
            cluster: ctx.local_cluster.clone(),
            lease_ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
            snapshot_in_parts: true,
        };
        let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, client.watch_exports(request))
            .await
            .map_err(|_| format!("{target}: no answer to WatchExports"))?
            .map_err(|s| format!("{target}: {} ({:?})", s.message(), s.code()))?
            .into_inner();
        let labels = LinkLabels {
            link: writer.key.to_string(),
        };
        ctx.metrics
            .federation_stream_up
            .get_or_create(&labels)
            .set(1);
        writer.update(|p| p.stream_up = true);
        let mut imports: Option<ExportSet> = None;
        let mut parts = Parts::default();
        let mut last_message = Instant::now();
        loop {
            let quiet = writer.get().is_some_and(|p| p.quiet_since.is_some());
            let heartbeat_missed = last_message + ttl / 2;
            let wake = if quiet {
                *deadline
            } else {
                heartbeat_missed.min(*deadline)
            };
            let wake = self.doubt.until().map_or(wake, |u| u.min(wake));
            let next = tokio::time::timeout_at(wake, stream.message()).await;
            let doubted = self.doubt.len();
            if next.is_err() && self.doubt.expire(Instant::now()) {
                tracing::warn!(
                    link = %writer.key,
                    services = doubted,
                    "the peer did not send again the services its snapshot dropped; \
                     their mirrors go now"
                );
                if let Some(set) = imports.as_ref() {
                    self.publish(set, true);
                }
                continue;
            }
            let update = match next {
                Err(_) if !quiet && Instant::now() < *deadline => {
                    lease.quiet(writer, ctx);
                    continue;
                }
                Err(_) => match lease.ran_out(writer, ctx) {
                    Some(next) => {
                        *deadline = next;
                        continue;
                    }
                    None => return Err(format!("{target}: silent past the lease TTL ({ttl:?})")),
                },
                Ok(Err(status)) => {
                    return Err(format!(
                        "{target}: {} ({:?})",
                        status.message(),
                        status.code()
                    ));
                }
                Ok(Ok(None)) => return imports.map(|_| ()).ok_or_else(|| "stream closed".into()),
                Ok(Ok(Some(u))) => u,
            };
            last_message = Instant::now();
            *deadline = last_message + ttl;
            // A part of a snapshot is the peer speaking; nothing of it is
            // acted on before the last part.
            let Some(update) = parts.take(update).map_err(|e| format!("{target}: {e}"))? else {
                continue;
            };
            let snapshot = update.snapshot;
            let removed: Vec<ObjKey> = update
                .removals
                .iter()
                .filter_map(|r| key_of(&r.namespace, &r.name).ok())
                .collect();
            let mut changed = apply(&mut imports, update).map_err(|e| format!("{target}: {e}"))?;
            let Some(set) = imports.as_ref() else {
                return Err(format!("{target}: first message was not a snapshot"));
            };
            if snapshot {
                let before = writer.get().and_then(|p| p.imports.clone());
                let fresh = self.doubt.snapshot(before.as_deref(), set, last_message);
                if fresh > 0 {
                    tracing::warn!(
                        link = %writer.key,
                        dropped = self.doubt.len(),
                        of = before.as_ref().map_or(0, |b| b.len()),
                        hold = ?self.ctx.doubt_hold,
                        "the peer's snapshot lacks much of what it exported; keeping those \
                         services a while rather than deleting their mirrors at once"
                    );
                }
                changed = true;
            } else if self.doubt.len() > 0 {
                self.doubt.settled(set, &removed);
                changed |= self.doubt.len() != doubted;
            }
            let was_held = writer.get().is_some_and(|p| p.held_until.is_some());
            writer.update(|p| {
                p.lease_alive = true;
                p.quiet_since = None;
                p.held_until = None;
                p.withdrawn = None;
                p.last_error = None;
            });
            self.publish(set, changed);
            if was_held {
                tracing::info!(link = %writer.key, "the peer's controller speaks again; its hold ends");
                ctx.metrics.imports_held.get_or_create(&labels).set(0);
            }
        }
    }

    /// Publishes the imports to act on — what the peer exports and what is
    /// doubted — when they changed, and counts them.
    fn publish(&self, set: &ExportSet, changed: bool) {
        let labels = LinkLabels {
            link: self.writer.key.to_string(),
        };
        let metrics = &self.ctx.metrics;
        let count = i64::try_from(set.len()).unwrap_or(i64::MAX);
        metrics.imports.get_or_create(&labels).set(count);
        let doubted = i64::try_from(self.doubt.len()).unwrap_or(i64::MAX);
        metrics.imports_doubted.get_or_create(&labels).set(doubted);
        if !changed {
            return;
        }
        let acted_on = if self.doubt.len() > 0 {
            self.doubt.imports(set)
        } else {
            set.clone()
        };
        let acted_on = Arc::new(acted_on);
        self.writer.update(|p| p.imports = Some(acted_on));
    }
}

/// A snapshot arriving in parts, held until its last part.
#[derive(Debug, Default)]
struct Parts {
    /// The services of the parts so far; `None` when no snapshot is open.
    upserts: Option<Vec<ExportedService>>,
    revision: u64,
    /// Their encoded size: a snapshot in parts is held to the bound of one
    /// in a message.
    bytes: usize,
}

impl Parts {
    /// Takes one message: the update to act on, or `None` while more of a
    /// snapshot is to come. A diff or heartbeat between parts, or parts of
    /// different revisions, end the stream: the peer broke the protocol.
    fn take(&mut self, mut update: ExportsUpdate) -> Result<Option<ExportsUpdate>, String> {
        let Some(held) = self.upserts.as_mut() else {
            if !(update.snapshot && update.more) {
                return Ok(Some(update));
            }
            self.revision = update.revision;
            self.bytes = 0;
            self.upserts = Some(Vec::new());
            return self.take(update);
        };
        if !update.snapshot || update.revision != self.revision {
            return Err(format!(
                "peer sent revision {} ({}) within the parts of snapshot revision {}",
                update.revision,
                if update.snapshot {
                    "a snapshot"
                } else {
                    "a diff"
                },
                self.revision
            ));
        }
        self.bytes += update
            .upserts
            .iter()
            .map(prost::Message::encoded_len)
            .sum::<usize>();
        if self.bytes > MAX_MESSAGE_BYTES {
            return Err(format!(
                "peer's snapshot in parts is over {} MiB",
                MAX_MESSAGE_BYTES >> 20
            ));
        }
        held.append(&mut update.upserts);
        if update.more {
            return Ok(None);
        }
        update.upserts = self.upserts.take().unwrap_or_default();
        Ok(Some(update))
    }
}

/// Applies an update to the imports; `true` when the set changed.
fn apply(imports: &mut Option<ExportSet>, update: ExportsUpdate) -> Result<bool, String> {
    if update.snapshot {
        let mut set = ExportSet::new();
        for svc in update.upserts {
            set.insert(checked(&svc)?, Arc::new(svc));
        }
        let changed = imports.as_ref() != Some(&set);
        *imports = Some(set);
        return Ok(changed);
    }
    let Some(set) = imports.as_mut() else {
        return Ok(false);
    };
    // Check every name before changing anything: a bad update applies not at all.
    let removals = update
        .removals
        .iter()
        .map(|r| key_of(&r.namespace, &r.name))
        .collect::<Result<Vec<_>, _>>()?;
    let upserts = update
        .upserts
        .into_iter()
        .map(|s| Ok((checked(&s)?, s)))
        .collect::<Result<Vec<_>, String>>()?;
    let mut changed = false;
    for key in removals {
        changed |= set.remove(&key).is_some();
    }
    for (key, svc) in upserts {
        if set.get(&key).is_none_or(|held| **held != svc) {
            set.insert(key, Arc::new(svc));
            changed = true;
        }
    }
    Ok(changed)
}

/// A peer's names become names of local objects: they must be DNS labels.
fn key_of(namespace: &str, name: &str) -> Result<ObjKey, String> {
    if !meshfed_api::sni::is_dns_label(namespace) || !meshfed_api::sni::is_dns_label(name) {
        return Err(format!(
            "peer sent an invalid service name {namespace:?}/{name:?}"
        ));
    }
    Ok(ObjKey::new(namespace, name))
}

/// A peer's service becomes a local mirror: its names and ports must be
/// ones Kubernetes would accept.
fn checked(svc: &meshfed_api::federation::ExportedService) -> Result<ObjKey, String> {
    let key = key_of(&svc.namespace, &svc.name)?;
    for p in &svc.ports {
        if !(1..=65535).contains(&p.port) {
            return Err(format!("peer sent {key} with port {}", p.port));
        }
        if !matches!(p.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            return Err(format!("peer sent {key} with protocol {:?}", p.protocol));
        }
        if !(p.name.is_empty() || meshfed_api::sni::is_dns_label(&p.name))
            || p.app_protocol.len() > 253
        {
            return Err(format!(
                "peer sent {key} with an invalid port name or appProtocol"
            ));
        }
    }
    Ok(key)
}

/// A peer's lease: how long its controller may be silent, and how long
/// its gateway's probes may stand in for it.
struct Lease<'a> {
    ttl: Duration,
    grace: Duration,
    probe_now: &'a Notify,
}

impl Lease<'_> {
    /// The control plane went quiet: from now on only probes started after
    /// this can hold the peer.
    fn quiet(&self, writer: &PeerWriter, ctx: &PeerContext) {
        let _ = ctx;
        if writer.get().is_some_and(|p| p.quiet_since.is_none()) {
            writer.update(|p| p.quiet_since = Some(Instant::now()));
            self.probe_now.notify_one();
        }
    }

    /// The lease ran out: holds the peer and returns the next deadline, or
    /// withdraws it.
    fn ran_out(&self, writer: &PeerWriter, ctx: &PeerContext) -> Option<Instant> {
        let p = writer.get()?;
        if !p.lease_alive {
            return None;
        }
        let now = Instant::now();
        let labels = LinkLabels {
            link: writer.key.to_string(),
        };
        let quiet_since = p.quiet_since.unwrap_or(now);
        let grace_end = quiet_since + self.grace;
        let answered = p
            .probe_ok_at
            .filter(|ok| *ok >= quiet_since && *ok + self.ttl > now);
        let why = match answered {
            _ if p.imports.is_none() => Withdrawn::LeaseExpired,
            Some(ok) if now < grace_end => {
                let until = HeldUntil {
                    at: grace_end,
                    wall: k8s_openapi::jiff::Timestamp::now()
                        + grace_end.saturating_duration_since(now),
                };
                if p.held_until.is_none() {
                    tracing::warn!(
                        link = %writer.key,
                        grace = ?self.grace,
                        "peer's controller silent past its lease but its gateway answers probes; \
                         keeping its services through the control-plane grace"
                    );
                    ctx.metrics.imports_held.get_or_create(&labels).set(1);
                }
                writer.update(|p| {
                    p.quiet_since = Some(quiet_since);
                    if p.held_until.is_none() {
                        p.held_until = Some(until);
                    }
                });
                return Some((ok + self.ttl).min(grace_end));
            }
            Some(_) if self.grace.is_zero() => Withdrawn::LeaseExpired,
            Some(_) => Withdrawn::GraceExpired,
            None if p.held_until.is_some() && now >= grace_end => Withdrawn::GraceExpired,
            None => Withdrawn::LeaseExpired,
        };
        match why {
            Withdrawn::LeaseExpired => tracing::warn!(
                link = %writer.key,
                "peer's controller and gateway silent past the lease; withdrawing its services"
            ),
            Withdrawn::GraceExpired => tracing::warn!(
                link = %writer.key,
                grace = ?self.grace,
                "peer's controller silent past the control-plane grace; withdrawing its services"
            ),
        }
        ctx.metrics.imports_held.get_or_create(&labels).set(0);
        // Its last exports are kept: the mirrors stay, their endpoints not
        // ready (as a Service whose pods all died keeps its object), and
        // discovery lists no endpoint there. A route naming a mirror as a
        // backend thus finds a backend that cannot serve, whose share goes
        // to the others, rather than a missing one, whose share fails.
        writer.update(|p| {
            p.lease_alive = false;
            p.held_until = None;
            p.withdrawn = Some(why);
        });
        None
    }
}

fn jitter(d: Duration) -> Duration {
    let f = rand::rng().random_range(0.5..1.0);
    d.mul_f64(f)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshfed_api::federation::{ExportedService, ServiceRef};

    fn svc(name: &str) -> ExportedService {
        ExportedService {
            namespace: "shop".into(),
            name: name.into(),
            ..ExportedService::default()
        }
    }

    #[test]
    fn snapshots_replace_and_diffs_patch() {
        let mut imports = None;
        let diff = ExportsUpdate {
            upserts: vec![svc("x")],
            ..ExportsUpdate::default()
        };
        assert_eq!(
            apply(&mut imports, diff.clone()),
            Ok(false),
            "no diff before a snapshot"
        );
        let snap = ExportsUpdate {
            snapshot: true,
            upserts: vec![svc("a"), svc("b")],
            ..ExportsUpdate::default()
        };
        assert_eq!(apply(&mut imports, snap.clone()), Ok(true));
        assert_eq!(
            apply(&mut imports, snap),
            Ok(false),
            "same snapshot, no change"
        );
        let d = ExportsUpdate {
            upserts: vec![svc("c")],
            removals: vec![ServiceRef {
                namespace: "shop".into(),
                name: "a".into(),
            }],
            ..ExportsUpdate::default()
        };
        assert_eq!(apply(&mut imports, d), Ok(true));
        let names: Vec<_> = imports
            .iter()
            .flat_map(|s| s.keys())
            .map(|k| &*k.name)
            .collect();
        assert_eq!(names, ["b", "c"]);
        let heartbeat = ExportsUpdate::default();
        assert_eq!(apply(&mut imports, heartbeat), Ok(false));
    }

    #[test]
    fn refuses_names_that_are_not_dns_labels() {
        let mut imports = None;
        let snap = ExportsUpdate {
            snapshot: true,
            upserts: vec![svc("../etc")],
            ..ExportsUpdate::default()
        };
        assert!(apply(&mut imports, snap).is_err());
        assert!(imports.is_none(), "nothing applied");
        let mut bad_port = svc("api");
        bad_port.ports.push(meshfed_api::federation::ServicePort {
            name: "http".into(),
            port: 70000,
            protocol: "TCP".into(),
            app_protocol: String::new(),
        });
        let snap = ExportsUpdate {
            snapshot: true,
            upserts: vec![svc("ok"), bad_port],
            ..ExportsUpdate::default()
        };
        assert!(apply(&mut imports, snap).is_err());
        assert!(imports.is_none(), "nothing applied");
    }

    fn part(revision: u64, names: &[&str], more: bool) -> ExportsUpdate {
        ExportsUpdate {
            snapshot: true,
            revision,
            more,
            upserts: names.iter().map(|n| svc(n)).collect(),
            ..ExportsUpdate::default()
        }
    }

    fn names(update: &ExportsUpdate) -> Vec<&str> {
        update.upserts.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn a_snapshot_in_parts_is_acted_on_whole_after_its_last_part() {
        let mut parts = Parts::default();
        assert_eq!(parts.take(part(3, &["a", "b"], true)), Ok(None));
        assert_eq!(parts.take(part(3, &["c"], true)), Ok(None));
        let whole = parts
            .take(part(3, &["d"], false))
            .expect("ok")
            .expect("whole");
        assert!(whole.snapshot && !whole.more);
        assert_eq!(names(&whole), ["a", "b", "c", "d"]);
        // Then diffs and whole snapshots pass as they come.
        let diff = ExportsUpdate {
            revision: 4,
            upserts: vec![svc("e")],
            ..ExportsUpdate::default()
        };
        assert_eq!(parts.take(diff.clone()), Ok(Some(diff)));
        let one = part(5, &["a"], false);
        assert_eq!(parts.take(one.clone()), Ok(Some(one)));
        // And the next snapshot in parts starts afresh.
        assert_eq!(parts.take(part(6, &["x"], true)), Ok(None));
        let whole = parts
            .take(part(6, &["y"], false))
            .expect("ok")
            .expect("whole");
        assert_eq!(names(&whole), ["x", "y"]);
    }

    #[test]
    fn parts_broken_by_the_peer_end_the_stream() {
        let heartbeat = ExportsUpdate {
            revision: 3,
            ..ExportsUpdate::default()
        };
        for (second, why) in [
            (heartbeat, "a heartbeat between parts"),
            (part(4, &["b"], false), "a part of another revision"),
        ] {
            let mut parts = Parts::default();
            assert_eq!(parts.take(part(3, &["a"], true)), Ok(None));
            assert!(parts.take(second).is_err(), "{why}");
        }
        // Parts past the bound of one message.
        let mut parts = Parts::default();
        let mut big = svc("big");
        big.labels
            .insert("k".into(), "v".repeat(MAX_MESSAGE_BYTES / 2));
        let mut fat = part(3, &[], true);
        fat.upserts.push(big.clone());
        assert_eq!(parts.take(fat.clone()), Ok(None));
        assert!(parts.take(fat).is_err(), "over the bound");
    }
}
