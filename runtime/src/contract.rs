//! The install contract: every component's ports and environment
//! variables, defined once. The binaries' flags read their environment
//! variables and default listen addresses from here; `meshctl install`, the
//! sidecar injector and `meshctl dev` write the same names and ports into
//! what they run. A port or variable spelled anywhere else is a drift
//! waiting to happen (the layout test refuses one).

/// The ports components listen on in a cluster.
pub mod port {
    /// The identity service's gRPC (TLS) listener.
    pub const IDENTITY: u16 = 7443;
    /// The controller's federation listener (peer controllers, through the
    /// gateway).
    pub const FEDERATION: u16 = 7450;
    /// The controller's discovery listener (sidecars and gateways).
    pub const DISCOVERY: u16 = 7451;
    /// The east-west gateway's listener (its default; `meshctl install
    /// --gateway-port` may choose another).
    pub const GATEWAY: u16 = 7460;
    /// The sidecar's transparent outbound listener (on the pod's loopback).
    pub const SIDECAR_OUTBOUND: u16 = 4140;
    /// The sidecar's inbound listener (transparent, or what explicit
    /// EndpointSlices name).
    pub const SIDECAR_INBOUND: u16 = 4143;
    /// The sidecar injector's webhook listener (its Service listens on 443).
    pub const INJECTOR: u16 = 8443;
    /// The port the injector's Service exposes: the API server calls
    /// webhooks on 443.
    pub const INJECTOR_SERVICE: u16 = 443;

    /// The identity service's admin listener (`/live`, `/ready`, `/metrics`).
    pub const IDENTITY_ADMIN: u16 = 9901;
    /// The controller's admin listener.
    pub const CONTROLLER_ADMIN: u16 = 9902;
    /// The gateway's admin listener.
    pub const GATEWAY_ADMIN: u16 = 9903;
    /// Every sidecar's admin listener: on the loopback by default, on every
    /// interface in an injected pod (its probes and `meshctl routes` reach it).
    pub const SIDECAR_ADMIN: u16 = 9904;
    /// The injector's admin listener.
    pub const INJECTOR_ADMIN: u16 = 9905;
}

/// The environment variables components read, each the twin of a flag.
pub mod env {
    // Every component.
    /// Log filter (tracing's `EnvFilter` syntax); `info` when unset.
    pub const LOG: &str = "MESHFED_LOG";
    /// `json` for one JSON object per log line.
    pub const LOG_FORMAT: &str = "MESHFED_LOG_FORMAT";
    /// The admin listener's address.
    pub const ADMIN_LISTEN: &str = "MESHFED_ADMIN_LISTEN";
    /// The cluster's name.
    pub const CLUSTER: &str = "MESHFED_CLUSTER";
    /// The cluster's region.
    pub const REGION: &str = "MESHFED_REGION";
    /// The zone a sidecar runs in.
    pub const ZONE: &str = "MESHFED_ZONE";

    // A component's own credentials (the shared credential flags).
    /// Offline credentials directory.
    pub const CREDENTIALS_DIR: &str = "MESHFED_CREDENTIALS_DIR";
    /// The identity service's `host:port`.
    pub const IDENTITY_ADDR: &str = "MESHFED_IDENTITY_ADDR";
    /// The SPIFFE ID the identity service must present.
    pub const IDENTITY_SERVER_ID: &str = "MESHFED_IDENTITY_SERVER_ID";
    /// The SPIFFE ID the component asks for.
    pub const ID: &str = "MESHFED_ID";
    /// The projected ServiceAccount token proving it.
    pub const TOKEN_FILE: &str = "MESHFED_TOKEN_FILE";
    /// The trust bundle (PEM roots).
    pub const BUNDLE: &str = "MESHFED_BUNDLE";

    // The identity service.
    /// The cluster CA directory.
    pub const CA_DIR: &str = "MESHFED_CA_DIR";
    /// Its gRPC listener.
    pub const IDENTITY_LISTEN: &str = "MESHFED_IDENTITY_LISTEN";
    /// How credentials are proven: `kubernetes` or `bootstrap`.
    pub const IDENTITY_AUTH: &str = "MESHFED_IDENTITY_AUTH";
    /// The bootstrap token file (local mode).
    pub const BOOTSTRAP_TOKENS: &str = "MESHFED_BOOTSTRAP_TOKENS";
    /// The token audiences it accepts.
    pub const TOKEN_AUDIENCES: &str = "MESHFED_TOKEN_AUDIENCES";
    /// Lifetime of the leaves it signs.
    pub const LEAF_TTL: &str = "MESHFED_LEAF_TTL";
    /// The namespace it runs in.
    pub const NAMESPACE: &str = "MESHFED_NAMESPACE";
    /// The service account it runs as.
    pub const SERVICE_ACCOUNT: &str = "MESHFED_SERVICE_ACCOUNT";

