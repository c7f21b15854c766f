//! Meshfed's CA hierarchy: an offline root per federation, one intermediate
//! per cluster signed by the root (path length 0), and short-lived workload
//! leaves (X.509-SVIDs) signed by the intermediate.
//!
//! The identity service signs with a cluster CA, `meshctl trust` makes and
//! rotates roots, and tests issue their certificates with it. It links no
//! Kubernetes client, so the data plane's own tests can use it too.
//!
//! On disk a root directory holds `root.crt` + `root.key`; a cluster CA
//! directory holds `intermediate.crt` + `intermediate.key` and the cluster's
//! trust bundle `root.crt` (every root it trusts, old and new during a
//! rotation); an offline workload directory holds `leaf.crt`,
//! `intermediate.crt`, `root.crt` and `leaf.key`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use meshfed_trust::{
    BundleError, CertError, CertInfo, Credentials, CredentialsError, FileError, SpiffeId,
    SpiffeIdError, TrustBundle, TrustDomain, paths,
};

/// Default root lifetime: ten years.
pub const DEFAULT_ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default intermediate lifetime: one year.
pub const DEFAULT_INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default leaf lifetime: 24 hours.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Leaves start this much before issuance, so a peer whose clock is a little
/// behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(60);

/// The key algorithm of a CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (the default).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
}

impl KeyAlgorithm {
    fn generate(self) -> Result<KeyPair, CaError> {
        let alg = match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        Ok(KeyPair::generate_for(alg)?)
    }
}

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen could not build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate on disk is unusable.
    #[error("{path}: {source}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: CertError,
    },
    /// The CA directory is inconsistent (wrong kind of cert, key mismatch, broken chain).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A SPIFFE ID or trust domain is malformed, or not a workload ID.
    #[error(transparent)]
    Spiffe(#[from] SpiffeIdError),
    /// The ID belongs to another trust domain than this CA's.
    #[error("{id} is not in this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The ID asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// A cluster name is not a DNS label.
    #[error(
        "bad cluster name {0:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
    )]
    ClusterName(String),
    /// The trust bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// Reading or writing a file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The offline root of a federation.
#[derive(Debug)]
pub struct RootCa {
    signer: Signer,
}

/// One cluster's intermediate CA, with the bundle of roots the cluster trusts.
#[derive(Debug)]
pub struct ClusterCa {
    signer: Signer,
    bundle: TrustBundle,
}

/// A workload leaf issued offline: chain (leaf, intermediate) and its key.
#[derive(Debug)]
pub struct IssuedWorkload {
    /// Leaf first, then the intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// The bundle the issuing cluster trusts.
    pub bundle: TrustBundle,
}

impl IssuedWorkload {
    /// The leaf, its key and the bundle as the workload's credentials.
    pub fn into_credentials(self) -> Result<Credentials, CredentialsError> {
        Credentials::new(
            self.chain,
            PrivatePkcs8KeyDer::from(self.key_pkcs8).into(),
            self.bundle,
        )
    }

    /// Writes an offline workload directory: `leaf.crt`, `leaf.key` (0600),
    /// `intermediate.crt` and the bundle `root.crt` — what a component's
    /// `--credentials-dir` reads.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let [leaf, key, intermediate, bundle] = [
            paths::LEAF_CERT,
            paths::LEAF_KEY,
            paths::INTERMEDIATE_CERT,
            paths::ROOT_CERT,
        ]
        .map(|f| dir.join(f));
        meshfed_trust::check_writable(
            &[
                leaf.clone(),
                key.clone(),
                intermediate.clone(),
                bundle.clone(),
            ],
            force,
        )?;
        meshfed_trust::write_key(&key, &self.key_pkcs8, force)?;
        meshfed_trust::write_certs(&leaf, &self.chain[..1], force)?;
        meshfed_trust::write_certs(&intermediate, &self.chain[1..], force)?;
        meshfed_trust::write_certs(&bundle, self.bundle.roots(), force)?;
        Ok(())
    }
}

#[derive(Debug)]
struct Signer {
    cert: CertificateDer<'static>,
    info: CertInfo,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: TrustDomain,
}

