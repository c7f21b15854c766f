//! The app: the bench binary re-executed with `--serve-app`, so its CPU is
//! its own. A plain HTTP/1.1 server (keep-alive) on two loopback ports — one
//! the load generator calls directly, one behind the server sidecar —
//! printed as `ports DIRECT SIDECAR`. It exits when its stdin closes (the
//! bench ended or died).
//!
//! Every request gets `200` with a 64-byte body, except `/whoami`: the
//! caller's identity as the server sidecar states it (`meshfed-client-id`),
//! or `none`.

use std::convert::Infallible;
use std::io::{Read, Write};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const FLAG: &str = "--serve-app";
/// Response body size.
pub const BODY: usize = 64;

pub fn run() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("app runtime")?;
    rt.block_on(async {
        let direct = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let sidecar = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let port = |l: &TcpListener| l.local_addr().map(|a| a.port());
        let line = format!("ports {} {}\n", port(&direct)?, port(&sidecar)?);
        tokio::spawn(accept(direct));
        tokio::spawn(accept(sidecar));
        std::io::stdout()
            .write_all(line.as_bytes())
            .and_then(|()| std::io::stdout().flush())
            .context("stdout")?;
        // Serves until the bench closes our stdin (or dies).
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()))
            .await
            .context("stdin watch")?
            .ok();
        anyhow::Ok(())
    })?;
    // Open connections are not drained: the bench is done with them.
    std::process::exit(0);
}

async fn accept(listener: TcpListener) {
    let body = Bytes::from(format!("{}\n", "x".repeat(BODY - 1)));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let body = if req.uri().path() == "/whoami" {
                    let who = req.headers().get(meshfed_sidecar::CLIENT_ID);
                    Bytes::from(who.map_or(b"none".to_vec(), |v| v.as_bytes().to_vec()))
                } else {
                    body.clone()
                };
                async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
