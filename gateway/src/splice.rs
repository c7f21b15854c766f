//! Splicing two TCP streams: bytes both ways until both sides are done,
//! each end's FIN passed on as a half-close, an idle timeout over both
//! directions. Bytes move through a pipe with `splice(2)` (zero copy), or
//! through a pooled buffer when no pipe can be had; neither is held while a
//! connection is idle (ten thousand idle connections must cost little more
//! than their sockets).

use std::cell::RefCell;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

mod pipes;

use pipes::PooledPipe;

/// Bytes per read while data flows (when no pipe is available).
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
    Splice {
        client,
        upstream,
        ingress: Half::new(counters.ingress),
        egress: Half::new(counters.egress),
        idle,
        last: Instant::now(),
        timer: Box::pin(tokio::time::sleep(idle)),
    }
    .await
}

/// The splice as one hand-written future: it waits on socket readiness
/// directly (no per-direction futures), so an idle connection holds two
/// small `Half`s and a boxed timer — this is what lets ten thousand open
/// connections fit in a few tens of megabytes.
struct Splice<'a> {
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    ingress: Half<'a>,
    egress: Half<'a>,
    idle: Duration,
    /// When a byte last moved.
    last: Instant,
    /// Fires at `last + idle` at the earliest; re-armed lazily.
    timer: Pin<Box<Sleep>>,
}

/// One direction.
struct Half<'a> {
    /// Held only while data is in flight: the zero-copy path.
    pipe: Option<PooledPipe>,
    /// Bytes in `pipe`.
    in_pipe: usize,
    /// Held only while data is in flight: the fallback when no pipe can be
    /// had (out of descriptors).
    buf: Option<PooledBuf>,
    /// Unwritten bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Reads are filling whole buffers: move bytes through a pipe. Small
    /// exchanges (requests, responses) stay on the buffer path, where one
    /// read and one write cost less than two splices and the pipe's pages.
    bulk: bool,
    /// The source sent its FIN.
    eof: bool,
    /// The FIN was passed on.
    done: bool,
    bytes: &'a Counter,
}

impl<'a> Half<'a> {
    fn new(bytes: &'a Counter) -> Self {
        Self {
            pipe: None,
            in_pipe: 0,
            buf: None,
            start: 0,
            end: 0,
            bulk: false,
            eof: false,
            done: false,
            bytes,
        }
    }

    /// Moves bytes from `src` to `dst` until it would block (`Pending`, the
    /// waker registered) or the direction is finished (`Ready(Ok)`).
    /// `moved` is set when any byte moved.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        let mut reads = 0;
        loop {
            if self.in_pipe > 0 {
                ready!(dst.poll_write_ready(cx))?;
                let Some(pipe) = &self.pipe else {
                    return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
                };
                match dst.try_io(Interest::WRITABLE, || pipe.drain(dst, self.in_pipe)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.bytes.inc_by(n as u64);
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if self.start < self.end {
                ready!(dst.poll_write_ready(cx))?;
                let buf = self
                    .buf
                    .as_ref()
                    .map_or(&[][..], |b| &b.0[self.start..self.end]);
                match dst.try_write(buf) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.start += n;
                        self.bytes.inc_by(n as u64);
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                SockRef::from(dst).shutdown(Shutdown::Write)?;
                self.done = true;
                (self.buf, self.pipe) = (None, None);
                return Poll::Ready(Ok(()));
            }
            if reads == BURST {
                // Let other connections run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if src.poll_read_ready(cx).is_pending() {
                // Idle: give the pipe or buffer back while waiting.
                (self.buf, self.pipe) = (None, None);
                return Poll::Pending;
            }
            // Nothing is in flight here: switching paths loses no bytes.
            if !self.bulk {
                self.pipe = None;
            } else if self.pipe.is_none() {
                self.buf = None;
                self.pipe = PooledPipe::take();
            }
            if let Some(pipe) = &self.pipe {
                match src.try_io(Interest::READABLE, || pipe.fill(src, pipes::CHUNK)) {
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        // Back to copying once the stream turns small again.
                        if n < CHUNK / 2 {
                            self.bulk = false;
                        }
                        self.in_pipe = n;
                        reads += 1;
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            let buf = self.buf.get_or_insert_with(PooledBuf::take);
            match src.try_read(&mut buf.0) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    (self.start, self.end) = (0, n);
                    self.bulk = n == CHUNK;
                    reads += 1;
                    *moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Drop for Half<'_> {
    fn drop(&mut self) {
        // A pipe still holding bytes must not be handed to another connection.
        if self.in_pipe > 0
            && let Some(pipe) = self.pipe.take()
        {
            pipe.discard();
        }
    }
}

impl Future for Splice<'_> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        let mut moved = false;
        let ingress = this
            .ingress
            .poll(cx, this.client, this.upstream, &mut moved);
        let egress = this.egress.poll(cx, this.upstream, this.client, &mut moved);
        match (ingress, egress) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => {
                return Poll::Ready(Ended::Error(e.kind()));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(Ended::Closed),
            _ => {}
        }
        if moved {
            this.last = Instant::now();
        }
        // The timer fires at the earliest deadline it was armed for; if bytes
        // moved since, re-arm it for the real one.
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = this.last + this.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Ended::Idle);
            }
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
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
        both_ways().await;
    }

    #[tokio::test]
    async fn both_ways_without_pipes() {
        pipes::DISABLED.with(|d| d.set(true));
        both_ways().await;
    }

    async fn both_ways() {
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
