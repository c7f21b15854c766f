//! Inbound: mesh callers reach the app. Each connection must finish a mesh
//! mTLS handshake (the workload's current certificate, renewed underneath
//! by the identity client) with a client certificate of the trust domain;
//! the caller's SPIFFE ID is then checked against the port's allow-list.
//! HTTP/2 from another sidecar is served per request and forwarded to the
//! app in the protocol the caller's app spoke, with the caller's ID in
//! `meshfed-client-id`; anything else is copied to the app as bytes —
//! except HTTP arriving that way (an app that waited before its first
//! request, a caller without a sidecar), which is served as HTTP too, so
//! the app never sees an ID header the caller wrote itself. That is also
//! how an HTTP/1.1 upgrade (WebSocket) arrives: it gets a connection to
//! the app of its own, joined to the caller's once the app says `101`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshfed_trust::{CredentialsWatch, SpiffeId, peer_id, server_config};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::body::{Body, boxed, error_response};
use crate::config::{Allow, Inbound};
use crate::connect::ALPN_H2;
use crate::dest::Shared;
use crate::metrics::{DestLabels, Direction, Reason, RefusedLabels};
use crate::opaque::{Opaque, opaque};
use crate::outbound::detect::Protocol;
use crate::outbound::{CLIENT_ID, End, ORIG_PROTO, counted};
use crate::trace::TraceContext;
use crate::upgrade;

/// One inbound port.
#[derive(Clone)]
pub(crate) struct InboundPort {
    port: u16,
    label: String,
    app: SocketAddr,
    allow: Allow,
    acceptor: TlsAcceptor,
    h1: Client<AppConnector, Body>,
    h2: Client<AppConnector, Body>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InboundPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundPort")
            .field("port", &self.port)
            .field("app", &self.app)
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl InboundPort {
    pub(crate) fn new(
        cfg: &Inbound,
        port: u16,
        creds: CredentialsWatch,
        shared: Arc<Shared>,
    ) -> Self {
        let mut tls = server_config(creds);
        tls.alpn_protocols = vec![ALPN_H2.to_vec()];
        let connector = AppConnector(cfg.app);
        Self {
            port,
            label: format!("port/{port}"),
            app: cfg.app,
            allow: cfg.allow.clone(),
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            h1: Client::builder(TokioExecutor::new()).build(connector),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
            shared,
        }
    }

    pub(crate) async fn serve(self, listener: TcpListener) {
        let port = Arc::new(self);
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let p = port.clone();
            port.shared
                .spawn(async move { p.connection(tcp, remote).await });
        }
    }

