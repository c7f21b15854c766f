//! Meshfed's identity: the CA hierarchy (an offline root per federation, an
//! intermediate per cluster, short-lived workload leaves) and the cluster's
//! identity service, which signs a workload's CSR once the workload has
//! proven who it is (a Kubernetes ServiceAccount token checked with the
//! TokenReview API, or a bootstrap token in local mode).

mod auth;
mod binary;
mod ca;
mod service;

pub use auth::{
    AuthError, Authenticator, BootstrapTokens, ProvenIdentity, TokenFileError, TokenReviewer,
};
pub use binary::binary_main;
pub use ca::{
    CaError, ClusterCa, DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_TTL, DEFAULT_ROOT_VALIDITY,
    IssuedWorkload, KeyAlgorithm, RootCa,
};
pub use service::{
    IdentityService, IdentityServiceConfig, MAX_CREDENTIAL_BYTES, MAX_CSR_BYTES,
    SelfCredentialsError, self_credentials, serve,
};
