//! Outbound opaque TCP: one mesh connection per app connection, to an
//! endpoint balanced like a request. A failed connect moves on to another
//! endpoint (nothing was sent yet); after that the bytes are copied both
//! ways until either side closes, counted as they pass.
//!
//! A service with HTTPRoutes splits opaque connections as TCPRoute would:
//! each connection goes to a backend picked by the weights of the route
//! rule that matches any request (a path prefix of `/` and nothing else);
//! with no such rule the connection is refused, as no rule would carry it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, copy_bidirectional};
use tokio::net::TcpStream;

use crate::dest::{Dest, Shared};
use crate::detect::Protocol;
use crate::metrics::{DestLabels, Direction, End};
use crate::opaque::{Opaque, opaque};
use crate::outbound::http;
use crate::routes::Backend;
use crate::stack::route::Backends;

/// Proxies `app` to `dest` as opaque bytes; or, when the app turns out
/// to speak HTTP after all (it was only slow to start), as HTTP.
pub(crate) async fn forward<S>(app: S, called: Arc<Dest>, backends: Arc<dyn Backends>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(reason) = called.ready().await {
        tracing::warn!(service = %called.label, reason = reason.as_str(), "TCP connection refused");
        return;
    }
    let Some(dest) = routed(&called, &*backends) else {
        tracing::warn!(service = %called.label,
            "TCP connection refused: the service's routes have no rule for any request");
        return;
    };
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
        true
    };
    dest.connections(&pick, 1);
    let copied = opaque(app, upstream, counted_connection).await;
    dest.connections(&pick, -1);
    match copied {
        Opaque::Http(protocol, io) => {
            // Nothing reached the endpoint: each request is balanced.
            tracing::debug!(service = %dest.label, ?protocol, "HTTP after the detect timeout");
            http::serve(io, called, backends, protocol == Protocol::Http2).await;
        }
        Opaque::Copied(Err(e)) => {
            tracing::debug!(service = %dest.label, error = %e, "TCP connection ended");
        }
        Opaque::Copied(Ok(_)) => {}
    }
}

/// The destination a connection to `called` goes to: `called` itself, or
/// the backend its routes pick for the connection.
fn routed(called: &Arc<Dest>, backends: &dyn Backends) -> Option<Arc<Dest>> {
    let routes = called.routes();
    if routes.is_empty() {
        return Some(called.clone());
    }
    let rule = routes.catch_all()?;
    let own = http::below_route(called);
    let dest_of = |b: &Backend| b.resolve(called, &own, backends).map(|(d, _)| d);
    let i = rule.pick(|b| dest_of(b).is_none_or(|d| d.can_serve()), &[])?;
    let backend = &rule.backends[i];
    backend.picked.inc();
    dest_of(backend)
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
