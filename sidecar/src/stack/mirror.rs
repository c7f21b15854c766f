//! `RequestMirror`: a copy of a matched request goes to another backend on
//! a task of its own; its answer is read and dropped, and nothing about it
//! — slow, failing, gone — reaches the request itself.
//!
//! A copy needs the body twice. A request without a body, or with one
//! whose length is known and at most what a retry keeps (64 KiB), is
//! copied: such a body is read whole below anyway (the retry layer keeps
//! it), so reading it here first costs the request nothing. A streaming or
//! larger body is not copied (counted `skipped_body`): holding it back for
//! the copy would delay the request. At most `MAX_IN_FLIGHT` copies run at
//! once (counted `skipped_busy` beyond).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::time::Instant;

use super::route::Backends;
use super::{Deadline, Failure};
use crate::body::{Body, full};
use crate::dest::Dest;
use crate::reason::Reason;
use crate::routes::{Mirror, Rule};
use crate::stack::retry::MAX_REPLAY;

/// Copies in flight at once, per sidecar.
const MAX_IN_FLIGHT: usize = 1024;
/// Of a mirror's answer, at most this much is read (then it is dropped).
const MAX_DRAIN: usize = 1 << 20;

/// Sends the copies `rule`'s mirrors choose; gives back the request (its
/// body read whole if it was copied).
pub(super) async fn copy(
    rule: &Rule,
    req: Request<Body>,
    deadline: Instant,
    dest: &Dest,
    backends: &dyn Backends,
) -> Result<Request<Body>, Failure> {
    let chosen: Vec<&Mirror> = rule.mirrors.iter().filter(|m| m.chosen()).collect();
    if chosen.is_empty() {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let bytes = if body.is_end_stream() {
        Bytes::new()
    } else if body.size_hint().exact().is_some_and(|n| n <= MAX_REPLAY) {
        match tokio::time::timeout_at(deadline, body.collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "app request body failed");
                return Err(Failure::new(Reason::UpstreamReset));
            }
            Err(_) => return Err(Failure::new(Reason::RequestTimeout)),
        }
    } else {
        for m in chosen {
            m.counters.skipped_body.inc();
        }
        return Ok(Request::from_parts(parts, body));
    };
    for m in chosen {
        let in_flight = &dest.shared.mirrors_in_flight;
        if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::AcqRel);
            m.counters.skipped_busy.inc();
            continue;
        }
        let (_, next) = m
            .resolved
            .get_or_init(|| backends.backend(&m.target))
            .clone();
        let mut copy = Request::new(full(bytes.clone()));
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        copy.extensions_mut().insert(Deadline(deadline));
        let counters = m.counters.clone();
        let slot = InFlight(dest.shared.clone());
        dest.shared.spawn(async move {
            let _slot = slot;
            let answered = match super::call(next, copy).await {
                Ok(resp) => {
                    drain(resp.into_body(), deadline).await;
                    true
                }
                Err(f) => {
                    tracing::debug!(reason = f.reason.as_str(), "mirrored request failed");
                    false
                }
            };
            if answered {
                counters.answered.inc();
            } else {
                counters.failed.inc();
            }
        });
    }
    Ok(Request::from_parts(parts, full(bytes)))
}

/// A copy's place among those in flight, given back however its task ends
/// (the sidecar stopping included).
struct InFlight(std::sync::Arc<crate::dest::Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.mirrors_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads a mirror's answer to its end (up to `MAX_DRAIN`, until the
/// deadline), so its connection can serve again.
async fn drain(mut body: Body, deadline: Instant) {
    let mut read = 0;
    let reading = async {
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > MAX_DRAIN {
                break;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, reading).await;
}
