//! One multiplexed HTTP/2 connection per endpoint, made on first use and
//! made again when it closes. Requests to one endpoint wait on the same
//! connect rather than each dialling its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::balance::EndpointInfo;
use crate::body::Body;
use crate::connect::{Alpn, ConnectError, Connector};

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Body>>>>;

/// Connections to the endpoints of one service.
#[derive(Debug)]
pub(crate) struct Pool {
    slots: Mutex<HashMap<Arc<str>, Slot>>,
    /// Silence before a ping, and how long the ping may go unanswered.
    liveness: Duration,
}

impl Pool {
    pub(crate) fn new(liveness: Duration) -> Self {
        Self {
            slots: Mutex::default(),
            liveness,
        }
    }

    /// A ready connection to `ep`; `true` when it was just made.
    pub(crate) async fn get(
        &self,
        connector: &Connector,
        ep: &EndpointInfo,
    ) -> Result<(SendRequest<Body>, bool), ConnectError> {
        let slot = self
            .slots
            .lock()
            .expect("pool lock")
            .entry(ep.key.clone())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some(send) = held.as_ref()
            && !send.is_closed()
        {
            return Ok((send.clone(), false));
        }
        *held = None;
        let tls = connector.connect(ep, Alpn::H2).await?;
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Pings find a peer gone silent (a partition closes nothing)
            // and keep idle connections through NATs.
            .keep_alive_interval(self.liveness)
            .keep_alive_timeout(self.liveness)
            .keep_alive_while_idle(true);
        let handshake = builder.handshake(TokioIo::new(tls));
        let (send, conn) = tokio::time::timeout(connector.timeout(), handshake)
            .await
            .map_err(|_| ConnectError::Timeout(ep.addr))?
            .map_err(|e| ConnectError::Tls(ep.addr, std::io::Error::other(e)))?;
        let addr = ep.addr;
        let stop = connector.stopped();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(%addr, error = %e, "connection to endpoint ended");
                }
            }
        });
        *held = Some(send.clone());
        Ok((send, true))
    }

    /// Forgets connections to endpoints no longer listed (they close when
    /// their last request ends).
    pub(crate) fn retain(&self, keys: &[Arc<str>]) {
        self.slots
            .lock()
            .expect("pool lock")
            .retain(|k, _| keys.contains(k));
    }
}
