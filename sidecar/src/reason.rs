//! The error taxonomy: why the sidecar answered a call itself or refused a
//! caller, one name per cause for the `meshfed-error` header, the metrics'
//! `reason` label and the status code, whichever direction it arose in.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Why the sidecar answered a call itself (header `meshfed-error` and
/// metric label), or refused an inbound caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Discovery has not answered for the service yet.
    DiscoveryUnavailable,
    /// The service has no endpoint anywhere.
    NoEndpoints,
    /// Endpoints exist; none can serve now.
    NoHealthyEndpoints,
    /// The group's circuit breaker is open (too many requests, pending or connections).
    CircuitOpen,
    /// Every endpoint tried refused or timed out, and no retry was left.
    ConnectFailed,
    /// No response within the request timeout.
    RequestTimeout,
    /// The connection to the endpoint broke mid-request.
    UpstreamReset,
    /// The app is not answering on its port (inbound).
    AppUnavailable,
    /// The caller's identity is not allowed on the port (inbound).
    Forbidden,
    /// The caller did not finish a mesh TLS handshake: no certificate, a
    /// certificate of another mesh, or none in time (inbound).
    Handshake,
    /// The caller spoke plaintext where the port's policy is strict, or
    /// the port has an allow-list, which no plaintext caller is on (inbound).
    Plaintext,
    /// The service has routes and the request matches none of them (404).
    NoRouteMatch,
    /// The route's rule sends the request nowhere: no backend with a
    /// weight, or the one picked does not resolve (500).
    NoRouteBackend,
    /// A RateLimitPolicy's bucket had no token for the request (inbound, 429).
    RateLimited,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 14] = [
        Reason::DiscoveryUnavailable,
        Reason::NoEndpoints,
        Reason::NoHealthyEndpoints,
        Reason::CircuitOpen,
        Reason::ConnectFailed,
        Reason::RequestTimeout,
        Reason::UpstreamReset,
        Reason::AppUnavailable,
        Reason::Forbidden,
        Reason::Handshake,
        Reason::Plaintext,
        Reason::NoRouteMatch,
        Reason::NoRouteBackend,
        Reason::RateLimited,
    ];

    /// The label and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DiscoveryUnavailable => "discovery_unavailable",
            Reason::NoEndpoints => "no_endpoints",
            Reason::NoHealthyEndpoints => "no_healthy_endpoints",
            Reason::CircuitOpen => "circuit_open",
            Reason::ConnectFailed => "connect_failed",
            Reason::RequestTimeout => "request_timeout",
            Reason::UpstreamReset => "upstream_reset",
            Reason::AppUnavailable => "app_unavailable",
            Reason::Forbidden => "forbidden",
            Reason::Handshake => "handshake",
            Reason::Plaintext => "plaintext",
            Reason::NoRouteMatch => "no_route_match",
            Reason::NoRouteBackend => "no_route_backend",
            Reason::RateLimited => "rate_limited",
        }
    }

    /// The reason whose name is `s`.
    pub fn named(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The HTTP status the sidecar answers with.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Reason::RequestTimeout => S::GATEWAY_TIMEOUT,
            Reason::UpstreamReset | Reason::AppUnavailable => S::BAD_GATEWAY,
            Reason::Forbidden | Reason::Handshake | Reason::Plaintext => S::FORBIDDEN,
            Reason::NoRouteMatch => S::NOT_FOUND,
            Reason::NoRouteBackend => S::INTERNAL_SERVER_ERROR,
            Reason::RateLimited => S::TOO_MANY_REQUESTS,
            _ => S::SERVICE_UNAVAILABLE,
        }
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}
