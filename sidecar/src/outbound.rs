//! Outbound: the app's calls. Each accepted connection is sent to its
//! destination service — fixed per explicit upstream port, or, on the
//! transparent listener, the service whose cluster IP the app dialled
//! (iptables REDIRECT keeps the original destination for SO_ORIGINAL_DST).
//! The first bytes decide how it is proxied: HTTP/1 and HTTP/2 (gRPC
//! included) per request, anything else as opaque TCP.

mod http;
mod tcp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

use crate::config::ServiceTarget;
use crate::dest::{Dest, Shared};
use crate::detect::{Protocol, detect};
use crate::discovery::Discovery;
use crate::io::Prefixed;
use crate::io::original_dst;
use crate::stack::Next;
use crate::stack::route::Backends;

/// Destinations by service port, made on first use.
#[derive(Debug)]
pub(crate) struct Router {
    discovery: Arc<Discovery>,
    shared: Arc<Shared>,
    dests: Mutex<HashMap<ServiceTarget, Arc<Dest>>>,
}

impl Router {
    pub(crate) fn new(discovery: Arc<Discovery>, shared: Arc<Shared>) -> Arc<Self> {
        Arc::new(Self {
            discovery,
            shared,
            dests: Mutex::default(),
        })
    }

    pub(crate) fn dest(&self, target: &ServiceTarget) -> Arc<Dest> {
        let mut dests = self.dests.lock().expect("dests lock");
        if let Some(d) = dests.get(target) {
            return d.clone();
        }
        let d = Dest::new(
            target.clone(),
            self.discovery.watch(target),
            self.shared.clone(),
        );
        dests.insert(target.clone(), d.clone());
        d
    }
}

impl Backends for Router {
    fn backend(&self, target: &ServiceTarget) -> (Arc<Dest>, Next) {
        let dest = self.dest(target);
        let below = http::below_route(&dest);
        (dest, below)
    }
}

/// Serves one explicit upstream port.
pub(crate) async fn serve_upstream(
    listener: TcpListener,
    router: Arc<Router>,
    target: ServiceTarget,
) {
    let dest = router.dest(&target);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "outbound accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let d = dest.clone();
        let r = router.clone();
        dest.shared
            .spawn_accepted(tcp, move |tcp| async move { proxy(tcp, d, r).await });
    }
}

/// Serves the transparent listener.
pub(crate) async fn serve_transparent(listener: TcpListener, router: Arc<Router>) {
    let me = listener.local_addr().ok();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "transparent accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let r = router.clone();
        router.shared.spawn_accepted(tcp, move |tcp| async move {
            let router = r;
            let original = match original_dst(&tcp) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "no original destination (is the iptables redirect in place?)");
                    return;
                }
            };
            if Some(original) == me {
                // Dialled the proxy itself: forwarding would loop.
                return;
            }
            match router.discovery.resolve(original.ip()).await {
                Ok(Some(svc)) if svc.ports.contains(&u32::from(original.port())) => {
                    match ServiceTarget::new(&svc.name, &svc.namespace, original.port()) {
                        Ok(target) => {
                            let dest = router.dest(&target);
                            proxy(tcp, dest, router).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "discovery resolved to a bad name"),
                    }
                }
                Ok(_) => tcp::passthrough(tcp, original, &router.shared).await,
                Err(e) => {
                    // Not knowing is not knowing it is outside the mesh:
                    // refuse rather than send it around the mesh in clear.
                    tracing::warn!(%original, error = %e, "cannot resolve destination; connection closed");
                }
            }
        });
    }
}

/// Detects the protocol and proxies the connection to `dest`.
async fn proxy(mut tcp: TcpStream, dest: Arc<Dest>, router: Arc<Router>) {
    let _ = tcp.set_nodelay(true);
    let detected = match detect(&mut tcp, dest.shared.timeouts.detect).await {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "app connection failed before a byte");
            return;
        }
    };
    let (protocol, prefix) = detected;
    let io = Prefixed::new(prefix, tcp);
    match protocol {
        Protocol::Http1 => http::serve(io, dest, router, false).await,
        Protocol::Http2 => http::serve(io, dest, router, true).await,
        Protocol::Opaque => tcp::forward(io, dest, router).await,
    }
}
