//! What every test module shares: imports and the names of the API paths.

pub use std::future::Future;
pub use std::path::Path;
pub use std::sync::{Arc, Mutex};
pub use std::time::{Duration, SystemTime};

pub use http::header::{CONTENT_TYPE, DATE};
pub use http::{Method, Request, Response, StatusCode};
pub use kube::client::Body;
pub use meshctl::manifest_dir::Change;
pub use meshctl::{Cluster, GatewayRow, KubeCluster, Outcome, Status};
pub use meshfed_api::labels;
pub use meshfed_ca::{KeyAlgorithm, RootCa};
pub use meshfed_trust::TrustDomain;
pub use serde_json::{Value, json};
pub use tempfile::TempDir;
pub use tower_test::mock;

pub const NS: &str = "meshfed-system";
pub const TRUST_DOMAIN: &str = "mesh.test";
pub const CONFIG_MAPS: &str = "/api/v1/namespaces/meshfed-system/configmaps";
pub const LINKS: &str = "/apis/meshfed.io/v1alpha1/namespaces/meshfed-system/links";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/meshfed-system/deployments";
pub const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
/// The query of every apply, as kube-rs writes it (a leading `&` after the
/// `?`, as in kube-core's own request tests); the API server's query parser
/// skips the empty pair and takes the parameters in any order.
pub const SSA: &str = "?&force=true&fieldManager=meshctl";
pub const APPLY: &str = "application/apply-patch+yaml";
pub const MERGE: &str = "application/merge-patch+json";
pub const JSON: &str = "application/json";
/// When every fixture object was created, as the API server reports it.
pub const CREATED: &str = "2025-01-15T10:00:00Z";
/// How long one command may take against the stand-in.
pub const DEADLINE: Duration = Duration::from_secs(10);
pub const DAY: Duration = Duration::from_secs(24 * 3600);
