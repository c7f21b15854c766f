//! The app side of an inbound port: where the app serves, who may call it
//! there, what plaintext callers get, and the connections to it (marked,
//! and behind the transparent listener from `FORWARD_SOURCE`, so the pod's
//! interception rules let them pass).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::Body;
use crate::config::{Allow, Plaintext};
use crate::connect::Connector;
use crate::dest::Shared;
use crate::metrics::RefusedLabels;
use crate::reason::Reason;
use crate::workers::PerWorker;

/// One app port, as callers reach it: an explicit inbound port, or a port
/// of the app reached through the inbound transparent listener.
#[derive(Clone)]
pub(crate) struct AppPort {
    /// The port callers dialled: the explicit listen port, or the app's
    /// port they were sent to (labels, policies, refusals).
    pub(super) port: u16,
    pub(super) label: String,
    pub(super) app: SocketAddr,
    /// The address the connections to the app come from, if not the default.
    source: Option<IpAddr>,
    pub(super) allow: Allow,
    pub(super) plaintext: Plaintext,
    /// Each worker's pooled connections to the app, by protocol.
    pub(super) h1: Arc<PerWorker<Client<AppConnector, Body>>>,
    pub(super) h2: Arc<PerWorker<Client<AppConnector, Body>>>,
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
        Self {
            port,
            label: format!("port/{port}"),
            app,
            source,
            allow,
            plaintext,
            h1: Arc::new(PerWorker::new(&shared.workers, || {
                Client::builder(TokioExecutor::new()).build(connector.clone())
            })),
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
