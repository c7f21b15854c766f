//! Certificate verification for mesh peers: the chain reaches a root of the
//! current trust bundle, every certificate is within validity (with a small
//! clock-skew allowance), the leaf is not a CA and carries exactly one
//! well-formed SPIFFE ID of the trust domain; a client also checks the
//! server is one of the identities it expects. There is no switch that turns
//! any of this off.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::TrustBundle;
use crate::cert::{CertError, CertInfo};
use crate::spiffe::{SpiffeId, TrustDomain};

/// How far a peer's clock may be off before its certificates count as not
/// yet valid or expired.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a peer's certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The chain does not lead to a root of the trust bundle (unknown root,
    /// bad signature, missing intermediate).
    #[error("certificate chain does not lead to a trusted root: {0}")]
    UnknownIssuer(String),
    /// A certificate of the chain expired (beyond the skew allowance).
    #[error("certificate expired")]
    Expired,
    /// A certificate of the chain is not valid yet (beyond the skew allowance).
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// The leaf (or an intermediate) is malformed, or does not carry exactly
    /// one SPIFFE ID.
    #[error("bad certificate: {0}")]
    BadCertificate(#[from] CertError),
    /// The leaf is a CA certificate.
    #[error("a CA certificate was presented as a workload certificate")]
    CaAsLeaf,
    /// The SPIFFE ID names a trust domain, not a workload.
    #[error("spiffe id {0} names no workload")]
    NoWorkload(SpiffeId),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("spiffe id {id} is not in trust domain {expected}")]
    ForeignTrustDomain {
        /// The ID presented.
        id: SpiffeId,
        /// The trust domain accepted.
        expected: TrustDomain,
    },
    /// The server is not one of the identities the client expects.
    #[error("server identity {got} is not one of the expected identities [{expected}]")]
    UnexpectedIdentity {
        /// The ID presented.
        got: SpiffeId,
        /// The IDs accepted, comma separated.
        expected: String,
    },
    /// Any other chain fault webpki found (bad key usage, path length, ...).
    #[error("certificate chain is invalid: {0}")]
    Chain(String),
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        let ce = match e {
            VerifyError::Expired => CertificateError::Expired,
            VerifyError::NotYetValid => CertificateError::NotValidYet,
            VerifyError::UnknownIssuer(_) => CertificateError::UnknownIssuer,
            VerifyError::UnexpectedIdentity { .. } => CertificateError::NotValidForName,
            other => CertificateError::Other(OtherError(Arc::new(other))),
        };
        rustls::Error::InvalidCertificate(ce)
    }
}

/// Where a verifier gets the roots it trusts at the moment of a handshake.
pub trait BundleSource: Send + Sync + fmt::Debug {
    /// The bundle in force now.
    fn bundle(&self) -> Arc<TrustBundle>;
}

impl BundleSource for Arc<TrustBundle> {
    fn bundle(&self) -> Arc<TrustBundle> {
        self.clone()
    }
}

/// The mesh verifier, shared by the server (client auth) and client sides.
#[derive(Debug)]
pub struct SvidVerifier {
    bundles: Box<dyn BundleSource>,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidVerifier {
    /// A verifier trusting whatever `bundles` holds at each handshake.
    pub fn new(bundles: impl BundleSource + 'static, provider: &CryptoProvider) -> Self {
        Self {
            bundles: Box::new(bundles),
            algs: provider.signature_verification_algorithms,
        }
    }

    /// Verifies a peer chain at `now` for server or client use and returns
    /// the peer's SPIFFE ID.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: SystemTime,
        usage: Usage,
    ) -> Result<SpiffeId, VerifyError> {
        let bundle = self.bundles.bundle();
        let leaf = CertInfo::parse(end_entity)?;
        if leaf.is_ca {
            return Err(VerifyError::CaAsLeaf);
        }
        let id = leaf.spiffe_id()?;
        if id.path().is_empty() {
            return Err(VerifyError::NoWorkload(id));
        }
        if id.trust_domain() != bundle.trust_domain() {
            return Err(VerifyError::ForeignTrustDomain {
                id,
                expected: bundle.trust_domain().clone(),
            });
        }
        let at = validation_time(&leaf, intermediates, now)?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| VerifyError::Chain(e.to_string()))?;
        let eku = match usage {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        };
        ee.verify_for_usage(
            self.algs.all,
            bundle.anchors(),
            intermediates,
            unix_time(at),
            eku,
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer
            | webpki::Error::InvalidSignatureForPublicKey
            | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
                VerifyError::UnknownIssuer(e.to_string())
            }
            webpki::Error::CaUsedAsEndEntity => VerifyError::CaAsLeaf,
            other => VerifyError::Chain(other.to_string()),
        })?;
        Ok(id)
    }
}

/// Which side a certificate authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server (serverAuth EKU).
    Server,
    /// A client (clientAuth EKU).
    Client,
}

/// Picks the instant the chain is checked at: `now`, moved by at most
/// [`CLOCK_SKEW`] into the window where every certificate is valid.
fn validation_time(
    leaf: &CertInfo,
    intermediates: &[CertificateDer<'_>],
    now: SystemTime,
) -> Result<SystemTime, VerifyError> {
    let (mut start, mut end) = (leaf.not_before, leaf.not_after);
    for der in intermediates {
        let info = CertInfo::parse(der)?;
        start = start.max(info.not_before);
        end = end.min(info.not_after);
    }
    if now + CLOCK_SKEW < start {
        return Err(VerifyError::NotYetValid);
    }
    if now > end + CLOCK_SKEW {
        return Err(VerifyError::Expired);
    }
    if start > end {
        return Err(VerifyError::Chain(
            "certificate validity periods do not overlap".into(),
        ));
    }
    Ok(now.clamp(start, end))
}

fn unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn system_time(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

/// The identities a client accepts from a server: never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedIds(Vec<SpiffeId>);

impl ExpectedIds {
    /// At least one identity; `None` for an empty list.
    pub fn new(ids: impl IntoIterator<Item = SpiffeId>) -> Option<Self> {
        let ids: Vec<SpiffeId> = ids.into_iter().collect();
        (!ids.is_empty()).then_some(Self(ids))
    }

    /// Exactly one identity.
    pub fn one(id: SpiffeId) -> Self {
        Self(vec![id])
    }

    /// Whether `id` is accepted.
    pub fn contains(&self, id: &SpiffeId) -> bool {
        self.0.contains(id)
    }

    fn describe(&self) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// === impl ServerVerifier ===

/// Client side: checks the server's chain and that its ID is expected.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    inner: SvidVerifier,
    expected: ExpectedIds,
}

impl ServerVerifier {
    pub(crate) fn new(inner: SvidVerifier, expected: ExpectedIds) -> Self {
        Self { inner, expected }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The TLS server name routes (gateways read it as SNI); identity is the SPIFFE ID.
        let id = self
            .inner
            .verify(end_entity, intermediates, system_time(now), Usage::Server)?;
        if !self.expected.contains(&id) {
            return Err(VerifyError::UnexpectedIdentity {
                got: id,
                expected: self.expected.describe(),
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.inner.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.inner.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algs.supported_schemes()
    }
}

// === impl ClientVerifier ===

/// Server side: a client certificate is mandatory and must be a mesh SVID.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    inner: SvidVerifier,
}

impl ClientVerifier {
    pub(crate) fn new(inner: SvidVerifier) -> Self {
        Self { inner }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify(end_entity, intermediates, system_time(now), Usage::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.inner.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.inner.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algs.supported_schemes()
    }
}
