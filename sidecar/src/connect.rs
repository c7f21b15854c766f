//! Dialling an endpoint: TCP (marked, so interception lets it pass), then
//! mesh mTLS that accepts only the identities discovery lists for it. The
//! same handshake goes to a local sidecar directly or to a remote cluster's
//! gateway, which passes it through by the server name to a remote sidecar:
//! the identity check is end to end either way.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshfed_trust::{CredentialsWatch, client_config};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::balance::EndpointInfo;

/// ALPN for HTTP/2 between sidecars (the app spoke HTTP/2 or gRPC).
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1 between sidecars (the app spoke HTTP/1.1).
pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What goes over the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Alpn {
    /// Multiplexed HTTP/2.
    H2,
    /// HTTP/1.1, or HTTP/2 if the peer speaks only that.
    Http1,
    /// Opaque bytes.
    Opaque,
}

/// Why an endpoint could not be reached; always before any byte of the call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(std::net::SocketAddr),
    #[error("connect to {0}: {1}")]
    Tcp(std::net::SocketAddr, io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(std::net::SocketAddr, io::Error),
    #[error("server name {0:?} is not valid")]
    Name(String),
}

/// Makes mesh connections.
#[derive(Debug)]
pub(crate) struct Connector {
    creds: CredentialsWatch,
    timeout: Duration,
    liveness: Duration,
    mark: Option<u32>,
    stop: CancellationToken,
    configs: Mutex<HashMap<(String, Alpn), Arc<ClientConfig>>>,
}

impl Connector {
    pub(crate) fn new(
        creds: CredentialsWatch,
        timeout: Duration,
        liveness: Duration,
        mark: Option<u32>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            creds,
            timeout,
            liveness,
            mark,
            stop,
            configs: Mutex::default(),
        }
    }

    /// A mesh TLS connection to `ep`, within the connect timeout.
    pub(crate) async fn connect(
        &self,
        ep: &EndpointInfo,
        alpn: Alpn,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let name =
            ServerName::try_from(ep.sni.clone()).map_err(|_| ConnectError::Name(ep.sni.clone()))?;
        let connector = TlsConnector::from(self.config(ep, alpn));
        let dial = async {
            let tcp = self
                .tcp(ep.addr)
                .await
                .map_err(|e| ConnectError::Tcp(ep.addr, e))?;
            keep_alive(&tcp, self.liveness).map_err(|e| ConnectError::Tcp(ep.addr, e))?;
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError::Tls(ep.addr, e))
        };
        tokio::time::timeout(self.timeout, dial)
            .await
            .map_err(|_| ConnectError::Timeout(ep.addr))?
    }

    /// A plain TCP connection (marked), for destinations outside the mesh;
    /// mesh connections get liveness checks on top (`connect`).
    pub(crate) async fn tcp(&self, addr: std::net::SocketAddr) -> io::Result<TcpStream> {
        self.tcp_from(addr, None).await
    }

    /// The same, from `source` when given.
    pub(crate) async fn tcp_from(
        &self,
        addr: std::net::SocketAddr,
        source: Option<std::net::IpAddr>,
    ) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(mark) = self.mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        if let Some(ip) = source {
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fired when the sidecar stops: pooled connections close.
    pub(crate) fn stopped(&self) -> CancellationToken {
        self.stop.clone()
    }

    fn config(&self, ep: &EndpointInfo, alpn: Alpn) -> Arc<ClientConfig> {
        let mut configs = self.configs.lock().expect("configs lock");
        let key = (ep.ids_key.clone(), alpn);
        if let Some(c) = configs.get(&key) {
            return c.clone();
        }
        let mut config = client_config(self.creds.clone(), ep.expected.clone());
        config.alpn_protocols = match alpn {
            Alpn::H2 => vec![ALPN_H2.to_vec()],
            Alpn::Http1 => vec![ALPN_HTTP1.to_vec(), ALPN_H2.to_vec()],
            Alpn::Opaque => Vec::new(),
        };
        // Bounded by the distinct identity sets of the services called.
        let config = Arc::new(config);
        configs.insert(key, config.clone());
        config
    }
}

/// Liveness of a mesh connection in the kernel, for what HTTP/2 pings do
/// not cover (opaque TCP, upgrades, the inbound side): after `liveness` of
/// silence a keepalive probe goes out, `liveness` apart; two unanswered
/// close the connection, as does data left unacknowledged for three times
/// `liveness`. A partitioned peer closes nothing, so without this both
/// apps would wait on a dead connection for their own timeouts.
pub(crate) fn keep_alive(tcp: &TcpStream, liveness: Duration) -> io::Result<()> {
    // The kernel counts keepalive times in whole seconds.
    let every = liveness.max(Duration::from_secs(1));
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(every)
            .with_interval(every)
            .with_retries(2),
    )?;
    sock.set_tcp_user_timeout(Some(every * 3))
}
