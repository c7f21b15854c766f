//! What the app speaks, from its first bytes: the HTTP/2 connection
//! preface, an HTTP/1 request line, or anything else (opaque TCP). An app
//! that says nothing within the detect timeout speaks a server-first
//! protocol and is opaque too. Reads at most the 24-byte preface.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Methods whose request line marks HTTP/1 (CONNECT tunnels stay opaque).
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// The protocol detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// Reads just enough to decide; returns the bytes read (to be replayed).
/// `None` when the app closed without sending anything.
pub(crate) async fn detect<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> std::io::Result<Option<(Protocol, Bytes)>> {
    first_bytes(io, timeout, H2_PREFACE.len(), verdict, Protocol::Opaque).await
}

/// Reads a peer's first bytes, at most `max` and until `timeout`, until
/// `verdict` decides (it must once it has `max`); `otherwise` when the peer
/// goes silent or closes first. Returns the bytes read (to be replayed);
/// `None` when the peer closed without sending anything.
pub(crate) async fn first_bytes<S, V>(
    io: &mut S,
    timeout: Duration,
    max: usize,
    verdict: impl Fn(&[u8]) -> Option<V>,
    otherwise: V,
) -> std::io::Result<Option<(V, Bytes)>>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(max);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = verdict(&buf) {
            return Ok(Some((v, buf.freeze())));
        }
        if buf.len() >= max {
            return Ok(Some((otherwise, buf.freeze())));
        }
        // On the stack: the callers decide within 24 bytes.
        let mut chunk = [0u8; 32];
        let want = (max - buf.len()).min(chunk.len());
        match tokio::time::timeout_at(deadline, io.read(&mut chunk[..want])).await {
            Err(_) => return Ok(Some((otherwise, buf.freeze()))),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Ok(Some((otherwise, buf.freeze()))),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// The protocol, or `None` while the bytes so far could still be either.
fn verdict(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if METHODS.iter().any(|m| buf.starts_with(m)) {
        return Some(Protocol::Http1);
    }
    let could_be = |p: &[u8]| p.starts_with(&buf[..buf.len().min(p.len())]);
    if could_be(H2_PREFACE) || METHODS.iter().any(|m| could_be(m)) {
        return None;
    }
    Some(Protocol::Opaque)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_as_soon_as_it_can() {
        assert_eq!(verdict(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(verdict(b"DELETE "), Some(Protocol::Http1));
        assert_eq!(verdict(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(verdict(b"PRI * HTTP/2"), None);
        assert_eq!(verdict(b"GE"), None);
        assert_eq!(verdict(b"P"), None);
        assert_eq!(verdict(b"\x16\x03\x01"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"CONNECT host:443"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"GET/"), Some(Protocol::Opaque));
    }

    #[tokio::test]
    async fn silence_is_opaque_and_bytes_are_kept() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let quiet = detect(&mut a, Duration::from_millis(20)).await.expect("io");
        assert_eq!(quiet, Some((Protocol::Opaque, Bytes::new())));
        tokio::io::AsyncWriteExt::write_all(&mut b, b"PO")
            .await
            .expect("write");
        tokio::io::AsyncWriteExt::write_all(&mut b, b"ST /x")
            .await
            .expect("write");
        let (p, bytes) = detect(&mut a, Duration::from_secs(5))
            .await
            .expect("io")
            .expect("bytes");
        assert_eq!(p, Protocol::Http1);
        assert!(b"POST /x".starts_with(&bytes));
        drop(b);
        assert_eq!(
            detect(&mut a, Duration::from_secs(5)).await.expect("io"),
            None
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// However the bytes arrive, the verdict is the same and at most
        /// the preface's length is read.
        #[test]
        fn chunking_does_not_change_the_verdict(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            split in 1usize..8,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let (whole, chunked) = rt.block_on(async {
                let once = {
                    let (mut a, mut b) = tokio::io::duplex(128);
                    tokio::io::AsyncWriteExt::write_all(&mut b, &raw).await.expect("write");
                    drop(b);
                    detect(&mut a, Duration::from_secs(5)).await.expect("io")
                };
                let (mut a, mut b) = tokio::io::duplex(128);
                let bytes = raw.clone();
                let writer = tokio::spawn(async move {
                    for c in bytes.chunks(split) {
                        tokio::io::AsyncWriteExt::write_all(&mut b, c).await.expect("write");
                        tokio::task::yield_now().await;
                    }
                });
                let chunked = detect(&mut a, Duration::from_secs(5)).await.expect("io");
                writer.await.expect("writer");
                (once, chunked)
            });
            proptest::prop_assert_eq!(whole.as_ref().map(|w| w.0), chunked.as_ref().map(|c| c.0));
            if let Some((_, bytes)) = &chunked {
                proptest::prop_assert!(bytes.len() <= H2_PREFACE.len());
                proptest::prop_assert!(raw.starts_with(bytes));
            }
        }
    }
}
