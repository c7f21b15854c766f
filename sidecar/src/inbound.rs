//! Inbound: callers reach the app, on an explicit inbound port or through
//! the inbound transparent listener (iptables redirects the pod's inbound
//! TCP there; the app port is the one the caller dialled, SO_ORIGINAL_DST).
//! The two differ only in how the app port is found; each connection is
//! then served the same way. A caller whose first bytes are a TLS
//! ClientHello must finish a mesh mTLS handshake (the workload's current
//! certificate, renewed underneath by the identity client) with a client
//! certificate of the trust domain; its SPIFFE ID is then checked against
//! the port's allow-list. HTTP/2 from another sidecar is served per
//! request and forwarded to the app in the protocol the caller's app
//! spoke, with the caller's ID in `meshfed-client-id`; anything else is
//! copied to the app as bytes — except HTTP arriving that way (an app that
//! waited before its first request, a caller without a sidecar), which is
//! served as HTTP too, so the app never sees an ID header the caller wrote
//! itself. That is also how an HTTP/1.1 upgrade (WebSocket) arrives: it
//! gets a connection to the app of its own, joined to the caller's once the
//! app says `101`. Any other caller is plaintext, from outside the mesh:
//! the port's policy refuses it (strict) or passes it on the same way with
//! no caller ID at all (permissive).

mod app;
mod forward;
mod hello;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meshfed_trust::{CredentialsWatch, SpiffeId, peer_id, server_config};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Allow, Inbound, Plaintext, PlaintextPorts, TransparentInbound};
use crate::connect::{ALPN_H2, ALPN_HTTP1};
use crate::dest::Shared;
use crate::detect::Protocol;
use crate::io::Prefixed;
use crate::io::original_dst;
use crate::iptables::FORWARD_SOURCE;
use crate::limits::Caller;
use crate::metrics::{DestLabels, Direction, End, Outcome, PlaintextLabels};
use crate::opaque::{Opaque, opaque};
use crate::reason::Reason;
use app::AppPort;
use hello::{First, sniff};

/// How a connection's app port is found.
#[derive(Debug)]
enum Apps {
    /// An explicit inbound port: one app port.
    Fixed(Arc<AppPort>),
    /// The inbound transparent listener: the port the caller dialled, on
    /// the address it arrived at (this pod's own: never anywhere else).
    Original {
        allow: BTreeMap<u16, Allow>,
        plaintext: Plaintext,
        policies: PlaintextPorts,
        /// Made on first use; at most one per port of this pod.
        ports: Mutex<HashMap<SocketAddr, Arc<AppPort>>>,
    },
}

/// One inbound listener.
pub(crate) struct InboundPort {
    apps: Apps,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InboundPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundPort")
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

impl InboundPort {
    /// An explicit inbound port, listening on `port`.
    pub(crate) fn explicit(
        cfg: &Inbound,
        port: u16,
        policies: &PlaintextPorts,
        creds: CredentialsWatch,
        shared: Arc<Shared>,
    ) -> Self {
        // Only the mesh knows an explicit port: strict unless named.
        let plaintext = policies.of(port, Plaintext::Strict);
        let app = AppPort::new(
            port,
            (cfg.app, None),
            cfg.allow.clone(),
            plaintext,
            shared.clone(),
        );
        Self::new(Apps::Fixed(Arc::new(app)), creds, shared)
    }

    /// The inbound transparent listener.
    pub(crate) fn transparent(
        cfg: &TransparentInbound,
        policies: PlaintextPorts,
        creds: CredentialsWatch,
        shared: Arc<Shared>,
    ) -> Self {
        let apps = Apps::Original {
            allow: cfg.allow.clone(),
            plaintext: cfg.plaintext,
            policies,
            ports: Mutex::default(),
        };
        Self::new(apps, creds, shared)
    }

    fn new(apps: Apps, creds: CredentialsWatch, shared: Arc<Shared>) -> Self {
        let mut tls = server_config(creds);
        // A caller offering both gets HTTP/1.1: it offers it first only
        // for an app that spoke HTTP/1.1.
        tls.alpn_protocols = vec![ALPN_HTTP1.to_vec(), ALPN_H2.to_vec()];
        Self {
            apps,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
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
            port.shared.spawn_accepted(
                tcp,
                move |tcp| async move { p.connection(tcp, remote).await },
            );
        }
    }

    /// The app port `tcp` is for.
    fn app_port(&self, tcp: &TcpStream) -> std::io::Result<Arc<AppPort>> {
        let (allow, plaintext, policies, ports) = match &self.apps {
            Apps::Fixed(app) => return Ok(app.clone()),
            Apps::Original {
                allow,
                plaintext,
                policies,
                ports,
            } => (allow, *plaintext, policies, ports),
        };
        if tcp.peer_addr()?.ip() == FORWARD_SOURCE {
            // One of this sidecar's forwards to the app, sent back here
            // (rules that do not let it pass): forwarding again would loop.
            return Err(std::io::Error::other(
                "a forward to the app came back to the inbound listener",
            ));
        }
        let local = tcp.local_addr()?;
        let original = original_dst(tcp)?;
        if original == local {
            // Not redirected: the caller dialled this listener itself.
            return Err(std::io::Error::other(
                "dialled the inbound transparent listener itself",
            ));
        }
        // The pod's own address, so the forward is never a relay elsewhere:
        // where the caller was sent, when that is where it arrived or it
        // is this pod calling itself (redirected by nat OUTPUT, which made
        // the local address loopback); otherwise where it arrived.
        let ip = if original.ip() == local.ip() || local.ip().is_loopback() {
            original.ip()
        } else {
            local.ip()
        };
        let app = SocketAddr::new(ip, original.port());
        // From FORWARD_SOURCE, which the pod's outbound rules let pass.
        let source = (app.is_ipv4() && !ip.is_loopback()).then_some(FORWARD_SOURCE.into());
        let mut ports = ports.lock().expect("inbound ports lock");
        let port = ports.entry(app).or_insert_with(|| {
            let p = original.port();
            Arc::new(AppPort::new(
                p,
                (app, source),
                allow.get(&p).cloned().unwrap_or_default(),
                policies.of(p, plaintext),
                self.shared.clone(),
            ))
        });
        Ok(port.clone())
    }

