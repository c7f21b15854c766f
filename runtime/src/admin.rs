//! What every long-running Meshfed binary shares: the admin port (`/live`,
//! `/ready`, `/metrics` from a prometheus-client registry), logging set-up,
//! the shutdown signal, and the way it starts ([`component_main`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Readiness as the admin port reports it; components flip it.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the component ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the component is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped.
pub async fn serve_admin(listener: TcpListener, registry: Arc<Registry>, ready: Readiness) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (registry, ready) = (registry.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = respond(&req, &registry, &ready);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" if ready.get() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut resp = text(StatusCode::OK, body);
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    resp
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n".into(),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// Resolves on SIGTERM or Ctrl-C: when a binary should drain and stop.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Logs to stderr: `MESHFED_LOG` is the filter (default info),
/// `MESHFED_LOG_FORMAT=json` switches to JSON lines.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person's terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var(crate::env::LOG_FORMAT).is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A component binary's life: parses `args` (the program name first) into
/// `A`, then on a multi-threaded runtime sets up logging and the crypto
/// provider and runs `main`. Bad flags print clap's message and exit the
/// process, as a binary does.
pub fn component_main<A, I, T, F, Fut>(args: I, main: F) -> anyhow::Result<()>
where
    A: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
    F: FnOnce(A) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let args = A::parse_from(args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the runtime: {e}"))?;
    runtime.block_on(async move {
        init_tracing();
        meshfed_trust::install_crypto_provider();
        main(args).await
    })
}
