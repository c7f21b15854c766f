//! The identity service: proves a workload's credential, checks its CSR asks
//! for exactly the identity proven, and signs a short-lived leaf with the
//! cluster's intermediate. The workload's key never leaves it.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use http_body_util::{BodyExt as _, BodyStream, StreamBody};

use meshfed_api::identity::identity_server::{Identity, IdentityServer};
use meshfed_api::identity::{CertifyRequest, CertifyResponse};
use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rcgen::{CertificateSigningRequestParams, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Authenticator};
use meshfed_ca::ClusterCa;
use meshfed_runtime::tls_incoming;
use meshfed_trust::{Credentials, CredentialsWatch, SpiffeId, bootstrap_server_config};

/// Largest CSR accepted, DER bytes. An ECDSA CSR with one SAN is ~300.
pub const MAX_CSR_BYTES: usize = 4096;
/// Largest credential accepted (ServiceAccount tokens are ~1 KiB).
pub const MAX_CREDENTIAL_BYTES: usize = 8192;
/// Most DNS names a serving certificate may ask for.
const MAX_DNS_SANS: usize = 2;
/// Largest gRPC message the service reads: room for the largest CSR and
/// credential. A larger one is refused by [`Bounded`] before it is read.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// The service's tunables.
#[derive(Debug, Clone)]
pub struct IdentityServiceConfig {
    /// Lifetime of issued leaves.
    pub leaf_ttl: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for IdentityServiceConfig {
    fn default() -> Self {
        Self {
            leaf_ttl: meshfed_ca::DEFAULT_LEAF_TTL,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How a Certify call ended, as counted in `meshfed_identity_certify_total`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
enum Outcome {
    Issued,
    BadCredential,
    AuthUnavailable,
    IdentityMismatch,
    MalformedCsr,
    UnsupportedKey,
    Oversize,
    Internal,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::BadCredential => "bad_credential",
            Self::AuthUnavailable => "auth_unavailable",
            Self::IdentityMismatch => "identity_mismatch",
            Self::MalformedCsr => "malformed_csr",
            Self::UnsupportedKey => "unsupported_key",
            Self::Oversize => "oversize",
            Self::Internal => "internal",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    result: Outcome,
}

/// The identity service's gRPC handler.
#[derive(Debug)]
pub struct IdentityService {
    ca: Arc<ClusterCa>,
    auth: Authenticator,
    leaf_ttl: Duration,
    certify_total: Family<OutcomeLabels, Counter>,
}

impl IdentityService {
    /// A service signing with `ca`, proving credentials with `auth`, and
    /// registering its metrics under `registry` (prefix it as you like).
    pub fn new(
        ca: Arc<ClusterCa>,
        auth: Authenticator,
        leaf_ttl: Duration,
        registry: &mut Registry,
    ) -> Self {
        let certify_total = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "certify",
            "Certify requests by result",
            certify_total.clone(),
        );
        Self {
            ca,
            auth,
            leaf_ttl,
            certify_total,
        }
    }

    async fn certify_inner(
        &self,
        req: CertifyRequest,
    ) -> Result<CertifyResponse, (Outcome, Status)> {
        let (csr_len, credential_len) = (req.csr_der.len(), req.credential.len());
        if csr_len > MAX_CSR_BYTES {
            return Err((
                Outcome::Oversize,
                Status::resource_exhausted(format!(
                    "csr is {csr_len} bytes, more than the {MAX_CSR_BYTES} a csr may be"
                )),
            ));
        }
        if credential_len > MAX_CREDENTIAL_BYTES {
            return Err((
                Outcome::Oversize,
                Status::resource_exhausted(format!(
                    "credential is {credential_len} bytes, more than the \
                     {MAX_CREDENTIAL_BYTES} a credential may be"
                )),
            ));
        }
        let proven = self
            .auth
            .authenticate(&req.credential)
            .await
            .map_err(|e| match e {
                AuthError::Rejected(why) => (Outcome::BadCredential, Status::unauthenticated(why)),
                AuthError::Unavailable(why) => (Outcome::AuthUnavailable, Status::unavailable(why)),
            })?;
        let expected = self
            .ca
            .trust_domain()
            .workload(&proven.namespace, &proven.service_account)
            .map_err(|e| {
                (
                    Outcome::BadCredential,
                    Status::unauthenticated(format!("credential names no valid workload: {e}")),
                )
            })?;

        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(
            req.csr_der.as_slice(),
        ))
        .map_err(|e| {
            (
                Outcome::MalformedCsr,
                Status::invalid_argument(format!("malformed csr: {e}")),
            )
        })?;
        let (asked, dns_names) = requested(&csr.params.subject_alt_names)
            .map_err(|why| (Outcome::IdentityMismatch, Status::permission_denied(why)))?;
        if asked != expected {
            return Err((
                Outcome::IdentityMismatch,
                Status::permission_denied(format!(
                    "csr asks for {asked} but the credential proves {expected}"
                )),
            ));
        }
        let allowed = meshfed_trust::serving_names(&proven.namespace, &proven.service_account);
        if let Some(name) = dns_names.iter().find(|n| !allowed.contains(n)) {
            return Err((
                Outcome::IdentityMismatch,
                Status::permission_denied(format!(
                    "csr asks for DNS name {name}, but {expected} may hold only {}",
                    allowed.join(" and ")
                )),
            ));
        }
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256
            && alg != &rcgen::PKCS_ECDSA_P384_SHA384
            && alg != &rcgen::PKCS_ED25519
        {
            return Err((
                Outcome::UnsupportedKey,
                Status::invalid_argument("csr key must be ECDSA P-256, P-384 or Ed25519"),
            ));
        }
        let chain = self
            .ca
            .issue_serving_leaf(&expected, &dns_names, &csr.public_key, self.leaf_ttl)
            .map_err(|e| {
                (
                    Outcome::Internal,
                    Status::internal(format!("signing failed: {e}")),
                )
            })?;
        let expires = meshfed_trust::CertInfo::parse(&chain[0])
            .map_err(|e| {
                (
                    Outcome::Internal,
                    Status::internal(format!("issued leaf unreadable: {e}")),
                )
            })?
            .not_after;
        tracing::info!(spiffe_id = %expected, "issued workload certificate");
        Ok(CertifyResponse {
            cert_chain_der: chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: self
                .ca
                .bundle()
                .roots()
                .iter()
                .map(|c| c.to_vec())
                .collect(),
            expires_at_unix: unix_secs(expires),
            spiffe_id: expected.to_string(),
        })
    }
}

/// What a CSR asks for: exactly one URI SAN, the SPIFFE ID, and the DNS
/// names of a serving certificate (at most [`MAX_DNS_SANS`]), nothing else.
fn requested(sans: &[SanType]) -> Result<(SpiffeId, Vec<String>), String> {
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for san in sans {
        match san {
            SanType::URI(uri) => uris.push(uri.as_str()),
            SanType::DnsName(name) => dns.push(name.as_str().to_owned()),
            SanType::IpAddress(ip) => {
                return Err(format!(
                    "csr asks for IP address {ip}; only a URI and DNS names are allowed"
                ));
            }
            _ => return Err("csr carries a SAN that is neither a URI nor a DNS name".into()),
        }
    }
    if dns.len() > MAX_DNS_SANS {
        return Err(format!(
            "csr asks for {} DNS names, at most {MAX_DNS_SANS} are allowed",
            dns.len()
        ));
    }
    match uris.as_slice() {
        [uri] => Ok((
            SpiffeId::parse(uri).map_err(|e| format!("csr uri san: {e}"))?,
            dns,
        )),
        [] => Err("csr carries no spiffe id (it needs exactly one URI SAN)".into()),
        many => Err(format!(
            "csr must carry exactly one URI SAN, found {}",
            many.len()
        )),
    }
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        match self.certify_inner(request.into_inner()).await {
            Ok(resp) => {
                count(&self.certify_total, Outcome::Issued);
                Ok(Response::new(resp))
            }
            Err((outcome, status)) => Err(refused(&self.certify_total, outcome, status)),
        }
    }
}

fn count(total: &Family<OutcomeLabels, Counter>, result: Outcome) {
    total.get_or_create(&OutcomeLabels { result }).inc();
}

/// Counts and logs a refusal; returns its status.
fn refused(total: &Family<OutcomeLabels, Counter>, outcome: Outcome, status: Status) -> Status {
    count(total, outcome);
    tracing::warn!(
        result = outcome.as_str(),
        message = status.message(),
        "certify refused"
    );
    status
}

// === impl Bounded ===

/// Refuses a request whose message is larger than [`MAX_MESSAGE_BYTES`] with
/// RESOURCE_EXHAUSTED, as the proto promises for an oversize CSR or
/// credential, before tonic reads it: tonic's own limit answers OUT_OF_RANGE.
#[derive(Debug, Clone)]
struct Bounded<S> {
    inner: S,
    certify_total: Family<OutcomeLabels, Counter>,
}

impl<S: NamedService> NamedService for Bounded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Bounded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The service polled ready is the one that must be called.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let total = self.certify_total.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let (body, len) = match message_len(body).await {
                Ok(read) => read,
                Err(status) => return Ok(status.into_http()),
            };
            if let Some(len) = len.filter(|&len| len > MAX_MESSAGE_BYTES) {
                let status = Status::resource_exhausted(format!(
                    "request is {len} bytes, more than the {MAX_MESSAGE_BYTES} a request may be \
                     (a csr may be at most {MAX_CSR_BYTES} bytes, a credential \
                     {MAX_CREDENTIAL_BYTES})"
                ));
                return Ok(refused(&total, Outcome::Oversize, status).into_http());
            }
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// The length a request's first gRPC message declares in its 5-byte prefix
/// (`None` if the body ends sooner), and the body with nothing consumed.
async fn message_len(mut body: Body) -> Result<(Body, Option<usize>), Status> {
    let (mut frames, mut head) = (Vec::new(), Vec::with_capacity(5));
    while head.len() < 5 {
        let Some(frame) = body.frame().await.transpose()? else {
            break;
        };
        let data = frame
            .data_ref()
            .map(|d| d.slice(..d.len().min(5 - head.len())));
        frames.push(frame);
        match data {
            Some(data) => head.extend_from_slice(&data),
            None => break,
        }
    }
    let len = match head[..] {
        [_, a, b, c, d] => Some(u32::from_be_bytes([a, b, c, d]) as usize),
        _ => None,
    };
    let replay = futures::stream::iter(frames.into_iter().map(Ok)).chain(BodyStream::new(body));
    Ok((Body::new(StreamBody::new(replay)), len))
}

/// The service's own certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelfCredentialsError {
    /// The CA could not issue it.
    #[error(transparent)]
    Issue(#[from] meshfed_ca::CaError),
    /// What it issued is not a usable credential.
    #[error(transparent)]
    Credentials(#[from] meshfed_trust::CredentialsError),
}

/// Issues the service's own certificate from its CA and keeps it fresh: the
/// service is its own identity provider.
pub fn self_credentials(
    ca: Arc<ClusterCa>,
    id: SpiffeId,
    ttl: Duration,
) -> Result<(CredentialsWatch, tokio::task::JoinHandle<()>), SelfCredentialsError> {
    let issue = {
        let ca = ca.clone();
        let id = id.clone();
        move || -> Result<Credentials, SelfCredentialsError> {
            let w = ca.issue_workload(&id, ttl)?;
            Ok(w.into_credentials()?)
        }
    };
    let (tx, rx) = watch::channel(Arc::new(issue()?));
    let task = tokio::spawn(async move {
        loop {
            let current = tx.borrow().clone();
            tokio::time::sleep(meshfed_trust::renew_after(
                SystemTime::now(),
                current.not_after(),
            ))
            .await;
            match issue() {
                Ok(next) => {
                    let _ = tx.send(Arc::new(next));
                }
                Err(e) => {
                    tracing::error!(error = %e, "renewing own certificate failed");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
    Ok((rx, task))
}

/// Serves the identity service over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    service: IdentityService,
    creds: CredentialsWatch,
    config: &IdentityServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut tls = bootstrap_server_config(creds);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let incoming = tls_incoming(listener, Arc::new(tls), config.handshake_timeout);
    let certify_total = service.certify_total.clone();
    let svc = IdentityServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(64 * 1024);
    let svc = Bounded {
        inner: svc,
        certify_total,
    };
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
