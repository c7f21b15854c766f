//! Trust bundles: the root CAs a trust domain trusts. A bundle holds one or
//! more roots so a root rotates by publishing old and new together. Loaded
//! from PEM or from the SPIFFE bundle JSON format (a JWK set whose
//! `x509-svid` keys each carry their root certificate in `x5c`).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::TrustAnchor;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::cert::{CertError, CertInfo};
use crate::files::{self, FileError};
use crate::spiffe::TrustDomain;

/// Why a bundle could not be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle holds no root.
    #[error("trust bundle holds no root certificate")]
    Empty,
    /// A certificate in the bundle does not parse.
    #[error("trust bundle root #{index}: {source}")]
    Cert {
        /// Position in the bundle, from 0.
        index: usize,
        /// What is wrong with it.
        source: CertError,
    },
    /// A certificate in the bundle is not a CA.
    #[error("trust bundle root #{0} is not a CA certificate")]
    NotCa(usize),
    /// webpki cannot use the certificate as a trust anchor.
    #[error("trust bundle root #{index} is not usable as a trust anchor: {reason}")]
    Anchor {
        /// Position in the bundle, from 0.
        index: usize,
        /// webpki's reason.
        reason: String,
    },
    /// The SPIFFE bundle JSON is malformed or inconsistent.
    #[error("spiffe bundle json: {0}")]
    Json(String),
    /// Reading the file failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// The roots a trust domain trusts.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle; every root must parse, be a CA and be usable as a
    /// trust anchor. Duplicates are dropped.
    pub fn new(
        trust_domain: TrustDomain,
        roots: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        let mut unique: Vec<CertificateDer<'static>> = Vec::new();
        for root in roots {
            if !unique.contains(&root) {
                unique.push(root);
            }
        }
        if unique.is_empty() {
            return Err(BundleError::Empty);
        }
        let mut anchors = Vec::with_capacity(unique.len());
        for (index, root) in unique.iter().enumerate() {
            let info =
                CertInfo::parse(root).map_err(|source| BundleError::Cert { index, source })?;
            if !info.is_ca {
                return Err(BundleError::NotCa(index));
            }
            let anchor =
                webpki::anchor_from_trusted_cert(root).map_err(|e| BundleError::Anchor {
                    index,
                    reason: e.to_string(),
                })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self {
            trust_domain,
            roots: unique,
            anchors,
        })
    }

    /// Loads a bundle from PEM text (one or more CERTIFICATE blocks).
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, BundleError> {
        let roots = files::parse_certs(pem).map_err(BundleError::Json)?;
        Self::new(trust_domain, roots)
    }

    /// Loads a bundle file: SPIFFE bundle JSON if it starts with `{`, PEM otherwise.
    pub fn from_file(trust_domain: TrustDomain, path: &Path) -> Result<Self, BundleError> {
        let bytes = std::fs::read(path).map_err(|source| FileError::Io {
            path: path.into(),
            source,
        })?;
        let in_file = |e: BundleError| match e {
            BundleError::File(f) => BundleError::File(f),
            other => BundleError::File(FileError::Pem {
                path: path.into(),
                reason: other.to_string(),
            }),
        };
        if bytes.trim_ascii_start().starts_with(b"{") {
            let text = String::from_utf8(bytes)
                .map_err(|_| in_file(BundleError::Json("not UTF-8".into())))?;
            Self::from_spiffe_json(trust_domain, &text).map_err(in_file)
        } else {
            Self::from_pem(trust_domain, &bytes).map_err(in_file)
        }
    }

    /// Loads a bundle from the SPIFFE bundle JSON format. Keys whose `use`
    /// is not `x509-svid` (JWT keys) are skipped; each X.509 key must carry
    /// exactly one certificate whose public key matches the JWK's.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &str) -> Result<Self, BundleError> {
        let doc: JwkSet =
            serde_json::from_str(json).map_err(|e| BundleError::Json(e.to_string()))?;
        let mut roots = Vec::new();
        for (i, key) in doc.keys.iter().enumerate() {
            if key.use_.as_deref() != Some("x509-svid") {
                continue;
            }
            let [cert_b64] = key.x5c.as_slice() else {
                return Err(BundleError::Json(format!(
                    "key #{i}: x509-svid key must carry exactly one certificate in x5c, found {}",
                    key.x5c.len()
                )));
            };
            let der = STANDARD
                .decode(cert_b64)
                .map_err(|e| BundleError::Json(format!("key #{i}: x5c is not base64: {e}")))?;
            let info =
                CertInfo::parse(&der).map_err(|source| BundleError::Cert { index: i, source })?;
            let expected = Jwk::for_spki(&info.spki_der, Vec::new())
                .map_err(|e| BundleError::Json(format!("key #{i}: {e}")))?;
            if !key.same_public_key(&expected) {
                return Err(BundleError::Json(format!(
                    "key #{i}: JWK parameters do not match the public key of its x5c certificate"
                )));
            }
            roots.push(CertificateDer::from(der));
        }
        Self::new(trust_domain, roots)
    }

    /// Renders the bundle in the SPIFFE bundle JSON format.
    pub fn to_spiffe_json(&self, sequence: u64) -> Result<String, BundleError> {
        let mut keys = Vec::with_capacity(self.roots.len());
        for (index, root) in self.roots.iter().enumerate() {
            let info =
                CertInfo::parse(root).map_err(|source| BundleError::Cert { index, source })?;
            let jwk = Jwk::for_spki(&info.spki_der, vec![STANDARD.encode(root)])
                .map_err(|e| BundleError::Json(format!("root #{index}: {e}")))?;
            keys.push(jwk);
        }
        let doc = JwkSet {
            spiffe_sequence: Some(sequence),
            keys,
        };
        serde_json::to_string_pretty(&doc).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// The trust domain these roots anchor.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// SHA-256 fingerprints of the roots.
    pub fn fingerprints(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|r| crate::cert::fingerprint(r))
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct JwkSet {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    spiffe_sequence: Option<u64>,
    keys: Vec<Jwk>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwk {
    #[serde(rename = "use", skip_serializing_if = "Option::is_none", default)]
    use_: Option<String>,
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    e: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

impl Jwk {
    /// The JWK public parameters of an SPKI (EC P-256/P-384, RSA, Ed25519).
    fn for_spki(spki_der: &[u8], x5c: Vec<String>) -> Result<Self, String> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| e.to_string())?;
        let mut jwk = Jwk {
            use_: Some("x509-svid".into()),
            kty: String::new(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            x5c,
        };
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match spki.parsed().map_err(|e| e.to_string())? {
            PublicKey::EC(point) => {
                let data = point.data();
                let (crv, len) = match data.len() {
                    65 => ("P-256", 32),
                    97 => ("P-384", 48),
                    n => return Err(format!("unsupported EC point of {n} bytes")),
                };
                if data[0] != 4 {
                    return Err("compressed EC points are not supported".into());
                }
                jwk.kty = "EC".into();
                jwk.crv = Some(crv.into());
                jwk.x = Some(b64(&data[1..1 + len]));
                jwk.y = Some(b64(&data[1 + len..]));
            }
            PublicKey::RSA(rsa) => {
                let strip = |b: &'_ [u8]| -> Vec<u8> {
                    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                    b[start..].to_vec()
                };
                jwk.kty = "RSA".into();
                jwk.n = Some(b64(&strip(rsa.modulus)));
                jwk.e = Some(b64(&strip(rsa.exponent)));
            }
            _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(b64(&spki.subject_public_key.data));
            }
            _ => return Err("unsupported public key type".into()),
        }
        Ok(jwk)
    }

    fn same_public_key(&self, other: &Jwk) -> bool {
        self.kty == other.kty
            && self.crv == other.crv
            && self.x == other.x
            && self.y == other.y
            && self.n == other.n
            && self.e == other.e
    }
}