// === impl RootCa ===

impl RootCa {
    /// Creates a new self-signed root for `trust_domain`.
    pub fn generate(
        trust_domain: &TrustDomain,
        alg: KeyAlgorithm,
        validity: Duration,
    ) -> Result<Self, CaError> {
        let key = alg.generate()?;
        let now = SystemTime::now();
        let mut params = ca_params(trust_domain, "meshfed root CA", now, now + validity)?;
        // Root -> cluster intermediate -> leaf: one CA may stand below the root.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self {
            signer: Signer::new(cert, key, Path::new("<generated>"))?,
        })
    }

    /// Issues the intermediate CA of one cluster. `extra_roots` are trusted
    /// besides this root (the old root while rotating to this one).
    pub fn issue_cluster(
        &self,
        cluster: &str,
        validity: Duration,
        extra_roots: Vec<CertificateDer<'static>>,
    ) -> Result<ClusterCa, CaError> {
        validate_cluster_name(cluster)?;
        let key = KeyAlgorithm::EcdsaP256.generate()?;
        let now = SystemTime::now();
        let not_after = (now + validity).min(self.signer.info.not_after);
        let td = &self.signer.trust_domain;
        let mut params = ca_params(
            td,
            &format!("meshfed {cluster} intermediate CA"),
            now,
            not_after,
        )?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, cluster);
        // Intermediates sign leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.signed_by(&key, &self.signer.issuer)?.der().clone();
        let bundle = TrustBundle::new(
            td.clone(),
            std::iter::once(self.signer.cert.clone()).chain(extra_roots),
        )?;
        Ok(ClusterCa {
            signer: Signer::new(cert, key, Path::new("<generated>"))?,
            bundle,
        })
    }

    /// The root certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.signer.cert
    }

    /// The federation's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.signer.trust_domain
    }

    /// Writes `root.crt` and `root.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let (crt, key) = (dir.join(paths::ROOT_CERT), dir.join(paths::ROOT_KEY));
        meshfed_trust::check_writable(&[crt.clone(), key.clone()], force)?;
        meshfed_trust::write_key(&key, &self.signer.issuer.key().serialize_der(), force)?;
        meshfed_trust::write_certs(&crt, std::slice::from_ref(&self.signer.cert), force)?;
        Ok(())
    }

    /// Loads `root.crt` and `root.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let crt = dir.join(paths::ROOT_CERT);
        let cert = single_cert(&crt)?;
        let key = load_key(&dir.join(paths::ROOT_KEY))?;
        let signer = Signer::new(cert, key, &crt)?;
        if !signer.info.self_issued {
            return Err(invalid(&crt, "not a root: subject and issuer differ"));
        }
        Ok(Self { signer })
    }
}

// === impl ClusterCa ===

impl ClusterCa {
    /// Signs a workload leaf for `id` over a public key the workload holds.
    /// The leaf lives `ttl`, cut short to the intermediate's own expiry.
    pub fn issue_leaf(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        self.issue_serving_leaf(id, &[], public_key, ttl)
    }

