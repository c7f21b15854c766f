//! Outbound opaque TCP: one mesh connection per app connection, to an
//! endpoint balanced like a request. A failed connect moves on to another
//! endpoint (nothing was sent yet); after that the bytes are copied both
//! ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use crate::dest::{Dest, Shared};
use crate::metrics::{ByteLabels, DestLabels, Direction};

/// Proxies `app` to `dest` as opaque bytes.
pub(crate) async fn forward<S>(mut app: S, dest: Arc<Dest>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(reason) = dest.ready().await {
        tracing::warn!(service = %dest.label, reason = reason.as_str(), "TCP connection refused");
        return;
    }
    let (pick, mut upstream) = match dest.connect_opaque().await {
        Ok(c) => c,
        Err(reason) => {
            tracing::warn!(service = %dest.label, reason = reason.as_str(), "TCP connection refused");
            return;
        }
    };
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
