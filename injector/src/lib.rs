//! Meshfed's sidecar injector: the mutating admission webhook through which
//! the pods of labelled namespaces (`meshfed.io/inject: enabled`) are created
//! with the Meshfed sidecar, exactly as `meshctl inject` writes them.
//!
//! Data flow: the API server POSTs an AdmissionReview ([`server`]); the
//! review ([`review`]) hands the pod to the one injection function and sends
//! back the difference as a JSONPatch.

mod review;
mod server;
mod trust_config;

pub use review::{Answer, Inject, Outcome, review};
pub use server::{MAX_REVIEW_BYTES, Metrics, PATH, WebhookConfig, serve};
pub use trust_config::{
    FIELD_MANAGER, INJECT_ENABLED, INJECT_LABEL, KEY_ROOTS, TRUST_CONFIG, keep_trust_configs,
};