    async fn connection(self: Arc<Self>, mut tcp: TcpStream, remote: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        if let Err(e) = crate::connect::keep_alive(&tcp, self.shared.timeouts.liveness) {
            tracing::debug!(%remote, error = %e, "no keepalive on the inbound connection");
        }
        let app = match self.app_port(&tcp) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%remote, error = %e, "inbound connection without an app port; closed");
                return;
            }
        };
        let (first, prefix) = match sniff(&mut tcp, self.shared.timeouts.detect).await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "inbound connection failed before a byte");
                return;
            }
        };
        let tcp = Prefixed::new(prefix, tcp);
        if first == First::Plaintext {
            app.plaintext(tcp, remote).await;
            return;
        }
        let handshake =
            tokio::time::timeout(self.shared.timeouts.handshake, self.acceptor.accept(tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %e, "inbound caller refused: no valid mesh certificate");
                app.refused(Reason::Handshake);
                return;
            }
            Err(_) => {
                app.refused(Reason::Handshake);
                return;
            }
        };
        let (_, conn) = tls.get_ref();
        let Some(caller) = peer_id(conn.peer_certificates()) else {
            app.refused(Reason::Handshake);
            return;
        };
        let http = match conn.alpn_protocol() {
            Some(ALPN_H2) => Some(false),
            Some(ALPN_HTTP1) => Some(true),
            _ => None,
        };
        let allowed = app.allow.permits(&caller);
        if !allowed {
            tracing::info!(%remote, %caller, port = app.port, "inbound caller refused: identity not allowed");
            app.refused(Reason::Forbidden);
            if http.is_none() {
                return;
            }
        }
        if let Some(h1) = http {
            // HTTP between sidecars: refused requests get their 403.
            app.serve_http(tls, Some(caller), remote, allowed, h1).await;
            return;
        }
        app.copy(tls, Some(caller), remote).await;
    }
}

// === impl AppPort ===

impl AppPort {
    /// A caller outside the mesh: refused, or passed on as it is with no
    /// caller ID.
    async fn plaintext(self: Arc<Self>, io: Prefixed<TcpStream>, remote: SocketAddr) {
        // An allow-list names identities; a plaintext caller has none.
        let served = self.plaintext == Plaintext::Permissive && self.allow == Allow::Mesh;
        self.shared
            .metrics
            .plaintext
            .get_or_create(&PlaintextLabels {
                port: self.port,
                policy: self.plaintext,
                outcome: if served {
                    Outcome::served
                } else {
                    Outcome::refused
                },
            })
            .inc();
        if !served {
            tracing::info!(%remote, port = self.port, policy = %self.plaintext, "inbound plaintext caller refused");
            self.refused(Reason::Plaintext);
            return;
        }
        self.copy(io, None, remote).await;
    }

    /// Copies an opaque connection to the app; HTTP found on it is served
    /// as HTTP, with `caller`'s ID (none for plaintext).
    async fn copy<S>(self: Arc<Self>, io: S, caller: Option<SpiffeId>, remote: SocketAddr)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let app = match self.dial().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(app = %self.app, error = %e, "app unreachable");
                return;
            }
        };
        let labels = (Direction::inbound, &*self.label, &*self.shared.cluster);
        let app = self.shared.metrics.counted(labels, End::Server, app);
        let limit_key = limit_key(caller.as_ref(), remote);
        // An opaque connection takes a token of the port's rate limits.
        let admitted = || match self
            .shared
            .limits
            .check(self.port, &limit_key, Instant::now())
        {
            Ok(()) => {
                self.shared
                    .metrics
                    .tcp_connections
                    .get_or_create(&self.dest_labels())
                    .inc();
                true
            }
            Err(limited) => {
                tracing::info!(%remote, caller = %Who(caller.as_ref()), port = self.port, policy = %limited.policy, "opaque connection refused: rate limited");
                self.refused(Reason::RateLimited);
                false
            }
        };
        match opaque(io, app, admitted).await {
            Opaque::Copied(Ok(_)) => {}
            Opaque::Copied(Err(e)) => {
                tracing::debug!(%remote, error = %e, "opaque connection ended");
            }
            Opaque::Http(protocol, io) => {
                // Served as HTTP, so the app gets the caller's real ID (or none).
                tracing::debug!(%remote, caller = %Who(caller.as_ref()), ?protocol, "HTTP on an opaque connection");
                let h1 = protocol == Protocol::Http1;
                self.serve_http(io, caller, remote, true, h1).await;
            }
        }
    }

    fn dest_labels(&self) -> DestLabels {
        self.labels.clone()
    }
}

/// Whose rate-limit bucket a caller's requests take from: its mesh
/// identity, else its address.
fn limit_key(caller: Option<&SpiffeId>, remote: SocketAddr) -> Caller {
    caller.map_or(Caller::Addr(remote.ip()), |id| Caller::Id(id.clone()))
}

/// The caller as logs show it.
struct Who<'a>(Option<&'a SpiffeId>);

impl std::fmt::Display for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => id.fmt(f),
            None => f.write_str("plaintext"),
        }
    }
}
