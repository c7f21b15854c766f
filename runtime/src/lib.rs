//! How a Meshfed component runs: start-up ([`component_main`]), tracing,
//! the admin server (`/live`, `/ready`, `/metrics`), the shutdown signal,
//! the flags every component shares (credentials, cluster name), mTLS
//! transport for gRPC (a client channel, a server's accepted connections),
//! and the one definition of every component's ports and environment
//! variables, read by the binaries' flags and by `meshctl install` alike.

mod admin;
mod channel;
mod cli;
mod contract;
mod incoming;

pub use admin::{Readiness, component_main, init_tracing, serve_admin, shutdown_signal};
pub use channel::mtls_channel;
pub use cli::{CredentialArgs, CredentialArgsError, cluster_name};
pub use contract::{all_interfaces, env, loopback, port};
pub use incoming::{TlsConn, TlsConnectInfo, tls_incoming};
