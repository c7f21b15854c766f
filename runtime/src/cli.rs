//! The credential flags every Meshfed component shares: offline files from
//! `meshctl trust issue-workload`, or a certificate from the identity service
//! that is renewed for as long as the process runs.

use std::path::PathBuf;

use meshfed_trust::{
    CredentialSource, Credentials, CredentialsWatch, IdentityClient, IdentityClientConfig,
    SpiffeId, TrustBundle,
};

/// Where a component's identity comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct CredentialArgs {
    /// Offline credentials: a directory with leaf.crt, leaf.key, intermediate.crt, root.crt
    /// (from `meshctl trust issue-workload`). Exclusive with --identity-addr.
    #[arg(long, env = crate::env::CREDENTIALS_DIR)]
    pub credentials_dir: Option<PathBuf>,
    /// Identity service `host:port` to get (and renew) this component's certificate from.
    #[arg(long, env = crate::env::IDENTITY_ADDR)]
    pub identity_addr: Option<String>,
    /// SPIFFE ID the identity service presents.
    #[arg(long, env = crate::env::IDENTITY_SERVER_ID)]
    pub identity_server_id: Option<String>,
    /// This component's own SPIFFE ID, for --identity-addr.
    #[arg(long, env = crate::env::ID)]
    pub id: Option<String>,
    /// File holding the token that proves --id (re-read on every renewal).
    #[arg(long, env = crate::env::TOKEN_FILE)]
    pub token_file: Option<PathBuf>,
    /// Trust bundle (PEM or SPIFFE JSON) to trust the identity service with.
    #[arg(long, env = crate::env::BUNDLE)]
    pub bundle: Option<PathBuf>,
}

/// Why the credential flags gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialArgsError {
    /// Neither source given.
    #[error("credentials: give --credentials-dir DIR or --identity-addr HOST:PORT")]
    NoSource,
    /// Both sources given.
    #[error("--credentials-dir and --identity-addr exclude each other")]
    BothSources,
    /// --identity-addr without one of the flags it needs.
    #[error("--identity-addr needs {0}")]
    Needs(&'static str),
    /// A flag's value is wrong or what it names cannot be used.
    #[error("{flag}: {reason}")]
    Flag {
        /// The flag (and its value where useful).
        flag: String,
        /// What is wrong.
        reason: String,
    },
}

impl CredentialArgs {
    /// Loads the credentials (asking the identity service for them if so
    /// configured; renewal then runs in the background).
    pub async fn load(&self) -> Result<CredentialsWatch, CredentialArgsError> {
        self.load_serving(&[]).await
    }

    /// [`CredentialArgs::load`] for a workload that also serves clients
    /// outside the mesh: certificates from the identity service carry
    /// `dns_names` too (offline credentials are taken as they are).
    pub async fn load_serving(
        &self,
        dns_names: &[String],
    ) -> Result<CredentialsWatch, CredentialArgsError> {
        let flag = |flag: String, e: &dyn std::fmt::Display| CredentialArgsError::Flag {
            flag,
            reason: e.to_string(),
        };
        match (&self.credentials_dir, &self.identity_addr) {
            (Some(dir), None) => {
                let creds = Credentials::from_dir(dir)
                    .map_err(|e| flag(format!("--credentials-dir {}", dir.display()), &e))?;
                // Offline credentials do not renew; say when they run out.
                tracing::info!(spiffe_id = %creds.id(), not_after = ?creds.not_after(), "offline credentials loaded");
                Ok(creds.into_watch().1)
            }
            (None, Some(addr)) => {
                let server = self
                    .identity_server_id
                    .as_ref()
                    .ok_or(CredentialArgsError::Needs("--identity-server-id"))?;
                let id = self.id.as_ref().ok_or(CredentialArgsError::Needs("--id"))?;
                let bundle = self
                    .bundle
                    .as_ref()
                    .ok_or(CredentialArgsError::Needs("--bundle"))?;
                let token = self
                    .token_file
                    .as_ref()
                    .ok_or(CredentialArgsError::Needs("--token-file"))?;
                let id = SpiffeId::parse(id).map_err(|e| flag(format!("--id {id}"), &e))?;
                let server_id = SpiffeId::parse(server)
                    .map_err(|e| flag(format!("--identity-server-id {server}"), &e))?;
                let bundle = TrustBundle::from_file(id.trust_domain().clone(), bundle)
                    .map_err(|e| flag(format!("--bundle {}", bundle.display()), &e))?;
                let client = IdentityClient::new(IdentityClientConfig {
                    addr: addr.clone(),
                    server_id,
                    id,
                    credential: CredentialSource::File(token.clone()),
                    bundle,
                    dns_names: dns_names.to_vec(),
                });
                let (creds, _renewing) = client.start().await.map_err(|e| {
                    flag(
                        format!("--identity-addr {addr}"),
                        &format_args!("first certificate from the identity service: {e}"),
                    )
                })?;
                Ok(creds)
            }
            (Some(_), Some(_)) => Err(CredentialArgsError::BothSources),
            (None, None) => Err(CredentialArgsError::NoSource),
        }
    }
}

/// A clap value parser for cluster names: a DNS label, as Kubernetes names
/// things (lowercase letters, digits, '-').
pub fn cluster_name(s: &str) -> Result<String, String> {
    if meshfed_api::sni::is_dns_label(s) {
        Ok(s.to_owned())
    } else {
        Err("must be a DNS label (lowercase letters, digits, '-')".into())
    }
}
