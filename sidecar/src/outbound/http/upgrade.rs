//! An HTTP/1.1 upgrade (WebSocket and the like): a mesh connection of its
//! own to the endpoint picked (the next one when the connect fails, within
//! the retry budget), the request sent on it as HTTP/1.1, and on `101` the
//! app's stream joined to the endpoint's. It does not go through the
//! request stack: once switched, it is a connection, balanced and broken
//! as one (`Kind::Connections`).

use std::sync::Arc;

use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::io::copy_bidirectional;
use tokio::time::Instant;

use super::head::strip;
use crate::balance::EndpointInfo;
use crate::body::{Body, boxed, error_response};
use crate::dest::Dest;
use crate::headers::name::{CLIENT_ID, ORIG_PROTO};
use crate::metrics::{Direction, End};
use crate::reason::Reason;

/// Runs the upgrade; the answer and the endpoint that gave it.
pub(super) async fn call(
    dest: &Arc<Dest>,
    mut parts: http::request::Parts,
    body: Incoming,
) -> (Response<Body>, Option<Arc<EndpointInfo>>) {
    let deadline = Instant::now() + dest.shared.timeouts.request;
    if let Err(reason) = dest.ready().await {
        return (error_response(reason, &dest.label), None);
    }
    let Some(app_side) = parts.extensions.remove::<OnUpgrade>() else {
        return (
            error_response(Reason::UpstreamReset, "the app's upgrade"),
            None,
        );
    };
    parts.headers.remove(CLIENT_ID);
    parts.headers.remove(ORIG_PROTO);
    crate::upgrade::keep(&mut parts.headers, strip);
    dest.budget.request();
    let (pick, tls) = match tokio::time::timeout_at(deadline, dest.connect_opaque()).await {
        Err(_) => return (error_response(Reason::RequestTimeout, &dest.label), None),
        Ok(Err(reason)) => return (error_response(reason, &dest.label), None),
        Ok(Ok(c)) => c,
    };
    let served_by = Some(pick.endpoint.clone());
    let flight = dest.start(&pick);
    let req = Request::from_parts(parts, boxed(body));
    let mut resp = match tokio::time::timeout_at(deadline, crate::upgrade::send(tls, req)).await {
        Err(_) => {
            flight.answered(true);
            return (
                error_response(Reason::RequestTimeout, &dest.label),
                served_by,
            );
        }
        Ok(Err(e)) => {
            // Sent, or partly: not sent again.
            flight.answered(true);
            tracing::debug!(endpoint = %pick.endpoint.key, error = %e, "upgrade request failed");
            return (
                error_response(Reason::UpstreamReset, &dest.label),
                served_by,
            );
        }
        Ok(Ok(resp)) => resp,
    };
    flight.answered(resp.status().is_server_error());
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let endpoint_side = hyper::upgrade::on(&mut resp);
        let d = dest.clone();
        dest.shared.spawn(async move {
            d.connections(&pick, 1);
            let joined = async {
                let (app, mut endpoint) = crate::upgrade::upgraded(app_side, endpoint_side).await?;
                let labels = (Direction::outbound, &*d.label, &*pick.endpoint.cluster);
                let mut app = d.shared.metrics.counted(labels, End::Caller, app);
                copy_bidirectional(&mut app, &mut endpoint).await
            };
            if let Err(e) = joined.await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
            d.connections(&pick, -1);
        });
    }
    let (mut parts, body) = resp.into_parts();
    parts.version = Version::HTTP_11;
    crate::upgrade::keep(&mut parts.headers, strip);
    (Response::from_parts(parts, boxed(body)), served_by)
}
