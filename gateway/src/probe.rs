//! The probe endpoint: the one place the gateway terminates TLS, with its
//! own identity, so remote controllers can check it is alive and ready
//! (`GET /ready` answers 200 or 503). Callers must hold a mesh certificate.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshfed_runtime::Readiness;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// How long a probe connection may stay open.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// A stream that first yields bytes already read from it.
struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Completes the TLS handshake whose ClientHello is `hello` and answers
/// HTTP/1.1 probe requests on it.
pub(crate) async fn serve_probe(
    tcp: TcpStream,
    hello: Vec<u8>,
    acceptor: Arc<TlsAcceptor>,
    ready: Readiness,
) -> io::Result<()> {
    let stream = Replay {
        prefix: hello,
        pos: 0,
        inner: tcp,
    };
    let serve = async move {
        let tls = acceptor.accept(stream).await?;
        let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let resp = answer(req.method(), req.uri().path(), ready.get());
            async move { Ok::<_, Infallible>(resp) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), svc)
            .await
            .map_err(io::Error::other)
    };
    tokio::time::timeout(PROBE_DEADLINE, serve)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "probe connection deadline"))?
}

fn answer(method: &Method, path: &str, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (method, path) {
        (&Method::GET, "/ready") if ready => (StatusCode::OK, "ready\n"),
        (&Method::GET, "/ready") => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::GET, "/live") => (StatusCode::OK, "live\n"),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found\n"),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(
            answer(&Method::GET, "/ready", true).status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&Method::GET, "/ready", false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            answer(&Method::POST, "/ready", true).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            answer(&Method::GET, "/x", true).status(),
            StatusCode::NOT_FOUND
        );
    }
}
