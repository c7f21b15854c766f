//! The TLS server names spoken to an east-west gateway.
//!
//! - `<name>.<namespace>.<port>.svc.meshfed.local` — a service port the
//!   gateway's cluster exports; the gateway passes the connection through to
//!   one of its endpoints. `port` is the Service port, not the target port.
//! - `<name>.<namespace>.<port>.<source-cluster>.svc.meshfed.local` — the
//!   same, naming the calling cluster (what sidecars send). The gateway never
//!   sees the caller's certificate, so this claim is only used to label
//!   metrics, and only when it names a linked cluster.
//! - `federation.meshfed.local` — the cluster controller's federation service.
//! - `probe.meshfed.local` — the gateway's own health endpoint (mTLS with the
//!   gateway's identity; `GET /ready` answers `200` when it is ready).
//!
//! Names are matched without regard to ASCII case. Nothing else is valid: in
//! particular an IP address is never a destination.

use std::fmt;

/// The reserved SNI of the federation service.
pub const FEDERATION: &str = "federation.meshfed.local";

/// The reserved SNI of the gateway's probe endpoint.
pub const PROBE: &str = "probe.meshfed.local";

const SERVICE_SUFFIX: &str = ".svc.meshfed.local";
const MAX_LEN: usize = 253;

/// What a server name asks the gateway for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A port of an exported service.
    Service {
        /// The Service's name.
        name: String,
        /// The Service's namespace.
        namespace: String,
        /// The Service port.
        port: u16,
        /// The calling cluster, as the caller claims it (metrics only).
        source: Option<String>,
    },
    /// The federation service.
    Federation,
    /// The gateway's probe endpoint.
    Probe,
}

/// Why a server name is not a Meshfed destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// Longer than a DNS name may be.
    #[error("server name is longer than {MAX_LEN} bytes")]
    TooLong,
    /// Not under `svc.meshfed.local` and not reserved.
    #[error("server name {0:?} is not a meshfed destination")]
    Unknown(String),
    /// Under `svc.meshfed.local` but not `<name>.<namespace>.<port>[.<cluster>]`.
    #[error(
        "server name {0:?} is not <name>.<namespace>.<port>[.<source-cluster>].svc.meshfed.local"
    )]
    Malformed(String),
}

/// The server name of one exported service port.
pub fn service(name: &str, namespace: &str, port: u16) -> String {
    format!("{name}.{namespace}.{port}{SERVICE_SUFFIX}")
}

/// The server name of one exported service port, called from `source`.
pub fn service_from(name: &str, namespace: &str, port: u16, source: &str) -> String {
    format!("{name}.{namespace}.{port}.{source}{SERVICE_SUFFIX}")
}

/// Parses a server name from a ClientHello.
pub fn parse(sni: &str) -> Result<Target, SniError> {
    if sni.len() > MAX_LEN {
        return Err(SniError::TooLong);
    }
    let lower = sni.to_ascii_lowercase();
    if lower == FEDERATION {
        return Ok(Target::Federation);
    }
    if lower == PROBE {
        return Ok(Target::Probe);
    }
    let Some(head) = lower.strip_suffix(SERVICE_SUFFIX) else {
        return Err(SniError::Unknown(sni.to_owned()));
    };
    let malformed = || SniError::Malformed(sni.to_owned());
    let mut labels = head.split('.');
    let (Some(name), Some(namespace), Some(port), source, None) = (
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
        labels.next(),
    ) else {
        return Err(malformed());
    };
    if !is_dns_label(name) || !is_dns_label(namespace) || !source.is_none_or(is_dns_label) {
        return Err(malformed());
    }
    // Digits only: no sign, no leading zero, within u16.
    if port.starts_with('0') || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    let port: u16 = port.parse().map_err(|_| malformed())?;
    Ok(Target::Service {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        port,
        source: source.map(str::to_owned),
    })
}

/// An RFC 1123 label as Kubernetes names Services and namespaces.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service {
                name,
                namespace,
                port,
                source: None,
            } => f.write_str(&service(name, namespace, *port)),
            Target::Service {
                name,
                namespace,
                port,
                source: Some(source),
            } => f.write_str(&service_from(name, namespace, *port, source)),
            Target::Federation => f.write_str(FEDERATION),
            Target::Probe => f.write_str(PROBE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_round_trip() {
        let sni = service("api", "shop", 8080);
        assert_eq!(sni, "api.shop.8080.svc.meshfed.local");
        let t = parse(&sni).expect("valid");
        assert_eq!(t.to_string(), sni);
        assert_eq!(parse("API.Shop.8080.SVC.meshfed.LOCAL"), Ok(t));
        let from = service_from("api", "shop", 8080, "east");
        assert_eq!(from, "api.shop.8080.east.svc.meshfed.local");
        let t = parse(&from).expect("valid");
        assert_eq!(
            t,
            Target::Service {
                name: "api".into(),
                namespace: "shop".into(),
                port: 8080,
                source: Some("east".into())
            }
        );
        assert_eq!(t.to_string(), from);
    }

    #[test]
    fn reserved_names() {
        assert_eq!(parse(FEDERATION), Ok(Target::Federation));
        assert_eq!(parse("Probe.Meshfed.Local"), Ok(Target::Probe));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "10.0.0.1",
            "api.shop.svc.cluster.local",
            "meshfed.local",
            "x.federation.meshfed.local",
        ] {
            assert!(matches!(parse(bad), Err(SniError::Unknown(_))), "{bad}");
        }
        for bad in [
            "api.shop.svc.meshfed.local",
            "a.api.shop.80.svc.meshfed.local",
            "api.shop.80.east.x.svc.meshfed.local",
            "api.shop.80.-east.svc.meshfed.local",
            "api.shop.0.svc.meshfed.local",
            "api.shop.080.svc.meshfed.local",
            "api.shop.65536.svc.meshfed.local",
            "api.shop.+80.svc.meshfed.local",
            "-api.shop.80.svc.meshfed.local",
            "api.sh_op.80.svc.meshfed.local",
            ".shop.80.svc.meshfed.local",
        ] {
            assert!(matches!(parse(bad), Err(SniError::Malformed(_))), "{bad}");
        }
        assert_eq!(parse(&"a".repeat(300)), Err(SniError::TooLong));
    }
}
