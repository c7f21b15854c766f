//! Mesh connections to the endpoints of one service, reused across
//! requests.
//!
//! - **HTTP/2**: one multiplexed connection per endpoint, made on first use
//!   and again when it closes; requests to one endpoint wait on the same
//!   connect rather than each dialling its own. Every request can go on it:
//!   an HTTP/2 app's (gRPC's) always do.
//! - **HTTP/1.1**: an HTTP/1.1 app's request goes as HTTP/1.1 between the
//!   sidecars on an idle HTTP/1.1 connection when the endpoint has one —
//!   measured cheaper than turning it into HTTP/2 and back (fewer wakeups,
//!   no header compression; BENCHMARKS.md). When it has none, the request
//!   takes the HTTP/2 connection, and one more HTTP/1.1 connection is made
//!   in the background (one at a time per endpoint): under steady load the
//!   idle connections grow to the concurrency and every request finds one;
//!   a burst above it, or an endpoint frozen with requests in flight, is
//!   carried multiplexed instead of dialling a connection per request. An
//!   HTTP/1.1 connection serves one request at a time and goes back idle
//!   when its answer has been read to the end. It offers ALPN `http/1.1`
//!   then `h2`: an endpoint that picks `h2` speaks only HTTP/2 between
//!   sidecars and gets no more HTTP/1.1 attempts.
//!
//! HTTP/1.1 has no ping, and a partition closes nothing: a request waiting
//! on a peer gone silent would wait for its timeout. The endpoint's HTTP/2
//! connection pings after `liveness` of silence; when a ping goes
//! unanswered, it and every HTTP/1.1 connection to the endpoint are closed,
//! and their requests fail over as a broken connection's do.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::balance::EndpointInfo;
use crate::body::{Body, BoxError, boxed};
use crate::connect::{ALPN_H2, Alpn, ConnectError, Connector};

type Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// Idle HTTP/1.1 connections kept per endpoint, at most.
const MAX_IDLE_H1: usize = 256;

/// Connections to the endpoints of one service.
#[derive(Debug)]
pub(crate) struct Pool {
    h2: Mutex<HashMap<Arc<str>, Slot>>,
    h1: Arc<H1>,
    /// Silence before a ping, and how long the ping may go unanswered.
    liveness: Duration,
}

/// The HTTP/1.1 side of the pool.
#[derive(Debug, Default)]
pub(crate) struct H1(Mutex<H1State>);

#[derive(Debug, Default)]
struct H1State {
    /// Idle connections, ready for a request.
    idle: HashMap<Arc<str>, Vec<http1::SendRequest<Body>>>,
    /// Per endpoint, fired when it is found gone silent: its connections close.
    silent: HashMap<Arc<str>, CancellationToken>,
    /// Endpoints a connection is being made to.
    growing: HashSet<Arc<str>>,
    /// Endpoints that chose HTTP/2 when offered HTTP/1.1.
    h2_only: HashSet<Arc<str>>,
}

/// A connection a request can be sent on.
#[derive(Debug)]
pub(crate) enum Conn {
    H1 {
        send: http1::SendRequest<Body>,
        key: Arc<str>,
        h1: Arc<H1>,
    },
    H2(http2::SendRequest<Body>),
}

impl Pool {
    pub(crate) fn new(liveness: Duration) -> Self {
        Self {
            h2: Mutex::default(),
            h1: Arc::default(),
            liveness,
        }
    }

    /// A ready connection to `ep` for a request of `version`; `true` when
    /// it was just made (for the request: a connection made in the
    /// background is not this request's).
    pub(crate) async fn get(
        &self,
        connector: &Arc<Connector>,
        ep: &Arc<EndpointInfo>,
        version: Version,
    ) -> Result<(Conn, bool), ConnectError> {
        if version == Version::HTTP_11 {
            if let Some(send) = self.h1.ready(&ep.key).await {
                let conn = Conn::H1 {
                    send,
                    key: ep.key.clone(),
                    h1: self.h1.clone(),
                };
                return Ok((conn, false));
            }
            H1::grow(&self.h1, connector, ep);
        }
        self.h2(connector, ep).await
    }

    async fn h2(
        &self,
        connector: &Connector,
        ep: &EndpointInfo,
    ) -> Result<(Conn, bool), ConnectError> {
        let slot = self
            .h2
            .lock()
            .expect("pool lock")
            .entry(ep.key.clone())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some(send) = held.as_ref()
            && !send.is_closed()
        {
            return Ok((Conn::H2(send.clone()), false));
        }
        *held = None;
        let tls = connector.connect(ep, Alpn::H2).await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Pings find a peer gone silent (a partition closes nothing)
            // and keep idle connections through NATs.
            .keep_alive_interval(self.liveness)
            .keep_alive_timeout(self.liveness)
            .keep_alive_while_idle(true);
        let handshake = builder.handshake(TokioIo::new(tls));
        let (send, conn) = tokio::time::timeout(connector.timeout(), handshake)
            .await
            .map_err(|_| ConnectError::Timeout(ep.addr))?
            .map_err(|e| ConnectError::Tls(ep.addr, std::io::Error::other(e)))?;
        // Pings unanswered: every connection to the endpoint closes.
        let silent = self.h1.silent(&ep.key);
        let watch = (silent.clone(), self.h1.clone());
        run(conn, ep, connector, silent, Some(watch));
        *held = Some(send.clone());
        Ok((Conn::H2(send), true))
    }

