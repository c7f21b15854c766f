//! The inbound side's configuration: ports mesh callers connect to, who may
//! call them, and what a caller outside the mesh gets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use meshfed_trust::SpiffeId;

use super::{ConfigError, addr_or_port};

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
pub struct PlaintextPorts(pub(super) BTreeMap<u16, Plaintext>);

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
