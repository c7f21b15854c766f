//! The sample workloads a local federation runs behind sidecars: `api`, an
//! HTTP service that says which cluster, zone and pod served the call and
//! who called (the identity the serving sidecar verified); `echo`, a TCP
//! echo; and `client`, which calls `api` through its sidecar now and then
//! and keeps score on `/stats`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;

use super::call::{Caller, Served};
use super::topology::Kind;

/// The header the inbound sidecar sets to the caller's verified SPIFFE ID.
const CLIENT_ID: &str = meshfed_sidecar::CLIENT_ID;

#[derive(Debug, Parser)]
struct ApiArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    cluster: String,
    #[arg(long)]
    zone: String,
    #[arg(long)]
    pod: String,
    /// The Service it serves (a version of api serves `api-VERSION`).
    #[arg(long, default_value = "api")]
    service: String,
}

#[derive(Debug, Parser)]
struct EchoArgs {
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(Debug, Parser)]
struct ClientArgs {
    /// The client sidecar's upstream listener for api.shop.
    #[arg(long)]
    target: SocketAddr,
    /// Where `/stats` is served.
    #[arg(long)]
    listen: SocketAddr,
    /// Time between calls.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// Runs a sample workload until SIGTERM.
pub fn run(kind: Kind, args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let argv0 = std::iter::once(std::ffi::OsString::from(kind.as_str()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let work = async {
            match kind {
                Kind::Api => api(ApiArgs::parse_from(argv0.chain(args))).await,
                Kind::Echo => echo(EchoArgs::parse_from(argv0.chain(args))).await,
                Kind::Client => client(ClientArgs::parse_from(argv0.chain(args))).await,
                other => anyhow::bail!("{} is not a sample workload", other.as_str()),
            }
        };
        tokio::select! {
            r = work => r,
            () = meshfed_runtime::shutdown_signal() => Ok(()),
        }
    })
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --listen {addr}"))
}

/// Serves every connection on `listener` with `answer`, HTTP/1.1 or HTTP/2.
async fn serve_http<F>(listener: TcpListener, answer: F) -> anyhow::Result<()>
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    loop {
        let (conn, _) = listener.accept().await.context("accepting")?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = answer(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).expect("plain data serializes");
    body.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

async fn api(a: ApiArgs) -> anyhow::Result<()> {
    let listener = bind(a.listen).await?;
    serve_http(listener, move |req| {
        json(&Served {
            service: a.service.clone(),
            cluster: a.cluster.clone(),
            zone: a.zone.clone(),
            pod: a.pod.clone(),
            caller: req
                .headers()
                .get(CLIENT_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    })
    .await
}

async fn echo(a: EchoArgs) -> anyhow::Result<()> {
    let listener = bind(a.listen).await?;
    loop {
        let (mut conn, _) = listener.accept().await.context("accepting")?;
        tokio::spawn(async move {
            let (mut r, mut w) = conn.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// The client workload's score, served on `/stats`.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientStats {
    pub requests: u64,
    pub failures: u64,
    /// Successful calls by serving cluster.
    pub served_by: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_served: Option<Served>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

async fn client(a: ClientArgs) -> anyhow::Result<()> {
    let listener = bind(a.listen).await?;
    let stats = Arc::new(Mutex::new(ClientStats::default()));
    let shown = stats.clone();
    tokio::spawn(serve_http(listener, move |_| {
        json(&*shown.lock().expect("stats lock"))
    }));
    let caller = Caller::new(Duration::from_secs(5));
    let mut tick = tokio::time::interval(a.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = caller.get(a.target, "/").await;
        let mut s = stats.lock().expect("stats lock");
        s.requests += 1;
        match result {
            Ok(served) => {
                *s.served_by.entry(served.cluster.clone()).or_default() += 1;
                s.last_served = Some(served);
            }
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e);
            }
        }
    }
}