    // The controller.
    /// The cluster store: `file` or `kube`.
    pub const STORE: &str = "MESHFED_STORE";
    /// The file store's directory.
    pub const STORE_DIR: &str = "MESHFED_STORE_DIR";
    /// How often the file store looks for changes.
    pub const STORE_POLL: &str = "MESHFED_STORE_POLL";
    /// How often the file store reads everything again.
    pub const STORE_RESCAN: &str = "MESHFED_STORE_RESCAN";
    /// The federation listener.
    pub const FEDERATION_LISTEN: &str = "MESHFED_FEDERATION_LISTEN";
    /// The discovery listener.
    pub const DISCOVERY_LISTEN: &str = "MESHFED_DISCOVERY_LISTEN";
    /// Peer controllers allowed to read this cluster's exports.
    pub const ALLOW_PEERS: &str = "MESHFED_ALLOW_PEERS";
    /// The pod's name (downward API), its lease holder identity.
    pub const POD_NAME: &str = "MESHFED_POD_NAME";
    /// The pod's namespace (downward API).
    pub const POD_NAMESPACE: &str = "MESHFED_POD_NAMESPACE";
    /// Listen with `SO_REUSEPORT` (several controllers on one host).
    pub const REUSE_PORT: &str = "MESHFED_REUSE_PORT";

    // The gateway and the injector.
    /// The main listener (the gateway's passthrough, the injector's webhook).
    pub const LISTEN: &str = "MESHFED_LISTEN";
    /// The controller's federation `host:port` the gateway forwards to.
    pub const FEDERATION_UPSTREAM: &str = "MESHFED_FEDERATION_UPSTREAM";
    /// Most connections at once: the gateway's in all, a sidecar's opaque
    /// TCP connections per endpoint group.
    pub const MAX_CONNECTIONS: &str = "MESHFED_MAX_CONNECTIONS";
    /// Most connections at once from one source address.
    pub const MAX_CONNECTIONS_PER_SOURCE: &str = "MESHFED_MAX_CONNECTIONS_PER_SOURCE";
    /// Longest TLS handshake.
    pub const HANDSHAKE_TIMEOUT: &str = "MESHFED_HANDSHAKE_TIMEOUT";
    /// Longest idle connection.
    pub const IDLE_TIMEOUT: &str = "MESHFED_IDLE_TIMEOUT";
    /// Longest wait for an admission request's body.
    pub const READ_TIMEOUT: &str = "MESHFED_READ_TIMEOUT";
    /// The sidecar image the injector adds.
    pub const SIDECAR_IMAGE: &str = "MESHFED_SIDECAR_IMAGE";

    // The gateway and the sidecar.
    /// The controller's discovery `host:port`.
    pub const DISCOVERY: &str = "MESHFED_DISCOVERY";
    /// The SPIFFE ID the controller must present.
    pub const CONTROLLER_ID: &str = "MESHFED_CONTROLLER_ID";
    /// Longest TCP connect.
    pub const CONNECT_TIMEOUT: &str = "MESHFED_CONNECT_TIMEOUT";
    /// How long a silent controller is trusted.
    pub const LIVENESS: &str = "MESHFED_LIVENESS";
    /// How long draining waits on SIGTERM.
    pub const DRAIN_TIMEOUT: &str = "MESHFED_DRAIN_TIMEOUT";

    // The sidecar.
    /// Explicit upstreams (`service.namespace:port=local-port`, space-separated).
    pub const UPSTREAMS: &str = "MESHFED_UPSTREAMS";
    /// The transparent outbound listener.
    pub const TRANSPARENT_LISTEN: &str = "MESHFED_TRANSPARENT_LISTEN";
    /// Explicit inbound ports (`port=app-port`, space-separated).
    pub const INBOUND: &str = "MESHFED_INBOUND";
    /// The transparent inbound listener.
    pub const INBOUND_TRANSPARENT: &str = "MESHFED_INBOUND_TRANSPARENT";
    /// Whether plaintext inbound is accepted: `permissive` or `strict`.
    pub const INBOUND_POLICY: &str = "MESHFED_INBOUND_POLICY";
    /// The same, per port (`port=policy`, space-separated).
    pub const INBOUND_PORT_POLICY: &str = "MESHFED_INBOUND_PORT_POLICY";
    /// Callers allowed per inbound port (`port=spiffe-id`, space-separated).
    pub const ALLOW: &str = "MESHFED_ALLOW";
    /// The pod's IP (downward API `status.podIP`), for its rate limits.
    pub const POD_IP: &str = "MESHFED_POD_IP";
    /// The firewall mark on the sidecar's own connections.
    pub const MARK: &str = "MESHFED_MARK";
    /// Worker threads.
    pub const WORKERS: &str = "MESHFED_WORKERS";
    /// Longest request.
    pub const REQUEST_TIMEOUT: &str = "MESHFED_REQUEST_TIMEOUT";
    /// Longest wait to tell a protocol from a connection's first bytes.
    pub const DETECT_TIMEOUT: &str = "MESHFED_DETECT_TIMEOUT";
    /// Most HTTP requests in flight per endpoint group of a service.
    pub const MAX_REQUESTS: &str = "MESHFED_MAX_REQUESTS";
    /// Most requests waiting for a connection per endpoint group.
    pub const MAX_PENDING: &str = "MESHFED_MAX_PENDING";
    /// Most HTTP requests of a service waiting for an endpoint able to serve.
    pub const MAX_WAITING: &str = "MESHFED_MAX_WAITING";
}

/// `0.0.0.0:port`: a listener on every interface, as components listen in
/// a pod.
pub const fn all_interfaces(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port)
}

/// `127.0.0.1:port`: a listener only the pod itself reaches.
pub const fn loopback(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}
