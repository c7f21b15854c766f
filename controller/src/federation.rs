//! Federation between controllers: the server that streams this cluster's
//! exports to peers, and the client that imports a peer's.

pub(crate) mod client;
mod doubt;
mod server;

pub use doubt::DOUBT_HOLD;
pub use server::{Exports, FederationService, PeerAuthorizer};
