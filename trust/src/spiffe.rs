//! SPIFFE IDs: `spiffe://<trust-domain>/<path>`, validated by the rules of the
//! SPIFFE ID specification, plus the workload form Meshfed issues:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (the SPIFFE spec's limit for URIs).
const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID (or not one of the expected shape).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string does not start with `spiffe://`.
    #[error("not a spiffe id: {0:?} does not start with spiffe://")]
    Scheme(String),
    /// The trust domain is empty, too long, or has a character outside `[a-z0-9._-]`.
    #[error(
        "bad trust domain {0:?}: use 1-255 characters of lowercase letters, digits, '.', '-', '_'"
    )]
    TrustDomain(String),
    /// The path has an empty, `.` or `..` segment, or a character outside `[A-Za-z0-9._-]`.
    #[error(
        "bad spiffe id path {0:?}: segments must be non-empty, not '.' or '..', and use only letters, digits, '.', '-', '_'"
    )]
    Path(String),
    /// The ID is longer than 2048 bytes.
    #[error("spiffe id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The ID names no workload (an empty path), where one was needed.
    #[error("spiffe id {0} names no workload (it has no path)")]
    NoPath(String),
    /// The ID is not of the form `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "spiffe id {0} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    NotWorkload(String),
}

/// A trust domain: the name every linked cluster of one federation shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Validates a trust domain name (lowercase letters, digits, `.`, `-`, `_`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_TRUST_DOMAIN_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(SpiffeIdError::TrustDomain(name.to_owned()))
        }
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<trust-domain>` (carried by CA certificates).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.clone(),
            path: String::new(),
        }
    }

    /// The workload ID `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        let id = SpiffeId::new(
            self.clone(),
            &format!("/ns/{namespace}/sa/{service_account}"),
        )?;
        id.workload()?;
        Ok(id)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A well-formed SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg/seg...`.
    path: String,
}

impl SpiffeId {
    /// Builds an ID from a trust domain and a path (empty or starting with `/`).
    pub fn new(trust_domain: TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        if "spiffe://".len() + trust_domain.0.len() + path.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(Self {
            trust_domain,
            path: path.to_owned(),
        })
    }

    /// Parses `spiffe://<trust-domain>[/<path>]`; rejects ports, user info,
    /// queries, fragments and percent-encoding (none are allowed by SPIFFE).
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        Self::new(TrustDomain::new(td)?, path)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The namespace and service account of a workload ID.
    pub fn workload(&self) -> Result<(&str, &str), SpiffeIdError> {
        let mut segs = self.path.strip_prefix('/').unwrap_or_default().split('/');
        match (
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
            segs.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Ok((ns, sa)),
            _ => Err(SpiffeIdError::NotWorkload(self.to_string())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let bad = || SpiffeIdError::Path(path.to_owned());
    let segs = path.strip_prefix('/').ok_or_else(bad)?;
    for seg in segs.split('/') {
        let ok = !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id = SpiffeId::parse("spiffe://mesh.example/ns/shop/sa/api").expect("valid");
        assert_eq!(id.trust_domain().as_str(), "mesh.example");
        assert_eq!(id.workload().expect("workload"), ("shop", "api"));
        assert_eq!(id.to_string(), "spiffe://mesh.example/ns/shop/sa/api");
        let td = SpiffeId::parse("spiffe://mesh.example").expect("trust domain id");
        assert_eq!(td.path(), "");
        assert!(td.workload().is_err());
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "http://mesh.example/ns/a/sa/b",
            "spiffe://",
            "spiffe://Mesh.Example/ns/a/sa/b",
            "spiffe://mesh.example:443/ns/a/sa/b",
            "spiffe://user@mesh.example/ns/a/sa/b",
            "spiffe://mesh.example/",
            "spiffe://mesh.example//sa",
            "spiffe://mesh.example/ns/./sa/b",
            "spiffe://mesh.example/ns/../sa/b",
            "spiffe://mesh.example/ns/a?x=1",
            "spiffe://mesh.example/ns/a#frag",
            "spiffe://mesh.example/ns/a%20b",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(SpiffeIdError::TooLong));
    }

    #[test]
    fn workload_shape_is_strict() {
        for not_workload in [
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/namespace/a/sa/b",
        ] {
            let id = SpiffeId::parse(not_workload).expect("well-formed");
            assert!(id.workload().is_err(), "{not_workload}");
        }
        let td = TrustDomain::new("td").expect("valid");
        assert!(td.workload("a/b", "c").is_err());
        assert_eq!(
            td.workload("a", "c").expect("valid").to_string(),
            "spiffe://td/ns/a/sa/c"
        );
    }
}
