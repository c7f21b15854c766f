//! Mesh connections to endpoints, reused across requests and shared by
//! every service of the sidecar that reaches the same endpoint: an
//! endpoint is its address and server name, which name one destination
//! (a pod, or a service of another cluster behind its gateway), whichever
//! service's discovery listed it. So the backends of a route split between
//! `api` and `api-east`, both behind east's gateway, share one set of
//! connections rather than keeping two. A connection is forgotten when no
//! service lists its endpoint any longer.
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
//! An HTTP/1.1 connection has no task of its own: the request using it
//! drives it (`h1`).
//!
//! HTTP/1.1 has no ping, and a partition closes nothing: a request waiting
//! on a peer gone silent would wait for its timeout. The endpoint's HTTP/2
//! connection pings after `liveness` of silence; when a ping goes
//! unanswered, it and every HTTP/1.1 connection to the endpoint are closed,
//! and their requests fail over as a broken connection's do.

mod h1;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::client::conn::{TrySendError, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

pub(crate) use self::h1::{H1, Http1};
use crate::balance::EndpointInfo;
use crate::body::{Body, boxed};
use crate::connect::{Alpn, ConnectError, Connector};
use crate::headers::name::ORIG_PROTO;
use crate::headers::{absolute_form, origin_form};
use crate::workers::{PerWorker, Workers};
use crate::{FastMap, FastSet};

type Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;

/// Every worker's pool, and how many services list each endpoint.
#[derive(Debug)]
pub(crate) struct Pools {
    /// Each worker's connections (a connection's task runs on the worker
    /// that made it, so its requests stay on one thread).
    per_worker: PerWorker<Pool>,
    listed: Mutex<FastMap<Arc<str>, usize>>,
}

impl Pools {
    pub(crate) fn new(workers: &Workers, liveness: Duration) -> Self {
        Self {
            per_worker: PerWorker::new(workers, || Pool::new(liveness)),
            listed: Mutex::default(),
        }
    }

    /// This worker's pool.
    pub(crate) fn mine(&self) -> &Pool {
        self.per_worker.mine()
    }

    /// A service listed `now` instead of `before`: the endpoints no
    /// service lists any longer have their connections forgotten (they
    /// close when their last request ends).
    pub(crate) fn relist(&self, before: &[Arc<str>], now: &[Arc<str>]) {
        // Sets, not scans: a service may list thousands of endpoints.
        let (was, is): (FastSet<&Arc<str>>, FastSet<&Arc<str>>) =
            (before.iter().collect(), now.iter().collect());
        let mut listed = self.listed.lock().expect("pool lock");
        for key in now.iter().filter(|k| !was.contains(k)) {
            *listed.entry(key.clone()).or_default() += 1;
        }
        let mut gone = Vec::new();
        for key in before.iter().filter(|k| !is.contains(k)) {
            if let Some(n) = listed.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    listed.remove(key);
                    gone.push(key.clone());
                }
            }
        }
        drop(listed);
        if !gone.is_empty() {
            for pool in self.per_worker.all() {
                pool.forget(&gone);
            }
        }
    }
}

/// Connections of one worker.
#[derive(Debug)]
pub(crate) struct Pool {
    h2: Mutex<FastMap<Arc<str>, Slot>>,
    h1: Arc<H1>,
    /// Silence before a ping, and how long the ping may go unanswered.
    liveness: Duration,
}

