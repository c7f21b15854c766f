//! Calling the sample `api` service over plain HTTP on a client sidecar's
//! upstream listener, as an app in the client pod would: what `dev up`
//! checks with, what the client workload and `meshctl demo` send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::net::{Connector, Net};

/// What the sample `api` answers: who served the call, and who called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub service: String,
    pub cluster: String,
    pub zone: String,
    pub pod: String,
    /// The caller's SPIFFE ID as the serving sidecar verified it.
    pub caller: Option<String>,
}

/// A keep-alive HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct Caller {
    client: Client<Connector, Empty<Bytes>>,
    timeout: Duration,
}

impl Caller {
    /// Calls from this process's network.
    pub fn new(timeout: Duration) -> Self {
        Self::from(&Net::Host, timeout)
    }

    /// Calls from `net` (a cluster's network namespace in a scenario).
    pub fn from(net: &Net, timeout: Duration) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build(net.connector(timeout)),
            timeout,
        }
    }

    /// `GET http://ADDR/PATH` of the sample api: who served it, or why not.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Served, String> {
        self.get_json(addr, path).await
    }

    /// [`Caller::get`] with request headers.
    pub async fn get_with(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<Served, String> {
        let body = self.get_bytes_with(addr, path, headers).await?;
        serde_json::from_slice(&body).map_err(|e| format!("{addr}{path}: unexpected answer: {e}"))
    }

    /// `GET http://ADDR/PATH`, the JSON answer.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        addr: SocketAddr,
        path: &str,
    ) -> Result<T, String> {
        let body = self.get_bytes(addr, path).await?;
        serde_json::from_slice(&body).map_err(|e| format!("{addr}{path}: unexpected answer: {e}"))
    }

    /// `GET http://ADDR/PATH`, the answer as text (e.g. `/metrics`).
    pub async fn get_text(&self, addr: SocketAddr, path: &str) -> Result<String, String> {
        let body = self.get_bytes(addr, path).await?;
        String::from_utf8(body.to_vec()).map_err(|_| format!("{addr}{path}: not UTF-8"))
    }

    /// `GET http://ADDR/PATH`: the body of a 2xx answer, else why not.
    async fn get_bytes(&self, addr: SocketAddr, path: &str) -> Result<Bytes, String> {
        self.get_bytes_with(addr, path, &[]).await
    }

    async fn get_bytes_with(
        &self,
        addr: SocketAddr,
        path: &str,
        headers: &[(String, String)],
    ) -> Result<Bytes, String> {
        let uri: http::Uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| format!("{addr}{path}: {e}"))?;
        let mut req = http::Request::get(uri);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("{addr}{path}: {e}"))?;
        let call = async {
            let response = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{addr}: {}", crate::message(&anyhow::Error::new(e))))?;
            let status = response.status();
            let why = response
                .headers()
                .get(meshfed_sidecar::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{addr}: reading the body: {e}"))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(match why {
                    Some(w) => format!("HTTP {status} ({w})"),
                    None => format!("HTTP {status}: {}", text.trim()),
                });
            }
            Ok(body)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{addr}: no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }
}
