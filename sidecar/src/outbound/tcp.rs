//! Outbound opaque TCP: one mesh connection per app connection, to an
//! endpoint balanced like a request. A failed connect moves on to another
//! endpoint (nothing was sent yet); after that the bytes are copied both
//! ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use crate::dest::{Breaker, Dest, Shared};
use crate::metrics::{ByteLabels, DestLabels, Direction, Reason};

const MAX_ATTEMPTS: usize = 5;

/// Proxies `app` to `dest` as opaque bytes.
pub(crate) async fn forward<S>(mut app: S, dest: Arc<Dest>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(reason) = dest.ready().await {
        tracing::warn!(service = %dest.label, reason = reason.as_str(), "TCP connection refused");
        return;
    }
    let mut tried = Vec::new();
    let mut last = Reason::NoHealthyEndpoints;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 && !dest.may_retry() {
            break;
        }
        let pick = match dest.pick(&tried, Breaker::Connections) {
            Ok(p) => p,
            Err(Reason::NoHealthyEndpoints) if attempt > 0 => break,
            Err(reason) => {
                last = reason;
                break;
            }
        };
        tried.push(pick.endpoint.key.clone());
        let mut upstream = match dest
            .shared
            .connector
            .connect(&pick.endpoint, crate::connect::Alpn::Opaque)
            .await
        {
            Ok(tls) => tls,
            Err(e) => {
                tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "connect failed");
                dest.connect_failed(&pick);
                last = Reason::ConnectFailed;
                continue;
            }
        };
        dest.connected(&pick);
        dest.connections(&pick.group, 1);
        let m = &dest.shared.metrics;
        let cluster = pick.endpoint.cluster.clone();
        m.tcp_connections
            .get_or_create(&DestLabels {
                direction: Direction::outbound,
                service: dest.label.clone(),
                cluster: cluster.clone(),
                zone: pick.endpoint.zone.clone(),
            })
            .inc();
        let copied = copy_bidirectional(&mut app, &mut upstream).await;
        dest.connections(&pick.group, -1);
        count_bytes(
            &dest.shared,
            Direction::outbound,
            &dest.label,
            &cluster,
            copied,
        );
        return;
    }
    tracing::warn!(service = %dest.label, reason = last.as_str(), "TCP connection refused");
}

/// A destination outside the mesh: straight through, marked so the
/// interception rules let it pass.
pub(crate) async fn passthrough(mut app: TcpStream, original: SocketAddr, shared: &Shared) {
    let mut upstream = match shared.connector.tcp(original).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%original, error = %e, "passthrough connect failed");
            return;
        }
    };
    let copied = copy_bidirectional(&mut app, &mut upstream).await;
    count_bytes(shared, Direction::outbound, "passthrough", "", copied);
}

pub(crate) fn count_bytes(
    shared: &Shared,
    direction: Direction,
    service: &str,
    cluster: &str,
    copied: std::io::Result<(u64, u64)>,
) {
    let Ok((sent, received)) = copied else {
        return;
    };
    for (flow, n) in [("sent", sent), ("received", received)] {
        shared
            .metrics
            .tcp_bytes
            .get_or_create(&ByteLabels {
                direction,
                service: service.to_owned(),
                cluster: cluster.to_owned(),
                flow,
            })
            .inc_by(n);
    }
}
