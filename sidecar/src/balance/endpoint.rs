//! An endpoint as discovery lists it, turned into what the connector needs.

use std::net::SocketAddr;
use std::sync::Arc;

use meshfed_trust::{ExpectedIds, SpiffeId};

/// An endpoint as the connector needs it.
#[derive(Debug)]
pub(crate) struct EndpointInfo {
    /// Address and server name: one endpoint, also across updates.
    pub(crate) key: Arc<str>,
    pub(crate) addr: SocketAddr,
    /// Server name sent: the gateway routes on it; a sidecar ignores it.
    pub(crate) sni: String,
    /// Identities the server may present.
    pub(crate) expected: ExpectedIds,
    /// `expected` as one string (TLS configs are cached by it).
    pub(crate) ids_key: String,
    pub(crate) cluster: Arc<str>,
    pub(crate) zone: Arc<str>,
}

/// The endpoint `e` of a group (`remote`: a remote cluster's gateway), its
/// weight and whether it is ready; `None` (logged) when it cannot be used.
pub(super) fn endpoint_info(
    e: &meshfed_api::discovery::Endpoint,
    remote: bool,
    caller_cluster: &str,
    local_sni: &str,
) -> Option<(EndpointInfo, f64, bool)> {
    let addr: SocketAddr = match e.address.parse() {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(address = %e.address, "discovery listed an endpoint that is not ip:port; skipped");
            return None;
        }
    };
    let mut ids: Vec<SpiffeId> = e
        .identities
        .iter()
        .filter_map(|i| SpiffeId::parse(i).ok())
        .collect();
    ids.sort();
    ids.dedup();
    let ids_key = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let Some(expected) = ExpectedIds::new(ids) else {
        tracing::warn!(address = %e.address, "discovery listed an endpoint with no identity; skipped");
        return None;
    };
    let sni = if remote && !e.sni.is_empty() {
        e.sni.clone()
    } else {
        local_sni.to_owned()
    };
    let loc = e.locality.clone().unwrap_or_default();
    let cluster = if loc.cluster.is_empty() {
        caller_cluster.to_owned()
    } else {
        loc.cluster
    };
    Some((
        EndpointInfo {
            key: format!("{addr}/{sni}").into(),
            addr,
            sni,
            expected,
            ids_key,
            cluster: cluster.into(),
            zone: loc.zone.into(),
        },
        f64::from(e.weight.max(1)),
        e.ready,
    ))
}