    /// Forgets connections to endpoints no longer listed (they close when
    /// their last request ends).
    pub(crate) fn retain(&self, keys: &[Arc<str>]) {
        self.h2
            .lock()
            .expect("pool lock")
            .retain(|k, _| keys.contains(k));
        let mut h1 = self.h1.0.lock().expect("pool lock");
        h1.idle.retain(|k, _| keys.contains(k));
        h1.silent.retain(|k, _| keys.contains(k));
        h1.h2_only.retain(|k| keys.contains(k));
    }
}

/// Drives a connection until it ends, the endpoint is found gone silent,
/// or the sidecar stops. `watch`: this connection's pings tell whether the
/// endpoint went silent.
fn run<C>(
    conn: C,
    ep: &EndpointInfo,
    connector: &Connector,
    silent: CancellationToken,
    watch: Option<(CancellationToken, Arc<H1>)>,
) where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let addr = ep.addr;
    let key = ep.key.clone();
    let stop = connector.stopped();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = silent.cancelled() => {
                tracing::debug!(%addr, "connection to an endpoint gone silent closed");
            }
            ended = conn => if let Err(e) = ended {
                tracing::debug!(%addr, error = %e, "connection to endpoint ended");
                if e.is_timeout() && let Some((token, h1)) = watch {
                    h1.gone_silent(&key, &token);
                }
            }
        }
    });
}

impl H1 {
    fn take(&self, key: &Arc<str>) -> Option<http1::SendRequest<Body>> {
        self.0.lock().expect("pool lock").idle.get_mut(key)?.pop()
    }

    /// Makes one more connection to `ep` in the background, unless one is
    /// being made or the endpoint speaks only HTTP/2. Its failure is no
    /// request's: requests go on HTTP/2 meanwhile, whose connects count.
    fn grow(this: &Arc<Self>, connector: &Arc<Connector>, ep: &Arc<EndpointInfo>) {
        {
            let mut state = this.0.lock().expect("pool lock");
            if state.h2_only.contains(&ep.key) || !state.growing.insert(ep.key.clone()) {
                return;
            }
        }
        let (h1, connector, ep) = (this.clone(), connector.clone(), ep.clone());
        tokio::spawn(async move {
            match h1.connect(&connector, &ep).await {
                Ok(Some(send)) => h1.put(ep.key.clone(), send),
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
    ) -> Result<Option<http1::SendRequest<Body>>, ConnectError> {
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
        run(conn, ep, connector, self.silent(&ep.key), None);
        Ok(Some(send))
    }

    /// The endpoint's token: fired when it is found gone silent.
    fn silent(&self, key: &Arc<str>) -> CancellationToken {
        self.0
            .lock()
            .expect("pool lock")
            .silent
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// The endpoint left `token`'s pings unanswered: its connections
    /// close; those made from now on get a new token.
    fn gone_silent(&self, key: &Arc<str>, token: &CancellationToken) {
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

    /// Sends `req` on `send`, taken from `this` under `key`; the
    /// connection goes back to it when the answer has been read. A request
    /// the connection closed before sending comes back with the error.
    pub(crate) async fn send(
        this: Arc<Self>,
        key: Arc<str>,
        mut send: http1::SendRequest<Body>,
        req: Request<Body>,
    ) -> Result<Response<Body>, TrySendError<Request<Body>>> {
        let resp = send.try_send_request(req).await?;
        if resp.body().is_end_stream() {
            this.put(key, send);
            return Ok(resp.map(boxed));
        }
        Ok(resp.map(|body| {
            boxed(Returning {
                body,
                back: Some((send, key, this)),
            })
        }))
    }

    /// An idle connection under `key` that is ready for a request.
    pub(crate) async fn ready(&self, key: &Arc<str>) -> Option<http1::SendRequest<Body>> {
        while let Some(mut send) = self.take(key) {
            // Read to its end, the last answer leaves the connection ready
            // at once; one that closed meanwhile is dropped.
            if send.ready().await.is_ok() {
                return Some(send);
            }
        }
        None
    }

    fn put(&self, key: Arc<str>, send: http1::SendRequest<Body>) {
        if send.is_closed() {
            return;
        }
        let mut state = self.0.lock().expect("pool lock");
        let list = state.idle.entry(key).or_default();
        if list.len() < MAX_IDLE_H1 {
            list.push(send);
        }
    }
}

impl Conn {
    /// Sends `req` (its URI absolute) as the connection's protocol carries it.
    pub(crate) async fn send(self, mut req: Request<Body>) -> hyper::Result<Response<Body>> {
        match self {
            Conn::H2(mut send) => {
                *req.version_mut() = Version::HTTP_2;
                send.ready().await?;
                Ok(send.send_request(req).await?.map(boxed))
            }
            Conn::H1 { send, key, h1 } => {
                *req.version_mut() = Version::HTTP_11;
                origin_form(&mut req);
                H1::send(h1, key, send, req)
                    .await
                    .map_err(TrySendError::into_error)
            }
        }
    }
}

/// An HTTP/1.1 request line carries the path; the authority goes in `Host`.
fn origin_form(req: &mut Request<Body>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = http::Uri::from(pq);
    }
}

/// An HTTP/1.1 answer's body that gives its connection back to the pool
/// when read to the end (dropped before, the connection closes with it).
struct Returning {
    body: Incoming,
    back: Option<(http1::SendRequest<Body>, Arc<str>, Arc<H1>)>,
}

impl Returning {
    fn give_back(&mut self) {
        if let Some((send, key, h1)) = self.back.take() {
            h1.put(key, send);
        }
    }
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.back = None,
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
