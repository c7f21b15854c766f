//! Meshfed's certificate library: SPIFFE identities, trust bundles, the
//! rustls configs and verifiers every hop uses, the on-disk credential
//! layout, and the client that keeps a workload's certificate fresh from the
//! identity service. No Kubernetes client: the data plane links this crate.
//! The CA and the identity service are in `meshfed-identity`; how a binary
//! starts is in `meshfed-runtime`.

mod bundle;
mod cert;
mod client;
mod files;
mod spiffe;
mod tls;
mod verify;

pub use bundle::{BundleError, TrustBundle};
pub use cert::{CertError, CertInfo, fingerprint, serving_names, spiffe_id_of};
pub use client::{
    ClientError, CredentialSource, IdentityClient, IdentityClientConfig, csr_for, renew_after,
};
pub use files::{
    FileError, certs_to_pem, check_writable, parse_certs, paths, read_certs, read_key, write_certs,
    write_key,
};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use tls::{
    Credentials, CredentialsError, CredentialsWatch, bootstrap_client_config,
    bootstrap_server_config, client_config, install_crypto_provider, peer_id, provider,
    server_config,
};
pub use verify::{BundleSource, CLOCK_SKEW, ExpectedIds, SvidVerifier, Usage, VerifyError};
