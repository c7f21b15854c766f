//! The sidecar's configuration, typed: where the workload's calls come in
//! and go out, who may call it, and how patient the proxy is. Parsed and
//! checked before any port is bound.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use meshfed_api::sni::is_dns_label;
use meshfed_trust::SpiffeId;

/// One port of one Service: what a call is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceTarget {
    /// The Service's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The Service port (not the target port).
    pub port: u16,
}

impl ServiceTarget {
    /// A target; `name` and `namespace` must be DNS labels.
    pub fn new(name: &str, namespace: &str, port: u16) -> Result<Self, ConfigError> {
        for (what, v) in [("service name", name), ("namespace", namespace)] {
            if !is_dns_label(v) {
                return Err(ConfigError::Invalid(format!(
                    "{what} {v:?} is not a DNS label"
                )));
            }
        }
        if port == 0 {
            return Err(ConfigError::Invalid("service port 0".into()));
        }
        Ok(Self {
            name: name.into(),
            namespace: namespace.into(),
            port,
        })
    }

    /// The server name a sidecar sends for this target (the gateway routes on it).
    pub fn sni(&self) -> String {
        meshfed_api::sni::service(&self.name, &self.namespace, self.port)
    }
}

impl fmt::Display for ServiceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}:{}", self.name, self.namespace, self.port)
    }
}

impl FromStr for ServiceTarget {
    type Err = ConfigError;

    /// `name.namespace:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Invalid(format!("{s:?}: expected NAME.NAMESPACE:PORT"));
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let (name, namespace) = host.split_once('.').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        Self::new(name, namespace, port)
    }
}

/// An explicit upstream: the app connects to `listen` to reach `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The service called.
    pub target: ServiceTarget,
    /// The local address the app dials.
    pub listen: SocketAddr,
}

impl FromStr for Upstream {
    type Err = ConfigError;

    /// `name.namespace:port=LISTEN`, LISTEN a port (on 127.0.0.1) or `ip:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, listen) = s.split_once('=').ok_or_else(|| {
            ConfigError::Invalid(format!("{s:?}: expected NAME.NAMESPACE:PORT=LISTEN"))
        })?;
        Ok(Self {
            target: target.parse()?,
            listen: addr_or_port(listen, Ipv4Addr::LOCALHOST.into())?,
        })
    }
}

/// Who may call an inbound port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Allow {
    /// Any workload with a valid certificate of the mesh.
    #[default]
    Mesh,
    /// Only these identities.
    Only(Vec<SpiffeId>),
}

impl Allow {
    /// Whether `id` (already verified by TLS) may call.
    pub fn permits(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Mesh => true,
            Self::Only(ids) => ids.contains(id),
        }
    }
}

/// An inbound port: mesh callers connect to `listen`, the app serves on `app`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Where callers' sidecars (and gateways) connect.
    pub listen: SocketAddr,
    /// The app's own port.
    pub app: SocketAddr,
    /// Who may call.
    pub allow: Allow,
}

impl FromStr for Inbound {
    type Err = ConfigError;

    /// `LISTEN=APP`; a bare LISTEN port binds 0.0.0.0, a bare APP port is on 127.0.0.1.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, app) = s
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("{s:?}: expected LISTEN=APP")))?;
        Ok(Self {
            listen: addr_or_port(listen, Ipv4Addr::UNSPECIFIED.into())?,
            app: addr_or_port(app, Ipv4Addr::LOCALHOST.into())?,
            allow: Allow::Mesh,
        })
    }
}

/// An allow-list entry: `LISTEN-PORT=ID[,ID...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// The inbound listen port it applies to.
    pub port: u16,
    /// The identities allowed there.
    pub ids: Vec<SpiffeId>,
}

impl FromStr for AllowRule {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Invalid(format!("{s:?}: expected PORT=SPIFFE-ID[,SPIFFE-ID...]"));
        let (port, ids) = s.split_once('=').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        let ids = ids
            .split(',')
            .map(|id| {
                SpiffeId::parse(id.trim())
                    .map_err(|e| ConfigError::Invalid(format!("{id:?} in {s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { port, ids })
    }
}

/// Where this workload runs: it decides which endpoints are nearest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    /// The cluster's name.
    pub cluster: String,
    /// The region, if known.
    pub region: String,
    /// The zone, if known.
    pub zone: String,
}

/// How long things may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One connect (TCP and TLS) to an endpoint.
    pub connect: Duration,
    /// One HTTP request, all attempts included, until the response headers.
    pub request: Duration,
    /// How long the app may stay silent before its connection is taken as
    /// opaque TCP (server-first protocols).
    pub detect: Duration,
    /// How long a call waits for the first answer from discovery.
    pub discovery: Duration,
    /// An inbound caller's TLS handshake.
    pub handshake: Duration,
    /// Liveness of a connection to an endpoint: after this long without a
    /// byte from it, an HTTP/2 ping goes out; unanswered for as long again,
    /// the connection is closed and the requests in flight on it fail over
    /// (idempotent ones are sent again elsewhere). A partitioned peer is
    /// silent, not closed: without this, calls wait for the request timeout.
    /// Every mesh connection, both ways, also gets TCP keepalive probes
    /// after this much silence, as far apart; two unanswered, or data
    /// unacknowledged for three times as long, close it (and the app's
    /// connection with it: opaque TCP, upgrades).
    pub liveness: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            request: Duration::from_secs(15),
            detect: Duration::from_secs(1),
            discovery: Duration::from_secs(3),
            handshake: Duration::from_secs(10),
            liveness: Duration::from_secs(2),
        }
    }
}

