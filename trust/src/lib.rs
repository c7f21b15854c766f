//! Meshfed's trust layer: the CA hierarchy (offline root, per-cluster
//! intermediates, short-lived workload leaves), SPIFFE identities, trust
//! bundles, the rustls verifiers every hop uses, the identity service that
//! signs workload CSRs, and the client that keeps a workload's certificate
//! fresh.

mod admin;
mod auth;
mod binary;
mod bundle;
mod ca;
mod cert;
mod channel;
mod cli;
mod client;
mod files;
mod incoming;
mod service;
mod spiffe;
mod tls;
mod verify;

pub use admin::{Readiness, component_main, init_tracing, serve_admin, shutdown_signal};
pub use auth::{
    AuthError, Authenticator, BootstrapTokens, ProvenIdentity, TokenFileError, TokenReviewer,
};
pub use binary::binary_main;
pub use bundle::{BundleError, TrustBundle};
pub use ca::{
    CaError, ClusterCa, DEFAULT_INTERMEDIATE_VALIDITY, DEFAULT_LEAF_TTL, DEFAULT_ROOT_VALIDITY,
    IssuedWorkload, KeyAlgorithm, RootCa, paths, serving_names,
};
pub use cert::{CertError, CertInfo, fingerprint, spiffe_id_of};
pub use channel::mtls_channel;
pub use cli::{CredentialArgs, CredentialArgsError, cluster_name};
pub use client::{
    ClientError, CredentialSource, IdentityClient, IdentityClientConfig, csr_for, renew_after,
};
pub use files::{
    FileError, certs_to_pem, check_writable, parse_certs, read_certs, read_key, write_certs,
    write_key,
};
pub use incoming::{TlsConn, TlsConnectInfo, tls_incoming};
pub use service::{
    IdentityService, IdentityServiceConfig, MAX_CREDENTIAL_BYTES, MAX_CSR_BYTES, self_credentials,
    serve,
};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{
    Credentials, CredentialsError, CredentialsWatch, bootstrap_client_config,
    bootstrap_server_config, client_config, install_crypto_provider, peer_id, provider,
    server_config,
};
pub use verify::{BundleSource, CLOCK_SKEW, ExpectedIds, SvidVerifier, Usage, VerifyError};
