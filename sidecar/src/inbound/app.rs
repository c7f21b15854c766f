//! The app side of an inbound port: where the app serves, who may call it
//! there, what plaintext callers get, and the connections to it (marked,
//! and behind the transparent listener from `FORWARD_SOURCE`, so the pod's
//! interception rules let them pass).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response};
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::config::{Allow, Plaintext};
use crate::connect::Connector;
use crate::dest::Shared;
use crate::metrics::{DestLabels, Direction, RefusedLabels};
use crate::pool::{H1, Http1};
use crate::reason::Reason;
use crate::workers::PerWorker;

/// One app port, as callers reach it: an explicit inbound port, or a port
/// of the app reached through the inbound transparent listener.
#[derive(Clone)]
pub(crate) struct AppPort {
    /// The port callers dialled: the explicit listen port, or the app's
    /// port they were sent to (labels, policies, refusals).
    pub(super) port: u16,
    pub(super) label: Arc<str>,
    pub(super) app: SocketAddr,
    /// The address the connections to the app come from, if not the default.
    source: Option<IpAddr>,
    pub(super) allow: Allow,
    pub(super) plaintext: Plaintext,
    /// Each worker's pooled connections to the app, by protocol.
    h1: Arc<PerWorker<Arc<H1>>>,
    pub(super) h2: Arc<PerWorker<Client<AppConnector, Body>>>,
    /// The app's key in `h1`.
    key: Arc<str>,
    /// The port's requests in metrics.
    pub(super) labels: DestLabels,
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for AppPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPort")
            .field("port", &self.port)
            .field("app", &self.app)
            .field("allow", &self.allow)
            .field("plaintext", &self.plaintext)
            .finish_non_exhaustive()
    }
}

impl AppPort {
    pub(super) fn new(
        port: u16,
        (app, source): (SocketAddr, Option<IpAddr>),
        allow: Allow,
        plaintext: Plaintext,
        shared: Arc<Shared>,
    ) -> Self {
        let connector = AppConnector(app, source, shared.connector.clone());
        let label: Arc<str> = format!("port/{port}").into();
        Self {
            port,
            label: label.clone(),
            labels: DestLabels {
                direction: Direction::inbound,
                service: label,
                cluster: shared.cluster.clone(),
                zone: "".into(),
            },
            app,
            source,
            allow,
            plaintext,
            h1: Arc::new(PerWorker::new(&shared.workers, Arc::default)),
            key: app.to_string().into(),
            h2: Arc::new(PerWorker::new(&shared.workers, || {
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector.clone())
            })),
            shared,
        }
    }

    /// A connection to the app.
    pub(super) async fn dial(&self) -> std::io::Result<TcpStream> {
        self.shared.connector.tcp_from(self.app, self.source).await
    }

    /// Sends an HTTP/1.1 request (origin-form, with `Host`) to the app on
    /// an idle connection of this worker's, or a new one. A request an idle
    /// connection closed under before sending it goes on a new one.
    pub(super) async fn send_h1(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let pool = self.h1.mine();
        // Connecting is rare and its future large: boxed, so that the
        // future of every request that finds a connection stays small.
        let send = match pool.ready(&self.key).await {
            Some(send) => send,
            None => Box::pin(self.connect_h1()).await?,
        };
        match H1::send(pool.clone(), self.key.clone(), send, req, |e| e).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(req) => {
                    let send = Box::pin(self.connect_h1()).await?;
                    let sent = H1::send(pool.clone(), self.key.clone(), send, req, |e| e).await;
                    sent.map_err(|e| e.into_error().into())
                }
                None => Err(e.into_error().into()),
            },
        }
    }

    async fn connect_h1(&self) -> Result<Http1, BoxError> {
        let io = TokioIo::new(self.dial().await?);
        // Head and body in one buffer (see `outbound::http::serve`).
        let (send, conn) = http1::Builder::new().writev(false).handshake(io).await?;
        Ok(Http1::new(send, conn, self.shared.connector.stopped()))
    }

    pub(super) fn refused(&self, reason: Reason) {
        self.shared
            .metrics
            .refused
            .get_or_create(&RefusedLabels {
                port: self.port,
                reason,
            })
            .inc();
    }
}

/// Dials the app whatever the request's authority says, so the authority
/// the caller used reaches the app unchanged.
#[derive(Debug, Clone)]
pub(crate) struct AppConnector(SocketAddr, Option<IpAddr>, Arc<Connector>);

impl tower::Service<http::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TokioIo<TcpStream>, std::io::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, source, connector) = (self.0, self.1, self.2.clone());
        Box::pin(async move { Ok(TokioIo::new(connector.tcp_from(addr, source).await?)) })
    }
}

#[cfg(test)]
mod tests;
