//! HTTP/1.1 Upgrade (WebSocket and the like). An upgrade cannot ride the
//! pooled HTTP/2 connections between sidecars, so each one gets a mesh
//! connection of its own: the outbound sidecar sends the app's request on
//! it as HTTP/1.1 (the inbound sidecar serves HTTP found on such a
//! connection as HTTP, with the caller's real ID), and once both ends have
//! answered `101 Switching Protocols` the two upgraded streams are joined
//! and bytes are copied both ways until either side closes.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::Body;

/// Whether an HTTP/1.1 request asks to switch protocols: an `Upgrade`
/// header, named in `Connection`.
pub(crate) fn requested(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The hop-by-hop headers of an upgrade, taken out before the others are
/// stripped and put back after: `Upgrade` itself and `Connection: upgrade`.
pub(crate) fn keep(headers: &mut HeaderMap, strip: impl FnOnce(&mut HeaderMap)) {
    let upgrade: Vec<HeaderValue> = headers.get_all(header::UPGRADE).iter().cloned().collect();
    strip(headers);
    if upgrade.is_empty() {
        return;
    }
    for v in upgrade {
        headers.append(header::UPGRADE, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Sends `req` as HTTP/1.1 on a connection of its own, `io`, and gives the
/// answer; a `101` carries the upgraded stream (`hyper::upgrade::on`).
pub(crate) async fn send<S>(io: S, req: Request<Body>) -> Result<Response<Incoming>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    send.send_request(req).await
}

/// Both upgraded streams, once both sides have switched protocols.
pub(crate) async fn upgraded(
    a: OnUpgrade,
    b: OnUpgrade,
) -> std::io::Result<(TokioIo<Upgraded>, TokioIo<Upgraded>)> {
    let (a, b) = tokio::try_join!(a, b).map_err(std::io::Error::other)?;
    Ok((TokioIo::new(a), TokioIo::new(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        assert!(requested(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ])));
        assert!(!requested(&headers(&[("upgrade", "websocket")])));
        assert!(!requested(&headers(&[("connection", "upgrade")])));
        assert!(!requested(&headers(&[
            ("connection", "upgraded-not"),
            ("upgrade", "websocket"),
        ])));
    }

    #[test]
    fn keep_puts_back_only_the_upgrade() {
        let mut h = headers(&[
            ("connection", "keep-alive, upgrade, x-private"),
            ("upgrade", "websocket"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "abc"),
        ]);
        keep(&mut h, |h| {
            h.remove(header::CONNECTION);
            h.remove(header::UPGRADE);
            h.remove("x-private");
            h.remove("keep-alive");
        });
        assert_eq!(h.get(header::UPGRADE).expect("upgrade"), "websocket");
        assert_eq!(h.get(header::CONNECTION).expect("connection"), "upgrade");
        assert!(h.get("x-private").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h.get("sec-websocket-key").expect("key"), "abc");

        let mut plain = headers(&[("connection", "close")]);
        keep(&mut plain, |h| {
            h.remove(header::CONNECTION);
        });
        assert!(plain.is_empty());
    }
}
