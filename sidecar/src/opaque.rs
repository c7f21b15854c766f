//! Opaque TCP with late detection. A connection is taken as opaque when
//! its caller sent nothing in time (a server-first protocol) or something
//! that is not HTTP; yet a caller that was only slow may still send HTTP.
//! Both sidecars copy such a connection with the caller's first bytes
//! looked at before any goes on, and serve HTTP found there as HTTP:
//! inbound, so the app gets the caller's real ID; outbound, so each request
//! is balanced rather than the whole connection pinned to the endpoint
//! picked when it went quiet (an HTTP/1 client pool opens connections it
//! uses only later).

use std::time::Duration;

use tokio::io::{AsyncWriteExt, split};

use crate::detect::{Protocol, detect};
use crate::io::Prefixed;

/// How long an opaque caller may stay silent while the server talks
/// (server-first protocols); its first bytes are judged whenever they come.
const CALLER_FIRST_BYTES: Duration = Duration::from_secs(24 * 3600);

/// How an opaque connection ended.
pub(crate) enum Opaque<T> {
    /// Bytes (caller → server, server → caller), as `copy_bidirectional` gives.
    Copied(std::io::Result<(u64, u64)>),
    /// The caller's first bytes were HTTP, which is served as HTTP:
    /// nothing of it reached the other side; the stream is handed back
    /// with those bytes to be read again.
    Http(Protocol, Prefixed<T>),
}

/// Copies an opaque connection both ways, `caller` to `server`. The serving side's bytes flow at once, so server-first protocols
/// are not held up; the caller's first bytes are looked at before any of
/// them goes on. `judged` is called once they are found not to be HTTP
/// (or the caller closed without a byte): the connection is opaque TCP,
/// and is closed at once, nothing of the caller's sent, if `judged` says
/// `false` (refused, say by a rate limit).
pub(crate) async fn opaque<T, A>(caller: T, server: A, judged: impl FnOnce() -> bool) -> Opaque<T>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut from_caller, mut to_caller) = split(caller);
    let (mut from_server, mut to_server) = split(server);
    let mut http = None;
    let caller_to_server = async {
        let prefix = match detect(&mut from_caller, CALLER_FIRST_BYTES).await? {
            Some((protocol @ (Protocol::Http1 | Protocol::Http2), prefix)) => {
                http = Some((protocol, prefix));
                // Ends the copying; `http` says why.
                return Err(std::io::Error::other("HTTP on an opaque connection"));
            }
            opaque => match (opaque, judged()) {
                (None, _) => {
                    to_server.shutdown().await?;
                    return Ok(0);
                }
                (Some((_, prefix)), true) => prefix,
                (Some(_), false) => {
                    return Err(std::io::Error::other("opaque connection refused"));
                }
            },
        };
        to_server.write_all(&prefix).await?;
        let n = tokio::io::copy(&mut from_caller, &mut to_server).await?;
        to_server.shutdown().await?;
        Ok(prefix.len() as u64 + n)
    };
    let server_to_caller = async {
        let n = tokio::io::copy(&mut from_server, &mut to_caller).await?;
        to_caller.shutdown().await?;
        Ok::<_, std::io::Error>(n)
    };
    let copied = tokio::try_join!(caller_to_server, server_to_caller);
    match http {
        Some((protocol, prefix)) => Opaque::Http(
            protocol,
            Prefixed::new(prefix, from_caller.unsplit(to_caller)),
        ),
        None => Opaque::Copied(copied),
    }
}
