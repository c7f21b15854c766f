//! Meshfed's sidecar injector: the mutating admission webhook through which
//! the pods of labelled namespaces (`meshfed.io/inject: enabled`) are created
//! with the Meshfed sidecar, exactly as `meshctl inject` writes them.
//!
//! Data flow: the API server POSTs an AdmissionReview ([`server`]); the
//! review ([`review`]) hands the pod to the one injection function and sends
//! back the difference as a JSONPatch.

mod binary;
pub mod contract;
mod namespaces;
pub mod pod;
mod review;
mod server;

pub use binary::binary_main;
pub use contract::{KEY_ROOTS, TRUST_CONFIG};
pub use namespaces::{
    FIELD_MANAGER, INJECT_ENABLED, INJECT_LABEL, NamespacePolicies, follow_namespaces,
};
pub use pod::{InjectError, PodInjector, SidecarTemplate, add_sidecar, parse_policy};
pub use review::{Answer, Inject, Outcome, review};
pub use server::{MAX_REVIEW_BYTES, Metrics, PATH, WebhookConfig, serve};
