//! Reading a TLS ClientHello far enough to learn the server name, without
//! terminating TLS: the bytes read are kept, untouched, to be replayed to
//! the upstream.
//!
//! Bounded everywhere: at most [`MAX_BUFFERED`] bytes are held, a handshake
//! message may not exceed [`MAX_HELLO`], and records are parsed once each as
//! they complete, so a ClientHello trickled in one byte at a time costs no
//! more than one sent whole. The ClientHello may span several records
//! (fragmentation, RFC 8446 §5.1); nothing else may come before it.

use std::fmt;

/// Largest ClientHello handshake message accepted (large post-quantum key
/// shares stay well below).
pub const MAX_HELLO: usize = 16 * 1024;
/// Most bytes buffered before the ClientHello must be complete: room for a
/// maximal ClientHello split into many records, with their headers.
pub const MAX_BUFFERED: usize = 32 * 1024;

const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 1 << 14;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What the gateway needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's host name, if the client sent one.
    pub server_name: Option<String>,
}

/// Why the bytes are not a ClientHello the gateway can route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first record is not a TLS handshake record (plain text, SSLv2, ...).
    #[error("not TLS")]
    NotTls,
    /// A record of another type came before the ClientHello was complete.
    #[error("unexpected TLS record type {0} before the ClientHello")]
    UnexpectedRecord(u8),
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is type {0}, not ClientHello")]
    NotClientHello(u8),
    /// Over [`MAX_HELLO`] or [`MAX_BUFFERED`].
    #[error("ClientHello larger than the gateway accepts")]
    TooLarge,
    /// The structure is broken.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Accumulates the bytes of a connection until the ClientHello is complete.
#[derive(Default)]
pub struct HelloReader {
    /// Everything received, to replay.
    raw: Vec<u8>,
    /// Where the next unparsed record starts in `raw`.
    next_record: usize,
    /// Handshake-layer bytes gathered from the records so far.
    handshake: Vec<u8>,
}

impl fmt::Debug for HelloReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HelloReader")
            .field("buffered", &self.raw.len())
            .finish()
    }
}

