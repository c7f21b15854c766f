//! The sidecar's configuration, typed: where the workload's calls come in
//! and go out, who may call it, and how patient the proxy is. Parsed and
//! checked before any port is bound.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use meshfed_api::sni::is_dns_label;
mod inbound;
#[cfg(test)]
mod tests;

pub use inbound::{
    Allow, AllowRule, Inbound, Plaintext, PlaintextPorts, PortPolicy, TransparentInbound,
};

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
    /// HTTP requests of a service waiting for an endpoint able to serve
    /// (all its endpoints down, ejected or not ready). Per service port,
    /// not per group: past it a request fails at once, as it did before
    /// requests waited at all.
    pub max_waiting: usize,
}

impl Default for Breakers {
    fn default() -> Self {
        Self {
            max_requests: 1024,
            max_pending: 256,
            max_connections: 1024,
            // As many as may wait for a connection (`max_pending`): at the
            // rates a sidecar sees (tens to a few hundred requests a second)
            // a second or more of outage, while each waiter holds at most
            // the 64 KiB body it keeps for retries.
            max_waiting: 256,
        }
    }
}

/// Everything the sidecar needs besides its credentials and discovery.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Where this workload runs.
    pub locality: Locality,
    /// Explicit upstreams.
    pub upstreams: Vec<Upstream>,
    /// The listener iptables redirects the pod's outbound TCP to.
    pub transparent: Option<SocketAddr>,
    /// Inbound ports.
    pub inbound: Vec<Inbound>,
    /// The listener iptables redirects the pod's inbound TCP to.
    pub transparent_inbound: Option<TransparentInbound>,
    /// Per-port plaintext policies (`--inbound-port-policy`).
    pub plaintext_ports: PlaintextPorts,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Circuit breakers.
    pub breakers: Breakers,
    /// SO_MARK put on every connection the sidecar makes, so interception
    /// rules can let them pass (needs CAP_NET_ADMIN).
    pub mark: Option<u32>,
    /// Data-plane threads, each carrying its connections from accept to
    /// answer (at least 1).
    pub workers: usize,
    /// The pod's IP address, as its EndpointSlices list it: how the
    /// controller finds the rate limits of this pod's inbound ports.
    /// Without it none apply.
    pub pod_ip: Option<std::net::IpAddr>,
}

/// Data-plane threads unless configured.
pub const DEFAULT_WORKERS: usize = 2;

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            locality: Locality::default(),
            upstreams: Vec::new(),
            transparent: None,
            inbound: Vec::new(),
            transparent_inbound: None,
            plaintext_ports: PlaintextPorts::default(),
            timeouts: Timeouts::default(),
            breakers: Breakers::default(),
            mark: None,
            workers: DEFAULT_WORKERS,
            pod_ip: None,
        }
    }
}

impl SidecarConfig {
    /// Attaches allow rules to the inbound ports they name: an explicit
    /// listen port, else an app port behind the inbound transparent listener.
    pub fn apply_allow(&mut self, rules: Vec<AllowRule>) -> Result<(), ConfigError> {
        for rule in rules {
            let explicit = self
                .inbound
                .iter_mut()
                .find(|i| i.listen.port() == rule.port)
                .map(|i| &mut i.allow);
            let allow = match (explicit, &mut self.transparent_inbound) {
                (Some(allow), _) => allow,
                (None, Some(t)) => t.allow.entry(rule.port).or_default(),
                (None, None) => return Err(no_such_port("--allow", rule.port)),
            };
            match allow {
                Allow::Mesh => *allow = Allow::Only(rule.ids),
                Allow::Only(ids) => ids.extend(rule.ids),
            }
        }
        Ok(())
    }

    /// Sets per-port plaintext policies; each must name an inbound port.
    pub fn apply_port_policies(&mut self, policies: Vec<PortPolicy>) -> Result<(), ConfigError> {
        for p in policies {
            let explicit = self.inbound.iter().any(|i| i.listen.port() == p.port);
            if !explicit && self.transparent_inbound.is_none() {
                return Err(no_such_port("--inbound-port-policy", p.port));
            }
            if self.plaintext_ports.0.insert(p.port, p.policy).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "--inbound-port-policy names port {} twice",
                    p.port
                )));
            }
        }
        Ok(())
    }

    /// Checks what the types cannot: no listen address used twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::Invalid(
                "--workers 0: the sidecar needs at least one data-plane thread".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let listens = self
            .upstreams
            .iter()
            .map(|u| u.listen)
            .chain(self.transparent)
            .chain(self.transparent_inbound.as_ref().map(|t| t.listen))
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

fn no_such_port(flag: &str, port: u16) -> ConfigError {
    ConfigError::Invalid(format!(
        "{flag} names port {port}, which no --inbound listens on (and there is no --inbound-transparent)"
    ))
}

fn addr_or_port(s: &str, default_ip: IpAddr) -> Result<SocketAddr, ConfigError> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(default_ip, port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| ConfigError::Invalid(format!("{s:?} is neither a port nor IP:PORT")))
}
