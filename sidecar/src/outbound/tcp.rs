//! Outbound opaque TCP: one mesh connection per app connection, to an
//! endpoint balanced like a request. A failed connect moves on to another
//! endpoint (nothing was sent yet); after that the bytes are copied both
//! ways until either side closes, counted as they pass.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use crate::dest::{Dest, Shared};
use crate::detect::Protocol;
use crate::metrics::{DestLabels, Direction, End};
use crate::opaque::{Opaque, opaque};
use crate::outbound::http;

/// Proxies `app` to `dest` as opaque bytes; or, when the app turns out
/// to speak HTTP after all (it was only slow to start), as HTTP.
pub(crate) async fn forward<S>(app: S, dest: Arc<Dest>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(reason) = dest.ready().await {
        tracing::warn!(service = %dest.label, reason = reason.as_str(), "TCP connection refused");
        return;
    }
    let (pick, upstream) = match dest.connect_opaque().await {
        Ok(c) => c,
        Err(reason) => {
            tracing::warn!(service = %dest.label, reason = reason.as_str(), "TCP connection refused");
            return;
        }
    };
    let cluster = &pick.endpoint.cluster;
    let labels = (Direction::outbound, &*dest.label, &**cluster);
    let upstream = dest.shared.metrics.counted(labels, End::Server, upstream);
    let counted_connection = || {
        dest.shared
            .metrics
            .tcp_connections
            .get_or_create(&DestLabels {
                direction: Direction::outbound,
                service: dest.label.clone(),
                cluster: cluster.clone(),
                zone: pick.endpoint.zone.clone(),
            })
            .inc();
    };
    dest.connections(&pick, 1);
    let copied = opaque(app, upstream, counted_connection).await;
    dest.connections(&pick, -1);
    match copied {
        Opaque::Http(protocol, io) => {
            // Nothing reached the endpoint: each request is balanced.
            tracing::debug!(service = %dest.label, ?protocol, "HTTP after the detect timeout");
            http::serve(io, dest, protocol == Protocol::Http2).await;
        }
        Opaque::Copied(Err(e)) => {
            tracing::debug!(service = %dest.label, error = %e, "TCP connection ended");
        }
        Opaque::Copied(Ok(_)) => {}
    }
}

/// A destination outside the mesh: straight through, marked so the
/// interception rules let it pass.
pub(crate) async fn passthrough(app: TcpStream, original: SocketAddr, shared: &Shared) {
    let mut upstream = match shared.connector.tcp(original).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%original, error = %e, "passthrough connect failed");
            return;
        }
    };
    let labels = (Direction::outbound, "passthrough", "");
    let mut app = shared.metrics.counted(labels, End::Caller, app);
    if let Err(e) = copy_bidirectional(&mut app, &mut upstream).await {
        tracing::debug!(%original, error = %e, "passthrough connection ended");
    }
}
