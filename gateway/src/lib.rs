//! Meshfed's east-west gateway: the only door other clusters can reach.
//!
//! It reads each connection's TLS ClientHello without terminating TLS,
//! maps the server name (`meshfed_api::sni`) to a service this cluster
//! exports, dials one of its ready local endpoints and splices bytes, so
//! mTLS runs end to end between the caller and the callee. Everything else
//! is refused before a byte is forwarded, and counted. Two names are its
//! own: the federation name, passed through to the local controller, and
//! the probe name, the one endpoint where the gateway answers with its own
//! identity.
//!
//! Data flow: [`follow_routes`] keeps a [`RouteTable`] from the
//! controller's `WatchRoutes` stream; [`Gateway::serve`] accepts, admits
//! ([`Limits`]), reads the ClientHello ([`HelloReader`]), routes and splices.

mod balance;
mod binary;
mod conn;
mod discovery;
mod hello;
mod limits;
mod metrics;
mod probe;
mod routes;
mod server;
mod splice;

pub use binary::binary_main;
pub use discovery::{RoutesSource, follow_routes};
pub use hello::{ClientHello, HelloError, HelloReader, MAX_BUFFERED, MAX_HELLO};
pub use limits::Limits;
pub use metrics::{Metrics, Reason};
pub use routes::{RouteError, RouteTable, Upstream};
pub use server::{Drained, Gateway, GatewayConfig, bind_shared};
