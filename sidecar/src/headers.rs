//! The headers the mesh adds between the app and the sidecars, in one
//! place for both directions.

/// The header a sidecar uses to tell the next one the app spoke HTTP/1.1.
pub const ORIG_PROTO: &str = "meshfed-orig-proto";
/// The header carrying the verified caller identity to the app.
pub const CLIENT_ID: &str = "meshfed-client-id";
/// The header on an answer the sidecar made itself, naming why
/// ([`crate::Reason`]).
pub const ERROR_HEADER: &str = "meshfed-error";
