//! The identity client sidecars and gateways run: a certificate at start,
//! renewal at ~70% of its lifetime (jittered backoff on failure), and the
//! current credentials published on a watch channel that live TLS configs
//! read. Each renewal uses a fresh key; the key never leaves the process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use meshfed_api::identity::CertifyRequest;
use meshfed_api::identity::identity_client::IdentityClient as GrpcClient;
use rand::Rng;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::bundle::TrustBundle;
use crate::spiffe::SpiffeId;
use crate::tls::{Credentials, CredentialsWatch, bootstrap_client_config};
use crate::verify::ExpectedIds;

/// Fraction of a leaf's lifetime after which it is renewed.
const RENEW_FRACTION: f64 = 0.7;
/// First retry delay after a failed renewal; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one Certify call may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why getting a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The credential could not be read.
    #[error("reading credential {path}: {source}")]
    Credential {
        /// The token file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Connecting to the identity service failed (TCP or TLS).
    #[error("connecting to identity service {addr}: {reason}")]
    Connect {
        /// The service address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The service refused the request.
    #[error("identity service refused: {0}")]
    Refused(#[from] tonic::Status),
    /// Building the key or CSR failed.
    #[error("building csr: {0}")]
    Csr(#[from] rcgen::Error),
    /// The answer was unusable (bad chain, wrong identity, bad bundle).
    #[error("identity service answer unusable: {0}")]
    BadAnswer(String),
    /// The call took too long.
    #[error("identity service call timed out after {0:?}")]
    Timeout(Duration),
}

/// Where the client's proof of identity comes from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A fixed token (bootstrap tokens in local mode).
    Token(String),
    /// A file re-read before every call (projected ServiceAccount tokens rotate).
    File(PathBuf),
}

impl CredentialSource {
    async fn read(&self) -> Result<String, ClientError> {
        match self {
            Self::Token(t) => Ok(t.clone()),
            Self::File(path) => tokio::fs::read_to_string(path)
                .await
                .map(|s| s.trim().to_owned())
                .map_err(|source| ClientError::Credential {
                    path: path.clone(),
                    source,
                }),
        }
    }
}

/// What the client needs to know.
#[derive(Debug, Clone)]
pub struct IdentityClientConfig {
    /// `host:port` of the identity service.
    pub addr: String,
    /// The identity the service must present.
    pub server_id: SpiffeId,
    /// The identity to ask for.
    pub id: SpiffeId,
    /// Proof of `id`.
    pub credential: CredentialSource,
    /// Roots to trust before the first answer (later answers carry the bundle).
    pub bundle: TrustBundle,
    /// DNS names the certificate must carry besides the SPIFFE ID, for a
    /// workload serving clients outside the mesh (see
    /// [`crate::serving_names`]); usually none.
    pub dns_names: Vec<String>,
}

/// Fetches a first certificate and keeps it fresh in the background.
#[derive(Debug)]
pub struct IdentityClient {
    config: IdentityClientConfig,
}

impl IdentityClient {
    /// A client for `config`.
    pub fn new(config: IdentityClientConfig) -> Self {
        Self { config }
    }

    /// Gets the first certificate, then renews in a background task that
    /// runs until the returned watch's receivers are all dropped.
    pub async fn start(
        self,
    ) -> Result<(CredentialsWatch, tokio::task::JoinHandle<()>), ClientError> {
        let first = self.fetch(&Arc::new(self.config.bundle.clone())).await?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let task = tokio::spawn(self.renew_loop(tx));
        Ok((rx, task))
    }

    async fn renew_loop(self, tx: watch::Sender<Arc<Credentials>>) {
        let mut backoff = MIN_BACKOFF;
        let mut delay = renew_after(SystemTime::now(), tx.borrow().not_after());
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = tx.closed() => return,
            }
            // Trust the roots of the last answer: that is how a root rotation reaches us.
            let current = tx.borrow().clone();
            match self.fetch(&current.bundle().clone()).await {
                Ok(next) => {
                    tracing::info!(spiffe_id = %next.id(), "certificate renewed");
                    delay = renew_after(SystemTime::now(), next.not_after());
                    backoff = MIN_BACKOFF;
                    if tx.send(Arc::new(next)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    delay = jitter(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(error = %e, retry_in = ?delay, "certificate renewal failed");
                }
            }
        }
    }

    /// One Certify round trip with a fresh key.
    pub async fn fetch(&self, bundles: &Arc<TrustBundle>) -> Result<Credentials, ClientError> {
        tokio::time::timeout(CALL_TIMEOUT, self.fetch_inner(bundles))
            .await
            .map_err(|_| ClientError::Timeout(CALL_TIMEOUT))?
    }

    async fn fetch_inner(&self, bundles: &Arc<TrustBundle>) -> Result<Credentials, ClientError> {
        let cfg = &self.config;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = csr_with_names(&cfg.id, &cfg.dns_names, &key)?;
        let credential = cfg.credential.read().await?;
        let channel = self.connect(bundles.clone()).await?;
        let resp = GrpcClient::new(channel)
            .certify(CertifyRequest {
                csr_der: csr,
                credential,
            })
            .await?
            .into_inner();
        let bad = |m: String| ClientError::BadAnswer(m);
        if resp.spiffe_id != cfg.id.to_string() {
            return Err(bad(format!(
                "asked for {} but got {}",
                cfg.id, resp.spiffe_id
            )));
        }
        let chain: Vec<CertificateDer<'static>> = resp
            .cert_chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let roots = resp.trust_bundle_der.into_iter().map(CertificateDer::from);
        let bundle = TrustBundle::new(cfg.id.trust_domain().clone(), roots)
            .map_err(|e| bad(e.to_string()))?;
        let creds = Credentials::new(
            chain,
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            bundle,
        )
        .map_err(|e| bad(e.to_string()))?;
        if creds.id() != &cfg.id {
            return Err(bad(format!(
                "certificate is for {}, not {}",
                creds.id(),
                cfg.id
            )));
        }
        let info =
            crate::cert::CertInfo::parse(&creds.chain()[0]).map_err(|e| bad(e.to_string()))?;
        if let Some(missing) = cfg.dns_names.iter().find(|n| !info.dns_sans.contains(n)) {
            return Err(bad(format!("certificate does not name {missing}")));
        }
        Ok(creds)
    }

    async fn connect(
        &self,
        bundles: Arc<TrustBundle>,
    ) -> Result<tonic::transport::Channel, ClientError> {
        let addr = self.config.addr.clone();
        let mut tls =
            bootstrap_client_config(bundles, ExpectedIds::one(self.config.server_id.clone()));
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(tls));
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned();
        let name = ServerName::try_from(host).map_err(|e| ClientError::Connect {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        let dial = {
            let addr = addr.clone();
            tower::service_fn(move |_uri: http::Uri| {
                let (addr, connector, name) = (addr.clone(), connector.clone(), name.clone());
                async move {
                    let tcp = TcpStream::connect(&addr).await?;
                    tcp.set_nodelay(true)?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            })
        };
        tonic::transport::Endpoint::from_static("http://identity.meshfed")
            .connect_with_connector(dial)
            .await
            .map_err(|e| ClientError::Connect {
                addr,
                reason: error_chain(&e),
            })
    }
}

/// A CSR carrying exactly one URI SAN: the SPIFFE ID asked for.
pub fn csr_for(id: &SpiffeId, key: &KeyPair) -> Result<Vec<u8>, rcgen::Error> {
    csr_with_names(id, &[], key)
}

/// A CSR for `id` that also asks for the DNS names of a serving certificate.
pub fn csr_with_names(
    id: &SpiffeId,
    dns_names: &[String],
    key: &KeyPair,
) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    for name in dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    Ok(params.serialize_request(key)?.der().to_vec())
}

/// How long to wait before renewing a leaf that expires at `not_after`,
/// counted from `now` (when it was received): 70% of what is left.
pub fn renew_after(now: SystemTime, not_after: SystemTime) -> Duration {
    not_after
        .duration_since(now)
        .unwrap_or_default()
        .mul_f64(RENEW_FRACTION)
}

/// Full jitter between half and all of `d`, so a fleet does not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_of_what_is_left() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renew_after(now, now + Duration::from_secs(100)),
            Duration::from_secs(70)
        );
        assert_eq!(
            renew_after(now, now + Duration::from_secs(24 * 3600)),
            Duration::from_secs(60480)
        );
        assert_eq!(
            renew_after(now, now - Duration::from_secs(5)),
            Duration::ZERO
        );
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(10),
                "{d:?}"
            );
        }
    }
}
