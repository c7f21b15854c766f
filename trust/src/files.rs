//! PEM files on disk: certificates (`*.crt`) and keys (`*.key`, mode 0600).
//! Parsing goes through rustls-pki-types; writing never overwrites unless
//! asked to.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// File names of the on-disk layout.
pub mod paths {
    /// Root CA certificate; in a cluster or workload directory, the trust bundle.
    pub const ROOT_CERT: &str = "root.crt";
    /// Root CA private key.
    pub const ROOT_KEY: &str = "root.key";
    /// Cluster intermediate CA certificate.
    pub const INTERMEDIATE_CERT: &str = "intermediate.crt";
    /// Cluster intermediate CA private key.
    pub const INTERMEDIATE_KEY: &str = "intermediate.key";
    /// Workload leaf certificate (alone).
    pub const LEAF_CERT: &str = "leaf.crt";
    /// Workload private key.
    pub const LEAF_KEY: &str = "leaf.key";
}

/// A file could not be read, parsed or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not the PEM expected.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file exists and overwriting was not asked for.
    #[error("{0} already exists (pass --force to overwrite)")]
    Exists(PathBuf),
}

/// Reads every certificate of a PEM file; at least one must be there.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = fs::read(path).map_err(|source| FileError::Io {
        path: path.into(),
        source,
    })?;
    parse_certs(&bytes).map_err(|reason| FileError::Pem {
        path: path.into(),
        reason,
    })
}

/// Parses every certificate of PEM text; at least one must be there.
pub fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

/// Reads the one private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let bytes = fs::read(path).map_err(|source| FileError::Io {
        path: path.into(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| FileError::Pem {
        path: path.into(),
        reason: format!("no private key found: {e}"),
    })
}

/// Encodes DER as one PEM block.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Certificates as concatenated PEM blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| to_pem("CERTIFICATE", c)).collect()
}

/// Writes a certificate file (mode 0644).
pub fn write_certs(
    path: &Path,
    certs: &[CertificateDer<'_>],
    force: bool,
) -> Result<(), FileError> {
    write_file(path, certs_to_pem(certs).as_bytes(), 0o644, force)
}

/// Writes a PKCS#8 private key file with mode 0600.
pub fn write_key(path: &Path, pkcs8_der: &[u8], force: bool) -> Result<(), FileError> {
    write_file(
        path,
        to_pem("PRIVATE KEY", pkcs8_der).as_bytes(),
        0o600,
        force,
    )
}

/// Refuses early, before anything is written, if any of `paths` exists and
/// `force` is not set: a command writes all of its files or none.
pub fn check_writable(paths: &[PathBuf], force: bool) -> Result<(), FileError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(FileError::Exists(p.clone())),
        None => Ok(()),
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), FileError> {
    let io = |source| FileError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut opts = OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            FileError::Exists(path.into())
        } else {
            io(e)
        }
    })?;
    // `mode` only applies on creation; an overwritten file gets it here.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)
}