impl HelloReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data` and parses what is complete: `Ok(None)` asks for more.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        if self.raw.len() + data.len() > MAX_BUFFERED {
            return Err(HelloError::TooLarge);
        }
        self.raw.extend_from_slice(data);
        self.advance()
    }

    /// Room to read into without exceeding [`MAX_BUFFERED`]: reserves up to
    /// `want` bytes and hands the buffer out; call [`HelloReader::advance`]
    /// after adding to it.
    pub(crate) fn buffer(&mut self, want: usize) -> Result<&mut Vec<u8>, HelloError> {
        let room = MAX_BUFFERED.saturating_sub(self.raw.len());
        if room == 0 {
            return Err(HelloError::TooLarge);
        }
        self.raw.reserve_exact(want.min(room));
        Ok(&mut self.raw)
    }

    /// Parses the records completed since the last call.
    pub fn advance(&mut self) -> Result<Option<ClientHello>, HelloError> {
        if self.raw.len() > MAX_BUFFERED {
            return Err(HelloError::TooLarge);
        }
        // Refuse non-TLS on its first byte, without waiting for a header.
        if let Some(&first) = self.raw.first()
            && first != CONTENT_HANDSHAKE
        {
            return Err(HelloError::NotTls);
        }
        loop {
            let rest = &self.raw[self.next_record..];
            if rest.len() < RECORD_HEADER {
                return Ok(None);
            }
            let (kind, major, len) = (rest[0], rest[1], u16::from_be_bytes([rest[3], rest[4]]));
            if kind != CONTENT_HANDSHAKE {
                return Err(if self.next_record == 0 {
                    HelloError::NotTls
                } else {
                    HelloError::UnexpectedRecord(kind)
                });
            }
            if major != 3 {
                return Err(HelloError::NotTls);
            }
            let len = usize::from(len);
            if len == 0 {
                return Err(HelloError::Malformed("empty handshake record"));
            }
            if len > MAX_RECORD {
                return Err(HelloError::Malformed("record longer than 2^14 bytes"));
            }
            if rest.len() < RECORD_HEADER + len {
                return Ok(None);
            }
            self.handshake
                .extend_from_slice(&rest[RECORD_HEADER..RECORD_HEADER + len]);
            self.next_record += RECORD_HEADER + len;
            if let Some(hello) = self.complete_message()? {
                return Ok(Some(hello));
            }
        }
    }

    /// The ClientHello, once the handshake bytes hold all of it.
    fn complete_message(&self) -> Result<Option<ClientHello>, HelloError> {
        let hs = &self.handshake;
        if let Some(&kind) = hs.first()
            && kind != HANDSHAKE_CLIENT_HELLO
        {
            return Err(HelloError::NotClientHello(kind));
        }
        if hs.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3]);
        if len > MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
        if hs.len() < 4 + len {
            return Ok(None);
        }
        parse_client_hello(&hs[4..4 + len]).map(Some)
    }

    /// Every byte received so far (what the upstream must be sent first).
    pub fn into_bytes(self) -> Vec<u8> {
        self.raw
    }

    /// How many bytes are buffered.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether nothing was received yet.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2; TLS 1.2's has the same shape).
fn parse_client_hello(body: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader(body);
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    let session = r.vec8("legacy_session_id")?;
    if session.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites"));
    }
    if r.vec8("compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("compression_methods"));
    }
    if r.0.is_empty() {
        // A ClientHello without extensions (old TLS) names no server.
        return Ok(ClientHello { server_name: None });
    }
    let mut exts = Reader(r.vec16("extensions")?);
    if !r.0.is_empty() {
        return Err(HelloError::Malformed("trailing bytes after extensions"));
    }
    let mut server_name = None;
    let mut seen_sni = false;
    while !exts.0.is_empty() {
        let kind = exts.u16("extension type")?;
        let data = exts.vec16("extension data")?;
        if kind != EXT_SERVER_NAME {
            continue;
        }
        if seen_sni {
            return Err(HelloError::Malformed("duplicate server_name extension"));
        }
        seen_sni = true;
        server_name = parse_server_name(data)?;
    }
    Ok(ClientHello { server_name })
}

/// The host name of a `server_name` extension (RFC 6066 §3): at most one
/// host name, printable ASCII.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut ext = Reader(data);
    let mut list = Reader(ext.vec16("server_name_list")?);
    if !ext.0.is_empty() {
        return Err(HelloError::Malformed(
            "trailing bytes after server_name_list",
        ));
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8("name_type")?;
        let name = list.vec16("server name")?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err(HelloError::Malformed("more than one host_name"));
        }
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(HelloError::Malformed("host_name is not printable ASCII"));
        }
        host = Some(String::from_utf8_lossy(name).into_owned());
    }
    Ok(host)
}

/// A bounds-checked cursor.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    /// A real ClientHello from rustls for `name`.
    fn rustls_hello(name: &str) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    /// Re-frames a record stream so each record carries at most `size` bytes.
    fn fragment(hello: &[u8], size: usize) -> Vec<u8> {
        let body = &hello[5..];
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(&[22, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).expect("small").to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn one_shot(bytes: &[u8]) -> Result<Option<ClientHello>, HelloError> {
        HelloReader::new().feed(bytes)
    }

    #[test]
    fn reads_the_server_name_of_a_real_hello() {
        let hello = rustls_hello("api.shop.8080.svc.meshfed.local");
        let got = one_shot(&hello).expect("valid").expect("complete");
        assert_eq!(
            got.server_name.as_deref(),
            Some("api.shop.8080.svc.meshfed.local")
        );
        let mut r = HelloReader::new();
        assert_eq!(r.feed(&hello[..hello.len() - 1]), Ok(None));
        assert!(r.feed(&hello[hello.len() - 1..]).expect("valid").is_some());
        assert_eq!(r.into_bytes(), hello, "every byte is kept for the replay");
    }

    #[test]
    fn a_hello_fragmented_across_records_and_writes() {
        let hello = rustls_hello("api.shop.80.svc.meshfed.local");
        for size in [1, 7, 100] {
            let framed = fragment(&hello, size);
            let mut r = HelloReader::new();
            let mut done = None;
            for byte in framed.chunks(3) {
                if let Some(h) = r.feed(byte).expect("valid") {
                    done = Some(h);
                }
            }
            let h = done.expect("complete");
            assert_eq!(
                h.server_name.as_deref(),
                Some("api.shop.80.svc.meshfed.local")
            );
        }
    }

    #[test]
    fn no_sni_ip_sni_and_garbage() {
        let ip = rustls_hello("10.0.0.1");
        // rustls sends no SNI for an IP address.
        assert_eq!(
            one_shot(&ip).expect("valid").expect("complete").server_name,
            None
        );
        assert_eq!(one_shot(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        assert_eq!(one_shot(&[0x80, 0x2e, 0x01]), Err(HelloError::NotTls));
        assert_eq!(
            one_shot(&[22, 3, 1, 0, 0]),
            Err(HelloError::Malformed("empty handshake record"))
        );
        assert_eq!(
            one_shot(&[22, 3, 1, 0, 4, 2, 0, 0, 0]),
            Err(HelloError::NotClientHello(2))
        );
        assert_eq!(
            one_shot(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
            Err(HelloError::TooLarge)
        );
        assert_eq!(one_shot(&[22, 4, 1, 0, 4]), Err(HelloError::NotTls));
        // A fragment of a hello, then an alert record.
        let mut alert_after = fragment(&rustls_hello("a.b.1.svc.meshfed.local"), 50);
        alert_after.truncate(55);
        alert_after.extend_from_slice(&[21, 3, 3, 0, 2, 2, 40]);
        assert_eq!(
            one_shot(&alert_after),
            Err(HelloError::UnexpectedRecord(21))
        );
    }

    #[test]
    fn refuses_more_than_it_may_buffer() {
        // A hello announcing more than MAX_HELLO is refused from its header.
        assert_eq!(
            one_shot(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0x01]),
            Err(HelloError::TooLarge)
        );
        let mut r = HelloReader::new();
        assert!(r.feed(&vec![22; MAX_BUFFERED + 1]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Arbitrary bytes in arbitrary chunks never panic, and chunking never
        /// changes the verdict.
        #[test]
        fn never_panics_and_chunking_is_invisible(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            cut in 1usize..64,
        ) {
            let whole = one_shot(&bytes);
            let mut r = HelloReader::new();
            let mut chunked = Ok(None);
            for c in bytes.chunks(cut) {
                chunked = r.feed(c);
                if !matches!(chunked, Ok(None)) {
                    break;
                }
            }
            prop_assert_eq!(whole, chunked);
        }

        /// Mutating a real ClientHello never panics.
        #[test]
        fn mutated_real_hellos_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut hello = rustls_hello("api.shop.80.svc.meshfed.local");
            for (i, b) in flips {
                let at = i.index(hello.len());
                hello[at] = b;
            }
            let _ = one_shot(&hello);
        }
    }
}
