//! Live TLS for the mesh: a workload's current credentials sit in a watch
//! channel; server and client configs read them at every handshake, so a
//! rotation takes effect for new connections at once while open ones keep
//! the session they negotiated.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::bundle::{BundleError, TrustBundle};
use crate::cert::{CertError, CertInfo};
use crate::files::{self, FileError, paths};
use crate::spiffe::SpiffeId;
use crate::verify::{
    BundleSource, ClientVerifier, ExpectedIds, ServerVerifier, SvidVerifier, Usage, VerifyError,
};

/// Why credentials could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The chain is empty.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// The leaf does not parse or carries no single SPIFFE ID.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The private key is unusable or does not match the leaf.
    #[error("private key: {0}")]
    Key(String),
    /// The chain does not verify against the bundle it came with.
    #[error("own certificate would be refused by peers: {0}")]
    Verify(#[from] VerifyError),
    /// The bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
}

/// A workload's current identity: its SVID, key and the roots it trusts.
#[derive(Debug)]
pub struct Credentials {
    id: SpiffeId,
    certified: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    bundle: Arc<TrustBundle>,
}

/// Where live TLS configs read the current credentials from.
pub type CredentialsWatch = watch::Receiver<Arc<Credentials>>;

impl Credentials {
    /// Assembles credentials from a chain (leaf first), the leaf's key and
    /// the bundle; refuses anything a peer would refuse.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: TrustBundle,
    ) -> Result<Self, CredentialsError> {
        let leaf = chain.first().ok_or(CredentialsError::EmptyChain)?;
        let info = CertInfo::parse(leaf)?;
        let bundle = Arc::new(bundle);
        let verifier = SvidVerifier::new(bundle.clone(), &provider());
        let now = SystemTime::now();
        let id = verifier.verify(leaf, &chain[1..], now, Usage::Server)?;
        verifier.verify(leaf, &chain[1..], now, Usage::Client)?;
        let certified = CertifiedKey::from_der(chain, key, &provider())
            .map_err(|e| CredentialsError::Key(e.to_string()))?;
        Ok(Self {
            id,
            certified: Arc::new(certified),
            not_before: info.not_before,
            not_after: info.not_after,
            bundle,
        })
    }

    /// Loads an offline workload directory: `leaf.crt`, `intermediate.crt`,
    /// `leaf.key` and the bundle `root.crt`.
    pub fn from_dir(dir: &Path) -> Result<Self, CredentialsError> {
        let mut chain = files::read_certs(&dir.join(paths::LEAF_CERT))?;
        chain.extend(files::read_certs(&dir.join(paths::INTERMEDIATE_CERT))?);
        let key = files::read_key(&dir.join(paths::LEAF_KEY))?;
        let leaf = CertInfo::parse(&chain[0])?.spiffe_id()?;
        let bundle =
            TrustBundle::from_file(leaf.trust_domain().clone(), &dir.join(paths::ROOT_CERT))?;
        Self::new(chain, key, bundle)
    }

    /// The SPIFFE ID of the leaf.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The leaf then its intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// Start of the leaf's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the leaf's validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The roots trusted with these credentials.
    pub fn bundle(&self) -> &Arc<TrustBundle> {
        &self.bundle
    }

    /// A watch channel holding these credentials, for a workload whose
    /// credentials come from files rather than the identity service.
    pub fn into_watch(self) -> (watch::Sender<Arc<Credentials>>, CredentialsWatch) {
        watch::channel(Arc::new(self))
    }
}

impl BundleSource for CredentialsWatch {
    fn bundle(&self) -> Arc<TrustBundle> {
        self.borrow().bundle.clone()
    }
}

/// The process-wide crypto provider: the one installed at start, or ring.
pub fn provider() -> Arc<CryptoProvider> {
    if let Some(p) = CryptoProvider::get_default() {
        return p.clone();
    }
    // A racing install by another thread is fine: either way ring is in force.
    let _ = rustls::crypto::ring::default_provider().install_default();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Installs ring as the process-wide provider; binaries call this once at start.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A mesh server: presents the current SVID and requires a client SVID of
/// the trust domain. TLS 1.3 only.
pub fn server_config(creds: CredentialsWatch) -> ServerConfig {
    let p = provider();
    let verifier = ClientVerifier::new(SvidVerifier::new(creds.clone(), &p));
    ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(LiveCert(creds)))
}

/// A mesh client: presents the current SVID and accepts only a server whose
/// SPIFFE ID is in `expected`. TLS 1.3 only.
pub fn client_config(creds: CredentialsWatch, expected: ExpectedIds) -> ClientConfig {
    let p = provider();
    let verifier = ServerVerifier::new(SvidVerifier::new(creds.clone(), &p), expected);
    ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous() // not weaker: the SPIFFE verifier replaces DNS-name checks
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(LiveCert(creds)))
}

/// The identity service's server: presents its SVID but asks for no client
/// certificate, because its callers have none yet — they prove themselves
/// with a credential inside the request.
pub fn bootstrap_server_config(creds: CredentialsWatch) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(LiveCert(creds)))
}

/// A workload's first call to the identity service: no client certificate
/// yet; the server must chain to `bundles` and be one of `expected`.
pub fn bootstrap_client_config(
    bundles: impl BundleSource + 'static,
    expected: ExpectedIds,
) -> ClientConfig {
    let p = provider();
    let verifier = ServerVerifier::new(SvidVerifier::new(bundles, &p), expected);
    ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous() // not weaker: the SPIFFE verifier replaces DNS-name checks
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

/// The SPIFFE ID of a verified peer, from its certificates.
pub fn peer_id(peer_certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    let leaf = peer_certs?.first()?;
    CertInfo::parse(leaf).ok()?.spiffe_id().ok()
}

/// Hands the current SVID to every new handshake, server or client side.
#[derive(Debug)]
struct LiveCert(CredentialsWatch);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().certified.clone())
    }
}

impl ResolvesClientCert for LiveCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.borrow().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