    fn refused(&self, reason: Reason) {
        self.shared
            .metrics
            .refused
            .get_or_create(&RefusedLabels {
                port: self.port,
                reason,
            })
            .inc();
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, remote: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        if let Err(e) = crate::connect::keep_alive(&tcp, self.shared.timeouts.liveness) {
            tracing::debug!(%remote, error = %e, "no keepalive on the inbound connection");
        }
        let handshake =
            tokio::time::timeout(self.shared.timeouts.handshake, self.acceptor.accept(tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "inbound caller refused: no valid mesh certificate");
                self.refused(Reason::Handshake);
                return;
            }
            Err(_) => {
                self.refused(Reason::Handshake);
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        let Some(caller) = peer_id(conn.peer_certificates()) else {
            self.refused(Reason::Handshake);
            return;
        };
        let h2 = conn.alpn_protocol() == Some(ALPN_H2);
        let allowed = self.allow.permits(&caller);
        if !allowed {
            tracing::info!(%remote, %caller, port = self.port, "inbound caller refused: identity not allowed");
            self.refused(Reason::Forbidden);
            if !h2 {
                return;
            }
        }
        if h2 {
            self.serve_http(tls, caller, allowed, false).await;
            return;
        }
        let app = match TcpStream::connect(self.app).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "app unreachable");
                return;
            }
        };
        let _ = app.set_nodelay(true);
        let labels = (
            Direction::inbound,
            self.label.as_str(),
            self.shared.cluster.as_str(),
        );
        let app = counted(&self.shared, labels, End::Server, app);
        let counted_connection = || {
            self.shared
                .metrics
                .tcp_connections
                .get_or_create(&DestLabels {
                    direction: Direction::inbound,
                    service: self.label.clone(),
                    cluster: self.shared.cluster.clone(),
                    zone: String::new(),
                })
                .inc();
        };
        match opaque(tls, app, counted_connection).await {
            Opaque::Copied(Ok(_)) => {}
            Opaque::Copied(Err(e)) => {
                tracing::debug!(%remote, error = %e, "opaque connection ended");
            }
            Opaque::Http(protocol, io) => {
                // Served as HTTP, so the app gets the caller's real ID.
                tracing::debug!(%remote, %caller, ?protocol, "HTTP on an opaque connection");
                let h1 = protocol == Protocol::Http1;
                self.serve_http(io, caller, allowed, h1).await;
            }
        }
    }

    /// Serves a connection's HTTP requests (`h1`: HTTP/1 straight from the
    /// caller; otherwise HTTP/2 from a sidecar).
    async fn serve_http<S>(self: Arc<Self>, io: S, caller: SpiffeId, allowed: bool, h1: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let me = self.clone();
        let caller = Arc::new(caller);
        let svc = service_fn(move |mut req: Request<Incoming>| {
            let me = me.clone();
            let caller = caller.clone();
            if h1 {
                // Forwarded to the app as the HTTP/1 it is.
                req.headers_mut()
                    .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
            }
            async move { Ok::<_, Infallible>(me.request(req, &caller, allowed).await) }
        });
        let io = TokioIo::new(io);
        let served = if h1 {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        } else {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        };
        if let Err(e) = served {
            tracing::debug!(port = self.port, error = %e, "inbound connection ended");
        }
    }

    async fn request(
        &self,
        req: Request<Incoming>,
        caller: &SpiffeId,
        allowed: bool,
    ) -> Response<Body> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let trace = TraceContext::continue_in(&mut parts.headers);
        let span = tracing::info_span!(
            "inbound",
            port = self.port,
            caller = %caller,
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
        );
        let resp = if allowed {
            self.forward(parts, body, caller).instrument(span).await
        } else {
            error_response(
                Reason::Forbidden,
                &format!("{caller} may not call this port"),
            )
        };
        self.shared.metrics.request(
            DestLabels {
                direction: Direction::inbound,
                service: self.label.clone(),
                cluster: self.shared.cluster.clone(),
                zone: String::new(),
            },
            &resp,
            started,
        );
        resp
    }

    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        caller: &SpiffeId,
    ) -> Response<Body> {
        let h1 = parts
            .headers
            .remove(ORIG_PROTO)
            .is_some_and(|v| v.as_bytes() == b"HTTP/1.1");
        parts.headers.remove(CLIENT_ID);
        if let Ok(v) = HeaderValue::from_str(&caller.to_string()) {
            parts.headers.insert(CLIENT_ID, v);
        }
        if h1 {
            parts.version = Version::HTTP_11;
            if !parts.headers.contains_key(header::HOST)
                && let Some(authority) = parts.uri.authority()
                && let Ok(v) = HeaderValue::from_str(authority.as_str())
            {
                parts.headers.insert(header::HOST, v);
            }
        }
        // The client wants an absolute URI (it dials the app whatever the
        // URI says); a caller without a sidecar may send origin-form.
        if parts.uri.authority().is_none() {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok());
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.scheme = Some(http::uri::Scheme::HTTP);
            uri.authority = Some(host.unwrap_or(http::uri::Authority::from_static("app")));
            uri.path_and_query
                .get_or_insert(http::uri::PathAndQuery::from_static("/"));
            parts.uri = http::Uri::from_parts(uri).unwrap_or_default();
        }
        if h1 && upgrade::requested(&parts.headers) {
            return self.upgrade(parts, body).await;
        }
        let req = Request::from_parts(parts, boxed(body));
        let client = if h1 { &self.h1 } else { &self.h2 };
        match client.request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Response::from_parts(parts, boxed(body))
            }
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "app request failed");
                error_response(Reason::AppUnavailable, &format!("app at {}", self.app))
            }
        }
    }

    /// An HTTP/1.1 upgrade, on a connection to the app of its own; on
    /// `101` the caller's stream is joined to the app's.
    async fn upgrade(&self, mut parts: http::request::Parts, body: Incoming) -> Response<Body> {
        let Some(caller_side) = parts.extensions.remove::<OnUpgrade>() else {
            return error_response(Reason::UpstreamReset, "the caller's upgrade");
        };
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(app = %self.app, error = %e, "app upgrade failed");
            error_response(Reason::AppUnavailable, &format!("app at {}", self.app))
        };
        let app = match TcpStream::connect(self.app).await {
            Ok(a) => a,
            Err(e) => return unavailable(&e),
        };
        let _ = app.set_nodelay(true);
        // The app gets the request as a client would send it: origin-form.
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .unwrap_or_default();
        parts.uri = path;
        let mut resp = match upgrade::send(app, Request::from_parts(parts, boxed(body))).await {
            Ok(r) => r,
            Err(e) => return unavailable(&e),
        };
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let app_side = hyper::upgrade::on(&mut resp);
            let shared = self.shared.clone();
            let label = self.label.clone();
            self.shared.spawn(async move {
                let joined = async {
                    let (mut caller, app) = upgrade::upgraded(caller_side, app_side).await?;
                    let labels = (Direction::inbound, label.as_str(), shared.cluster.as_str());
                    let mut app = counted(&shared, labels, End::Server, app);
                    tokio::io::copy_bidirectional(&mut caller, &mut app).await
                };
                if let Err(e) = joined.await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            });
        }
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, boxed(body))
    }
}

/// Dials the app whatever the request's authority says, so the authority
/// the caller used reaches the app unchanged.
#[derive(Debug, Clone, Copy)]
struct AppConnector(SocketAddr);

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
        let addr = self.0;
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}
