//! Reading certificates with x509-parser: the facts the verifiers, the
//! identity service and `meshctl trust inspect` need, in one place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate could not be read, or does not carry one SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The DER does not parse as an X.509 certificate (or has trailing bytes).
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// The certificate carries no URI SAN.
    #[error("certificate has no URI SAN (an X.509-SVID carries exactly one)")]
    NoUriSan,
    /// The certificate carries more than one URI SAN.
    #[error("certificate has {0} URI SANs (an X.509-SVID carries exactly one)")]
    ManyUriSans(usize),
    /// The URI SAN is not a well-formed SPIFFE ID.
    #[error("certificate URI SAN is not a spiffe id: {0}")]
    NotSpiffe(#[from] SpiffeIdError),
}

/// What Meshfed reads out of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, RFC 4514 style.
    pub subject: String,
    /// Issuer distinguished name, RFC 4514 style.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
    /// Every URI SAN, as written.
    pub uri_sans: Vec<String>,
    /// Every DNS SAN (serving certificates of webhooks carry them).
    pub dns_sans: Vec<String>,
    /// SHA-256 of the DER, lowercase hex, colon separated.
    pub fingerprint_sha256: String,
    /// Whether subject and issuer are the same name (a root).
    pub self_issued: bool,
    /// DER of the SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Malformed(
                "trailing bytes after certificate".into(),
            ));
        }
        let validity = cert.validity();
        let names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san.value.general_names.clone(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(CertError::Malformed(format!("subjectAltName: {e}"))),
        };
        let (mut uri_sans, mut dns_sans) = (Vec::new(), Vec::new());
        for name in names {
            match name {
                GeneralName::URI(u) => uri_sans.push(u.to_owned()),
                GeneralName::DNSName(d) => dns_sans.push(d.to_owned()),
                _ => {}
            }
        }
        let is_ca = match cert.basic_constraints() {
            Ok(bc) => bc.is_some_and(|bc| bc.value.ca),
            Err(e) => return Err(CertError::Malformed(format!("basicConstraints: {e}"))),
        };
        Ok(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_before: to_system_time(validity.not_before.timestamp()),
            not_after: to_system_time(validity.not_after.timestamp()),
            is_ca,
            uri_sans,
            dns_sans,
            fingerprint_sha256: fingerprint(der),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
            spki_der: cert.public_key().raw.to_vec(),
        })
    }

    /// The one SPIFFE ID of an X.509-SVID: exactly one URI SAN, well formed.
    pub fn spiffe_id(&self) -> Result<SpiffeId, CertError> {
        match self.uri_sans.as_slice() {
            [] => Err(CertError::NoUriSan),
            [one] => Ok(SpiffeId::parse(one)?),
            many => Err(CertError::ManyUriSans(many.len())),
        }
    }
}

/// SHA-256 fingerprint of a DER blob, `ab:cd:...`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex.join(":")
}

/// Parses the first certificate of a chain and returns its SPIFFE ID.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, CertError> {
    CertInfo::parse(cert)?.spiffe_id()
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

/// The DNS names a workload may hold in its serving certificate: those of
/// the Service named like its service account, in its own namespace
/// (`<sa>.<ns>.svc` and `<sa>.<ns>.svc.cluster.local`), which is how the API
/// server reaches a webhook. No other workload can be given them, since no
/// other workload runs as that service account there.
pub fn serving_names(namespace: &str, service_account: &str) -> [String; 2] {
    let svc = format!("{service_account}.{namespace}.svc");
    [svc.clone(), format!("{svc}.cluster.local")]
}
