//! Meshfed's wire contracts: the protobuf services components speak to each
//! other, the labels, the gateway's server-name format and the rule that
//! shares traffic across priority groups. No Kubernetes client types: the
//! data plane links this crate; the Kubernetes resources are in
//! `meshfed-resources`.

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

pub mod labels;
pub mod priority;
pub mod sni;
