//! Resolving a Link's gateway addresses: IP literals as they are, DNS names
//! with hickory-resolver, again every `resolvePeriodSeconds`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use meshfed_resources::crd::LinkSpec;

use crate::world::PeerWriter;

/// How long one round of lookups may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry period while nothing resolves.
const RETRY: Duration = Duration::from_secs(1);

pub(super) async fn run(spec: LinkSpec, writer: PeerWriter) {
    let needs_dns = spec
        .gateway
        .addresses
        .iter()
        .any(|a| a.parse::<IpAddr>().is_err());
    let resolver = if needs_dns {
        match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Some(r),
            Err(e) => {
                writer.update(|p| p.last_error = Some(format!("dns resolver: {e}")));
                None
            }
        }
    } else {
        None
    };
    let period = Duration::from_secs(u64::from(spec.gateway.resolve_period_seconds.max(1)));
    loop {
        let (addrs, errors) = resolve_all(&spec, resolver.as_ref()).await;
        let resolved = !addrs.is_empty();
        writer.update(|p| {
            // A failed lookup keeps the addresses that last worked.
            if resolved {
                p.gateways = addrs;
            }
            if let Some(e) = errors {
                p.last_error = Some(e);
            }
        });
        if !needs_dns {
            return;
        }
        tokio::time::sleep(if resolved { period } else { RETRY }).await;
    }
}

async fn resolve_all(
    spec: &LinkSpec,
    resolver: Option<&TokioResolver>,
) -> (Vec<SocketAddr>, Option<String>) {
    let port = spec.gateway.port;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for addr in &spec.gateway.addresses {
        if let Ok(ip) = addr.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, port));
            continue;
        }
        let Some(resolver) = resolver else { continue };
        match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(addr.as_str())).await {
            Ok(Ok(ips)) => out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port))),
            Ok(Err(e)) => errors.push(format!("resolving {addr}: {e}")),
            Err(_) => errors.push(format!("resolving {addr}: timed out")),
        }
    }
    out.sort();
    out.dedup();
    let errors = (!errors.is_empty()).then(|| errors.join("; "));
    (out, errors)
}
