//! Whether an inbound caller speaks mesh TLS: its first bytes are a TLS
//! record carrying a ClientHello, or they are plaintext (a caller outside
//! the mesh). Reads at most 6 bytes, within the detect timeout.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;

use crate::detect::first_bytes;

/// A handshake record (22), version 3.x, two length bytes, ClientHello (1).
const LEN: usize = 6;

/// What the caller's first bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum First {
    /// A TLS ClientHello.
    Tls,
    /// Anything else, or silence past the timeout (a server-first protocol).
    Plaintext,
}

/// Reads just enough to decide; returns the bytes read (to be replayed).
/// `None` when the caller closed without sending anything.
pub(crate) async fn sniff<S: AsyncRead + Unpin>(
    io: &mut S,
    timeout: Duration,
) -> std::io::Result<Option<(First, Bytes)>> {
    first_bytes(io, timeout, LEN, verdict, First::Plaintext).await
}

/// The verdict, or `None` while the bytes so far could still be a ClientHello.
fn verdict(buf: &[u8]) -> Option<First> {
    let fits = |i: usize, ok: fn(u8) -> bool| buf.get(i).is_none_or(|b| ok(*b));
    let could_be =
        fits(0, |b| b == 22) && fits(1, |b| b == 3) && fits(2, |b| b <= 4) && fits(5, |b| b == 1);
    match (could_be, buf.len() >= LEN) {
        (false, _) => Some(First::Plaintext),
        (true, true) => Some(First::Tls),
        (true, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn a_client_hello_is_tls_and_anything_else_plaintext_as_soon_as_it_shows() {
        assert_eq!(verdict(&[22, 3, 1, 0, 200, 1]), Some(First::Tls));
        assert_eq!(verdict(&[22, 3, 3, 2, 0, 1, 9]), Some(First::Tls));
        assert_eq!(verdict(&[22, 3, 1, 0, 200]), None);
        assert_eq!(verdict(&[]), None);
        assert_eq!(verdict(b"G"), Some(First::Plaintext));
        assert_eq!(verdict(b"PRI * HTTP/2.0"), Some(First::Plaintext));
        assert_eq!(verdict(&[22, 2]), Some(First::Plaintext));
        assert_eq!(verdict(&[22, 3, 9]), Some(First::Plaintext));
        // A handshake record that is not a ClientHello (a ServerHello).
        assert_eq!(verdict(&[22, 3, 3, 0, 90, 2]), Some(First::Plaintext));
    }

    #[tokio::test]
    async fn silence_and_a_cut_hello_are_plaintext_and_bytes_are_kept() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let quiet = sniff(&mut a, Duration::from_millis(20)).await.expect("io");
        assert_eq!(quiet, Some((First::Plaintext, Bytes::new())));
        tokio::io::AsyncWriteExt::write_all(&mut b, &[22, 3])
            .await
            .expect("write");
        let cut = sniff(&mut a, Duration::from_millis(20)).await.expect("io");
        assert_eq!(cut, Some((First::Plaintext, Bytes::from_static(&[22, 3]))));
        tokio::io::AsyncWriteExt::write_all(&mut b, &[22, 3, 1, 0, 9, 1, 77])
            .await
            .expect("write");
        let hello = sniff(&mut a, Duration::from_secs(5)).await.expect("io");
        assert_eq!(
            hello,
            Some((First::Tls, Bytes::from_static(&[22, 3, 1, 0, 9, 1])))
        );
        drop(b);
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, [77], "no more than the six bytes were read");
        assert_eq!(
            sniff(&mut a, Duration::from_secs(5)).await.expect("io"),
            None
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Any bytes, however cut: a verdict, at most six bytes read, and
        /// TLS only for a ClientHello's record header.
        #[test]
        fn any_bytes_get_a_bounded_verdict(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..16),
            split in 1usize..4,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            let got = rt.block_on(async {
                let (mut a, mut b) = tokio::io::duplex(64);
                let bytes = raw.clone();
                let writer = tokio::spawn(async move {
                    for c in bytes.chunks(split) {
                        tokio::io::AsyncWriteExt::write_all(&mut b, c).await.expect("write");
                        tokio::task::yield_now().await;
                    }
                });
                let got = sniff(&mut a, Duration::from_secs(5)).await.expect("io");
                writer.await.expect("writer");
                got
            });
            if let Some((first, bytes)) = got {
                proptest::prop_assert!(bytes.len() <= LEN);
                proptest::prop_assert!(raw.starts_with(&bytes));
                let hello = raw.len() >= LEN && raw[0] == 22 && raw[1] == 3 && raw[2] <= 4 && raw[5] == 1;
                proptest::prop_assert_eq!(first == First::Tls, hello);
            } else {
                proptest::prop_assert!(raw.is_empty());
            }
        }
    }
}
