//! Proving a workload's credential: Kubernetes ServiceAccount tokens through
//! the TokenReview API (cluster mode), or per-identity bootstrap tokens from
//! a file (local mode). Either way the answer is a namespace and a service
//! account, never more.

use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

/// Shortest bootstrap token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// The identity a credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenIdentity {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// Why a credential was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credential is wrong, expired or unknown.
    #[error("credential rejected: {0}")]
    Rejected(String),
    /// The credential could not be checked (API server unreachable).
    #[error("credential could not be checked: {0}")]
    Unavailable(String),
}

/// Why a bootstrap token file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {reason}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// How the identity service proves credentials.
#[derive(Debug)]
pub enum Authenticator {
    /// Local mode: tokens from a file.
    Bootstrap(BootstrapTokens),
    /// Cluster mode: ServiceAccount tokens checked with TokenReview.
    TokenReview(Box<TokenReviewer>),
}

impl Authenticator {
    /// Proves `credential`, returning the identity it stands for.
    pub async fn authenticate(&self, credential: &str) -> Result<ProvenIdentity, AuthError> {
        match self {
            Self::Bootstrap(t) => t.authenticate(credential),
            Self::TokenReview(r) => r.authenticate(credential).await,
        }
    }
}

// === impl BootstrapTokens ===

/// Per-identity bootstrap tokens. The file has one line per identity,
/// `<namespace>/<service-account> <token>`; blank lines and lines starting
/// with `#` are skipped. Only SHA-256 digests of the tokens are kept in memory.
#[derive(Debug, Default)]
pub struct BootstrapTokens {
    by_digest: HashMap<[u8; 32], ProvenIdentity>,
}

impl BootstrapTokens {
    /// Loads a token file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| TokenFileError::Line {
            path: name,
            line,
            reason,
        })
    }

    /// Parses token file text; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut tokens = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| (i + 1, reason.to_owned());
            let mut words = line.split_whitespace();
            let (Some(who), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(err("expected `<namespace>/<service-account> <token>`"));
            };
            let Some((namespace, service_account)) = who.split_once('/') else {
                return Err(err("identity must be `<namespace>/<service-account>`"));
            };
            if namespace.is_empty() || service_account.is_empty() || service_account.contains('/') {
                return Err(err("identity must be `<namespace>/<service-account>`"));
            }
            if token.len() < MIN_TOKEN_LEN {
                return Err(err(&format!(
                    "token shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            let identity = ProvenIdentity {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
            };
            if tokens.by_digest.insert(digest(token), identity).is_some() {
                return Err(err("token already used by another line"));
            }
        }
        Ok(tokens)
    }

    /// Looks a token up.
    pub fn authenticate(&self, credential: &str) -> Result<ProvenIdentity, AuthError> {
        self.by_digest
            .get(&digest(credential))
            .cloned()
            .ok_or_else(|| AuthError::Rejected("unknown bootstrap token".into()))
    }

    /// How many identities have a token.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether the file named no identity.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

// === impl TokenReviewer ===

/// Checks ServiceAccount tokens with the Kubernetes TokenReview API.
#[derive(Clone)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .finish()
    }
}

impl TokenReviewer {
    /// A reviewer over `client`; tokens must be meant for one of `audiences`
    /// (empty: the API server's default audience).
    pub fn new(client: kube::Client, audiences: Vec<String>) -> Self {
        Self {
            api: Api::all(client),
            audiences,
        }
    }

    /// Asks the API server who the token belongs to.
    pub async fn authenticate(&self, credential: &str) -> Result<ProvenIdentity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: credential.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status
                .error
                .unwrap_or_else(|| "token not authenticated".into());
            return Err(AuthError::Rejected(why));
        }
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(AuthError::Rejected(
                    "token is not meant for this audience".into(),
                ));
            }
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        parse_service_account(&username)
            .ok_or_else(|| AuthError::Rejected(format!("{username:?} is not a service account")))
    }
}

/// `system:serviceaccount:<namespace>:<name>` to its parts.
fn parse_service_account(username: &str) -> Option<ProvenIdentity> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, service_account) = rest.split_once(':')?;
    if namespace.is_empty() || service_account.is_empty() || service_account.contains(':') {
        return None;
    }
    Some(ProvenIdentity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses_and_checks() {
        let tokens = BootstrapTokens::parse(
            "# local mode\n\nshop/api  0123456789abcdef0123\nshop/web fedcba9876543210fedc\n",
        )
        .expect("valid file");
        assert_eq!(tokens.len(), 2);
        let id = tokens
            .authenticate("0123456789abcdef0123")
            .expect("known token");
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("shop", "api")
        );
        assert!(matches!(
            tokens.authenticate("0123456789abcdef0124"),
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            tokens.authenticate(""),
            Err(AuthError::Rejected(_))
        ));
    }

    #[test]
    fn token_file_errors_name_the_line() {
        for (text, line) in [
            ("shop/api\n", 1),
            ("# c\nshop 0123456789abcdef0123\n", 2),
            ("shop/api short\n", 1),
            ("a/b 0123456789abcdef0123\nc/d 0123456789abcdef0123\n", 2),
            ("a/b/c 0123456789abcdef0123\n", 1),
            ("a/b 0123456789abcdef0123 extra\n", 1),
        ] {
            let (got, _) = BootstrapTokens::parse(text).expect_err(text);
            assert_eq!(got, line, "{text:?}");
        }
    }

    #[test]
    fn service_account_usernames() {
        let id = parse_service_account("system:serviceaccount:shop:api").expect("sa");
        assert_eq!(
            (id.namespace.as_str(), id.service_account.as_str()),
            ("shop", "api")
        );
        assert!(parse_service_account("system:node:n1").is_none());
        assert!(parse_service_account("system:serviceaccount:shop").is_none());
        assert!(parse_service_account("system:serviceaccount::api").is_none());
    }
}
