//! HTTPRoutes attached to Services (the Gateway API's GAMMA): which of a
//! route's parents are this mesh's, whether each accepts the route and
//! resolves its references (`check`, the route's status), and the rules a
//! Service port's callers apply per request, flattened in the Gateway
//! API's order of precedence (`table`, served through discovery).
//!
//! Decisions where the Gateway API leaves a choice (all documented in
//! `deploy/README.md`, "Routing"):
//! - a parent is a Service (`group` `""` or `core`, `kind: Service`) in
//!   the route's namespace (a producer route); a consumer route (a parent
//!   in another namespace) is refused as `UnsupportedValue`;
//! - `hostnames` are ignored, as GEP-1294 says meshes should;
//! - backends may be in any namespace without a ReferenceGrant, as
//!   GEP-1294 allows for meshes;
//! - every field the Gateway API defines that Meshfed does not implement
//!   refuses the route (`Accepted=False`, `UnsupportedValue`, naming the
//!   field): a route is applied as written or not at all.

mod check;
mod fields;
mod table;
#[cfg(test)]
mod tests;

pub(crate) use check::{check, status_parents};
pub(crate) use table::{RouteIndex, parents_of, rules_for};
