//! Active probing of a remote gateway: an mTLS handshake under the probe SNI
//! (the gateway must prove the Link's gateway identity) and `GET /ready`.
//! A probe runs at once on start, then every period; the gateway is dead
//! after `failureThreshold` failures in a row and alive again on a success.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshfed_resources::crd::LinkSpec;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::metrics::{LinkLabels, Metrics};
use crate::peer::probe_period;
use crate::world::PeerWriter;

/// Most bytes of a probe answer read.
const MAX_ANSWER: usize = 1024;
/// Probes the latency quantiles are taken over.
const WINDOW: usize = 64;

pub(super) async fn run(
    spec: LinkSpec,
    writer: PeerWriter,
    tls: Arc<ClientConfig>,
    metrics: Arc<Metrics>,
    probe_now: Arc<Notify>,
) {
    let labels = LinkLabels {
        link: writer.key.to_string(),
    };
    let timeout = Duration::from_secs(u64::from(spec.probe.timeout_seconds.max(1)));
    let threshold = spec.probe.failure_threshold.max(1);
    let connector = TlsConnector::from(tls);
    let mut window = LatencyWindow::default();
    let mut failures = 0u32;
    let mut turn = 0usize;
    let mut first = true;
    loop {
        if !first {
            let quiet = writer.get().is_some_and(|p| p.quiet_since.is_some());
            tokio::select! {
                _ = tokio::time::sleep(probe_period(&spec, quiet)) => {}
                _ = probe_now.notified() => {}
            }
        }
        first = false;
        let Some(peer) = writer.get() else { return };
        if peer.gateways.is_empty() {
            continue;
        }
        let target = peer.gateways[turn % peer.gateways.len()];
        turn = turn.wrapping_add(1);
        let start = Instant::now();
        let result = tokio::time::timeout(timeout, probe_once(&connector, target))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        match result {
            Ok(()) => {
                let took = start.elapsed();
                failures = 0;
                window.push(took);
                metrics
                    .probe_latency
                    .get_or_create(&labels)
                    .observe(took.as_secs_f64());
                let quantiles = window.quantiles();
                writer.update(|p| {
                    p.probe_alive = true;
                    p.probe_ok_at = Some(start);
                    p.latency = quantiles;
                });
            }
            Err(e) => {
                failures += 1;
                tracing::debug!(link = %writer.key, gateway = %target, error = %e, failures, "probe failed");
                let dead = failures >= threshold;
                writer.update(|p| {
                    p.last_error = Some(format!("probe of {target}: {e}"));
                    if dead {
                        p.probe_alive = false;
                    }
                });
            }
        }
        let alive = writer.get().is_some_and(|p| p.probe_alive);
        metrics
            .probe_alive
            .get_or_create(&labels)
            .set(i64::from(alive));
    }
}

async fn probe_once(connector: &TlsConnector, target: SocketAddr) -> Result<(), String> {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(meshfed_api::sni::PROBE).map_err(|e| e.to_string())?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    tls.write_all(b"GET /ready HTTP/1.1\r\nHost: probe.meshfed.local\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_ANSWER {
        let n = tls.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some("200")) if v.starts_with("HTTP/1.") => Ok(()),
        _ => Err(format!("gateway not ready: {:?}", line.trim())),
    }
}

/// The most recent probe latencies.
#[derive(Debug, Default, Clone)]
pub(crate) struct LatencyWindow(VecDeque<Duration>);

impl LatencyWindow {
    pub(crate) fn push(&mut self, d: Duration) {
        if self.0.len() == WINDOW {
            self.0.pop_front();
        }
        self.0.push_back(d);
    }

    /// p50 and p99 (nearest rank), if any probe succeeded.
    pub(crate) fn quantiles(&self) -> Option<(Duration, Duration)> {
        let mut v: Vec<_> = self.0.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some((rank(0.5), rank(0.99)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut w = LatencyWindow::default();
        assert_eq!(w.quantiles(), None);
        for ms in 1..=100 {
            w.push(Duration::from_millis(ms));
        }
        // Only the last 64 (37..=100 ms) count.
        let (p50, p99) = w.quantiles().expect("samples");
        assert_eq!(p50, Duration::from_millis(68));
        assert_eq!(p99, Duration::from_millis(100));
    }
}