/// Circuit breaking, per endpoint group of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakers {
    /// HTTP requests in flight.
    pub max_requests: usize,
    /// Requests waiting for a connection to be made.
    pub max_pending: usize,
    /// Opaque TCP connections open.
    pub max_connections: usize,
}

impl Default for Breakers {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending: 256,
            max_connections: 1024,
        }
    }
}

/// Everything the sidecar needs besides its credentials and discovery.
#[derive(Debug, Clone, Default)]
pub struct SidecarConfig {
    /// Where this workload runs.
    pub locality: Locality,
    /// Explicit upstreams.
    pub upstreams: Vec<Upstream>,
    /// The listener iptables redirects the pod's outbound TCP to.
    pub transparent: Option<SocketAddr>,
    /// Inbound ports.
    pub inbound: Vec<Inbound>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Circuit breakers.
    pub breakers: Breakers,
    /// SO_MARK put on every connection the sidecar makes, so interception
    /// rules can let them pass (needs CAP_NET_ADMIN).
    pub mark: Option<u32>,
}

impl SidecarConfig {
    /// Attaches allow rules to the inbound ports they name.
    pub fn apply_allow(&mut self, rules: Vec<AllowRule>) -> Result<(), ConfigError> {
        for rule in rules {
            let inbound = self
                .inbound
                .iter_mut()
                .find(|i| i.listen.port() == rule.port)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "--allow names port {}, which no --inbound listens on",
                        rule.port
                    ))
                })?;
            match &mut inbound.allow {
                Allow::Mesh => inbound.allow = Allow::Only(rule.ids),
                Allow::Only(ids) => ids.extend(rule.ids),
            }
        }
        Ok(())
    }

    /// Checks what the types cannot: no listen address used twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        let listens = self
            .upstreams
            .iter()
            .map(|u| u.listen)
            .chain(self.transparent)
            .chain(self.inbound.iter().map(|i| i.listen));
        for addr in listens {
            if addr.port() != 0 && !seen.insert(addr) {
                return Err(ConfigError::Invalid(format!(
                    "{addr} is given as a listen address twice"
                )));
            }
        }
        let t = &self.timeouts;
        if t.connect.is_zero() || t.request.is_zero() || t.liveness.is_zero() {
            return Err(ConfigError::Invalid(
                "the connect, request and liveness timeouts must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value is malformed or contradicts another.
    #[error("{0}")]
    Invalid(String),
}

fn addr_or_port(s: &str, default_ip: IpAddr) -> Result<SocketAddr, ConfigError> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(default_ip, port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| ConfigError::Invalid(format!("{s:?} is neither a port nor IP:PORT")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstreams_and_inbound_ports() {
        let u: Upstream = "api.shop:80=9001".parse().expect("upstream");
        assert_eq!(u.target.to_string(), "api.shop:80");
        assert_eq!(u.listen, "127.0.0.1:9001".parse().expect("addr"));
        let u: Upstream = "db.data:5432=10.0.0.1:6000".parse().expect("upstream");
        assert_eq!(u.listen.port(), 6000);
        let i: Inbound = "4143=8080".parse().expect("inbound");
        assert_eq!(i.listen, "0.0.0.0:4143".parse().expect("addr"));
        assert_eq!(i.app, "127.0.0.1:8080".parse().expect("addr"));
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        for bad in [
            "api:80=9001",
            "api.shop=9001",
            "api.shop:0=9001",
            "API.shop:80=9001",
            "api.shop:80",
            "api.shop:80=x",
        ] {
            assert!(bad.parse::<Upstream>().is_err(), "{bad}");
        }
        assert!("4143".parse::<Inbound>().is_err());
        assert!("4143=frontend".parse::<AllowRule>().is_err());
        assert!("x=spiffe://td/ns/a/sa/b".parse::<AllowRule>().is_err());
    }

    #[test]
    fn allow_rules_attach_to_their_port() {
        let mut c = SidecarConfig {
            inbound: vec!["4143=8080".parse().expect("inbound")],
            ..SidecarConfig::default()
        };
        let rule: AllowRule = "4143=spiffe://td/ns/web/sa/frontend".parse().expect("rule");
        c.apply_allow(vec![rule]).expect("applies");
        let id = SpiffeId::parse("spiffe://td/ns/web/sa/frontend").expect("id");
        let other = SpiffeId::parse("spiffe://td/ns/web/sa/other").expect("id");
        assert!(c.inbound[0].allow.permits(&id));
        assert!(!c.inbound[0].allow.permits(&other));
        let stray: AllowRule = "9999=spiffe://td/ns/a/sa/b".parse().expect("rule");
        assert!(c.apply_allow(vec![stray]).is_err());
    }

    #[test]
    fn a_listen_address_is_used_once() {
        let c = SidecarConfig {
            upstreams: vec!["api.shop:80=9001".parse().expect("upstream")],
            transparent: Some("127.0.0.1:9001".parse().expect("addr")),
            ..SidecarConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
