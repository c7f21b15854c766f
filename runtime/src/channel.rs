//! A gRPC channel over mesh mTLS, for components calling their controller.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// A channel to `addr` (`host:port`) that connects on first use and again
/// after every failure, speaking TLS with `tls` (its verifier decides who the
/// server must be; `server_name` is only sent as SNI).
pub fn mtls_channel(
    addr: String,
    server_name: ServerName<'static>,
    mut tls: ClientConfig,
    connect_timeout: Duration,
) -> Channel {
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(tls));
    let dial = tower::service_fn(move |_: http::Uri| {
        let (addr, connector, name) = (addr.clone(), connector.clone(), server_name.clone());
        async move {
            let connect = async {
                let tcp = TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                connector.connect(name, tcp).await
            };
            let tls = tokio::time::timeout(connect_timeout, connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Endpoint::from_static("http://meshfed.local")
        .connect_timeout(connect_timeout)
        // A dead controller is noticed even while the stream is idle.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(dial)
}