    /// [`ClusterCa::issue_leaf`] that also names `dns_names`, for a workload
    /// that serves clients outside the mesh under a Service's DNS name (an
    /// admission webhook called by the API server). Which names a workload
    /// may hold is the identity service's rule ([`serving_names`]); this only
    /// signs.
    pub fn issue_serving_leaf(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        id.workload()?;
        if id.trust_domain() != &self.signer.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.signer.trust_domain.clone(),
            });
        }
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meshfed");
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (now - BACKDATE).max(self.signer.info.not_before).into();
        params.not_after = (now + ttl).min(self.signer.info.not_after).into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(public_key, &self.signer.issuer)?
            .der()
            .clone();
        Ok(vec![leaf, self.signer.cert.clone()])
    }

    /// Issues a leaf with a freshly generated key (offline issuance, tests).
    pub fn issue_workload(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedWorkload, CaError> {
        let key = KeyAlgorithm::EcdsaP256.generate()?;
        let chain = self.issue_leaf(id, &key, ttl)?;
        Ok(IssuedWorkload {
            chain,
            key_pkcs8: key.serialize_der(),
            bundle: self.bundle.clone(),
        })
    }

    /// The intermediate certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.signer.cert
    }

    /// The roots this cluster trusts.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The federation's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.signer.trust_domain
    }

    /// The intermediate's end of validity.
    pub fn not_after(&self) -> SystemTime {
        self.signer.info.not_after
    }

    /// Writes `intermediate.crt`, `intermediate.key` (0600) and the bundle `root.crt`.
    pub fn save(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let crt = dir.join(paths::INTERMEDIATE_CERT);
        let key = dir.join(paths::INTERMEDIATE_KEY);
        let bundle = dir.join(paths::ROOT_CERT);
        meshfed_trust::check_writable(&[crt.clone(), key.clone(), bundle.clone()], force)?;
        meshfed_trust::write_key(&key, &self.signer.issuer.key().serialize_der(), force)?;
        meshfed_trust::write_certs(&crt, std::slice::from_ref(&self.signer.cert), force)?;
        meshfed_trust::write_certs(&bundle, self.bundle.roots(), force)?;
        Ok(())
    }

    /// Loads a cluster CA directory and checks the intermediate is a CA
    /// signed by one of the bundle's roots, and that its key matches.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let crt = dir.join(paths::INTERMEDIATE_CERT);
        let cert = single_cert(&crt)?;
        let key = load_key(&dir.join(paths::INTERMEDIATE_KEY))?;
        let signer = Signer::new(cert, key, &crt)?;
        let bundle =
            TrustBundle::from_file(signer.trust_domain.clone(), &dir.join(paths::ROOT_CERT))?;
        let (_, inter) = X509Certificate::from_der(&signer.cert)
            .map_err(|e| invalid(&crt, &format!("malformed: {e}")))?;
        let signed_by_root = bundle.roots().iter().any(|root| {
            X509Certificate::from_der(root)
                .is_ok_and(|(_, r)| inter.verify_signature(Some(r.public_key())).is_ok())
        });
        if !signed_by_root {
            return Err(invalid(&crt, "not signed by any root in root.crt"));
        }
        Ok(Self { signer, bundle })
    }
}

// === impl Signer ===

impl Signer {
    fn new(cert: CertificateDer<'static>, key: KeyPair, path: &Path) -> Result<Self, CaError> {
        let info = CertInfo::parse(&cert).map_err(|source| CaError::Cert {
            path: path.into(),
            source,
        })?;
        if !info.is_ca {
            return Err(invalid(path, "not a CA certificate"));
        }
        if info.spki_der != key.subject_public_key_info() {
            return Err(invalid(
                path,
                "the private key does not match the certificate",
            ));
        }
        let id = info.spiffe_id().map_err(|source| CaError::Cert {
            path: path.into(),
            source,
        })?;
        if !id.path().is_empty() {
            return Err(invalid(
                path,
                "a CA carries its trust domain's ID spiffe://<td>, with no path",
            ));
        }
        let trust_domain = id.trust_domain().clone();
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Self {
            cert,
            info,
            issuer,
            trust_domain,
        })
    }
}

fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "meshfed");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // The CA carries its trust domain's ID, so tools read the domain off it.
    params.subject_alt_names = vec![SanType::URI(td.id().to_string().try_into()?)];
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte to strip
    SerialNumber::from_slice(&bytes)
}

fn validate_cluster_name(name: &str) -> Result<(), CaError> {
    let b = name.as_bytes();
    let ok = (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(CaError::ClusterName(name.to_owned()))
    }
}

fn single_cert(path: &Path) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = meshfed_trust::read_certs(path)?;
    if certs.len() != 1 {
        return Err(invalid(
            path,
            &format!("expected one certificate, found {}", certs.len()),
        ));
    }
    Ok(certs.remove(0))
}

fn load_key(path: &Path) -> Result<KeyPair, CaError> {
    let der = meshfed_trust::read_key(path)?;
    KeyPair::try_from(&der).map_err(|e| invalid(path, &format!("unusable private key: {e}")))
}

fn invalid(path: &Path, reason: &str) -> CaError {
    CaError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}
