//! Which network this process's own connections start from: its own, or a
//! network namespace a scenario created for one cluster. A socket belongs
//! to the namespace of the thread that created it, so each namespace gets
//! one thread that has entered it and makes sockets on request; connecting
//! and everything after happens on the async runtime as usual. Processes
//! are started inside a namespace by `ip netns exec`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// Where connections come from.
#[derive(Debug, Clone, Default)]
pub enum Net {
    /// This process's network.
    #[default]
    Host,
    /// A named network namespace.
    Ns(Arc<Namespace>),
}

/// A network namespace (`/run/netns/NAME`) this process makes sockets in.
#[derive(Debug)]
pub struct Namespace {
    path: PathBuf,
    requests: Mutex<mpsc::Sender<oneshot::Sender<io::Result<socket2::Socket>>>>,
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

impl Namespace {
    /// Starts the thread that makes sockets inside the namespace at `path`.
    pub fn open(path: &Path) -> io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<oneshot::Sender<io::Result<socket2::Socket>>>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let at = path.to_owned();
        std::thread::Builder::new()
            .name(format!(
                "netns {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ))
            .spawn(move || {
                let entered = enter(&at);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                // Ends when the Namespace (the only sender) is dropped.
                while let Ok(reply) = rx.recv() {
                    let socket = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::STREAM,
                        Some(socket2::Protocol::TCP),
                    );
                    let _ = reply.send(socket);
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the namespace thread ended"))?
            .map_err(|e| io::Error::new(e.kind(), format!("entering {}: {e}", path.display())))?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            requests: Mutex::new(tx),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn socket(&self) -> io::Result<socket2::Socket> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .lock()
            .map_err(|_| io::Error::other("namespace lock poisoned"))?
            .send(tx)
            .map_err(|_| io::Error::other("the namespace thread ended"))?;
        rx.await
            .map_err(|_| io::Error::other("the namespace thread ended"))?
    }
}

impl Net {
    /// Opens a TCP connection to `addr` from this network.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = match self {
            Net::Host => match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            },
            Net::Ns(ns) => {
                if addr.is_ipv6() {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "scenario networks are IPv4",
                    ));
                }
                let s = ns.socket().await?;
                s.set_nonblocking(true)?;
                TcpSocket::from_std_stream(s.into())
            }
        };
        socket.set_nodelay(true)?;
        socket.connect(addr).await
    }

    /// [`Net::connect`] bounded by `timeout`.
    pub async fn connect_within(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        match tokio::time::timeout(timeout, self.connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection within {}",
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }

    /// A connector for hyper clients that dials from this network.
    pub fn connector(&self, timeout: Duration) -> Connector {
        Connector {
            net: self.clone(),
            timeout,
        }
    }
}

/// Dials `http://IP:PORT` URIs from a [`Net`].
#[derive(Debug, Clone)]
pub struct Connector {
    net: Net,
    timeout: Duration,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (net, timeout) = (self.net.clone(), self.timeout);
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{uri}: expected http://IP:PORT"),
                    )
                })?;
            Ok(TokioIo::new(net.connect_within(addr, timeout).await?))
        })
    }
}
