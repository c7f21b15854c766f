//! The HTTP/1.1 side of a pool: idle connections per key (an endpoint, or
//! the app), each driven by the request using it. A connection has no task
//! of its own: the request's task writes the request and reads the answer
//! (the answer's body drives the connection as it is read), so a request
//! and its connection wake one task, not two handing messages across. An
//! idle connection is not polled; one its peer closed meanwhile is found
//! ended when it is next taken, and dropped.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1};
use hyper_util::rt::TokioIo;
use sync_wrapper::SyncWrapper;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::balance::EndpointInfo;
use crate::body::{Body, BoxError, boxed};
use crate::cancel::Watch;
use crate::connect::{ALPN_H2, Alpn, ConnectError, Connector};
use crate::{FastMap, FastSet};

/// Idle HTTP/1.1 connections kept per key, at most.
const MAX_IDLE: usize = 256;

/// The connection's future (hyper's connection is not `Sync`; a body must
/// be, and the connection is only ever polled through `&mut`).
type Driven = SyncWrapper<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>;

/// One HTTP/1.1 connection, driven by whoever holds it.
pub(crate) struct Http1 {
    send: http1::SendRequest<Body>,
    /// `None` once it has ended.
    conn: Option<Driven>,
    /// Fired when it must close: its endpoint went silent, or the sidecar
    /// is stopping.
    close: Watch,
}

impl std::fmt::Debug for Http1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1")
            .field("ended", &self.conn.is_none())
            .finish_non_exhaustive()
    }
}

impl Http1 {
    pub(crate) fn new<T>(
        send: http1::SendRequest<Body>,
        conn: http1::Connection<T, Body>,
        close: CancellationToken,
    ) -> Self
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        Self {
            send,
            conn: Some(SyncWrapper::new(Box::pin(conn))),
            close: Watch::new(close),
        }
    }

    /// Makes progress on the connection; `Ready` once it has ended: closed
    /// by the peer, failed, or told to close. Then it is dropped, and what
    /// was in flight on it gets hyper's error (an answer cut short fails,
    /// never ends early). With `watch`, `cx`'s task is woken when it is
    /// told to close.
    fn drive(&mut self, cx: &mut Context<'_>, watch: bool) -> Poll<()> {
        if self.conn.is_none() {
            return Poll::Ready(());
        }
        let closed = if watch {
            self.close.poll_cancelled(cx)
        } else {
            self.close.is_cancelled()
        };
        if !closed && let Some(conn) = &mut self.conn {
            match conn.get_mut().as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => tracing::debug!(error = %e, "HTTP/1.1 connection ended"),
            }
        }
        self.conn = None;
        Poll::Ready(())
    }

    /// Drives the connection until `step` — something only the
    /// connection moves on: its readiness, an answer, an answer's body —
    /// is ready. Both are asked once with a waker that does nothing, and
    /// the connection last with this task's: what is done here, the
    /// connection handing over the answer or asking for the body to be
    /// read, wakes no task to be polled again for nothing (a poll of the
    /// whole request's chain), while whatever the connection waits for
    /// next wakes this task. `step` moves only when the connection is
    /// driven, and it is asked right after every time. Once: a second
    /// drive with the waker that does nothing found nothing more to do
    /// (callgrind, closed loop: 41.1k instructions per request with two,
    /// 40.0k with one, 42.5k with none, whose wakes poll the task again).
    fn drive_for<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Self, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let noop = &mut Context::from_waker(Waker::noop());
        let _ended = self.drive(noop, false);
        if let Poll::Ready(v) = step(self, noop) {
            return Poll::Ready(v);
        }
        let _ended = self.drive(cx, true);
        step(self, noop)
    }

    /// Whether it can take a request (driving it until it can or it ends).
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            self.drive_for(cx, |c, step_cx| {
                if c.conn.is_none() {
                    return Poll::Ready(false);
                }
                c.send.poll_ready(step_cx).map(|r| r.is_ok())
            })
        })
        .await
    }
}

/// Idle connections, by key.
#[derive(Default)]
pub(crate) struct H1(Mutex<H1State>);

impl std::fmt::Debug for H1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H1")
    }
}

#[derive(Default)]
struct H1State {
    /// Idle connections, ready for a request.
    idle: FastMap<Arc<str>, Vec<Http1>>,
    /// Per endpoint, fired when it is found gone silent: its connections close.
    silent: FastMap<Arc<str>, CancellationToken>,
    /// Endpoints a connection is being made to.
    growing: FastSet<Arc<str>>,
    /// Endpoints that chose HTTP/2 when offered HTTP/1.1.
    h2_only: FastSet<Arc<str>>,
}

impl H1 {
    /// An idle connection under `key` that is ready for a request.
    pub(crate) async fn ready(&self, key: &Arc<str>) -> Option<Http1> {
        loop {
            let mut c = self.0.lock().expect("pool lock").idle.get_mut(key)?.pop()?;
            if c.ready().await {
                return Some(c);
            }
        }
    }

