//! Discovery for sidecars and gateways: a service port's endpoints as
//! priority groups in failover order, pushed on every change; the
//! gateway's routing table; each pod's rate limits.

mod groups;
mod limits;
mod routes;
mod server;

pub use groups::LocalCluster;
pub use routes::RouteTable;
pub use server::DiscoveryService;