/// A connection a request can be sent on.
#[derive(Debug)]
pub(crate) enum Conn {
    H1 {
        conn: Http1,
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
            if let Some(conn) = self.h1.ready(&ep.key).await {
                let conn = Conn::H1 {
                    conn,
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
        // Connecting is rare and its future large: boxed, so that the
        // future of every request that finds a connection stays small.
        let send = Box::pin(self.connect_h2(connector, ep)).await?;
        *held = Some(send.clone());
        Ok((Conn::H2(send), true))
    }

    /// A new HTTP/2 connection to `ep`, driven by a task of its own.
    async fn connect_h2(
        &self,
        connector: &Connector,
        ep: &EndpointInfo,
    ) -> Result<http2::SendRequest<Body>, ConnectError> {
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
        let silent = self.h1.silent(&ep.key, &connector.stopped());
        run(conn, ep, silent, self.h1.clone());
        Ok(send)
    }

    /// Forgets connections to endpoints no longer listed (they close when
    /// their last request ends).
    fn forget(&self, gone: &[Arc<str>]) {
        let mut h2 = self.h2.lock().expect("pool lock");
        for key in gone {
            h2.remove(key);
        }
        drop(h2);
        self.h1.forget(gone);
    }
}

/// Drives the endpoint's HTTP/2 connection until it ends, or the endpoint
/// is found gone silent (`silent` fired, as it is when the sidecar stops).
/// Its pings unanswered, every connection to the endpoint closes.
fn run<C>(conn: C, ep: &EndpointInfo, silent: CancellationToken, h1: Arc<H1>)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    let addr = ep.addr;
    let key = ep.key.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = silent.cancelled() => {
                tracing::debug!(%addr, "connection to an endpoint gone silent closed");
            }
            ended = conn => if let Err(e) = ended {
                tracing::debug!(%addr, error = %e, "connection to endpoint ended");
                if e.is_timeout() {
                    h1.gone_silent(&key, &silent);
                }
            }
        }
    });
}

impl Conn {
    /// Sends `req` (its version the app's) as the connection's protocol
    /// carries it: HTTP/2 with an absolute URI, and, for an app that spoke
    /// HTTP/1.1, a header saying so; HTTP/1.1 in origin form.
    /// The head is made ready here, so the future holds only what it waits
    /// for (it is part of every attempt's).
    pub(crate) fn send(
        self,
        mut req: Request<Body>,
    ) -> impl Future<Output = hyper::Result<Response<Body>>> + Send {
        match self {
            Conn::H2(mut send) => {
                if req.version() == Version::HTTP_11 {
                    let h1 = http::HeaderValue::from_static("HTTP/1.1");
                    req.headers_mut().insert(ORIG_PROTO, h1);
                }
                let mut uri = std::mem::take(req.uri_mut());
                absolute_form(req.headers(), &mut uri, "app");
                *req.uri_mut() = uri;
                *req.version_mut() = Version::HTTP_2;
                Either::Left(async move {
                    send.ready().await?;
                    Ok(send.send_request(req).await?.map(boxed))
                })
            }
            Conn::H1 { conn, key, h1 } => {
                *req.version_mut() = Version::HTTP_11;
                let mut uri = std::mem::take(req.uri_mut());
                origin_form(req.headers_mut(), &mut uri);
                *req.uri_mut() = uri;
                Either::Right(H1::send(h1, key, conn, req, TrySendError::into_error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(pools: &Pools) -> Vec<Arc<str>> {
        let mut keys: Vec<Arc<str>> = pools
            .mine()
            .h2
            .lock()
            .expect("pool lock")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    #[test]
    fn an_endpoint_is_forgotten_only_when_no_service_lists_it() {
        let workers = Workers::start(1).expect("a worker");
        let pools = Pools::new(&workers, Duration::from_secs(1));
        let gw: Arc<str> = "192.0.2.1:15443/api.shop.80.east.svc.meshfed.local".into();
        let pod: Arc<str> = "10.0.0.1:15006/api.shop.80.svc.meshfed.local".into();
        // api lists the pod and east's gateway; api-east the gateway.
        pools.relist(&[], &[pod.clone(), gw.clone()]);
        pools.relist(&[], std::slice::from_ref(&gw));
        for key in [&gw, &pod] {
            pools
                .mine()
                .h2
                .lock()
                .expect("pool lock")
                .insert(key.clone(), Slot::default());
        }
        // api lists only the pod now: the gateway is still api-east's.
        pools.relist(&[pod.clone(), gw.clone()], std::slice::from_ref(&pod));
        assert_eq!(kept(&pools), [pod.clone(), gw.clone()]);
        // api-east goes: the gateway is no one's.
        pools.relist(std::slice::from_ref(&gw), &[]);
        assert_eq!(kept(&pools), std::slice::from_ref(&pod));
        pools.relist(std::slice::from_ref(&pod), &[]);
        assert!(kept(&pools).is_empty());
        // Relisting what was never listed changes nothing.
        pools.relist(&[gw], &[]);
        assert!(pools.listed.lock().expect("pool lock").is_empty());
    }
}
