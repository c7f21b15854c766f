//! Meshfed's shared contracts: the protobuf services components speak to each
//! other. Types only, no logic.

/// The identity service (`meshfed.identity.v1`): CSR in, X.509-SVID out.
pub mod identity {
    #![allow(missing_debug_implementations, clippy::all)]
    tonic::include_proto!("meshfed.identity.v1");
}

pub mod crd;
