//! The sidecar's configuration, typed: where the workload's calls come in
//! and go out, who may call it, and how patient the proxy is. Parsed and
//! checked before any port is bound.

use std::collections::BTreeMap;
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

/// What an inbound port does with a caller whose first bytes are not a TLS
/// ClientHello (a caller outside the mesh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Plaintext {
    /// Passed to the app as it is: bytes copied, HTTP served with no caller
    /// ID (any `meshfed-client-id` it wrote is dropped).
    #[default]
    Permissive,
    /// Refused: the connection is closed.
    Strict,
}

impl Plaintext {
    /// `permissive` or `strict`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permissive => "permissive",
            Self::Strict => "strict",
        }
    }
}

impl fmt::Display for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Plaintext {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "permissive" => Ok(Self::Permissive),
            "strict" => Ok(Self::Strict),
            _ => Err(ConfigError::Invalid(format!(
                "{s:?}: expected strict or permissive"
            ))),
        }
    }
}

/// A per-port plaintext policy: `PORT=strict|permissive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortPolicy {
    /// An explicit inbound listen port, or an app port reached through the
    /// inbound transparent listener.
    pub port: u16,
    /// What plaintext callers get there.
    pub policy: Plaintext,
}

impl FromStr for PortPolicy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Invalid(format!("{s:?}: expected PORT=strict|permissive"));
        let (port, policy) = s.split_once('=').ok_or_else(bad)?;
        Ok(Self {
            port: port.parse().map_err(|_| bad())?,
            policy: policy.parse().map_err(|_| bad())?,
        })
    }
}

/// Inbound interception: iptables redirects the pod's inbound TCP to
/// `listen`; each connection goes on to the app at the port it was sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransparentInbound {
    /// The listener iptables redirects to (`init-iptables --inbound-proxy-port`).
    pub listen: SocketAddr,
    /// Who may call each app port; a port not named admits any mesh identity.
    pub allow: BTreeMap<u16, Allow>,
    /// Plaintext on a port not named in `ports`.
    pub plaintext: Plaintext,
}

/// Plaintext policies: an explicit inbound port is strict unless named
/// here; a transparent one follows its sidecar's default unless named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaintextPorts(BTreeMap<u16, Plaintext>);

impl PlaintextPorts {
    /// The policy of `port`, `default` when it has none of its own.
    pub fn of(&self, port: u16, default: Plaintext) -> Plaintext {
        self.0.get(&port).copied().unwrap_or(default)
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
    fn transparent_ports_take_allow_rules_and_policies_by_app_port() {
        let mut c = SidecarConfig {
            inbound: vec!["4143=8080".parse().expect("inbound")],
            ..SidecarConfig::default()
        };
        let strict: PortPolicy = "9090=strict".parse().expect("policy");
        let err = c
            .apply_port_policies(vec![strict])
            .expect_err("no such port");
        assert!(
            err.to_string()
                .starts_with("--inbound-port-policy names port 9090"),
            "{err}"
        );
        c.transparent_inbound = Some(TransparentInbound {
            listen: "0.0.0.0:4144".parse().expect("addr"),
            allow: BTreeMap::new(),
            plaintext: Plaintext::Permissive,
        });
        c.apply_port_policies(vec![strict, "4143=permissive".parse().expect("policy")])
            .expect("applies");
        assert_eq!(
            c.plaintext_ports.of(9090, Plaintext::Permissive),
            Plaintext::Strict
        );
        assert_eq!(
            c.plaintext_ports.of(4143, Plaintext::Strict),
            Plaintext::Permissive
        );
        assert_eq!(
            c.plaintext_ports.of(8080, Plaintext::Strict),
            Plaintext::Strict
        );
        assert!(c.apply_port_policies(vec![strict]).is_err(), "twice");
        let rule: AllowRule = "8080=spiffe://td/ns/web/sa/frontend".parse().expect("rule");
        c.apply_allow(vec![rule]).expect("applies");
        let t = c.transparent_inbound.as_ref().expect("transparent");
        let id = SpiffeId::parse("spiffe://td/ns/web/sa/frontend").expect("id");
        assert_eq!(t.allow.get(&8080), Some(&Allow::Only(vec![id])));
        assert_eq!(c.inbound[0].allow, Allow::Mesh, "4143 keeps its own");
        for bad in ["8080", "8080=open", "x=strict", "70000=strict"] {
            let err = bad.parse::<PortPolicy>().expect_err(bad);
            assert!(
                err.to_string().contains("expected PORT=strict|permissive"),
                "{err}"
            );
        }
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