    /// Sends `req` on `c`, taken from `this` under `key`; the connection
    /// goes back to it when the answer has been read to its end. A request
    /// the connection ended before sending comes back with the error.
    /// The request is queued on the connection here, so the future holds
    /// only the wait for its answer (it is part of every attempt's); a
    /// failure is given as `error` makes it (there, not in a future around
    /// this one, which would hold a second copy of it).
    pub(crate) fn send<E>(
        this: Arc<Self>,
        key: Arc<str>,
        mut c: Http1,
        req: Request<Body>,
        error: fn(TrySendError<Request<Body>>) -> E,
    ) -> impl Future<Output = Result<Response<Body>, E>> + Send {
        let answer = c.send.try_send_request(req);
        async move {
            let mut answer = std::pin::pin!(answer);
            // Ended (and dropped), the connection has answered the request
            // with an error.
            let resp = poll_fn(|cx| c.drive_for(cx, |_, step_cx| answer.as_mut().poll(step_cx)))
                .await
                .map_err(error)?;
            if resp.body().is_end_stream() {
                this.put(key, c);
                return Ok(resp.map(boxed));
            }
            Ok(resp.map(|body| {
                boxed(Driving {
                    body,
                    conn: Some((c, key, this)),
                })
            }))
        }
    }

    /// Makes one more connection to `ep` in the background, unless one is
    /// being made or the endpoint speaks only HTTP/2. Its failure is no
    /// request's: requests go on HTTP/2 meanwhile, whose connects count.
    pub(crate) fn grow(this: &Arc<Self>, connector: &Arc<Connector>, ep: &Arc<EndpointInfo>) {
        {
            let mut state = this.0.lock().expect("pool lock");
            if state.h2_only.contains(&ep.key) || !state.growing.insert(ep.key.clone()) {
                return;
            }
        }
        let (h1, connector, ep) = (this.clone(), connector.clone(), ep.clone());
        tokio::spawn(async move {
            match h1.connect(&connector, &ep).await {
                Ok(Some(c)) => h1.put(ep.key.clone(), c),
                Ok(None) => {
                    tracing::debug!(endpoint = %ep.key, "endpoint speaks only HTTP/2 between sidecars");
                    h1.0.lock()
                        .expect("pool lock")
                        .h2_only
                        .insert(ep.key.clone());
                }
                Err(e) => {
                    tracing::debug!(endpoint = %ep.key, error = %e, "no HTTP/1.1 connection made")
                }
            }
            h1.0.lock().expect("pool lock").growing.remove(&ep.key);
        });
    }

    /// A new HTTP/1.1 connection to `ep`; `None` if it chose HTTP/2.
    async fn connect(
        &self,
        connector: &Connector,
        ep: &EndpointInfo,
    ) -> Result<Option<Http1>, ConnectError> {
        let tls: TlsStream<TcpStream> = connector.connect(ep, Alpn::Http1).await?;
        if tls.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
            return Ok(None);
        }
        // Head and body in one buffer: one TLS record, not two.
        let handshake = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(tls));
        let (send, conn) = tokio::time::timeout(connector.timeout(), handshake)
            .await
            .map_err(|_| ConnectError::Timeout(ep.addr))?
            .map_err(|e| ConnectError::Tls(ep.addr, std::io::Error::other(e)))?;
        let close = self.silent(&ep.key, &connector.stopped());
        Ok(Some(Http1::new(send, conn, close)))
    }

    /// The endpoint's token: fired when it is found gone silent, or the
    /// sidecar stops.
    pub(crate) fn silent(&self, key: &Arc<str>, stop: &CancellationToken) -> CancellationToken {
        self.0
            .lock()
            .expect("pool lock")
            .silent
            .entry(key.clone())
            .or_insert_with(|| stop.child_token())
            .clone()
    }

    /// The endpoint left `token`'s pings unanswered: its connections
    /// close; those made from now on get a new token.
    pub(crate) fn gone_silent(&self, key: &Arc<str>, token: &CancellationToken) {
        tracing::debug!(endpoint = %key, "endpoint gone silent: its connections close");
        token.cancel();
        let mut state = self.0.lock().expect("pool lock");
        if state
            .silent
            .get(key)
            .is_some_and(CancellationToken::is_cancelled)
        {
            state.silent.remove(key);
        }
        state.idle.remove(key);
    }

    /// Forgets what it knows of the endpoints `gone`.
    pub(crate) fn forget(&self, gone: &[Arc<str>]) {
        let mut h1 = self.0.lock().expect("pool lock");
        for key in gone {
            h1.idle.remove(key);
            h1.silent.remove(key);
            h1.h2_only.remove(key);
        }
    }

    fn put(&self, key: Arc<str>, c: Http1) {
        if c.conn.is_none() || c.send.is_closed() {
            return;
        }
        let mut state = self.0.lock().expect("pool lock");
        let list = state.idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(c);
        }
    }
}

/// An HTTP/1.1 answer's body that drives its connection as it is read,
/// and gives the connection back to the pool when read to the end
/// (dropped before, the connection closes with it).
struct Driving {
    body: Incoming,
    conn: Option<(Http1, Arc<str>, Arc<H1>)>,
}

impl Driving {
    fn give_back(&mut self) {
        if let Some((c, key, h1)) = self.conn.take() {
            h1.put(key, c);
        }
    }
}

impl hyper::body::Body for Driving {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.conn {
            Some((c, ..)) => {
                let body = &mut this.body;
                let polled = c.drive_for(cx, |_, step_cx| Pin::new(&mut *body).poll_frame(step_cx));
                if c.conn.is_none() {
                    this.conn = None;
                }
                polled
            }
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.conn = None,
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
