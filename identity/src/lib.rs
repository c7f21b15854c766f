//! Meshfed's identity service: it signs a workload's CSR with the cluster CA
//! (`meshfed-ca`) once the workload has proven who it is (a Kubernetes
//! ServiceAccount token checked with the TokenReview API, or a bootstrap
//! token in local mode).

mod auth;
mod binary;
mod service;

pub use auth::{
    AuthError, Authenticator, BootstrapTokens, ProvenIdentity, TokenFileError, TokenReviewer,
};
pub use binary::binary_main;
pub use service::{
    IdentityService, IdentityServiceConfig, MAX_CREDENTIAL_BYTES, MAX_CSR_BYTES,
    SelfCredentialsError, self_credentials, serve,
};
