//! Meshfed's controller, one per cluster: knows what its cluster exports, learns what
//! linked clusters export, keeps mirrors of them, watches their health and
//! tells sidecars and gateways where a service lives.
//!
//! Data flow: a [`Store`] publishes the cluster's state; the controller folds
//! it and every linked peer's state (federation stream, probes, resolved
//! gateway addresses) into one world value on a `watch` channel; mirrors,
//! statuses, the federation server and discovery subscriptions all follow
//! that channel.

mod binary;
mod controller;
mod discovery;
mod federation;
#[cfg(test)]
mod fixtures;
mod httproute;
mod leader;
mod local;
mod metrics;
mod mirrors;
mod peer;
mod status;
mod store;
mod validate;
mod world;

pub use binary::binary_main;
pub use controller::{Controller, ControllerConfig};
pub use discovery::{DiscoveryService, LocalCluster, RouteTable};
pub use federation::{Exports, FederationService, PeerAuthorizer};
pub use leader::{FILE_LEASE_NAMESPACE, FILE_RETRY, KUBE_LEASE_SECONDS, LEASE_NAME, Leadership};
pub use metrics::Metrics;
pub use status::CONDITION_ALIVE;
pub use store::manifest;
pub use store::{
    ClusterState, FileStore, FileStoreConfig, KubeStore, Mirror, ObjKey, PodAccount, Store,
    StoreError, is_mirror,
};
pub use validate::{FieldError, accepted_condition, validate_failover_policy, validate_link};
pub use world::World;
