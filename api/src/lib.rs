//! Meshfed's shared contracts: the protobuf services components speak to each
//! other, the CRD types, the labels and the gateway's server-name format.
//! Types only, no logic.

/// The identity service (`meshfed.identity.v1`): CSR in, X.509-SVID out.
pub mod identity {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("meshfed.identity.v1");
}

/// The federation service (`meshfed.federation.v1`): a cluster's exports,
/// streamed to linked peer controllers.
pub mod federation {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("meshfed.federation.v1");
}

/// The discovery service (`meshfed.discovery.v1`): endpoint sets in
/// failover order, for sidecars and gateways.
pub mod discovery {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("meshfed.discovery.v1");
}

pub mod crd;
pub mod labels;
pub mod priority;
pub mod route;
pub mod sni;
