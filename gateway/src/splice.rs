//! Splicing two TCP streams: bytes both ways until both sides are done,
//! each end's FIN passed on as a half-close, an idle timeout over both
//! directions, and no buffer held while a connection is idle (ten thousand
//! idle connections must cost little more than their sockets).

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes per read while data flows.
const CHUNK: usize = 32 * 1024;
/// Buffers each worker thread keeps for reuse.
const POOL: usize = 64;
/// Reads in a row before yielding to the scheduler.
const BURST: usize = 16;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer that goes back to its thread's pool when dropped.
struct PooledBuf(Vec<u8>);

impl PooledBuf {
    fn take() -> Self {
        let buf = BUFFERS.with(|b| b.borrow_mut().pop());
        Self(buf.unwrap_or_else(|| vec![0; CHUNK]))
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        BUFFERS.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < POOL {
                b.push(buf);
            }
        });
    }
}

/// When either direction last moved a byte, in milliseconds since `base`.
#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// How a spliced connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both sides closed their sending half.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// One side failed (reset, broken pipe).
    Error(io::ErrorKind),
}

/// Counters for the two directions.
pub(crate) struct ByteCounters<'a> {
    /// Client to upstream.
    pub(crate) ingress: &'a Counter,
    /// Upstream to client.
    pub(crate) egress: &'a Counter,
}

/// Splices `client` and `upstream` until both are done or `idle` passes with
/// no byte moving.
pub(crate) async fn splice(
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Duration,
    counters: ByteCounters<'_>,
) -> Ended {
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let both = async {
        let (a, b) = tokio::join!(
            pump(client, upstream, counters.ingress, &activity),
            pump(upstream, client, counters.egress, &activity),
        );
        match (a, b) {
            (Err(e), _) | (_, Err(e)) => Ended::Error(e.kind()),
            _ => Ended::Closed,
        }
    };
    let idle_watch = async {
        loop {
            let deadline = activity.last() + idle;
            if Instant::now() >= deadline {
                return Ended::Idle;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        ended = both => ended,
        ended = idle_watch => ended,
    }
}

/// Copies `src` to `dst` until `src` ends, then half-closes `dst`. On an
/// error the other direction is not waited for: `join!` keeps going, so
/// the failing side shuts both halves down to unblock its partner.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &Counter,
    activity: &Activity,
) -> io::Result<()> {
    let result = pump_inner(src, dst, bytes, activity).await;
    if result.is_err() {
        // Wake the other direction: whatever it waits on now fails or ends.
        let _ = socket2::SockRef::from(src).shutdown(Shutdown::Both);
        let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Both);
    }
    result
}

async fn pump_inner(
    src: &TcpStream,
    dst: &TcpStream,
    bytes: &Counter,
    activity: &Activity,
) -> io::Result<()> {
    loop {
        // Idle: wait without a buffer.
        src.readable().await?;
        let mut buf = PooledBuf::take();
        for _ in 0..BURST {
            match src.try_read(&mut buf.0) {
                Ok(0) => {
                    socket2::SockRef::from(dst).shutdown(Shutdown::Write)?;
                    return Ok(());
                }
                Ok(n) => {
                    activity.touch();
                    write_all(dst, &buf.0[..n]).await?;
                    bytes.inc_by(n as u64);
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes all of `data` to `dst`.
pub(crate) async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    #[tokio::test]
    async fn both_ways_with_half_close() {
        // client_app <-> client | gateway | upstream <-> server_app
        let (mut client_app, client) = pair().await;
        let (upstream, mut server_app) = pair().await;
        let (ingress, egress) = (Counter::default(), Counter::default());
        let task = tokio::spawn({
            let (ingress, egress) = (ingress.clone(), egress.clone());
            async move {
                let counters = ByteCounters {
                    ingress: &ingress,
                    egress: &egress,
                };
                splice(&client, &upstream, Duration::from_secs(30), counters).await
            }
        });
        let big = vec![7u8; 1 << 20];
        client_app.write_all(&big).await.expect("write");
        client_app.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        server_app.read_to_end(&mut got).await.expect("read to FIN");
        assert_eq!(got.len(), big.len(), "everything, then the FIN");
        // The other direction still works after the client's FIN.
        server_app.write_all(b"reply").await.expect("write");
        server_app.shutdown().await.expect("close");
        let mut reply = Vec::new();
        client_app.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply, b"reply");
        assert_eq!(task.await.expect("splice"), Ended::Closed);
        assert_eq!(ingress.get(), 1 << 20);
        assert_eq!(egress.get(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_time_out() {
        let (_client_app, client) = pair().await;
        let (upstream, _server_app) = pair().await;
        let c = Counter::default();
        let counters = ByteCounters {
            ingress: &c,
            egress: &c,
        };
        let ended = splice(&client, &upstream, Duration::from_secs(60), counters).await;
        assert_eq!(ended, Ended::Idle);
    }
}
